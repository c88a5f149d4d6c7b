//! Blocks being preserved right now, so that a second writer of the same block waits for that
//! block only, and writers of other blocks go on in parallel.
//!
//! Claims are taken in ascending block order by every writer, which rules out deadlock.

use rustc_hash::FxHashSet;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

const SHARDS: usize = 64;

/// The claimed blocks of one shard, and how many threads wait for one of them (so that a
/// release without waiters costs no wake-up system call).
#[derive(Default)]
struct Claimed {
    blocks: FxHashSet<u64>,
    waiters: u32,
}

struct Shard {
    busy: Mutex<Claimed>,
    freed: Condvar,
}

/// The set of claimed blocks, sharded by block number.
pub struct BusyBlocks {
    shards: Vec<Shard>,
}

impl std::fmt::Debug for BusyBlocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusyBlocks").finish_non_exhaustive()
    }
}

impl Default for BusyBlocks {
    fn default() -> Self {
        BusyBlocks {
            shards: (0..SHARDS)
                .map(|_| Shard {
                    busy: Mutex::new(Claimed::default()),
                    freed: Condvar::new(),
                })
                .collect(),
        }
    }
}

fn lock(m: &Mutex<Claimed>) -> MutexGuard<'_, Claimed> {
    // The set is only inserted into and removed from; a poisoned lock still holds a valid set.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl BusyBlocks {
    fn shard(&self, block: u64) -> &Shard {
        &self.shards[(block % SHARDS as u64) as usize]
    }

    /// Claim `block`, waiting while someone else holds it. Returns whether it had to wait.
    pub fn claim(&self, block: u64) -> bool {
        let s = self.shard(block);
        let mut c = lock(&s.busy);
        let mut waited = false;
        while c.blocks.contains(&block) {
            waited = true;
            c.waiters += 1;
            c = s.freed.wait(c).unwrap_or_else(PoisonError::into_inner);
            c.waiters -= 1;
        }
        c.blocks.insert(block);
        waited
    }

    /// Release a claimed block and wake whoever waits for it.
    pub fn release(&self, block: u64) {
        let s = self.shard(block);
        let mut c = lock(&s.busy);
        c.blocks.remove(&block);
        let waiters = c.waiters;
        drop(c);
        if waiters > 0 {
            s.freed.notify_all();
        }
    }
}

/// Claims held by one writer; released on drop, on every path.
pub struct Claims<'a> {
    busy: &'a BusyBlocks,
    blocks: Vec<u64>,
}

impl<'a> Claims<'a> {
    /// No claims yet.
    pub fn new(busy: &'a BusyBlocks) -> Self {
        Claims {
            busy,
            blocks: Vec::new(),
        }
    }

    /// Claim `block` (callers go in ascending order). Returns whether it had to wait.
    pub fn claim(&mut self, block: u64) -> bool {
        let waited = self.busy.claim(block);
        self.blocks.push(block);
        waited
    }
}

impl Drop for Claims<'_> {
    fn drop(&mut self) {
        for &b in &self.blocks {
            self.busy.release(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn second_claim_waits_for_release_only_on_that_block() {
        let busy = Arc::new(BusyBlocks::default());
        let mut c = Claims::new(&busy);
        assert!(!c.claim(7));
        let b2 = Arc::clone(&busy);
        let t = std::thread::spawn(move || {
            // Another block is free at once.
            assert!(!b2.claim(8));
            b2.release(8);
            b2.claim(7)
        });
        std::thread::sleep(Duration::from_millis(50));
        drop(c);
        assert!(
            t.join().unwrap(),
            "the second claim of block 7 must have waited"
        );
        busy.release(7);
    }
}
