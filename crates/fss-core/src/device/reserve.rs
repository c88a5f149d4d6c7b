//! Room allocated ahead of a growing file's writers ([`BlockDevice::reserve`]).
//!
//! Why: a store file grows as pre-images arrive. Each direct write past the allocated part
//! fills a hole, and ext4 (like XFS) serves a direct write that allocates under the inode lock
//! held exclusively until the disk is done, so concurrent first overwrites queue behind one
//! another; into space `fallocate` made beforehand (unwritten extents) they run in parallel
//! under the shared lock. Allocating in steps of [`AHEAD`] costs one system call per step.
//!
//! [`BlockDevice::reserve`]: super::BlockDevice::reserve

use rustix::fs::FallocateFlags;
use std::fs::File;
use std::sync::Mutex;

/// How far ahead of the writers a reservation reaches.
pub(crate) const AHEAD: u64 = 64 << 20;

/// The end of the part of a file allocated ahead so far.
#[derive(Debug, Default)]
pub(crate) struct Reserved(Mutex<u64>);

impl Reserved {
    /// Make sure `[0, end)` is allocated, reaching [`AHEAD`] past it (at most to `cap`) once
    /// less than half of that is left. Returns the file's new length if it grew. Whoever
    /// finds another thread allocating goes on without waiting: its writes are correct in a
    /// hole too, only slower.
    pub(crate) fn grow(&self, file: &File, len: u64, end: u64, cap: u64) -> Option<u64> {
        let mut done = match self.0.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        // A file that already reaches past the mark (reopened, or written elsewhere) has its
        // earlier part allocated or written as needed: start from the mark anyway, as
        // `fallocate` leaves allocated ranges alone.
        if end.saturating_add(AHEAD / 2) <= *done || *done >= cap {
            return None;
        }
        let to = end.saturating_add(AHEAD).min(cap).max(end);
        let from = (*done).min(to);
        if to <= from {
            return None;
        }
        // Mode 0: allocate, and extend the length to `to` if it is shorter.
        match rustix::fs::fallocate(file, FallocateFlags::empty(), from, to - from) {
            Ok(()) => {
                *done = to;
                Some(len.max(to))
            }
            // No room, or a file system without fallocate: stop trying, writes fill holes.
            Err(_) => {
                *done = u64::MAX;
                None
            }
        }
    }
}

#[cfg(test)]
impl Reserved {
    /// The end of the part allocated ahead so far.
    pub(crate) fn mark(&self) -> u64 {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn reserves_ahead_in_steps_and_never_past_the_cap() {
        let f = tempfile::tempfile().unwrap();
        let r = Reserved::default();
        assert_eq!(r.grow(&f, 0, 4096, u64::MAX), Some(4096 + AHEAD));
        assert_eq!(f.metadata().unwrap().len(), 4096 + AHEAD);
        // Allocated, not a sparse length: the blocks are there.
        assert!(f.metadata().unwrap().blocks() * 512 >= AHEAD);
        // Within the first half of the step: nothing to do.
        assert_eq!(r.grow(&f, 4096 + AHEAD, AHEAD / 2, u64::MAX), None);
        assert_eq!(r.mark(), 4096 + AHEAD);
        // Past it: one more step, capped.
        let cap = 2 * AHEAD;
        assert_eq!(r.grow(&f, 4096 + AHEAD, AHEAD, cap), Some(cap));
        assert_eq!(r.grow(&f, cap, cap, cap), None);
        assert_eq!(f.metadata().unwrap().len(), cap);
    }
}
