//! The snapshot chains of a volume: the engine's state of each snapshot ([`SnapState`]), the
//! two chains ([`Chains`], one per [`ChainKind`]) ordered by creation, the per-cluster fast
//! bits, and the lookups the write and read paths share.

use crate::cluster_map::{mask_is_empty, mask_remove, ClusterMap};
use crate::error::{Error, ErrorKind, Result};
use crate::geometry::{Cluster, Geometry};
use crate::snapshot_types::{OnStoreError, SnapshotOptions, SnapshotState, SnapshotStats};
use crate::store::Store;
use std::ops::{Index, IndexMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

/// Which chain a snapshot is in: persistent snapshots and transient ones form separate chains
/// (a transient store is not durable, so a persistent snapshot must not resolve through one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChainKind {
    Persistent,
    Transient,
}

impl ChainKind {
    /// Both kinds, in the order the write path serves them.
    pub const ALL: [ChainKind; 2] = [ChainKind::Persistent, ChainKind::Transient];

    /// The chain of a snapshot that is persistent or not.
    pub fn of(persistent: bool) -> Self {
        if persistent {
            ChainKind::Persistent
        } else {
            ChainKind::Transient
        }
    }

    fn index(self) -> usize {
        match self {
            ChainKind::Persistent => 0,
            ChainKind::Transient => 1,
        }
    }
}

/// One value per chain, indexed by [`ChainKind`].
#[derive(Debug, Default, Clone)]
pub(crate) struct PerChain<T>([T; 2]);

impl<T> PerChain<T> {
    pub fn new(persistent: T, transient: T) -> Self {
        PerChain([persistent, transient])
    }

    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }

    /// Each kind with its value, persistent first.
    pub fn each(&self) -> impl Iterator<Item = (ChainKind, &T)> {
        ChainKind::ALL.into_iter().zip(self.0.iter())
    }
}

impl<T> Index<ChainKind> for PerChain<T> {
    type Output = T;
    fn index(&self, c: ChainKind) -> &T {
        &self.0[c.index()]
    }
}

impl<T> IndexMut<ChainKind> for PerChain<T> {
    fn index_mut(&mut self, c: ChainKind) -> &mut T {
        &mut self.0[c.index()]
    }
}

/// One bit per volume cluster: set when a chain's target already covers every block of the
/// cluster, so rewrites skip every map lookup. Cleared when a chain gets a new target.
pub(crate) struct FastBits(Vec<AtomicU64>);

impl FastBits {
    pub fn new(clusters: u64) -> Self {
        FastBits(
            (0..clusters.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        )
    }
    pub fn get(&self, cluster: Cluster) -> bool {
        let c = cluster.key();
        self.0
            .get((c / 64) as usize)
            .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (c % 64)) != 0)
    }
    pub fn set(&self, cluster: Cluster) {
        let c = cluster.key();
        if let Some(w) = self.0.get((c / 64) as usize) {
            w.fetch_or(1 << (c % 64), Ordering::Relaxed);
        }
    }
}

/// The snapshot chains and what depends on them; `core.rs` describes the locking.
pub(crate) struct Chains {
    /// Fixed by the first live snapshot; `None` while there is none.
    pub geometry: Option<Geometry>,
    /// Each chain, oldest first.
    pub chain: PerChain<Vec<Arc<SnapState>>>,
    pub fast: PerChain<FastBits>,
}

impl Chains {
    /// No snapshots, no geometry.
    pub fn empty() -> Self {
        Chains {
            geometry: None,
            chain: PerChain::new(Vec::new(), Vec::new()),
            fast: PerChain::new(FastBits::new(0), FastBits::new(0)),
        }
    }

    /// The index of the newest valid snapshot of chain `c`: where pre-images go.
    pub fn target(&self, c: ChainKind) -> Option<usize> {
        self.chain[c].iter().rposition(|s| s.is_valid())
    }

    pub fn is_empty(&self) -> bool {
        self.chain.iter().all(Vec::is_empty)
    }

    /// Every live snapshot, persistent chain first.
    pub fn all(&self) -> impl Iterator<Item = &Arc<SnapState>> {
        self.chain.iter().flatten()
    }

    /// The chain and index of the snapshot named `name`.
    pub fn find(&self, name: &str) -> Option<(ChainKind, usize)> {
        ChainKind::ALL.into_iter().find_map(|c| {
            self.chain[c]
                .iter()
                .position(|s| s.name == name)
                .map(|j| (c, j))
        })
    }

    /// The geometry, and the index of `snap` in its chain.
    ///
    /// # Errors
    /// `NotFound` if the snapshot was deleted.
    pub fn live(
        &self,
        snap: &Arc<SnapState>,
        op: &'static str,
        object: &str,
    ) -> Result<(Geometry, usize)> {
        let idx = self.chain[snap.chain]
            .iter()
            .position(|s| Arc::ptr_eq(s, snap));
        match (self.geometry, idx) {
            (Some(g), Some(idx)) => Ok((g, idx)),
            _ => Err(Error::new(
                ErrorKind::NotFound,
                op,
                object,
                "the snapshot was deleted",
            )),
        }
    }
}

/// The blocks of `cluster` not covered by the maps of `snaps` (a chain from its target to its
/// newest), limited to `within`.
pub(crate) fn uncovered(snaps: &[Arc<SnapState>], cluster: Cluster, within: &[u16]) -> Vec<u16> {
    let mut m = within.to_vec();
    for s in snaps {
        if let Some((_, have)) = s.map().get(cluster.key()) {
            mask_remove(&mut m, have);
            if mask_is_empty(&m) {
                break;
            }
        }
    }
    m
}

/// The snapshots of `older` (a chain's snapshots older than one that holds `blocks` of
/// `cluster`, oldest first) that resolve some of those blocks to it, newest first: the ones
/// that lose them if it does. `each` is called with each, in that order.
pub(crate) fn losing_blocks<'a>(
    older: &'a [Arc<SnapState>],
    cluster: Cluster,
    blocks: &[u16],
    mut each: impl FnMut(&'a Arc<SnapState>),
) {
    let mut lost = blocks.to_vec();
    for s in older.iter().rev() {
        if let Some((_, have)) = s.map().get(cluster.key()) {
            mask_remove(&mut lost, have);
        }
        if mask_is_empty(&lost) {
            break;
        }
        each(s);
    }
}

/// The engine's side of a snapshot, shared by the volume and the handles.
pub(crate) struct SnapState {
    pub id: u64,
    pub name: String,
    /// `snapshot 'NAME'`: the object of this snapshot's errors, made once rather than on
    /// every read.
    pub label: String,
    pub created: SystemTime,
    pub chain: ChainKind,
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
    /// A new snapshot with an empty map.
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

    /// A snapshot with the map `map` (brought back from its store).
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
            label: format!("snapshot '{name}'"),
            name,
            created,
            chain: ChainKind::of(opts.persistent),
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

    /// The slots of `clusters`, in order, allocating those not mapped yet under one hold of
    /// the map: a request's new clusters get consecutive slots, which the store can write
    /// with one I/O, where clusters allocated one at a time interleave with other writers'.
    /// When an allocation fails, the slots of the clusters before it and the error.
    pub fn slots_for(&self, clusters: &[Cluster]) -> (Vec<u32>, Result<()>) {
        let mut map = self.map_mut();
        let mut out = Vec::with_capacity(clusters.len());
        for &cluster in clusters {
            match self.slot_in(&mut map, cluster) {
                Ok(s) => out.push(s),
                Err(e) => return (out, Err(e)),
            }
        }
        (out, Ok(()))
    }

    /// The store slot of `cluster`, allocated (and mapped) if the cluster has none yet.
    pub fn slot_for(&self, cluster: Cluster) -> Result<u32> {
        self.slot_in(&mut self.map_mut(), cluster)
    }

    /// The slot of `cluster` in `map` (this snapshot's, held by the caller), allocated and
    /// mapped if it has none yet.
    fn slot_in(&self, map: &mut ClusterMap, cluster: Cluster) -> Result<u32> {
        let key = cluster.key();
        if let Some(s) = map.slot(key) {
            return Ok(s);
        }
        let s = self.store.allocate_slot(key)?;
        map.insert_slot(key, s);
        Ok(s)
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
            self.label.clone(),
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
