//! A heap buffer whose start is aligned for O_DIRECT, without unsafe: over-allocate a `Vec`,
//! then use the aligned window inside it.
//!
//! Front-ends read into one of these (reused per serving thread) so that a [`FileDevice`]
//! opened for direct I/O can hand the caller's memory to the kernel instead of going through
//! a bounce buffer and a copy.
//!
//! [`FileDevice`]: super::FileDevice

use std::ops::{Deref, DerefMut};

/// Alignment that O_DIRECT transfers use: offsets, lengths and buffer addresses.
pub const DIRECT_ALIGN: usize = 4096;

/// A byte buffer of a given length whose first byte is [`DIRECT_ALIGN`]-aligned.
///
/// It dereferences to the aligned window, so it can be used wherever a `[u8]` is wanted;
/// [`resize`](Self::resize) reuses the allocation when it is large enough.
#[derive(Debug, Default)]
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes.
    #[must_use]
    pub fn new(len: usize) -> Self {
        let mut b = AlignedBuf::default();
        b.resize(len);
        b
    }

    /// Make the buffer `len` bytes long. Within the current allocation this only moves the
    /// end (the bytes keep whatever they held); beyond it a new zeroed allocation is made and
    /// the old contents are dropped, since every caller fills the buffer right after.
    pub fn resize(&mut self, len: usize) {
        if len > self.capacity() {
            // A fresh zeroed Vec comes from calloc/mmap, so it costs no zero-fill pass; the
            // extra DIRECT_ALIGN bytes leave room to slide the window onto a boundary.
            self.raw = vec![0u8; len + DIRECT_ALIGN];
            let addr = self.raw.as_ptr() as usize;
            self.start = (DIRECT_ALIGN - addr % DIRECT_ALIGN) % DIRECT_ALIGN;
        }
        self.len = len;
    }

    /// How many bytes the buffer can hold without a new allocation.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.raw.len().saturating_sub(self.start)
    }

    /// Drop the allocation when it holds more than `max` bytes, so a rare large request does
    /// not keep its memory resident for the life of the thread that served it.
    pub fn shrink_to(&mut self, max: usize) {
        if self.capacity() > max {
            *self = AlignedBuf::default();
        }
    }

    /// The aligned bytes.
    #[must_use]
    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    /// The aligned bytes, writable.
    #[must_use]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

/// Whether `buf` starts on a [`DIRECT_ALIGN`] boundary.
#[must_use]
pub fn is_aligned(buf: &[u8]) -> bool {
    (buf.as_ptr() as usize) % DIRECT_ALIGN == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_at_every_size_and_reused_when_smaller() {
        let mut b = AlignedBuf::new(0);
        assert!(b.is_empty());
        for len in [1, 4095, 4096, 1 << 20, 10, 3 << 20] {
            b.resize(len);
            assert_eq!(b.len(), len);
            assert!(is_aligned(&b), "len {len}");
            b.as_mut_slice().fill(7);
        }
        let cap = b.capacity();
        b.resize(4096);
        assert_eq!(b.capacity(), cap, "a smaller size keeps the allocation");
        assert!(b.iter().all(|&x| x == 7));
        b.shrink_to(1 << 20);
        assert_eq!(b.capacity(), 0);
        assert!(b.is_empty());
    }
}
