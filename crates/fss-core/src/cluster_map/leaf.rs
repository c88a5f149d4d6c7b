//! One leaf of the map: the slots of the mapped clusters among 4096 consecutive ones.
//!
//! A presence bitmap says which clusters are mapped; `before[w]` counts the mapped clusters
//! in the bitmap words before word `w`, so a cluster's position among the slots is one
//! popcount away, and the slots are kept in cluster order with no gaps. A leaf therefore costs
//! the same ~670 bytes whatever its pattern, plus 4 bytes (and at most an eighth more, or 16
//! slots at first) per mapped cluster: no hash table's empty buckets, and no doubling.

/// Clusters per leaf, as a shift.
pub(super) const LEAF_BITS: u32 = 12;
/// Clusters per leaf.
pub(super) const LEAF_CLUSTERS: u32 = 1 << LEAF_BITS;
const WORDS: usize = (LEAF_CLUSTERS / 64) as usize;

/// The slots of the mapped clusters among [`LEAF_CLUSTERS`] consecutive ones (indexed from
/// 0 within the leaf).
#[derive(Debug)]
pub(super) struct Leaf {
    present: [u64; WORDS],
    /// Mapped clusters in `present[..w]`; at most 4096, so a `u16` holds it.
    before: [u16; WORDS],
    /// The slots, in cluster order.
    slots: Vec<u32>,
}

impl Leaf {
    /// A leaf with no cluster mapped.
    pub(super) fn new() -> Box<Self> {
        Box::new(Leaf {
            present: [0; WORDS],
            before: [0; WORDS],
            slots: Vec::new(),
        })
    }

    /// Where the slot of cluster `i` is (or would go) in `slots`, and whether it is there.
    fn position(&self, i: u32) -> (usize, bool) {
        let w = (i / 64) as usize;
        let bit = 1u64 << (i % 64);
        let word = self.present[w];
        let below = (word & (bit - 1)).count_ones() as usize;
        (usize::from(self.before[w]) + below, word & bit != 0)
    }

    /// The slot of cluster `i`, if it has one.
    pub(super) fn get(&self, i: u32) -> Option<u32> {
        let (pos, here) = self.position(i);
        here.then(|| self.slots[pos])
    }

    /// Give cluster `i` the slot `slot`; returns the slot it had before, if any.
    pub(super) fn insert(&mut self, i: u32, slot: u32) -> Option<u32> {
        let (pos, here) = self.position(i);
        if here {
            return Some(std::mem::replace(&mut self.slots[pos], slot));
        }
        let len = self.slots.len();
        if len == self.slots.capacity() {
            // An eighth more, not double: the slack stays within 12.5% (plus 16 slots).
            let full = LEAF_CLUSTERS as usize;
            self.slots.reserve_exact((len / 8).max(16).min(full - len));
        }
        self.slots.insert(pos, slot);
        let w = (i / 64) as usize;
        self.present[w] |= 1 << (i % 64);
        for b in &mut self.before[w + 1..] {
            *b += 1;
        }
        None
    }

    /// Mapped clusters.
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Every mapped cluster (index within the leaf) with its slot, ascending.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        let clusters = self.present.iter().enumerate().flat_map(|(w, &word)| {
            let base = w as u32 * 64;
            set_bits(word).map(move |b| base + b)
        });
        clusters.zip(self.slots.iter().copied())
    }

    /// Heap bytes held by the leaf (its box and its slot vector).
    pub(super) fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Leaf>() + self.slots.capacity() * std::mem::size_of::<u32>()
    }
}

/// The set bits of `word`, ascending.
fn set_bits(mut word: u64) -> impl Iterator<Item = u32> {
    std::iter::from_fn(move || {
        let b = (word != 0).then(|| word.trailing_zeros())?;
        word &= word - 1;
        Some(b)
    })
}
