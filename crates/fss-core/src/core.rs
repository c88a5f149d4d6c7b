//! The state a [`Volume`](crate::Volume) shares with its [`Snapshot`](crate::Snapshot)
//! handles: [`VolumeCore`]. A leaf of the engine: the write path (`volume/`), the snapshot
//! lifecycle (`volume/lifecycle.rs`) and the read path (`snapshot/`) all build on it.
//!
//! Locking: `chains` is a read-write lock held shared by every write for its whole duration,
//! by snapshot reads and change lists, and exclusively by snapshot creation and deletion
//! (the barrier), which is what makes creation atomic with respect to writes. Plain volume
//! reads take no lock: they only wait for held writes of their range. Blocks being preserved
//! are claimed in [`BusyBlocks`], per block, in ascending order.

use crate::busy::BusyBlocks;
use crate::chain::Chains;
use crate::device::BlockDevice;
use crate::error::{Error, ErrorKind, Result};
use crate::held_writes::HeldWrites;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The state shared by a [`Volume`](crate::Volume) and its [`Snapshot`](crate::Snapshot)
/// handles: the origin device, identity, length, the chains and their lock, the blocks being
/// preserved, the held writes and the counters.
pub(crate) struct VolumeCore {
    pub name: String,
    pub id: [u8; 16],
    pub dev: Arc<dyn BlockDevice>,
    pub len: u64,
    chains: RwLock<Chains>,
    pub busy: BusyBlocks,
    /// Writes acknowledged before a persistent store's group commit let them reach `dev`.
    pub held: HeldWrites,
    pub next_id: AtomicU64,
    pub counters: Counters,
}

/// The volume's counters (see [`VolumeStats`](crate::VolumeStats)).
#[derive(Default)]
pub(crate) struct Counters {
    pub reads: AtomicU64,
    pub bytes_read: AtomicU64,
    pub writes: AtomicU64,
    pub bytes_written: AtomicU64,
    pub cow_calls: AtomicU64,
    pub blocks_preserved: AtomicU64,
    pub busy_waits: AtomicU64,
}

impl VolumeCore {
    /// The state of a volume on `dev` with no snapshots.
    pub fn new(name: String, dev: Arc<dyn BlockDevice>, id: [u8; 16]) -> Self {
        VolumeCore {
            held: HeldWrites::new(Arc::clone(&dev), format!("volume '{name}'")),
            name,
            id,
            len: dev.len(),
            dev,
            chains: RwLock::new(Chains::empty()),
            busy: BusyBlocks::default(),
            next_id: AtomicU64::new(1),
            counters: Counters::default(),
        }
    }

    /// Wait until every acknowledged write has reached the device.
    pub fn settle(&self) {
        self.held.wait_all();
    }

    pub fn flush_dev(&self) -> Result<()> {
        self.dev
            .flush()
            .map_err(|e| Error::io("flush", self.object(), e))
    }

    /// The volume as named in messages.
    pub fn object(&self) -> String {
        format!("volume '{}'", self.name)
    }

    pub fn chains(&self) -> RwLockReadGuard<'_, Chains> {
        // Chains are changed only by whole assignments under the write lock.
        self.chains.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The barrier: no I/O runs while it is held, and no write is held back either.
    pub fn chains_mut(&self) -> RwLockWriteGuard<'_, Chains> {
        let guard = self.chains.write().unwrap_or_else(PoisonError::into_inner);
        // Held writes need no lock to be applied; what they depend on is already preserved.
        self.held.wait_all();
        guard
    }

    /// `OutOfRange` unless `[offset, offset + len)` lies inside the volume.
    pub fn check_range(&self, op: &'static str, object: &str, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::new(
                ErrorKind::OutOfRange,
                op,
                object,
                format!(
                    "{len} bytes at offset {offset} end past the device's {} bytes",
                    self.len
                ),
            )
            .at(offset)),
        }
    }
}
