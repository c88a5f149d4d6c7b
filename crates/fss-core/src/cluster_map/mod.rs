//! The in-memory map of one snapshot: cluster -> (store slot, mask of preserved blocks).
//!
//! Two levels keyed by cluster number, as fss's indirect blocks: a table with one pointer per
//! 4096 clusters, and a leaf (`leaf.rs`) per 4096-cluster range that holds at least one mapped
//! cluster (a presence bitmap, and the slots of the mapped clusters in order). Masks live
//! apart, indexed by slot (`slot_masks.rs`): slots are numbered densely by the store. A lookup
//! is a few loads and one popcount; nothing big ever grows by doubling.
//!
//! Memory, at most, whatever the pattern or the insertion order:
//! - 16 bytes per 4096 clusters up to the highest mapped one (the table, with its growth
//!   slack): 64 KiB for the 2^24 clusters a volume may have;
//! - about 730 bytes per 4096-cluster range holding a mapped cluster (its bitmap, counts and
//!   first 16 slots): 1.4 bits per volume cluster if every range holds one;
//! - per mapped cluster, 4.5 bytes of slot and 2 bytes of mask per 64 KiB of cluster: 6.5
//!   bytes at the default 64 KiB; plus one 4096-slot chunk of masks of slack.

mod leaf;
mod mask;
mod slot_masks;
#[cfg(test)]
mod tests;

use leaf::{Leaf, LEAF_BITS, LEAF_CLUSTERS};
pub use mask::{
    mask_add, mask_count, mask_has, mask_is_empty, mask_keep, mask_range, mask_remove, mask_runs,
    mask_set, mask_words, Mask,
};
use slot_masks::SlotMasks;

/// The preservation map of one snapshot.
#[derive(Debug)]
pub struct ClusterMap {
    /// Leaf `k` covers clusters `k * 4096 ..`; `None` while none of them is mapped.
    leaves: Vec<Option<Box<Leaf>>>,
    /// A slot allocated but never filled has an empty mask (its cluster is then not
    /// preserved, whatever the leaf says).
    masks: SlotMasks,
    clusters: u64,
    blocks: u64,
    bpc: u32,
}

impl ClusterMap {
    /// An empty map for clusters of `blocks_per_cluster` blocks.
    #[must_use]
    pub fn new(blocks_per_cluster: u32) -> Self {
        ClusterMap {
            leaves: Vec::new(),
            masks: SlotMasks::new(mask_words(blocks_per_cluster)),
            clusters: 0,
            blocks: 0,
            bpc: blocks_per_cluster,
        }
    }

    /// The slot and mask of `cluster`, if it has a slot.
    #[must_use]
    pub fn get(&self, cluster: u32) -> Option<(u32, &Mask)> {
        let slot = self.slot(cluster)?;
        Some((slot, self.masks.get(slot)))
    }

    /// The mask of `cluster` (empty if it has no slot), copied into `out`, OR-ed in.
    pub fn or_mask_into(&self, cluster: u32, out: &mut Mask) {
        if let Some((_, m)) = self.get(cluster) {
            mask_add(out, m);
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
        let leaf = self
            .leaves
            .get((cluster >> LEAF_BITS) as usize)?
            .as_deref()?;
        leaf.get(cluster & (LEAF_CLUSTERS - 1))
    }

    /// Record that `cluster` lives in `slot` (a fresh slot from the store, numbered densely).
    /// A cluster that had another slot moves to the new one, with the new slot's mask.
    pub fn insert_slot(&mut self, cluster: u32, slot: u32) {
        let k = (cluster >> LEAF_BITS) as usize;
        if self.leaves.len() <= k {
            self.leaves.resize_with(k + 1, || None);
        }
        self.masks.ensure(slot);
        let leaf = self.leaves[k].get_or_insert_with(Leaf::new);
        match leaf.insert(cluster & (LEAF_CLUSTERS - 1), slot) {
            None => self.clusters += 1,
            Some(old) if old != slot => self.blocks -= u64::from(self.masks.clear(old)),
            Some(_) => {}
        }
    }

    /// Mark the blocks in `add` of `cluster` as preserved. The cluster must have a slot.
    /// Returns how many blocks were new.
    pub fn add_blocks(&mut self, cluster: u32, add: &Mask) -> u32 {
        let Some(slot) = self.slot(cluster) else {
            return 0;
        };
        let m = self.masks.get_mut(slot);
        let mut new = 0;
        for (dst, src) in m.iter_mut().zip(add) {
            new += (src & !*dst).count_ones();
            *dst |= src;
        }
        self.blocks += u64::from(new);
        new
    }

    /// Every mapped cluster with its slot and mask, in ascending cluster order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, u32, &Mask)> + '_ {
        let leaves = self.leaves.iter().enumerate();
        let mapped = leaves.filter_map(|(k, l)| Some(((k as u32) << LEAF_BITS, l.as_deref()?)));
        mapped.flat_map(move |(base, leaf)| {
            leaf.iter()
                .map(move |(i, s)| (base | i, s, self.masks.get(s)))
        })
    }

    /// Blocks per cluster, as the map was made for.
    #[must_use]
    pub fn blocks_per_cluster(&self) -> u32 {
        self.bpc
    }

    /// The highest cluster with a slot.
    #[must_use]
    pub fn last_cluster(&self) -> Option<u32> {
        let (k, leaf) = self
            .leaves
            .iter()
            .enumerate()
            .rev()
            .find_map(|(k, l)| Some((k, l.as_deref().filter(|l| l.len() > 0)?)))?;
        let last = leaf.iter().last()?.0;
        Some(((k as u32) << LEAF_BITS) | last)
    }

    /// Clusters with a slot.
    #[must_use]
    pub fn clusters(&self) -> u64 {
        self.clusters
    }

    /// Blocks preserved.
    #[must_use]
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Heap bytes held by the map (its allocations' sizes, not the allocator's overhead).
    #[must_use]
    pub fn heap_bytes(&self) -> u64 {
        let table = self.leaves.capacity() * std::mem::size_of::<Option<Box<Leaf>>>();
        let leaves: usize = self.leaves.iter().flatten().map(|l| l.heap_bytes()).sum();
        (table + leaves + self.masks.heap_bytes()) as u64
    }

    /// Leaves allocated (4096-cluster ranges holding a mapped cluster).
    #[cfg(test)]
    fn leaf_count(&self) -> usize {
        self.leaves.iter().flatten().filter(|l| l.len() > 0).count()
    }
}
