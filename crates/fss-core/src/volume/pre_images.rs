//! The pre-images one write reads before it changes the volume, in buffers each serving thread
//! keeps for its next first overwrite.

use crate::device::AlignedBuf;
use crate::geometry::BLOCK_SIZE;

/// Pre-images read from the volume: runs of whole blocks, zero-padded past its end.
pub(super) struct PreImages(pub(super) Vec<(u64, AlignedBuf)>);

/// The largest pre-image buffer a thread keeps for its next first overwrite: one huge page,
/// which a 1 MiB buffer occupies (`AlignedBuf::in_huge_pages`).
const SPARE_MAX: usize = 2 << 20;

thread_local! {
    /// A buffer kept from this thread's last first overwrite. A fresh 1 MiB buffer per request
    /// cost 7% of a persistent 1 MiB first overwrite's CPU in zero-filling and page faults
    /// (perf, PERFORMANCE.md); kept, it costs at most 2 MiB per serving thread. In huge pages,
    /// so that a 1 MiB pre-image is read in one disk request, not two (`AlignedBuf`).
    static SPARE: std::cell::RefCell<Option<AlignedBuf>> = const { std::cell::RefCell::new(None) };
}

/// A buffer of `len` bytes, the kept one if it is large enough; its bytes are stale.
pub(super) fn take_buffer(len: usize) -> AlignedBuf {
    let spare = SPARE.with(|s| s.borrow_mut().take());
    match spare {
        Some(mut b) if b.capacity() >= len => {
            b.resize(len);
            b
        }
        other => {
            SPARE.with(|s| *s.borrow_mut() = other);
            let mut b = AlignedBuf::in_huge_pages();
            b.resize(len);
            b
        }
    }
}

impl Drop for PreImages {
    fn drop(&mut self) {
        // Keep the largest buffer up to SPARE_MAX.
        let best = self
            .0
            .drain(..)
            .map(|(_, b)| b)
            .filter(|b| b.capacity() <= SPARE_MAX)
            .max_by_key(AlignedBuf::capacity);
        if let Some(b) = best {
            SPARE.with(|s| {
                let mut s = s.borrow_mut();
                if s.as_ref().is_none_or(|o| o.capacity() < b.capacity()) {
                    *s = Some(b);
                }
            });
        }
    }
}

impl PreImages {
    /// The bytes of blocks `[first, first + count)`, which lie inside one run.
    pub(super) fn blocks(&self, first: u64, count: u64) -> &[u8] {
        let i = self
            .0
            .partition_point(|(f, _)| *f <= first)
            .saturating_sub(1);
        let (f, data) = &self.0[i];
        let start = ((first - f) * BLOCK_SIZE) as usize;
        &data[start..start + (count * BLOCK_SIZE) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_reuses_its_largest_buffer_up_to_the_limit() {
        let b = take_buffer(1 << 20);
        let addr = b.as_ptr();
        drop(PreImages(vec![(0, b), (256, take_buffer(4096))]));
        let again = take_buffer(512 << 10);
        assert_eq!(again.as_ptr(), addr, "the 1 MiB buffer is kept and reused");
        assert_eq!(again.len(), 512 << 10);
        // Too large to keep: the kept one stays.
        drop(PreImages(vec![
            (0, again),
            (512, take_buffer((2 << 20) + 4096)),
        ]));
        let kept = take_buffer(4096);
        assert_eq!(kept.as_ptr(), addr);
        // Another thread has its own (ours is still held here, so no address can repeat).
        let other = std::thread::spawn(|| take_buffer(4096).as_ptr() as usize)
            .join()
            .unwrap();
        assert_ne!(other, addr as usize);
        drop(kept);
    }
}
