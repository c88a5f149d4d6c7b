//! Write payload buffers, aligned for O_DIRECT and reused within a connection.
//!
//! Why: a payload read into a fresh `Vec` sits at a heap address no direct write can take, so
//! the volume copied each large write into a zeroed aligned bounce buffer first: an allocation,
//! a zero-fill and a copy of every byte, about a third of the CPU a 1 MiB write cost. An
//! aligned buffer, kept for the connection's next write, goes to the disk as it is.

use fss_core::device::AlignedBuf;
use std::sync::{Mutex, PoisonError};

/// The most bytes of idle buffers one connection keeps.
const KEEP_BYTES: usize = 8 << 20;
/// Buffers larger than this are not kept (rare, and they would pin their memory).
const KEEP_ONE_MAX: usize = 2 << 20;

/// A connection's idle payload buffers.
#[derive(Debug, Default)]
pub(crate) struct Payloads {
    idle: Mutex<Vec<AlignedBuf>>,
}

impl Payloads {
    /// A buffer of `len` bytes (contents unspecified: the caller fills all of it).
    pub fn take(&self, len: usize) -> AlignedBuf {
        let reused = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut buf = reused.unwrap_or_default();
        buf.resize(len);
        buf
    }

    /// Keep `buf` for a later write, within the connection's allowance.
    pub fn give(&self, buf: AlignedBuf) {
        if buf.capacity() > KEEP_ONE_MAX {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let kept: usize = idle.iter().map(AlignedBuf::capacity).sum();
        if kept + buf.capacity() <= KEEP_BYTES {
            idle.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fss_core::device::is_aligned;

    #[test]
    fn buffers_are_aligned_reused_and_bounded() {
        let p = Payloads::default();
        let a = p.take(1 << 20);
        assert!(is_aligned(&a) && a.len() == 1 << 20);
        let addr = a.as_ptr();
        p.give(a);
        let b = p.take(64 << 10);
        assert_eq!(b.as_ptr(), addr, "the idle buffer is reused");
        assert_eq!(b.len(), 64 << 10);
        p.give(b);
        // Too large to keep, and never more than the allowance in all.
        let _ = p.take(0);
        p.give(AlignedBuf::new(KEEP_ONE_MAX + 1));
        for _ in 0..16 {
            p.give(AlignedBuf::new(1 << 20));
        }
        let kept: usize = p
            .idle
            .lock()
            .map(|v| v.iter().map(AlignedBuf::capacity).sum())
            .unwrap_or(0);
        assert!(kept <= KEEP_BYTES, "{kept} bytes kept");
    }
}
