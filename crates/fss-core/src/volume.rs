//! The volume: the origin device and its live snapshots, and the copy-on-write write path.
//!
//! Snapshots form two chains (persistent and transient), each ordered by creation. A first
//! overwrite of a block after the newest valid snapshot of a chain stores its pre-image once,
//! in that snapshot's store (the chain rule, DESIGN decision 1), at 4 KiB granularity inside
//! cluster-sized slots (decision 2). A snapshot read resolves each block through the maps of
//! its chain from itself to the newest, then the volume, then checks again (decision 5).
//!
//! Locking: `chains` is a read-write lock held shared by every read and write for its whole
//! duration, and exclusively by snapshot creation and deletion, which is what makes creation
//! atomic with respect to writes. Blocks being preserved are claimed in [`BusyBlocks`], per
//! block, in ascending order.

use crate::busy::{BusyBlocks, Claims};
use crate::cluster_map::ClusterMap;
use crate::cluster_map::{
    mask_add, mask_is_empty, mask_keep, mask_range, mask_remove, mask_runs, mask_words,
};
use crate::device::{push_extent, BlockDevice, Extent};
use crate::error::{Error, ErrorKind, Result};
use crate::geometry::{block_span, Geometry, BLOCK_SIZE};
use crate::held_writes::{Held, HeldChange, HeldWrites, StoreSync, MAX_HELD_LEN};
use crate::snapshot::{
    OnStoreError, SnapState, Snapshot, SnapshotInfo, SnapshotOptions, PERSISTENT, TRANSIENT,
};
use crate::store::{Recovered, Store, StoreParams};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

/// The most bytes one step of a write, discard or zeroing preserves and applies at once.
const MAX_PIECE: u64 = MAX_HELD_LEN;

/// Snapshot reads at least this long that need both the volume and a store read the two
/// in parallel (below it, a thread hand-off costs more than the overlap saves).
const PARALLEL_SNAPSHOT_READ: u64 = 256 << 10;

/// Counters of one volume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeStats {
    /// Read requests.
    pub reads: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Write, discard and write-zeroes requests.
    pub writes: u64,
    /// Bytes written, discarded or zeroed.
    pub bytes_written: u64,
    /// Requests that had to preserve at least one block.
    pub cow_calls: u64,
    /// Pre-image blocks written to stores (one per chain that needed it).
    pub blocks_preserved: u64,
    /// Times a writer waited for a block someone else was preserving.
    pub busy_waits: u64,
    /// Live snapshots.
    pub snapshots: u64,
}

/// One bit per volume cluster: set when a chain's target already covers every block of the
/// cluster, so rewrites skip every map lookup. Cleared when a chain gets a new target.
struct FastBits(Vec<AtomicU64>);

impl FastBits {
    fn new(clusters: u64) -> Self {
        FastBits(
            (0..clusters.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        )
    }
    fn get(&self, cluster: u64) -> bool {
        self.0
            .get((cluster / 64) as usize)
            .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (cluster % 64)) != 0)
    }
    fn set(&self, cluster: u64) {
        if let Some(w) = self.0.get((cluster / 64) as usize) {
            w.fetch_or(1 << (cluster % 64), Ordering::Relaxed);
        }
    }
}

/// The snapshot chains and what depends on them; see the module doc for the locking.
struct Chains {
    geometry: Option<Geometry>,
    chain: [Vec<Arc<SnapState>>; 2],
    fast: [FastBits; 2],
}

impl Chains {
    /// The index of the newest valid snapshot of chain `c`: where pre-images go.
    fn target(&self, c: usize) -> Option<usize> {
        self.chain[c].iter().rposition(|s| s.is_valid())
    }

    fn is_empty(&self) -> bool {
        self.chain.iter().all(Vec::is_empty)
    }
}

/// The state shared by a [`Volume`] and its [`Snapshot`] handles.
pub(crate) struct Shared {
    name: String,
    pub(crate) id: [u8; 16],
    dev: Arc<dyn BlockDevice>,
    pub(crate) len: u64,
    chains: RwLock<Chains>,
    busy: BusyBlocks,
    /// Writes acknowledged before a persistent store's group commit let them reach `dev`.
    held: HeldWrites,
    next_id: AtomicU64,
    reads: AtomicU64,
    bytes_read: AtomicU64,
    writes: AtomicU64,
    bytes_written: AtomicU64,
    cow_calls: AtomicU64,
    blocks_preserved: AtomicU64,
    busy_waits: AtomicU64,
}

/// An origin device served read-write, with its live snapshots.
#[derive(Clone)]
pub struct Volume {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

/// A change to the origin that needs pre-images first.
#[derive(Clone, Copy)]
enum Change<'a> {
    Write(&'a [u8]),
    Discard,
    Zeroes,
}

/// What one request must preserve in one cluster, per chain.
struct ClusterPlan {
    cluster: u64,
    need: [Vec<u16>; 2],
}

/// Pre-images read from the volume: runs of whole blocks, zero-padded past its end.
struct PreImages(Vec<(u64, Vec<u8>)>);

impl PreImages {
    /// The bytes of blocks `[first, first + count)`, which lie inside one run.
    fn blocks(&self, first: u64, count: u64) -> &[u8] {
        let i = self
            .0
            .partition_point(|(f, _)| *f <= first)
            .saturating_sub(1);
        let (f, data) = &self.0[i];
        let start = ((first - f) * BLOCK_SIZE) as usize;
        &data[start..start + (count * BLOCK_SIZE) as usize]
    }
}

/// A snapshot made but not yet live: its geometry, store and parameters.
struct Prepared {
    /// The new chain's fast bits, made (and their pages touched) outside the barrier.
    fast: FastBits,
    name: String,
    opts: SnapshotOptions,
    geometry: Geometry,
    params: StoreParams,
    store: Box<dyn Store>,
}

/// What [`Shared::preserve`] leaves the origin write: the claims on the blocks it preserved,
/// and the persistent stores that must be durable before the write reaches the device.
type Preserved<'a> = (Option<Claims<'a>>, Vec<StoreSync>);

/// A failure to preserve into chain `chain`, and the snapshots it would invalidate.
struct Failure {
    error: Error,
    affected: Vec<Arc<SnapState>>,
}

impl Volume {
    /// Serve `dev` as the volume `name`, with no snapshots and a zero identity.
    pub fn new(name: impl Into<String>, dev: Arc<dyn BlockDevice>) -> Self {
        Self::with_identity(name, dev, [0; 16])
    }

    /// Serve `dev` as the volume `name` with identity `id`, which durable stores record and
    /// check when they are reopened.
    pub fn with_identity(name: impl Into<String>, dev: Arc<dyn BlockDevice>, id: [u8; 16]) -> Self {
        let len = dev.len();
        let name = name.into();
        Volume {
            shared: Arc::new(Shared {
                held: HeldWrites::new(Arc::clone(&dev), format!("volume '{name}'")),
                name,
                id,
                dev,
                len,
                chains: RwLock::new(Chains {
                    geometry: None,
                    chain: [Vec::new(), Vec::new()],
                    fast: [FastBits::new(0), FastBits::new(0)],
                }),
                busy: BusyBlocks::default(),
                next_id: AtomicU64::new(1),
                reads: AtomicU64::new(0),
                bytes_read: AtomicU64::new(0),
                writes: AtomicU64::new(0),
                bytes_written: AtomicU64::new(0),
                cow_calls: AtomicU64::new(0),
                blocks_preserved: AtomicU64::new(0),
                busy_waits: AtomicU64::new(0),
            }),
        }
    }

    /// The volume's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The volume's length in bytes.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.shared.len
    }

    /// Whether the volume has no bytes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.shared.len == 0
    }

    /// The cluster size fixed by the live snapshots, if there are any.
    #[must_use]
    pub fn cluster_size(&self) -> Option<u64> {
        self.shared.chains().geometry.map(|g| g.cluster_size())
    }

    /// Read the volume's current contents.
    ///
    /// # Errors
    /// `OutOfRange`, `Io`.
    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let s = &self.shared;
        s.check_range("read", &s.object(), offset, buf.len() as u64)?;
        s.reads.fetch_add(1, Ordering::Relaxed);
        s.bytes_read.fetch_add(buf.len() as u64, Ordering::Relaxed);
        s.held.wait_clear(offset, buf.len() as u64);
        s.dev
            .read_at(buf, offset)
            .map_err(|e| Error::io("read", s.object(), e).at(offset))
    }

    /// Write `buf` at `offset`, preserving pre-images first. Returns once the pre-images that
    /// protect the snapshots are in their stores. A write that put pre-images into a
    /// persistent store reaches the device only once they are durable (the store's next group
    /// commit, moments later); until then reads of its range wait for it, and
    /// [`Volume::flush`] waits for it, as a disk's volatile write cache behaves.
    ///
    /// # Errors
    /// `OutOfRange`, `Io`/`NoSpace` from the volume, or the store error when a snapshot with
    /// `fail-write` could not be protected (the volume is then unchanged).
    pub fn write(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.shared
            .modify(offset, buf.len() as u64, Change::Write(buf))
    }

    /// Discard (TRIM) a range: it reads as zeroes afterwards on files and memory.
    ///
    /// # Errors
    /// As [`Volume::write`].
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.shared.modify(offset, len, Change::Discard)
    }

    /// Make a range read as zeroes.
    ///
    /// # Errors
    /// As [`Volume::write`].
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.shared.modify(offset, len, Change::Zeroes)
    }

    /// Make every completed write durable, with the pre-images and records that protect the
    /// snapshots from it.
    ///
    /// # Errors
    /// `Io` from the volume, or from applying a write acknowledged earlier.
    pub fn flush(&self) -> Result<()> {
        let s = &self.shared;
        s.held.wait_all();
        if let Some(e) = s.held.take_error() {
            return Err(e);
        }
        s.dev.flush().map_err(|e| Error::io("flush", s.object(), e))
    }

    /// Wait until every acknowledged write has reached the device (held writes applied),
    /// without flushing it.
    pub fn settle(&self) {
        self.shared.settle();
    }

    /// Take a snapshot named `name`. `make_store` builds its store once the cluster size is
    /// known; it runs before the short barrier in which the snapshot becomes live, so slow
    /// store creation does not stall I/O.
    ///
    /// # Errors
    /// `Exists`, `InvalidArgument` (cluster size), or the store factory's error.
    pub fn create_snapshot(
        &self,
        name: &str,
        opts: &SnapshotOptions,
        make_store: impl FnOnce(&StoreParams) -> Result<Box<dyn Store>>,
    ) -> Result<Snapshot> {
        let s = &self.shared;
        let p = s.prepare(name, opts, make_store)?;
        // A persistent snapshot must survive a power cut whole: the writes acknowledged before
        // it must be durable on the volume too, or blocks read through from the volume would
        // lose them while preserved ones keep them. Flush once before the barrier (the bulk)
        // and once inside it (what came in between).
        if opts.persistent {
            s.flush_dev()?;
        }
        let mut chains = s.chains_mut();
        let checked = (|| {
            if opts.persistent {
                s.flush_dev()?;
            }
            s.check_prepared(&chains, &p)
        })();
        if let Err(e) = checked {
            drop(chains);
            let _ = p.store.destroy();
            return Err(e);
        }
        let (snap, old) = s.commit_prepared(&mut chains, p);
        // Freed after the barrier: a large bitmap's release is not free either.
        drop(chains);
        drop(old);
        Ok(snap)
    }

    /// Take snapshots of several volumes at one instant: every volume's barrier is held while
    /// all of them are made, so a write to any of them is in all the snapshots or in none.
    /// Either every snapshot is made or none is.
    ///
    /// # Errors
    /// `InvalidArgument` if a volume appears twice, else as [`Volume::create_snapshot`].
    pub fn create_snapshot_group(
        members: &[(&Volume, &str, &SnapshotOptions)],
        mut make_store: impl FnMut(&StoreParams) -> Result<Box<dyn Store>>,
    ) -> Result<Vec<Snapshot>> {
        for (i, (v, name, _)) in members.iter().enumerate() {
            if members[..i]
                .iter()
                .any(|(o, _, _)| Arc::ptr_eq(&o.shared, &v.shared))
            {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    "create snapshot group",
                    format!("'{name}'"),
                    format!(
                        "volume '{}' appears twice; one snapshot per volume",
                        v.name()
                    ),
                ));
            }
        }
        let mut prepared = Vec::with_capacity(members.len());
        let destroy = |ps: &[Prepared]| {
            for p in ps {
                let _ = p.store.destroy();
            }
        };
        for (v, name, opts) in members {
            match v.shared.prepare(name, opts, &mut make_store) {
                Ok(p) => prepared.push(p),
                Err(e) => {
                    destroy(&prepared);
                    return Err(e);
                }
            }
        }
        let flush_all = || -> Result<()> {
            for (v, _, opts) in members {
                if opts.persistent {
                    v.shared.flush_dev()?;
                }
            }
            Ok(())
        };
        if let Err(e) = flush_all() {
            destroy(&prepared);
            return Err(e);
        }
        // Barriers in a fixed order (by address), so two groups cannot deadlock.
        let mut order: Vec<usize> = (0..members.len()).collect();
        order.sort_by_key(|&i| Arc::as_ptr(&members[i].0.shared) as usize);
        let mut guards: Vec<Option<RwLockWriteGuard<'_, Chains>>> =
            (0..members.len()).map(|_| None).collect();
        for &i in &order {
            guards[i] = Some(members[i].0.shared.chains_mut());
        }
        let checked = flush_all().and_then(|()| {
            for (i, p) in prepared.iter().enumerate() {
                if let Some(g) = &guards[i] {
                    members[i].0.shared.check_prepared(g, p)?;
                }
            }
            Ok(())
        });
        if let Err(e) = checked {
            drop(guards);
            destroy(&prepared);
            return Err(e);
        }
        let mut out = Vec::with_capacity(members.len());
        let mut old = Vec::with_capacity(members.len());
        for (i, p) in prepared.into_iter().enumerate() {
            if let Some(g) = guards[i].as_mut() {
                let (snap, bits) = members[i].0.shared.commit_prepared(g, p);
                out.push(snap);
                old.push(bits);
            }
        }
        drop(guards);
        drop(old);
        Ok(out)
    }

    /// Which parts of a range hold data on the volume's device (holes read as zeroes).
    ///
    /// # Errors
    /// `OutOfRange`, `Io`.
    pub fn allocation(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let s = &self.shared;
        s.check_range("map", &s.object(), offset, len)?;
        s.held.wait_clear(offset, len);
        s.dev
            .allocation(offset, len)
            .map_err(|e| Error::io("map", s.object(), e).at(offset))
    }

    /// The volume's identity.
    #[must_use]
    pub fn identity(&self) -> [u8; 16] {
        self.shared.id
    }

    /// Bring back a persistent snapshot from its reopened store (after a restart). Snapshots of
    /// a chain must be attached oldest first, before the volume serves I/O.
    ///
    /// # Errors
    /// `Exists`, `InvalidArgument` (cluster size differs from the other snapshots', or not in
    /// creation order), `CorruptStore` (an entry outside the volume).
    pub fn attach_snapshot(
        &self,
        opts: &SnapshotOptions,
        store: Box<dyn Store>,
        recovered: Recovered,
    ) -> Result<Snapshot> {
        let s = &self.shared;
        let name = recovered.name.clone();
        let object = format!("snapshot '{name}'");
        let geometry = Geometry::new(s.len, Some(recovered.cluster_size))?;
        if geometry.cluster_size() != recovered.cluster_size {
            return Err(Error::new(
                ErrorKind::CorruptStore,
                "attach",
                object,
                "the store's cluster size is too small for this volume",
            ));
        }
        let bpc = geometry.blocks_per_cluster();
        let words = mask_words(bpc);
        let mut map = ClusterMap::new(bpc);
        for e in &recovered.entries {
            if u64::from(e.cluster) >= geometry.cluster_count() || e.mask.len() != words {
                return Err(Error::new(
                    ErrorKind::CorruptStore,
                    "attach",
                    object,
                    format!("the store maps cluster {} outside the volume", e.cluster),
                ));
            }
            map.insert_slot(e.cluster, e.slot);
            map.add_blocks(e.cluster, &e.mask);
        }
        let mut chains = s.chains_mut();
        if chains.chain.iter().flatten().any(|x| x.name == name) {
            return Err(exists(&name));
        }
        if let Some(g) = chains.geometry {
            if g != geometry {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    "attach",
                    object,
                    format!(
                        "its cluster size {} differs from the volume's other snapshots' {}",
                        geometry.cluster_size(),
                        g.cluster_size()
                    ),
                ));
            }
        }
        let c = if opts.persistent {
            PERSISTENT
        } else {
            TRANSIENT
        };
        if chains.chain[c]
            .last()
            .is_some_and(|x| x.id >= recovered.snapshot_id)
        {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "attach",
                object,
                "snapshots must be attached oldest first",
            ));
        }
        chains.geometry = Some(geometry);
        let snap = Arc::new(SnapState::with_map(
            recovered.snapshot_id,
            name,
            recovered.created,
            opts,
            store,
            map,
        ));
        if let Some(reason) = &recovered.invalid {
            snap.mark_invalid(reason);
        }
        s.next_id
            .fetch_max(recovered.snapshot_id + 1, Ordering::Relaxed);
        chains.chain[c].push(Arc::clone(&snap));
        chains.fast[c] = FastBits::new(geometry.cluster_count());
        Ok(Snapshot {
            vol: Arc::clone(s),
            snap,
        })
    }

    /// The live snapshot named `name`.
    #[must_use]
    pub fn snapshot(&self, name: &str) -> Option<Snapshot> {
        let chains = self.shared.chains();
        let snap = chains.chain.iter().flatten().find(|x| x.name == name)?;
        Some(Snapshot {
            vol: Arc::clone(&self.shared),
            snap: Arc::clone(snap),
        })
    }

    /// Every live snapshot, oldest first.
    #[must_use]
    pub fn snapshots(&self) -> Vec<Snapshot> {
        let chains = self.shared.chains();
        let mut v: Vec<Snapshot> = chains
            .chain
            .iter()
            .flatten()
            .map(|snap| Snapshot {
                vol: Arc::clone(&self.shared),
                snap: Arc::clone(snap),
            })
            .collect();
        v.sort_by_key(|x| x.snap.id);
        v
    }

    /// Delete the snapshot `name`, keeping every other snapshot exact: the entries that the
    /// next older snapshot of its chain lacks move into that one's store first.
    ///
    /// # Errors
    /// `NotFound`. A failure to move entries invalidates the snapshots that needed them (the
    /// failure policy) rather than failing the delete.
    pub fn delete_snapshot(&self, name: &str) -> Result<()> {
        self.shared.delete_snapshot(name)
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> VolumeStats {
        let s = &self.shared;
        let snapshots = s.chains().chain.iter().map(|c| c.len() as u64).sum();
        VolumeStats {
            reads: s.reads.load(Ordering::Relaxed),
            bytes_read: s.bytes_read.load(Ordering::Relaxed),
            writes: s.writes.load(Ordering::Relaxed),
            bytes_written: s.bytes_written.load(Ordering::Relaxed),
            cow_calls: s.cow_calls.load(Ordering::Relaxed),
            blocks_preserved: s.blocks_preserved.load(Ordering::Relaxed),
            busy_waits: s.busy_waits.load(Ordering::Relaxed),
            snapshots,
        }
    }
}

fn exists(name: &str) -> Error {
    Error::new(
        ErrorKind::Exists,
        "create snapshot",
        format!("'{name}'"),
        "a snapshot of that name already exists on this volume; choose another name",
    )
}

impl Shared {
    /// See [`Volume::settle`].
    pub(crate) fn settle(&self) {
        self.held.wait_all();
    }

    fn flush_dev(&self) -> Result<()> {
        self.dev
            .flush()
            .map_err(|e| Error::io("flush", self.object(), e))
    }

    /// Choose the geometry and make the store of a new snapshot, outside any barrier.
    fn prepare(
        &self,
        name: &str,
        opts: &SnapshotOptions,
        make_store: impl FnOnce(&StoreParams) -> Result<Box<dyn Store>>,
    ) -> Result<Prepared> {
        let geometry = self.geometry_for(name, opts.cluster_size)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let params = StoreParams {
            snapshot: name.to_string(),
            volume: self.name.clone(),
            volume_len: self.len,
            cluster_size: geometry.cluster_size(),
            persistent: opts.persistent,
            max_bytes: opts.max_store_bytes,
            volume_id: self.id,
            snapshot_id: id,
            created: SystemTime::now(),
        };
        let store = make_store(&params)?;
        if store.is_persistent() != opts.persistent {
            let _ = store.destroy();
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "create snapshot",
                format!("'{name}'"),
                "the store's durability does not match the snapshot's (persistent or transient)",
            ));
        }
        Ok(Prepared {
            fast: FastBits::new(geometry.cluster_count()),
            name: name.to_string(),
            opts: opts.clone(),
            geometry,
            params,
            store,
        })
    }

    /// Under the barrier: the name is still free and the geometry still the volume's.
    fn check_prepared(&self, chains: &Chains, p: &Prepared) -> Result<()> {
        if chains.chain.iter().flatten().any(|x| x.name == p.name) {
            return Err(exists(&p.name));
        }
        match chains.geometry {
            Some(g) if g != p.geometry => Err(Error::new(
                ErrorKind::Busy,
                "create snapshot",
                format!("'{}'", p.name),
                "another snapshot changed the volume's cluster size meanwhile; try again",
            )),
            _ => Ok(()),
        }
    }

    /// Under the barrier: make the snapshot live.
    /// Make `p` live; returns it and the chain's previous fast bits, to be freed by the
    /// caller once the barrier is released.
    fn commit_prepared(self: &Arc<Self>, chains: &mut Chains, p: Prepared) -> (Snapshot, FastBits) {
        chains.geometry = Some(p.geometry);
        let snap = Arc::new(SnapState::new(
            p.params.snapshot_id,
            p.name.clone(),
            p.params.created,
            &p.opts,
            p.store,
            p.geometry.blocks_per_cluster(),
        ));
        let c = snap.chain;
        chains.chain[c].push(Arc::clone(&snap));
        let old = std::mem::replace(&mut chains.fast[c], p.fast);
        tracing::info!(volume = %self.name, snapshot = %p.name, persistent = p.opts.persistent,
            cluster_size = p.geometry.cluster_size(), "snapshot created");
        let snap = Snapshot {
            vol: Arc::clone(self),
            snap,
        };
        (snap, old)
    }

    fn object(&self) -> String {
        format!("volume '{}'", self.name)
    }

    fn chains(&self) -> RwLockReadGuard<'_, Chains> {
        // Chains are changed only by whole assignments under the write lock.
        self.chains.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The barrier: no I/O runs while it is held, and no write is held back either.
    fn chains_mut(&self) -> RwLockWriteGuard<'_, Chains> {
        let guard = self.chains.write().unwrap_or_else(PoisonError::into_inner);
        // Held writes need no lock to be applied; what they depend on is already preserved.
        self.held.wait_all();
        guard
    }

    fn check_range(&self, op: &'static str, object: &str, offset: u64, len: u64) -> Result<()> {
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

    /// The geometry a new snapshot `name` gets with the requested cluster size.
    fn geometry_for(&self, name: &str, requested: Option<u64>) -> Result<Geometry> {
        let chains = self.chains();
        if chains.chain.iter().flatten().any(|x| x.name == name) {
            return Err(exists(name));
        }
        match chains.geometry {
            Some(g) => match requested {
                Some(r) if r != g.cluster_size() => Err(Error::new(
                    ErrorKind::InvalidArgument,
                    "create snapshot",
                    format!("'{name}'"),
                    format!(
                        "volume '{}' has live snapshots with {} byte clusters; the cluster size \
                         can only be chosen for its first snapshot (omit it or use {})",
                        self.name,
                        g.cluster_size(),
                        g.cluster_size()
                    ),
                )),
                _ => Ok(g),
            },
            None => Geometry::new(self.len, requested),
        }
    }

    fn modify(&self, offset: u64, len: u64, change: Change<'_>) -> Result<()> {
        let op = match change {
            Change::Write(_) => "write",
            Change::Discard => "discard",
            Change::Zeroes => "write zeroes to",
        };
        self.check_range(op, &self.object(), offset, len)?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        if len == 0 {
            return Ok(());
        }
        // Held until the origin write is done: a snapshot is either wholly before or after it.
        let chains = self.chains();
        // Large discards and zeroings go in pieces, so pre-images in memory stay bounded.
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let n = (end - pos).min(MAX_PIECE);
            let (claims, syncs) = match chains.geometry {
                Some(g) => self.preserve(&chains, g, pos, n)?,
                None => (None, Vec::new()),
            };
            let at = (pos - offset) as usize;
            if syncs.is_empty() {
                // Behind any held write of the same blocks, which the client sent earlier.
                self.held.wait_clear(pos, n);
                let r = match change {
                    // Over pre-images just read through the page cache: overwrite them there.
                    Change::Write(buf) if claims.is_some() => {
                        self.dev.write_at_cached(&buf[at..at + n as usize], pos)
                    }
                    Change::Write(buf) => self.dev.write_at(&buf[at..at + n as usize], pos),
                    Change::Discard => self.dev.discard(pos, n),
                    Change::Zeroes => self.dev.write_zeroes(pos, n),
                };
                r.map_err(|e| Error::io(op, self.object(), e).at(pos))?;
            } else {
                // Held while the claims are: a later writer of these blocks finds it held.
                self.held.hold(Held {
                    offset: pos,
                    len: n,
                    change: match change {
                        Change::Write(buf) => HeldChange::Write(buf[at..at + n as usize].to_vec()),
                        Change::Discard => HeldChange::Discard,
                        Change::Zeroes => HeldChange::Zeroes,
                    },
                    syncs,
                });
            }
            drop(claims);
            pos += n;
        }
        drop(chains);
        self.bytes_written.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// The blocks of `cluster` not covered by the maps of `snaps` (a chain from its target to
    /// its newest), limited to `within`.
    fn uncovered(snaps: &[Arc<SnapState>], cluster: u64, within: &[u16]) -> Vec<u16> {
        let mut m = within.to_vec();
        let cl = cluster as u32;
        for s in snaps {
            if let Some((_, have)) = s.map().get(cl) {
                mask_remove(&mut m, have);
                if mask_is_empty(&m) {
                    break;
                }
            }
        }
        m
    }

    /// The blocks of `cluster` inside the volume and inside blocks `[b0, b1)`, as masks:
    /// (whole cluster, the part in range).
    fn cluster_masks(g: &Geometry, cluster: u64, b0: u64, b1: u64) -> (Vec<u16>, Vec<u16>) {
        let words = mask_words(g.blocks_per_cluster());
        let first = g.first_block(cluster);
        let end = (first + u64::from(g.blocks_per_cluster())).min(g.block_count());
        let full = mask_range(words, 0, (end - first) as u32);
        let from = b0.max(first) - first;
        let to = b1.min(end) - first;
        (full, mask_range(words, from as u32, to as u32))
    }

    /// Preserve, in each chain's target, every block of the range it does not cover yet.
    /// Returns the claims on the preserved blocks (to be dropped once the origin write is
    /// done or held) and the persistent stores that must be durable before it reaches the
    /// device.
    fn preserve(
        &self,
        chains: &Chains,
        g: Geometry,
        offset: u64,
        len: u64,
    ) -> Result<Preserved<'_>> {
        let targets = [chains.target(PERSISTENT), chains.target(TRANSIENT)];
        if targets.iter().all(Option::is_none) {
            return Ok((None, Vec::new()));
        }
        let (b0, b1) = block_span(offset, len);
        let mut plan = Vec::new();
        for cluster in g.cluster_of_block(b0)..=g.cluster_of_block(b1 - 1) {
            let mut need: [Vec<u16>; 2] = [Vec::new(), Vec::new()];
            let mut any = false;
            for c in 0..2 {
                let Some(t) = targets[c] else { continue };
                if chains.fast[c].get(cluster) {
                    continue;
                }
                let (full, in_range) = Self::cluster_masks(&g, cluster, b0, b1);
                let mut open = Self::uncovered(&chains.chain[c][t..], cluster, &full);
                if mask_is_empty(&open) {
                    chains.fast[c].set(cluster);
                    continue;
                }
                mask_keep(&mut open, &in_range);
                if !mask_is_empty(&open) {
                    any = true;
                    need[c] = open;
                }
            }
            if any {
                plan.push(ClusterPlan { cluster, need });
            }
        }
        if plan.is_empty() {
            return Ok((None, Vec::new()));
        }

        // Claim every candidate block in ascending order, then look again (always: someone may
        // have preserved a block, and then overwritten it on the volume, between our look and
        // our claim, even if we did not have to wait).
        let mut claims = Claims::new(&self.busy);
        let mut waits = 0u64;
        for p in &mut plan {
            let first = g.first_block(p.cluster);
            for (s, n) in union_runs(&p.need) {
                for i in s..s + n {
                    if claims.claim(first + u64::from(i)) {
                        waits += 1;
                    }
                }
            }
            for (c, t) in targets.iter().enumerate() {
                if let (Some(t), false) = (t, p.need[c].is_empty()) {
                    p.need[c] = Self::uncovered(&chains.chain[c][*t..], p.cluster, &p.need[c]);
                }
            }
        }
        if waits > 0 {
            self.busy_waits.fetch_add(waits, Ordering::Relaxed);
            for (c, t) in targets.iter().enumerate() {
                if let Some(t) = t {
                    chains.chain[c][*t]
                        .busy_waits
                        .fetch_add(waits, Ordering::Relaxed);
                }
            }
        }
        plan.retain(|p| p.need.iter().any(|m| !mask_is_empty(m)));
        if plan.is_empty() {
            return Ok((Some(claims), Vec::new()));
        }

        // A held write of these blocks (sent earlier) holds the bytes they must keep.
        self.held.wait_clear(offset, len);
        let pre = self.read_pre_images(&g, &plan)?;
        let mut failures = Vec::new();
        let mut syncs = Vec::new();
        for (c, t) in targets.iter().enumerate() {
            let Some(t) = *t else { continue };
            match self.preserve_chain(chains, c, t, &g, &plan, &pre) {
                Ok(Some(sync)) => syncs.push(sync),
                Ok(None) => {}
                Err(f) => failures.push(f),
            }
        }
        if failures.is_empty() {
            self.cow_calls.fetch_add(1, Ordering::Relaxed);
            return Ok((Some(claims), syncs));
        }
        // With fail-write on any snapshot that would lose a pre-image, the origin write is
        // refused and nobody is invalidated; otherwise the affected snapshots are invalidated
        // before the origin changes, and the write goes on.
        if let Some(f) = failures.iter().find(|f| {
            f.affected
                .iter()
                .any(|s| s.on_store_error == OnStoreError::FailWrite)
        }) {
            return Err(Error::new(
                f.error.kind(),
                "write",
                self.object(),
                format!(
                    "a pre-image could not be preserved and a snapshot is set to fail writes \
                     then ({}); the volume is unchanged",
                    f.error
                ),
            )
            .at(offset));
        }
        for f in failures {
            for s in &f.affected {
                s.invalidate(&f.error.to_string());
            }
        }
        Ok((Some(claims), syncs))
    }

    /// Read the pre-images of every block any chain needs, in maximal runs.
    fn read_pre_images(&self, g: &Geometry, plan: &[ClusterPlan]) -> Result<PreImages> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for p in plan {
            let first = g.first_block(p.cluster);
            for (s, n) in union_runs(&p.need) {
                let b = first + u64::from(s);
                match runs.last_mut() {
                    Some((f, len)) if *f + *len == b => *len += u64::from(n),
                    _ => runs.push((b, u64::from(n))),
                }
            }
        }
        let mut out = Vec::with_capacity(runs.len());
        for (f, n) in runs {
            let mut data = vec![0u8; (n * BLOCK_SIZE) as usize];
            let start = f * BLOCK_SIZE;
            let end = ((f + n) * BLOCK_SIZE).min(self.len);
            self.dev
                .read_at_cached(&mut data[..(end - start) as usize], start)
                .map_err(|e| Error::io("read pre-image from", self.object(), e).at(start))?;
            out.push((f, data));
        }
        Ok(PreImages(out))
    }

    /// Store the blocks chain `c` needs in its target `t` and map them. A persistent store is
    /// made durable here when a failure must fail the write; otherwise the store is returned,
    /// to be made durable before the origin write reaches the device.
    fn preserve_chain(
        &self,
        chains: &Chains,
        c: usize,
        t: usize,
        g: &Geometry,
        plan: &[ClusterPlan],
        pre: &PreImages,
    ) -> std::result::Result<Option<StoreSync>, Failure> {
        let snap = &chains.chain[c][t];
        let mut written = Vec::new();
        let mut later = None;
        if snap.store.is_persistent() {
            let affected = Self::resolving_to(chains, c, t, plan);
            if snap.on_store_error == OnStoreError::Invalidate
                && affected
                    .iter()
                    .all(|a| a.on_store_error == OnStoreError::Invalidate)
            {
                later = Some(StoreSync {
                    snap: Arc::clone(snap),
                    affected,
                });
            }
        }
        let result = (|| {
            for p in plan.iter().filter(|p| !mask_is_empty(&p.need[c])) {
                let cl = p.cluster as u32;
                let slot = {
                    let mut map = snap.map_mut();
                    match map.slot(cl) {
                        Some(s) => s,
                        None => {
                            let s = snap.store.allocate_slot(cl)?;
                            map.insert_slot(cl, s);
                            s
                        }
                    }
                };
                for (s, n) in mask_runs(&p.need[c]) {
                    let data = pre.blocks(g.first_block(p.cluster) + u64::from(s), u64::from(n));
                    snap.store.write_blocks(cl, slot, s, data)?;
                }
                written.push(p);
            }
            if later.is_some() {
                return Ok(());
            }
            snap.store.sync()
        })();
        match result {
            Ok(()) => {
                let mut blocks = 0u64;
                let mut map = snap.map_mut();
                for p in &written {
                    blocks += u64::from(map.add_blocks(p.cluster as u32, &p.need[c]));
                    // A cluster the target now holds whole: later rewrites skip every lookup.
                    let first = g.first_block(p.cluster);
                    let (full, _) = Self::cluster_masks(g, p.cluster, first, first);
                    if map
                        .get(p.cluster as u32)
                        .is_some_and(|(_, m)| m == full.as_slice())
                    {
                        chains.fast[c].set(p.cluster);
                    }
                }
                drop(map);
                snap.cow_calls.fetch_add(1, Ordering::Relaxed);
                self.blocks_preserved.fetch_add(blocks, Ordering::Relaxed);
                snap.check_low_space();
                Ok(later)
            }
            Err(error) => {
                let mut affected: Vec<Arc<SnapState>> = vec![Arc::clone(snap)];
                for older in Self::resolving_to(chains, c, t, plan) {
                    if !affected.iter().any(|a| Arc::ptr_eq(a, &older)) {
                        affected.push(older);
                    }
                }
                Err(Failure { error, affected })
            }
        }
    }

    /// The snapshots older than target `t` of chain `c` whose chain would resolve a block the
    /// plan preserves there to the target: the ones that lose it if the target does.
    fn resolving_to(
        chains: &Chains,
        c: usize,
        t: usize,
        plan: &[ClusterPlan],
    ) -> Vec<Arc<SnapState>> {
        let mut affected: Vec<Arc<SnapState>> = Vec::new();
        for p in plan.iter().filter(|p| !mask_is_empty(&p.need[c])) {
            let mut lost = p.need[c].clone();
            for k in (0..t).rev() {
                let older = &chains.chain[c][k];
                if let Some((_, have)) = older.map().get(p.cluster as u32) {
                    mask_remove(&mut lost, have);
                }
                if mask_is_empty(&lost) {
                    break;
                }
                if !affected.iter().any(|a| Arc::ptr_eq(a, older)) {
                    affected.push(Arc::clone(older));
                }
            }
        }
        affected
    }

    pub(crate) fn read_snapshot(
        &self,
        snap: &Arc<SnapState>,
        buf: &mut [u8],
        offset: u64,
    ) -> Result<()> {
        let object = format!("snapshot '{}'", snap.name);
        self.check_range("read", &object, offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        let chains = self.chains();
        if snap.deleted.load(Ordering::Acquire) {
            return Err(Error::new(
                ErrorKind::NotFound,
                "read",
                object,
                "the snapshot was deleted",
            ));
        }
        if !snap.is_valid() {
            return Err(snap.invalid_error());
        }
        let (Some(g), Some(idx)) = (
            chains.geometry,
            chains.chain[snap.chain]
                .iter()
                .position(|s| Arc::ptr_eq(s, snap)),
        ) else {
            return Err(Error::new(
                ErrorKind::NotFound,
                "read",
                object,
                "the snapshot is gone",
            ));
        };
        let later = &chains.chain[snap.chain][idx..];
        let len = buf.len() as u64;
        let (b0, b1) = block_span(offset, len);
        let clusters = g.cluster_of_block(b0)..=g.cluster_of_block(b1 - 1);
        // If every block is in a map, the volume is not needed at all.
        // The span of blocks no map holds yet: only those need the volume.
        let mut unmapped: Option<(u64, u64)> = None;
        let mut any_mapped = false;
        for cluster in clusters.clone() {
            let (_, mut open) = Self::cluster_masks(&g, cluster, b0, b1);
            for s in later {
                if let Some((_, have)) = s.map().get(cluster as u32) {
                    mask_remove(&mut open, have);
                    any_mapped = true;
                }
            }
            let runs = mask_runs(&open);
            if let (Some(&(lo, _)), Some(&(hl, hn))) = (runs.first(), runs.last()) {
                let first = g.first_block(cluster);
                let (lo, hi) = (first + u64::from(lo), first + u64::from(hl + hn));
                unmapped = Some(unmapped.map_or((lo, hi), |(a, _)| (a, hi)));
            }
        }
        if let Some((lo, hi)) = unmapped {
            // Read that span from the volume first, in one I/O, and only then consult the
            // maps: a block not mapped at that later moment had not been preserved, so it had
            // not been overwritten either (a volume write waits for its pre-image), and the
            // volume read saw the snapshot's bytes. Mapped blocks are overlaid from stores.
            let (start, end) = clip(lo, hi - lo, offset, len);
            if any_mapped && len >= PARALLEL_SNAPSHOT_READ {
                self.read_snapshot_parallel(&g, later, buf, offset, (start, end), &object)?;
                if !snap.is_valid() {
                    return Err(snap.invalid_error());
                }
                return Ok(());
            }
            self.dev
                .read_at_cached(
                    &mut buf[(start - offset) as usize..(end - offset) as usize],
                    start,
                )
                .map_err(|e| Error::io("read", object.clone(), e).at(start))?;
        }
        let mut scratch = Vec::new();
        for cluster in clusters {
            let (_, in_range) = Self::cluster_masks(&g, cluster, b0, b1);
            self.read_from_stores(&g, later, cluster, in_range, buf, offset, &mut scratch)?;
        }
        if !snap.is_valid() {
            return Err(snap.invalid_error());
        }
        Ok(())
    }

    /// A large snapshot read that needs both the volume and the stores: the volume span
    /// `[start, end)` is read on a second thread into its own buffer while this one reads the
    /// stores into `buf`, so the two waits overlap. Then the maps are consulted again: a block
    /// still unmapped after the volume read completed was not overwritten before it (decision
    /// 5), and is taken from the volume's buffer; one mapped meanwhile is read from its store.
    fn read_snapshot_parallel(
        &self,
        g: &Geometry,
        later: &[Arc<SnapState>],
        buf: &mut [u8],
        offset: u64,
        (start, end): (u64, u64),
        object: &str,
    ) -> Result<()> {
        let len = buf.len() as u64;
        let (b0, b1) = block_span(offset, len);
        let clusters = g.cluster_of_block(b0)..=g.cluster_of_block(b1 - 1);
        let mut from_volume = vec![0u8; (end - start) as usize];
        let mut scratch = Vec::new();
        let (stores, volume) = std::thread::scope(|sc| {
            let reader = sc.spawn(|| self.dev.read_at_cached(&mut from_volume, start));
            let stores: Result<Vec<Vec<u16>>> = clusters
                .clone()
                .map(|cluster| {
                    let (_, in_range) = Self::cluster_masks(g, cluster, b0, b1);
                    self.read_from_stores(g, later, cluster, in_range, buf, offset, &mut scratch)
                })
                .collect();
            (stores, reader.join())
        });
        let missing = stores?;
        match volume {
            Ok(r) => r.map_err(|e| Error::io("read", object.to_string(), e).at(start))?,
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Io,
                    "read",
                    object.to_string(),
                    "the thread reading the volume failed",
                ))
            }
        }
        for (cluster, open) in clusters.zip(missing) {
            if mask_is_empty(&open) {
                continue;
            }
            let open = self.read_from_stores(g, later, cluster, open, buf, offset, &mut scratch)?;
            let first = g.first_block(cluster);
            for (b, n) in mask_runs(&open) {
                let (rs, re) = clip(first + u64::from(b), u64::from(n), offset, len);
                buf[(rs - offset) as usize..(re - offset) as usize]
                    .copy_from_slice(&from_volume[(rs - start) as usize..(re - start) as usize]);
            }
        }
        Ok(())
    }

    /// Fill the parts of `buf` (which starts at byte `offset`) that the maps of `snaps` hold
    /// for the blocks `open` of `cluster`, with one store read per snapshot: the span from the
    /// first to the last block it holds, through `scratch` when the span has gaps. Returns the
    /// blocks found nowhere.
    #[allow(clippy::too_many_arguments)]
    fn read_from_stores(
        &self,
        g: &Geometry,
        snaps: &[Arc<SnapState>],
        cluster: u64,
        mut open: Vec<u16>,
        buf: &mut [u8],
        offset: u64,
        scratch: &mut Vec<u8>,
    ) -> Result<Vec<u16>> {
        let len = buf.len() as u64;
        let first = g.first_block(cluster);
        for s in snaps {
            let (slot, hit) = {
                let map = s.map();
                let Some((slot, have)) = map.get(cluster as u32) else {
                    continue;
                };
                let mut hit = open.clone();
                mask_keep(&mut hit, have);
                (slot, hit)
            };
            let runs = mask_runs(&hit);
            let (Some(&(lo, _)), Some(&(hl, hn))) = (runs.first(), runs.last()) else {
                continue;
            };
            let (start, end) = clip(first + u64::from(lo), u64::from(hl + hn - lo), offset, len);
            let in_slot = start - first * BLOCK_SIZE;
            if runs.len() == 1 {
                s.store.read(
                    slot,
                    in_slot,
                    &mut buf[(start - offset) as usize..(end - offset) as usize],
                )?;
            } else {
                scratch.resize((end - start) as usize, 0);
                s.store.read(slot, in_slot, scratch)?;
                for (b, n) in runs {
                    let (rs, re) = clip(first + u64::from(b), u64::from(n), offset, len);
                    buf[(rs - offset) as usize..(re - offset) as usize]
                        .copy_from_slice(&scratch[(rs - start) as usize..(re - start) as usize]);
                }
            }
            mask_remove(&mut open, &hit);
            if mask_is_empty(&open) {
                break;
            }
        }
        Ok(open)
    }

    fn find(chains: &Chains, name: &str) -> Option<(usize, usize)> {
        (0..2).find_map(|c| {
            chains.chain[c]
                .iter()
                .position(|s| s.name == name)
                .map(|j| (c, j))
        })
    }

    fn delete_snapshot(&self, name: &str) -> Result<()> {
        // Phase 1, beside live I/O: copy into the next older snapshot what it lacks. Readers
        // resolving through either find the same bytes; writers only add to the newest valid
        // snapshot, which phase 2 catches up with.
        {
            let chains = self.chains();
            if let Some((c, j)) = Self::find(&chains, name) {
                if chains.chain[c][..j].iter().any(|s| s.is_valid()) {
                    Self::move_entries(&chains.chain[c][..j], &chains.chain[c][j]);
                }
            }
        }
        // Phase 2, under the barrier: move what was preserved meanwhile, then unlink.
        let mut chains = self.chains_mut();
        let Some((c, j)) = Self::find(&chains, name) else {
            return Err(Error::new(
                ErrorKind::NotFound,
                "delete snapshot",
                format!("'{name}'"),
                format!("volume '{}' has no snapshot of that name", self.name),
            ));
        };
        let snap = Arc::clone(&chains.chain[c][j]);
        if chains.chain[c][..j].iter().any(|s| s.is_valid()) {
            Self::move_entries(&chains.chain[c][..j], &snap);
        }
        chains.chain[c].remove(j);
        snap.deleted.store(true, Ordering::Release);
        let clusters = chains.geometry.map_or(0, |g| g.cluster_count());
        chains.fast[c] = FastBits::new(if chains.chain[c].is_empty() {
            0
        } else {
            clusters
        });
        if chains.is_empty() {
            chains.geometry = None;
        }
        drop(chains);
        if let Err(e) = snap.store.destroy() {
            tracing::warn!(snapshot = name, error = %e, "could not release the store's space");
        }
        tracing::info!(volume = %self.name, snapshot = name, "snapshot deleted");
        Ok(())
    }

    /// Move into the snapshot just older than `gone` the entries of `gone` it lacks, so that
    /// `older` (all snapshots before `gone` in its chain) still resolve every block.
    fn move_entries(older: &[Arc<SnapState>], gone: &SnapState) {
        let Some(prev) = older.last() else { return };
        let todo: Vec<(u32, u32, Vec<u16>)> = {
            let theirs = gone.map();
            let mine = prev.map();
            theirs
                .iter()
                .filter_map(|(cl, slot, mask)| {
                    let mut missing = mask.to_vec();
                    if let Some((_, have)) = mine.get(cl) {
                        mask_remove(&mut missing, have);
                    }
                    (!mask_is_empty(&missing)).then_some((cl, slot, missing))
                })
                .collect()
        };
        if todo.is_empty() {
            return;
        }
        let result = (|| {
            let mut buf = Vec::new();
            for (cl, from_slot, missing) in &todo {
                let slot = {
                    let mut map = prev.map_mut();
                    match map.slot(*cl) {
                        Some(s) => s,
                        None => {
                            let s = prev.store.allocate_slot(*cl)?;
                            map.insert_slot(*cl, s);
                            s
                        }
                    }
                };
                for (s, n) in mask_runs(missing) {
                    buf.resize((u64::from(n) * BLOCK_SIZE) as usize, 0);
                    gone.store
                        .read(*from_slot, u64::from(s) * BLOCK_SIZE, &mut buf)?;
                    prev.store.write_blocks(*cl, slot, s, &buf)?;
                }
            }
            prev.store.sync()
        })();
        match result {
            Ok(()) => {
                let mut map = prev.map_mut();
                for (cl, _, missing) in &todo {
                    map.add_blocks(*cl, missing);
                }
            }
            Err(e) => {
                // Which older snapshots needed the entries that could not move.
                let reason = format!(
                    "moving entries from deleted snapshot '{}' failed: {e}",
                    gone.name
                );
                for (cl, _, missing) in &todo {
                    let mut lost = missing.clone();
                    for s in older.iter().rev() {
                        if let Some((_, have)) = s.map().get(*cl) {
                            mask_remove(&mut lost, have);
                        }
                        if mask_is_empty(&lost) {
                            break;
                        }
                        s.invalidate(&reason);
                    }
                }
            }
        }
    }

    /// The blocks of `[offset, offset + len)` changed on the volume since snapshot `snap` was
    /// taken (exact to 4 KiB): those some map of its chain, from it to the newest, holds.
    pub(crate) fn changed_since(
        &self,
        snap: &Arc<SnapState>,
        until: Option<&Arc<SnapState>>,
        offset: u64,
        len: u64,
    ) -> Result<Vec<Extent>> {
        let object = format!("snapshot '{}'", snap.name);
        self.check_range("map changes of", &object, offset, len)?;
        let chains = self.chains();
        let (Some(g), Some(idx)) = (
            chains.geometry,
            chains.chain[snap.chain]
                .iter()
                .position(|s| Arc::ptr_eq(s, snap)),
        ) else {
            return Err(Error::new(
                ErrorKind::NotFound,
                "map changes of",
                object,
                "the snapshot was deleted",
            ));
        };
        // Blocks first written after `snap` and before `until` were preserved in the maps of
        // the snapshots from `snap` up to, not including, `until`.
        let chain = &chains.chain[snap.chain];
        let end = match until {
            None => chain.len(),
            Some(u) => match chain.iter().position(|s| Arc::ptr_eq(s, u)) {
                Some(e) if e > idx => e,
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidArgument,
                        "map changes of",
                        object,
                        format!(
                            "'{}' is not a newer snapshot of the same volume and kind (persistent or transient)",
                            u.name
                        ),
                    ))
                }
            },
        };
        if !snap.is_valid() {
            return Err(snap.invalid_error());
        }
        if let Some(u) = until.filter(|u| !u.is_valid()) {
            return Err(u.invalid_error());
        }
        let mut out = Vec::new();
        if len == 0 {
            return Ok(out);
        }
        let later = &chain[idx..end];
        let (b0, b1) = block_span(offset, len);
        for cluster in g.cluster_of_block(b0)..=g.cluster_of_block(b1 - 1) {
            let (_, in_range) = Self::cluster_masks(&g, cluster, b0, b1);
            let mut changed = vec![0u16; in_range.len()];
            for s in later {
                s.map().or_mask_into(cluster as u32, &mut changed);
            }
            mask_keep(&mut changed, &in_range);
            let mut unchanged = in_range.clone();
            mask_remove(&mut unchanged, &changed);
            let mut runs: Vec<(u32, u32, bool)> = mask_runs(&changed)
                .into_iter()
                .map(|(a, n)| (a, n, true))
                .chain(
                    mask_runs(&unchanged)
                        .into_iter()
                        .map(|(a, n)| (a, n, false)),
                )
                .collect();
            runs.sort_unstable();
            let first = g.first_block(cluster);
            for (a, n, data) in runs {
                let (start, end) = clip(first + u64::from(a), u64::from(n), offset, len);
                push_extent(
                    &mut out,
                    Extent {
                        offset: start,
                        len: end - start,
                        data,
                    },
                );
            }
        }
        Ok(out)
    }

    pub(crate) fn snapshot_info(&self, snap: &SnapState) -> SnapshotInfo {
        let cluster_size = self.chains().geometry.map_or(0, |g| g.cluster_size());
        SnapshotInfo {
            name: snap.name.clone(),
            volume: self.name.clone(),
            id: snap.id,
            created: snap.created,
            persistent: snap.chain == PERSISTENT,
            on_store_error: snap.on_store_error,
            len: self.len,
            cluster_size,
            state: snap.state(),
            stats: snap.stats(),
            store: snap.store.describe(),
        }
    }
}

/// The union of both chains' needs in a cluster, as runs.
fn union_runs(need: &[Vec<u16>; 2]) -> Vec<(u32, u32)> {
    let words = need.iter().map(Vec::len).max().unwrap_or(0);
    let mut u = vec![0u16; words];
    for m in need {
        mask_add(&mut u, m);
    }
    mask_runs(&u)
}

/// The bytes of blocks `[first, first + count)` that lie in `[offset, offset + len)`.
fn clip(first: u64, count: u64, offset: u64, len: u64) -> (u64, u64) {
    let start = (first * BLOCK_SIZE).max(offset);
    let end = ((first + count) * BLOCK_SIZE).min(offset + len);
    (start, end)
}
