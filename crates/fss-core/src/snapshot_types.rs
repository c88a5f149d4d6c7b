//! The public plain data of snapshots: options, failure policy, state, counters and
//! descriptions. A leaf: the engine modules and the handle all use these.

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
