//! Where things are in a store: arithmetic only (see `docs/FORMAT.md` section 1).

use super::BLOCK;

/// Preserve records of one block fit this many times in a log block (44 bytes each).
pub const MIN_RECORDS_PER_BLOCK: u64 = 93;
/// Bytes of data slots per group, when clusters are smaller.
pub const GROUP_DATA_BYTES: u64 = 16 << 20;

/// The layout of a store with a given cluster size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    cluster_size: u64,
    slots_per_group: u64,
    log_blocks_per_group: u64,
}

impl Layout {
    /// The layout for `cluster_size` (a power of two from 4 KiB to 16 MiB).
    #[must_use]
    pub fn new(cluster_size: u64) -> Self {
        let k = (GROUP_DATA_BYTES / cluster_size).max(1);
        let bpc = cluster_size / BLOCK as u64;
        Layout {
            cluster_size,
            slots_per_group: k,
            log_blocks_per_group: (k * bpc).div_ceil(MIN_RECORDS_PER_BLOCK) + 1,
        }
    }

    /// `K`: slots per group.
    #[must_use]
    pub fn slots_per_group(&self) -> u64 {
        self.slots_per_group
    }

    /// `L`: log blocks per group.
    #[must_use]
    pub fn log_blocks_per_group(&self) -> u64 {
        self.log_blocks_per_group
    }

    fn group_len(&self) -> u64 {
        self.log_blocks_per_group * BLOCK as u64 + self.slots_per_group * self.cluster_size
    }

    fn group_start(&self, group: u64) -> u64 {
        BLOCK as u64 + group * self.group_len()
    }

    /// Byte offset of slot `slot`.
    #[must_use]
    pub fn slot_offset(&self, slot: u32) -> u64 {
        let s = u64::from(slot);
        self.group_start(s / self.slots_per_group)
            + self.log_blocks_per_group * BLOCK as u64
            + (s % self.slots_per_group) * self.cluster_size
    }

    /// Bytes of medium needed to hold slots `0..slots` and their groups' logs.
    #[must_use]
    pub fn bytes_for_slots(&self, slots: u64) -> u64 {
        if slots == 0 {
            return self.group_start(0) + self.log_blocks_per_group * BLOCK as u64;
        }
        let last = slots - 1;
        self.slot_offset(u32::try_from(last).unwrap_or(u32::MAX)) + self.cluster_size
    }

    /// Byte offset of log block `index` (counting through every group's log area).
    #[must_use]
    pub fn log_block_offset(&self, index: u64) -> u64 {
        self.group_start(index / self.log_blocks_per_group)
            + (index % self.log_blocks_per_group) * BLOCK as u64
    }

    /// Log blocks in the groups that hold slots `0..slots` (at least one group).
    #[must_use]
    pub fn log_blocks_for_slots(&self, slots: u64) -> u64 {
        slots.div_ceil(self.slots_per_group).max(1) * self.log_blocks_per_group
    }

    /// Whether log blocks `a` and `a + 1` are adjacent on the medium.
    #[must_use]
    pub fn log_blocks_adjacent(&self, a: u64) -> bool {
        (a + 1) % self.log_blocks_per_group != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_cluster_layout() {
        let l = Layout::new(65536);
        assert_eq!(l.slots_per_group(), 256);
        assert_eq!(l.log_blocks_per_group(), 46);
        assert_eq!(l.slot_offset(0), 4096 + 46 * 4096);
        assert_eq!(l.slot_offset(1), l.slot_offset(0) + 65536);
        let g1 = 4096 + 46 * 4096 + 256 * 65536;
        assert_eq!(l.log_block_offset(46), g1);
        assert_eq!(l.slot_offset(256), g1 + 46 * 4096);
        assert_eq!(l.bytes_for_slots(1), l.slot_offset(0) + 65536);
        assert!(!l.log_blocks_adjacent(45) && l.log_blocks_adjacent(44));
    }

    #[test]
    fn big_and_small_clusters() {
        let l = Layout::new(16 << 20);
        assert_eq!(l.slots_per_group(), 1);
        assert_eq!(l.log_blocks_per_group(), 4096u64.div_ceil(93) + 1);
        let l = Layout::new(4096);
        assert_eq!(l.slots_per_group(), 4096);
        // Slots never overlap log blocks.
        for s in [0u32, 4095, 4096, 9000] {
            let off = l.slot_offset(s);
            let g = u64::from(s) / 4096;
            let log_end =
                l.log_block_offset(g * l.log_blocks_per_group()) + l.log_blocks_per_group() * 4096;
            assert!(off >= log_end);
        }
    }
}
