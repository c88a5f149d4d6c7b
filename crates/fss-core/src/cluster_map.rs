//! The in-memory map of one snapshot: cluster -> (store slot, mask of preserved blocks).
//!
//! Slots are numbered by the store in allocation order, so a slot number is also an index into
//! a dense vector of masks. Masks are kept as 16-bit words (one word per cluster at the default
//! 64 KiB), the index as a `u32 -> u32` hash map: about 12 to 20 bytes per mapped cluster.

use rustc_hash::FxHashMap;

/// A set of blocks inside one cluster, as 16-bit words (bit `i % 16` of word `i / 16`).
pub type Mask = [u16];

/// Number of 16-bit words in a mask of `blocks_per_cluster` blocks.
#[must_use]
pub fn mask_words(blocks_per_cluster: u32) -> usize {
    blocks_per_cluster.div_ceil(16) as usize
}

/// Whether block `i` is in `mask`.
#[must_use]
pub fn mask_has(mask: &Mask, i: u32) -> bool {
    mask[(i / 16) as usize] & (1 << (i % 16)) != 0
}

/// Add block `i` to `mask`.
pub fn mask_set(mask: &mut Mask, i: u32) {
    mask[(i / 16) as usize] |= 1 << (i % 16);
}

/// Number of blocks in `mask`.
#[must_use]
pub fn mask_count(mask: &Mask) -> u32 {
    mask.iter().map(|w| w.count_ones()).sum()
}

/// A mask with blocks `[from, to)` set.
#[must_use]
pub fn mask_range(words: usize, from: u32, to: u32) -> Vec<u16> {
    let mut m = vec![0u16; words];
    for i in from..to {
        mask_set(&mut m, i);
    }
    m
}

/// Whether `mask` has no block.
#[must_use]
pub fn mask_is_empty(mask: &Mask) -> bool {
    mask.iter().all(|&w| w == 0)
}

/// Remove from `mask` every block in `other`.
pub fn mask_remove(mask: &mut Mask, other: &Mask) {
    for (a, b) in mask.iter_mut().zip(other) {
        *a &= !*b;
    }
}

/// Keep in `mask` only blocks also in `other`.
pub fn mask_keep(mask: &mut Mask, other: &Mask) {
    for (a, b) in mask.iter_mut().zip(other) {
        *a &= *b;
    }
}

/// Add to `mask` every block in `other`.
pub fn mask_add(mask: &mut Mask, other: &Mask) {
    for (a, b) in mask.iter_mut().zip(other) {
        *a |= *b;
    }
}

/// The runs of consecutive blocks in `mask`, as (first, count), ascending.
#[must_use]
pub fn mask_runs(mask: &Mask) -> Vec<(u32, u32)> {
    let mut runs = Vec::new();
    let bits = mask.len() as u32 * 16;
    let mut i = 0;
    while i < bits {
        let w = mask[(i / 16) as usize];
        if w == 0 && i % 16 == 0 {
            i += 16;
            continue;
        }
        if mask_has(mask, i) {
            let start = i;
            while i < bits && mask_has(mask, i) {
                i += 1;
            }
            runs.push((start, i - start));
        } else {
            i += 1;
        }
    }
    runs
}

/// The preservation map of one snapshot.
#[derive(Debug)]
pub struct ClusterMap {
    words: usize,
    index: FxHashMap<u32, u32>,
    /// `masks[slot * words .. (slot + 1) * words]`; a slot allocated but never filled has an
    /// empty mask (its cluster is then not preserved, whatever the index says).
    masks: Vec<u16>,
    blocks: u64,
}

impl ClusterMap {
    /// An empty map for clusters of `blocks_per_cluster` blocks.
    #[must_use]
    pub fn new(blocks_per_cluster: u32) -> Self {
        ClusterMap {
            words: mask_words(blocks_per_cluster),
            index: FxHashMap::default(),
            masks: Vec::new(),
            blocks: 0,
        }
    }

    /// The slot and mask of `cluster`, if it has a slot.
    #[must_use]
    pub fn get(&self, cluster: u32) -> Option<(u32, &Mask)> {
        let slot = *self.index.get(&cluster)?;
        Some((slot, self.mask_of(slot)))
    }

    /// The mask of `cluster` (empty if it has no slot), copied into `out`, OR-ed in.
    pub fn or_mask_into(&self, cluster: u32, out: &mut Mask) {
        if let Some((_, m)) = self.get(cluster) {
            for (o, w) in out.iter_mut().zip(m) {
                *o |= *w;
            }
        }
    }

    /// Whether block `i` of `cluster` is preserved here.
    #[must_use]
    pub fn has_block(&self, cluster: u32, i: u32) -> bool {
        self.get(cluster).is_some_and(|(_, m)| mask_has(m, i))
    }

    /// The slot of `cluster`, if it has one.
    #[must_use]
    pub fn slot(&self, cluster: u32) -> Option<u32> {
        self.index.get(&cluster).copied()
    }

    /// Record that `cluster` lives in `slot` (a fresh slot from the store, numbered densely).
    pub fn insert_slot(&mut self, cluster: u32, slot: u32) {
        let need = (slot as usize + 1) * self.words;
        if self.masks.len() < need {
            self.masks.resize(need, 0);
        }
        self.index.insert(cluster, slot);
    }

    /// Mark the blocks in `add` of `cluster` as preserved. The cluster must have a slot.
    /// Returns how many blocks were new.
    pub fn add_blocks(&mut self, cluster: u32, add: &Mask) -> u32 {
        let Some(slot) = self.slot(cluster) else {
            return 0;
        };
        let w = self.words;
        let m = &mut self.masks[slot as usize * w..(slot as usize + 1) * w];
        let mut new = 0;
        for (dst, src) in m.iter_mut().zip(add) {
            new += (src & !*dst).count_ones();
            *dst |= src;
        }
        self.blocks += u64::from(new);
        new
    }

    /// Every mapped cluster with its slot and mask, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, u32, &Mask)> + '_ {
        self.index.iter().map(|(&c, &s)| (c, s, self.mask_of(s)))
    }

    /// Clusters with a slot.
    #[must_use]
    pub fn clusters(&self) -> u64 {
        self.index.len() as u64
    }

    /// Blocks preserved.
    #[must_use]
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Approximate heap bytes held by the map.
    #[must_use]
    pub fn heap_bytes(&self) -> u64 {
        let index = self.index.capacity() * (std::mem::size_of::<(u32, u32)>() + 1);
        (index + self.masks.capacity() * 2) as u64
    }

    fn mask_of(&self, slot: u32) -> &Mask {
        let w = self.words;
        &self.masks[slot as usize * w..(slot as usize + 1) * w]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_and_masks() {
        let mut m = ClusterMap::new(16);
        assert!(m.get(5).is_none());
        m.insert_slot(5, 0);
        assert_eq!(m.get(5).unwrap().1, &[0]);
        assert_eq!(m.add_blocks(5, &[0b101]), 2);
        assert_eq!(m.add_blocks(5, &[0b111]), 1);
        assert!(m.has_block(5, 1) && !m.has_block(5, 3) && !m.has_block(6, 0));
        m.insert_slot(9, 1);
        m.add_blocks(9, &[0x8000]);
        let mut out = [0u16; 1];
        m.or_mask_into(9, &mut out);
        m.or_mask_into(5, &mut out);
        assert_eq!(out, [0x8007]);
        assert_eq!((m.clusters(), m.blocks()), (2, 4));
    }

    #[test]
    fn runs_and_set_ops() {
        let mut m = mask_range(2, 3, 20);
        assert_eq!(mask_runs(&m), vec![(3, 17)]);
        mask_remove(&mut m, &mask_range(2, 5, 7));
        assert_eq!(mask_runs(&m), vec![(3, 2), (7, 13)]);
        mask_keep(&mut m, &mask_range(2, 0, 8));
        assert_eq!(mask_runs(&m), vec![(3, 2), (7, 1)]);
        mask_add(&mut m, &mask_range(2, 31, 32));
        assert_eq!(mask_runs(&m), vec![(3, 2), (7, 1), (31, 1)]);
        assert!(!mask_is_empty(&m) && mask_is_empty(&[0, 0]));
    }

    #[test]
    fn wide_masks_for_big_clusters() {
        let mut m = ClusterMap::new(4096);
        m.insert_slot(0, 0);
        let mut add = vec![0u16; mask_words(4096)];
        mask_set(&mut add, 4095);
        mask_set(&mut add, 17);
        m.add_blocks(0, &add);
        assert!(m.has_block(0, 4095) && m.has_block(0, 17) && !m.has_block(0, 16));
        assert_eq!(mask_count(m.get(0).unwrap().1), 2);
    }
}
