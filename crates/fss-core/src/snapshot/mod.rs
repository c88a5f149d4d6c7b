//! Snapshots: the public read-only handle ([`Snapshot`]), its read path (`read.rs`) and its
//! change lists (`changes.rs`). They build on the volume's shared state
//! ([`crate::core`]) and its chains ([`crate::chain`]), not on the volume handle.

mod batch_read;
mod changes;
mod read;
mod store_reads;

pub use crate::snapshot_types::{
    OnStoreError, SnapshotInfo, SnapshotOptions, SnapshotState, SnapshotStats,
};
pub use changes::PairUse;
pub(crate) use read::StoreBlock;

use crate::chain::{ChainKind, SnapState};
use crate::core::VolumeCore;
use crate::device::Extent;
use crate::error::{Error, ErrorKind, Result};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A read-only view of a volume at one instant. Cheap to clone; reads fail with `NotFound`
/// once the snapshot is deleted.
#[derive(Clone)]
pub struct Snapshot {
    vol: Arc<VolumeCore>,
    snap: Arc<SnapState>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("name", &self.snap.name)
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    /// The handle of `snap`, a live snapshot of the volume `vol`.
    pub(crate) fn new(vol: Arc<VolumeCore>, snap: Arc<SnapState>) -> Self {
        Snapshot { vol, snap }
    }

    /// The engine's state of the snapshot.
    pub(crate) fn state(&self) -> &Arc<SnapState> {
        &self.snap
    }

    /// Its name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.snap.name
    }

    /// The identity of its volume (as [`Volume::identity`](crate::Volume::identity)).
    #[must_use]
    pub fn volume_identity(&self) -> [u8; 16] {
        self.vol.id
    }

    /// Its length in bytes (the volume's).
    #[must_use]
    pub fn len(&self) -> u64 {
        self.vol.len
    }

    /// Whether it has no bytes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.vol.len == 0
    }

    /// Read `buf` at `offset` as the volume was when the snapshot was taken.
    ///
    /// # Errors
    /// `OutOfRange`, `InvalidSnapshot` (with the cause), `NotFound` (deleted), `Io`.
    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        read::read(&self.vol, &self.snap, buf, offset)
    }

    /// Where a direct read of `buf.len()` bytes at `offset` reads ([`crate::direct_read`]):
    /// the descriptor, the offset in it, and the store block if it reads one.
    pub(crate) fn direct_read(
        &self,
        offset: u64,
        buf: &[u8],
    ) -> Option<(std::os::fd::RawFd, u64, Option<StoreBlock>)> {
        read::direct(&self.vol, &self.snap, offset, buf)
    }

    /// Complete a direct read whose bytes are in `buf` ([`crate::direct_read`]).
    pub(crate) fn finish_direct_read(
        &self,
        buf: &mut [u8],
        offset: u64,
        from: Option<&StoreBlock>,
    ) -> Result<()> {
        read::finish_direct(&self.vol, &self.snap, buf, offset, from)
    }

    /// A description with counters.
    #[must_use]
    pub fn info(&self) -> SnapshotInfo {
        let (vol, snap) = (&self.vol, &self.snap);
        let cluster_size = vol.chains().geometry.map_or(0, |g| g.cluster_size());
        SnapshotInfo {
            name: snap.name.clone(),
            volume: vol.name.clone(),
            id: snap.id,
            created: snap.created,
            persistent: snap.chain == ChainKind::Persistent,
            on_store_error: snap.on_store_error,
            len: vol.len,
            cluster_size,
            state: snap.state(),
            stats: snap.stats(),
            store: snap.store.describe(),
        }
    }

    /// Change the store's maximum size while live.
    ///
    /// # Errors
    /// `InvalidArgument` if below what is used.
    pub fn set_max_store_bytes(&self, max: Option<u64>) -> Result<()> {
        self.snap.store.set_max_bytes(max)?;
        self.snap.rearm_low_space();
        Ok(())
    }

    /// Which parts of `[offset, offset + len)` changed on the volume since this snapshot was
    /// taken, exact to 4 KiB (`data: true` marks changed extents).
    ///
    /// # Errors
    /// `OutOfRange`, `NotFound` (deleted), `InvalidSnapshot`.
    pub fn changed(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        changes::changed_since(&self.vol, &self.snap, None, offset, len)
    }

    /// Which parts of `[offset, offset + len)` changed on the volume between this snapshot and
    /// the newer snapshot `newer` (of the same volume and kind), exact to 4 KiB.
    ///
    /// # Errors
    /// `InvalidArgument` if `newer` is not newer in the same chain; as [`Snapshot::changed`].
    pub fn changed_until(&self, newer: &Snapshot, offset: u64, len: u64) -> Result<Vec<Extent>> {
        changes::changed_since(&self.vol, &self.snap, Some(&newer.snap), offset, len)
    }

    /// Reread the store and check every preserved block against its checksum.
    ///
    /// # Errors
    /// The store could not be read or is corrupt.
    pub fn verify(&self) -> Result<crate::store::VerifyReport> {
        // Pre-images of held writes are in the store but their records may not be on it yet.
        self.vol.settle();
        self.snap.store.verify()
    }

    /// Whether it is valid now.
    #[must_use]
    pub fn is_valid(&self) -> bool {
        self.snap.is_valid()
    }

    /// Mark it invalid for good, recorded in its store, with `reason` (the first reason
    /// given is kept). For callers that know more than the engine: that a pre-image it needed
    /// was lost while its store could not be reached.
    pub fn invalidate(&self, reason: &str) {
        self.snap.invalidate(reason);
    }

    /// Whether it was deleted (reads then fail with `NotFound`).
    #[must_use]
    pub fn is_deleted(&self) -> bool {
        self.snap.deleted.load(Ordering::Acquire)
    }

    /// `Ok` if it can be read now.
    ///
    /// # Errors
    /// `NotFound` (naming `op`) if it was deleted, `InvalidSnapshot` with the cause if invalid.
    pub(crate) fn check_readable(&self, op: &'static str) -> Result<()> {
        if self.is_deleted() {
            return Err(Error::new(
                ErrorKind::NotFound,
                op,
                format!("snapshot '{}'", self.name()),
                "the snapshot was deleted",
            ));
        }
        if !self.snap.is_valid() {
            return Err(self.snap.invalid_error());
        }
        Ok(())
    }

    /// Whether `other` is a snapshot of the same volume (the same live volume, not one of
    /// the same name).
    #[must_use]
    pub fn same_volume(&self, other: &Snapshot) -> bool {
        Arc::ptr_eq(&self.vol, &other.vol)
    }
}
