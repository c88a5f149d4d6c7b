//! The masks of a map, indexed by slot, in chunks of 4096 slots.
//!
//! Slots are numbered densely by the store, so a slot is an index. Chunks are allocated as
//! slots reach them and never move: growing costs no copy, holds no second table while it
//! copies, and leaves at most one partly used chunk (8 KiB at 64 KiB clusters).

use super::mask::mask_count;

/// Slots per chunk, as a shift.
const CHUNK_BITS: u32 = 12;
const CHUNK_SLOTS: usize = 1 << CHUNK_BITS;

/// Masks of `words` 16-bit words each, by slot.
#[derive(Debug)]
pub(super) struct SlotMasks {
    words: usize,
    /// Chunk `k` holds slots `k * 4096 ..`; a chunk no slot reached yet is empty.
    chunks: Vec<Box<[u16]>>,
}

impl SlotMasks {
    /// No chunk yet; masks of `words` words.
    pub(super) fn new(words: usize) -> Self {
        SlotMasks {
            words,
            chunks: Vec::new(),
        }
    }

    fn at(&self, slot: u32) -> (usize, usize) {
        let k = (slot >> CHUNK_BITS) as usize;
        (k, (slot as usize & (CHUNK_SLOTS - 1)) * self.words)
    }

    /// Make room for `slot` (an empty mask if it is new).
    pub(super) fn ensure(&mut self, slot: u32) {
        let (k, _) = self.at(slot);
        if self.chunks.len() <= k {
            self.chunks.resize_with(k + 1, Box::default);
        }
        if self.chunks[k].is_empty() {
            self.chunks[k] = vec![0u16; CHUNK_SLOTS * self.words].into_boxed_slice();
        }
    }

    /// The mask of `slot`, which [`SlotMasks::ensure`] made room for.
    pub(super) fn get(&self, slot: u32) -> &[u16] {
        let (k, o) = self.at(slot);
        &self.chunks[k][o..o + self.words]
    }

    /// The mask of `slot`, to change; [`SlotMasks::ensure`] made room for it.
    pub(super) fn get_mut(&mut self, slot: u32) -> &mut [u16] {
        let (k, o) = self.at(slot);
        let w = self.words;
        &mut self.chunks[k][o..o + w]
    }

    /// Empty the mask of `slot`; returns how many blocks it had.
    pub(super) fn clear(&mut self, slot: u32) -> u32 {
        let m = self.get_mut(slot);
        let n = mask_count(m);
        m.fill(0);
        n
    }

    /// Heap bytes held.
    pub(super) fn heap_bytes(&self) -> usize {
        let ptr = std::mem::size_of::<Box<[u16]>>();
        let chunks: usize = self.chunks.iter().map(|c| c.len() * 2).sum();
        self.chunks.capacity() * ptr + chunks
    }
}
