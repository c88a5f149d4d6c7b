//! The snapshot lifecycle: create (alone or as a group, in a short barrier), attach after a
//! restart, and delete (moving the entries the next older snapshot still needs).

use super::Volume;
use crate::chain::{losing_blocks, ChainKind, Chains, FastBits, SnapState};
use crate::cluster_map::{mask_is_empty, mask_remove, mask_runs, ClusterMap};
use crate::core::VolumeCore;
use crate::error::{Error, ErrorKind, Result};
use crate::geometry::{Cluster, Geometry, BLOCK_SIZE};
use crate::snapshot::{Snapshot, SnapshotOptions};
use crate::store::{Recovered, Store, StoreParams};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLockWriteGuard};
use std::time::SystemTime;

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

impl Volume {
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
        let s = &self.core;
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
        check_distinct(members)?;
        let mut prepared = Vec::with_capacity(members.len());
        let destroy = |ps: &[Prepared]| {
            for p in ps {
                let _ = p.store.destroy();
            }
        };
        for (v, name, opts) in members {
            match v.core.prepare(name, opts, &mut make_store) {
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
                    v.core.flush_dev()?;
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
        order.sort_by_key(|&i| Arc::as_ptr(&members[i].0.core) as usize);
        let mut guards: Vec<Option<RwLockWriteGuard<'_, Chains>>> =
            (0..members.len()).map(|_| None).collect();
        for &i in &order {
            guards[i] = Some(members[i].0.core.chains_mut());
        }
        let checked = flush_all().and_then(|()| {
            for (i, p) in prepared.iter().enumerate() {
                if let Some(g) = &guards[i] {
                    members[i].0.core.check_prepared(g, p)?;
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
                let (snap, bits) = members[i].0.core.commit_prepared(g, p);
                out.push(snap);
                old.push(bits);
            }
        }
        drop(guards);
        drop(old);
        Ok(out)
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
        let s = &self.core;
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
        let (id, created, invalid) = (
            recovered.snapshot_id,
            recovered.created,
            recovered.invalid.clone(),
        );
        let map = recovered_map(&geometry, recovered, &object)?;
        let mut chains = s.chains_mut();
        if chains.all().any(|x| x.name == name) {
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
        let c = ChainKind::of(opts.persistent);
        if chains.chain[c].last().is_some_and(|x| x.id >= id) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "attach",
                object,
                "snapshots must be attached oldest first",
            ));
        }
        chains.geometry = Some(geometry);
        let snap = Arc::new(SnapState::with_map(id, name, created, opts, store, map));
        if let Some(reason) = &invalid {
            snap.mark_invalid(reason);
        }
        s.next_id.fetch_max(id + 1, Ordering::Relaxed);
        chains.chain[c].push(Arc::clone(&snap));
        chains.fast[c] = FastBits::new(geometry.cluster_count());
        Ok(Snapshot::new(Arc::clone(s), snap))
    }

    /// Delete the snapshot `name`, keeping every other snapshot exact: the entries that the
    /// next older snapshot of its chain lacks move into that one's store first.
    ///
    /// A delete whose entries cannot all fit (the older store's maximum, its file system's
    /// free space) is refused before anything changes, and every snapshot stays as valid as
    /// before. A move that fails anyway (an I/O error, space taken meanwhile by others)
    /// invalidates the older snapshots that needed the entries, as the failure policy says.
    ///
    /// # Errors
    /// `NotFound`; `NoSpace` naming the older store and what it lacks; `Io`.
    pub fn delete_snapshot(&self, name: &str) -> Result<()> {
        self.core.delete_snapshot(name)
    }

    /// Check, without changing anything, that deleting `name` now could move its entries: the
    /// check [`Volume::delete_snapshot`] makes first, for callers that record the delete
    /// before starting it.
    ///
    /// # Errors
    /// As [`Volume::delete_snapshot`].
    pub fn check_delete(&self, name: &str) -> Result<()> {
        let chains = self.core.chains();
        let (c, j) = chains
            .find(name)
            .ok_or_else(|| not_found(&self.core.name, name))?;
        check_room(&chains.chain[c][..j], &chains.chain[c][j])
    }
}

fn not_found(volume: &str, name: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        "delete snapshot",
        format!("'{name}'"),
        format!("volume '{volume}' has no snapshot of that name"),
    )
}

/// Entries of `gone` that `prev` lacks: (cluster, `gone`'s slot, missing blocks).
type ToMove = Vec<(Cluster, u32, Vec<u16>)>;

fn entries_to_move(prev: &SnapState, gone: &SnapState) -> ToMove {
    let theirs = gone.map();
    let mine = prev.map();
    theirs
        .iter()
        .filter_map(|(cl, slot, mask)| {
            let mut missing = mask.to_vec();
            if let Some((_, have)) = mine.get(cl) {
                mask_remove(&mut missing, have);
            }
            (!mask_is_empty(&missing)).then_some((Cluster::from_key(cl), slot, missing))
        })
        .collect()
}

/// Whether the store of the snapshot just older than `gone` has room for what must move.
fn check_room(older: &[Arc<SnapState>], gone: &SnapState) -> Result<()> {
    let Some(prev) = older.last().filter(|_| older.iter().any(|s| s.is_valid())) else {
        return Ok(());
    };
    let todo = entries_to_move(prev, gone);
    let new_slots = {
        let mine = prev.map();
        todo.iter()
            .filter(|(cl, _, _)| mine.get(cl.key()).is_none())
            .count() as u64
    };
    let blocks: u64 = todo
        .iter()
        .flat_map(|(_, _, m)| mask_runs(m))
        .map(|(_, n)| u64::from(n))
        .sum();
    prev.store.check_room(new_slots, blocks).map_err(|e| {
        Error::new(
            e.kind(),
            "delete snapshot",
            format!("'{}'", gone.name),
            format!(
                "its entries cannot move into the store of the older snapshot '{}': {e}; nothing \
                 was deleted",
                prev.name
            ),
        )
    })
}

/// `InvalidArgument` if a volume appears twice among the members of a group.
fn check_distinct(members: &[(&Volume, &str, &SnapshotOptions)]) -> Result<()> {
    for (i, (v, name, _)) in members.iter().enumerate() {
        if members[..i]
            .iter()
            .any(|(o, _, _)| Arc::ptr_eq(&o.core, &v.core))
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
    Ok(())
}

/// The store map of a recovered snapshot, checked against the volume's geometry.
fn recovered_map(geometry: &Geometry, recovered: Recovered, object: &str) -> Result<ClusterMap> {
    let map = recovered.map;
    let outside = map
        .last_cluster()
        .filter(|c| u64::from(*c) >= geometry.cluster_count());
    if map.blocks_per_cluster() != geometry.blocks_per_cluster() || outside.is_some() {
        return Err(Error::new(
            ErrorKind::CorruptStore,
            "attach",
            object,
            match outside {
                Some(c) => format!("the store maps cluster {c} outside the volume"),
                None => "the store's map has another cluster size than the volume".to_string(),
            },
        ));
    }
    Ok(map)
}

/// `Exists`: a snapshot is named `name` already.
fn exists(name: &str) -> Error {
    Error::new(
        ErrorKind::Exists,
        "create snapshot",
        format!("'{name}'"),
        "a snapshot of that name already exists on this volume; choose another name",
    )
}

impl VolumeCore {
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
        if chains.all().any(|x| x.name == p.name) {
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

    /// Under the barrier: make `p` live; returns it and the chain's previous fast bits, to be freed by the
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
        let snap = Snapshot::new(Arc::clone(self), snap);
        (snap, old)
    }

    /// The geometry a new snapshot `name` gets with the requested cluster size.
    fn geometry_for(&self, name: &str, requested: Option<u64>) -> Result<Geometry> {
        let chains = self.chains();
        if chains.all().any(|x| x.name == name) {
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

    /// See [`Volume::delete_snapshot`].
    fn delete_snapshot(&self, name: &str) -> Result<()> {
        // Phase 1, beside live I/O: check the older store has room, then copy into it what it
        // lacks. Readers resolving through either find the same bytes; writers only add to
        // the newest valid snapshot, which phase 2 catches up with.
        {
            let chains = self.chains();
            let (c, j) = chains
                .find(name)
                .ok_or_else(|| not_found(&self.name, name))?;
            check_room(&chains.chain[c][..j], &chains.chain[c][j])?;
            Self::move_entries(&chains.chain[c][..j], &chains.chain[c][j]);
        }
        // Phase 2, under the barrier: move what was preserved meanwhile, then unlink.
        let mut chains = self.chains_mut();
        let (c, j) = chains
            .find(name)
            .ok_or_else(|| not_found(&self.name, name))?;
        let snap = Arc::clone(&chains.chain[c][j]);
        Self::move_entries(&chains.chain[c][..j], &snap);
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
    /// `older` (all snapshots before `gone` in its chain) still resolve every block. Nothing
    /// to do when no older snapshot is valid. [`check_room`] has refused a move that cannot
    /// fit; one that fails anyway (an I/O error, or space taken meanwhile) invalidates the
    /// older snapshots that needed the entries, as the failure policy says.
    fn move_entries(older: &[Arc<SnapState>], gone: &SnapState) {
        let Some(prev) = older.last().filter(|_| older.iter().any(|s| s.is_valid())) else {
            return;
        };
        let todo = entries_to_move(prev, gone);
        if todo.is_empty() {
            return;
        }
        let result = (|| {
            let mut buf = Vec::new();
            for (cl, from_slot, missing) in &todo {
                let slot = prev.slot_for(*cl)?;
                for (s, n) in mask_runs(missing) {
                    buf.resize((u64::from(n) * BLOCK_SIZE) as usize, 0);
                    gone.store
                        .read(*from_slot, u64::from(s) * BLOCK_SIZE, &mut buf)?;
                    prev.store.write_blocks(cl.key(), slot, s, &buf)?;
                }
            }
            prev.store.sync()
        })();
        match result {
            Ok(()) => {
                let mut map = prev.map_mut();
                for (cl, _, missing) in &todo {
                    map.add_blocks(cl.key(), missing);
                }
            }
            Err(e) => {
                let reason = format!(
                    "moving entries from deleted snapshot '{}' failed: {e}",
                    gone.name
                );
                for (cl, _, missing) in &todo {
                    losing_blocks(older, *cl, missing, |s| s.invalidate(&reason));
                }
            }
        }
    }
}
