//! Snapshots: options, state, statistics, and the public read-only handle.

use crate::cluster_map::ClusterMap;
use crate::error::{Error, ErrorKind, Result};
use crate::store::Store;
use crate::volume::Shared;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

/// What to do when a pre-image cannot be preserved (store full or failing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnStoreError {
    /// Invalidate the snapshots that needed it; the origin write goes on (the default: the
    /// origin is never sacrificed to a snapshot).
    #[default]
    Invalidate,
    /// Fail the origin write instead, keeping the snapshot valid (QEMU's
    /// `on-cbw-error=break-guest-write`).
    FailWrite,
}

/// How to create a snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    /// Cluster size; only the first snapshot of a volume may choose it. `None`: the volume's
    /// current one, or the default.
    pub cluster_size: Option<u64>,
    /// Survive restarts (needs a durable store).
    pub persistent: bool,
    /// Failure policy.
    pub on_store_error: OnStoreError,
    /// The store's maximum size.
    pub max_store_bytes: Option<u64>,
    /// Warn once when the store passes this percentage of its maximum (0 disables).
    pub low_space_percent: u8,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            cluster_size: None,
            persistent: false,
            on_store_error: OnStoreError::Invalidate,
            max_store_bytes: None,
            low_space_percent: 90,
        }
    }
}

/// Whether a snapshot can be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotState {
    /// Exact and readable.
    Valid,
    /// Lost a pre-image; reads fail with this reason.
    Invalid(String),
}

/// Counters of one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Volume writes that preserved at least one block into this snapshot's store.
    pub cow_calls: u64,
    /// Blocks preserved in this snapshot's store.
    pub blocks_preserved: u64,
    /// Clusters with a slot in this snapshot's store.
    pub clusters_preserved: u64,
    /// Times a writer waited for a block being preserved into this snapshot.
    pub busy_waits: u64,
    /// Bytes the store uses.
    pub store_bytes_used: u64,
    /// The store's maximum, if any.
    pub store_max_bytes: Option<u64>,
    /// Approximate heap bytes of the in-memory map.
    pub map_heap_bytes: u64,
}

/// A description of a snapshot at one moment.
#[derive(Debug, Clone)]
pub struct SnapshotInfo {
    /// Its name.
    pub name: String,
    /// The volume's name.
    pub volume: String,
    /// Creation order within the volume (increasing).
    pub id: u64,
    /// When it was taken.
    pub created: SystemTime,
    /// Whether it survives restarts.
    pub persistent: bool,
    /// The failure policy.
    pub on_store_error: OnStoreError,
    /// The volume's length at the instant, in bytes.
    pub len: u64,
    /// The cluster size in bytes.
    pub cluster_size: u64,
    /// Valid or invalid (with the reason).
    pub state: SnapshotState,
    /// Counters.
    pub stats: SnapshotStats,
    /// The store, described.
    pub store: String,
}

/// Chain index of persistent snapshots.
pub(crate) const PERSISTENT: usize = 0;
/// Chain index of transient snapshots.
pub(crate) const TRANSIENT: usize = 1;

/// The engine's side of a snapshot, shared by the volume and the handles.
pub(crate) struct SnapState {
    pub id: u64,
    pub name: String,
    pub created: SystemTime,
    pub chain: usize,
    pub on_store_error: OnStoreError,
    pub store: Box<dyn Store>,
    map: RwLock<ClusterMap>,
    valid: AtomicBool,
    invalid_reason: Mutex<Option<String>>,
    pub deleted: AtomicBool,
    pub cow_calls: AtomicU64,
    pub busy_waits: AtomicU64,
    low_space_percent: u8,
    low_space_warned: AtomicBool,
}

impl SnapState {
    pub fn new(
        id: u64,
        name: String,
        created: SystemTime,
        opts: &SnapshotOptions,
        store: Box<dyn Store>,
        blocks_per_cluster: u32,
    ) -> Self {
        Self::with_map(
            id,
            name,
            created,
            opts,
            store,
            ClusterMap::new(blocks_per_cluster),
        )
    }

    pub fn with_map(
        id: u64,
        name: String,
        created: SystemTime,
        opts: &SnapshotOptions,
        store: Box<dyn Store>,
        map: ClusterMap,
    ) -> Self {
        SnapState {
            id,
            name,
            created,
            chain: if opts.persistent {
                PERSISTENT
            } else {
                TRANSIENT
            },
            on_store_error: opts.on_store_error,
            store,
            map: RwLock::new(map),
            valid: AtomicBool::new(true),
            invalid_reason: Mutex::new(None),
            deleted: AtomicBool::new(false),
            cow_calls: AtomicU64::new(0),
            busy_waits: AtomicU64::new(0),
            low_space_percent: opts.low_space_percent,
            low_space_warned: AtomicBool::new(false),
        }
    }

    pub fn map(&self) -> RwLockReadGuard<'_, ClusterMap> {
        // The map is updated by whole-method calls that cannot leave it half-changed.
        self.map.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn map_mut(&self) -> RwLockWriteGuard<'_, ClusterMap> {
        self.map.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn is_valid(&self) -> bool {
        self.valid.load(Ordering::Acquire)
    }

    /// Mark invalid (once; the first reason is kept, logged, and recorded in the store so that
    /// a restart does not bring the snapshot back as valid).
    pub fn invalidate(&self, reason: &str) {
        if self.mark_invalid(reason) {
            tracing::error!(snapshot = %self.name, %reason, "snapshot invalidated");
            if let Err(e) = self.store.record_invalid(reason) {
                tracing::error!(snapshot = %self.name, error = %e,
                    "could not record the invalidation in the store");
            }
        }
    }

    /// Mark invalid without recording it; returns whether it was valid until now.
    pub fn mark_invalid(&self, reason: &str) -> bool {
        let mut r = self
            .invalid_reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let first = r.is_none();
        if first {
            *r = Some(reason.to_string());
        }
        self.valid.store(false, Ordering::Release);
        first
    }

    pub fn state(&self) -> SnapshotState {
        if self.is_valid() {
            SnapshotState::Valid
        } else {
            let r = self
                .invalid_reason
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            SnapshotState::Invalid(r.clone().unwrap_or_default())
        }
    }

    /// The error a read of an invalid snapshot gets.
    pub fn invalid_error(&self) -> Error {
        let reason = match self.state() {
            SnapshotState::Invalid(r) => r,
            SnapshotState::Valid => String::new(),
        };
        Error::new(
            ErrorKind::InvalidSnapshot,
            "read",
            format!("snapshot '{}'", self.name),
            format!(
                "the snapshot is invalid because a pre-image could not be preserved ({reason}); \
                 delete it and take a new one with a larger store"
            ),
        )
    }

    /// Warn once when the store passes its low-space threshold.
    pub fn check_low_space(&self) {
        if self.low_space_percent == 0 || self.low_space_warned.load(Ordering::Relaxed) {
            return;
        }
        if let Some(max) = self.store.max_bytes() {
            let used = self.store.used_bytes();
            if used.saturating_mul(100) >= max.saturating_mul(u64::from(self.low_space_percent))
                && !self.low_space_warned.swap(true, Ordering::Relaxed)
            {
                tracing::warn!(
                    snapshot = %self.name, used, max,
                    "snapshot store is {}% full; raise its maximum size before it fills up",
                    used * 100 / max.max(1)
                );
            }
        }
    }

    /// Re-arm the low-space warning (after the maximum was raised).
    pub fn rearm_low_space(&self) {
        self.low_space_warned.store(false, Ordering::Relaxed);
    }

    pub fn stats(&self) -> SnapshotStats {
        let map = self.map();
        SnapshotStats {
            cow_calls: self.cow_calls.load(Ordering::Relaxed),
            blocks_preserved: map.blocks(),
            clusters_preserved: map.clusters(),
            busy_waits: self.busy_waits.load(Ordering::Relaxed),
            store_bytes_used: self.store.used_bytes(),
            store_max_bytes: self.store.max_bytes(),
            map_heap_bytes: map.heap_bytes(),
        }
    }
}

/// A read-only view of a volume at one instant. Cheap to clone; reads fail with `NotFound`
/// once the snapshot is deleted.
#[derive(Clone)]
pub struct Snapshot {
    pub(crate) vol: Arc<Shared>,
    pub(crate) snap: Arc<SnapState>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("name", &self.snap.name)
            .finish_non_exhaustive()
    }
}

impl Snapshot {
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
        self.vol.read_snapshot(&self.snap, buf, offset)
    }

    /// A description with counters.
    #[must_use]
    pub fn info(&self) -> SnapshotInfo {
        self.vol.snapshot_info(&self.snap)
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
    pub fn changed(&self, offset: u64, len: u64) -> Result<Vec<crate::device::Extent>> {
        self.vol.changed_since(&self.snap, None, offset, len)
    }

    /// Which parts of `[offset, offset + len)` changed on the volume between this snapshot and
    /// the newer snapshot `newer` (of the same volume and kind), exact to 4 KiB.
    ///
    /// # Errors
    /// `InvalidArgument` if `newer` is not newer in the same chain; as [`Snapshot::changed`].
    pub fn changed_until(
        &self,
        newer: &Snapshot,
        offset: u64,
        len: u64,
    ) -> Result<Vec<crate::device::Extent>> {
        self.vol
            .changed_since(&self.snap, Some(&newer.snap), offset, len)
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
}
