//! A heap buffer whose start is aligned for O_DIRECT: over-allocate a `Vec`, then use the
//! aligned window inside it.
//!
//! A buffer made with [`AlignedBuf::in_huge_pages`] places sizes of 1 MiB and up on a 2 MiB
//! boundary and asks for transparent huge pages. Why: a direct transfer's buffer is cut into
//! one segment per physically contiguous run of pages, and a virtio disk takes at most 254
//! segments per request, so a 1 MiB read into 256 scattered 4 KiB pages became two disk
//! requests (measured: 666 KiB per disk read for fss's
//! 1 MiB reads against 1000 KiB for qemu-nbd's, whose reused heap buffers are contiguous). In
//! one huge page a 1 MiB transfer is one segment and one request. The cost is resident memory
//! (such a buffer occupies a whole 2 MiB page once touched) and a 2 MiB zero-fill when it is
//! first touched, so only buffers that are kept and reused ask for it.
//!
//! Front-ends read into one of these (reused per serving thread) so that a [`FileDevice`]
//! opened for direct I/O can hand the caller's memory to the kernel instead of going through
//! a bounce buffer and a copy.
//!
//! [`FileDevice`]: super::FileDevice

use std::ops::{Deref, DerefMut};

/// Alignment that O_DIRECT transfers use: offsets, lengths and buffer addresses.
pub const DIRECT_ALIGN: usize = 4096;

/// Buffers at least this long are placed in transparent huge pages (see the module doc).
const HUGE_MIN: usize = 1 << 20;
/// The size (and alignment) of a transparent huge page on x86-64 and most arm64 kernels.
const HUGE_PAGE: usize = 2 << 20;

/// A byte buffer of a given length whose first byte is [`DIRECT_ALIGN`]-aligned.
///
/// It dereferences to the aligned window, so it can be used wherever a `[u8]` is wanted;
/// [`resize`](Self::resize) reuses the allocation when it is large enough.
#[derive(Debug, Default)]
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
    /// Usable bytes from `start` (the advised span for a huge-page buffer).
    cap: usize,
    /// Place large sizes in transparent huge pages.
    huge: bool,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes.
    #[must_use]
    pub fn new(len: usize) -> Self {
        let mut b = AlignedBuf::default();
        b.resize(len);
        b
    }

    /// An empty buffer that, once [`resize`](Self::resize)d to 1 MiB or more, lies in
    /// transparent huge pages, so a direct transfer of it is one disk request (module doc).
    /// For buffers kept and reused, since its first touch zero-fills 2 MiB.
    #[must_use]
    pub fn in_huge_pages() -> Self {
        AlignedBuf {
            huge: true,
            ..AlignedBuf::default()
        }
    }

    /// Make the buffer `len` bytes long. Within the current allocation this only moves the
    /// end (the bytes keep whatever they held); beyond it a new zeroed allocation is made and
    /// the old contents are dropped, since every caller fills the buffer right after.
    pub fn resize(&mut self, len: usize) {
        if len > self.capacity() {
            // A fresh zeroed Vec comes from calloc/mmap, so it costs no zero-fill pass; the
            // extra `align` bytes leave room to slide the window onto a boundary.
            let huge = self.huge && len >= HUGE_MIN;
            let (align, span) = if huge {
                (HUGE_PAGE, len.div_ceil(HUGE_PAGE) * HUGE_PAGE)
            } else {
                (DIRECT_ALIGN, len)
            };
            self.raw = vec![0u8; span + align];
            let addr = self.raw.as_ptr() as usize;
            self.start = (align - addr % align) % align;
            self.cap = self.raw.len() - self.start;
            if huge {
                // Only the advised span counts, and it is advised before the first touch, so
                // that the first fault can take a huge page.
                self.cap = span;
                advise_huge_pages(&mut self.raw[self.start..self.start + span]);
            }
        }
        self.len = len;
    }

    /// How many bytes the buffer can hold without a new allocation.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Drop the allocation when it holds more than `max` bytes, so a rare large request does
    /// not keep its memory resident for the life of the thread that served it.
    pub fn shrink_to(&mut self, max: usize) {
        if self.capacity() > max {
            *self = AlignedBuf {
                huge: self.huge,
                ..AlignedBuf::default()
            };
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

/// Ask the kernel to back `buf` (starting on a huge-page boundary) with transparent huge
/// pages. Only advice: where the kernel has none to give, or no THP at all, the buffer keeps
/// ordinary pages and works the same.
#[allow(unsafe_code)]
fn advise_huge_pages(buf: &mut [u8]) {
    let advice = rustix::mm::Advice::LinuxHugepage;
    // SAFETY: the range is memory of a live allocation that `buf` borrows mutably, so nothing
    // else uses it during the call; MADV_HUGEPAGE changes only which pages the kernel backs
    // the range with, never the range's contents or whether it stays mapped.
    let advised = unsafe { rustix::mm::madvise(buf.as_mut_ptr().cast(), buf.len(), advice) };
    if let Err(e) = advised {
        tracing::debug!(error = %e, "no transparent huge pages for a large I/O buffer");
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

    /// The `VmFlags` of the mapping of this process that holds `addr`.
    fn vm_flags_at(addr: usize) -> Option<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((lo, hi)) = range.split_once('-') {
                    if let (Ok(lo), Ok(hi)) =
                        (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                    {
                        inside = (lo..hi).contains(&addr);
                        continue;
                    }
                }
            }
            if inside {
                if let Some(flags) = line.strip_prefix("VmFlags:") {
                    return Some(flags.to_string());
                }
            }
        }
        None
    }

    #[test]
    fn large_buffers_start_on_a_huge_page_and_ask_for_huge_pages() {
        let mut b = AlignedBuf::in_huge_pages();
        b.resize((1 << 20) + 4096);
        b.as_mut_slice().fill(1);
        let addr = b.as_ptr() as usize;
        assert_eq!(
            addr % HUGE_PAGE,
            0,
            "a 1 MiB buffer starts on a 2 MiB boundary"
        );
        assert_eq!(b.capacity(), HUGE_PAGE, "the advised span");
        b.resize(100);
        assert_eq!(
            b.as_ptr() as usize,
            addr,
            "a smaller size keeps the huge page"
        );
        if std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            let flags = vm_flags_at(addr).unwrap_or_default();
            assert!(
                flags.split_whitespace().any(|f| f == "hg"),
                "VmFlags: {flags}"
            );
        }
        b.resize(3 << 20);
        assert_eq!(b.as_ptr() as usize % HUGE_PAGE, 0);
        assert_eq!(b.capacity(), 2 * HUGE_PAGE);
        b.shrink_to(1 << 20);
        b.resize(64 << 10);
        let flags = vm_flags_at(b.as_ptr() as usize).unwrap_or_default();
        assert!(
            !flags.split_whitespace().any(|f| f == "hg"),
            "64 KiB: {flags}"
        );
        let plain = AlignedBuf::new(1 << 20);
        let flags = vm_flags_at(plain.as_ptr() as usize).unwrap_or_default();
        assert!(
            !flags.split_whitespace().any(|f| f == "hg"),
            "plain 1 MiB: {flags}"
        );
    }
}
