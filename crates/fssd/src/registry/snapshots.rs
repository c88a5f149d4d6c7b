//! Snapshots: create (alone or as a group), list, describe, verify, delete.

use super::entries::{SnapshotEntry, SnapshotLive};
use super::{Inner, Registry};
use crate::error::{DaemonError, ErrorKind, Result};
use crate::names::check_name;
use crate::own_files;
use crate::protocol::{
    SnapshotHealth, SnapshotInfo, SnapshotKind, SnapshotSpec, StorePolicy, VerifyInfo,
};
use crate::state::SnapshotState;
use crate::stores::{self, StorePlace};
use fss_core::export::Export;
use fss_core::{Snapshot, SnapshotOptions, SnapshotState as CoreState, Volume};
use std::time::UNIX_EPOCH;

/// The store policy a snapshot request asks for (`invalidate` when it names none).
pub(super) fn spec_policy(spec: &SnapshotSpec) -> Result<StorePolicy> {
    spec.on_store_error
        .as_deref()
        .map_or(Ok(StorePolicy::Invalidate), StorePolicy::parse)
}

impl Registry {
    /// `snapshot-create`: take a snapshot.
    ///
    /// # Errors
    /// A bad spec, a missing, offline or busy volume, or a store that cannot be made.
    pub fn create_snapshot(&self, spec: &SnapshotSpec) -> Result<SnapshotInfo> {
        let mut inner = self.lock();
        self.check_volume_free(&inner, &spec.volume)?;
        self.snapshot_create(&mut inner, spec)?;
        self.snapshot_info(&inner, &spec.name)
    }

    /// `snapshot-create-group`: several snapshots (one per volume) at one instant.
    ///
    /// # Errors
    /// As [`Registry::create_snapshot`] for any member, or a volume or name given twice.
    pub fn create_snapshot_group(&self, members: &[SnapshotSpec]) -> Result<Vec<SnapshotInfo>> {
        let mut inner = self.lock();
        for m in members {
            self.check_volume_free(&inner, &m.volume)?;
        }
        self.snapshot_create_group(&mut inner, members)?;
        members
            .iter()
            .map(|m| self.snapshot_info(&inner, &m.name))
            .collect()
    }

    /// `snapshot-delete`: delete a snapshot and its store.
    ///
    /// # Errors
    /// No such snapshot, or it is open, in use by a long operation, or the target of an
    /// unfinished rollback.
    pub fn delete_snapshot(&self, name: &str) -> Result<()> {
        let mut inner = self.lock();
        self.check_snapshot_deletable(&inner, name)?;
        self.snapshot_delete(&mut inner, name)
    }

    /// `snapshot-list`: every snapshot, oldest first per volume.
    ///
    /// # Errors
    /// Not expected (every listed snapshot has an entry); kept for the lookup's type.
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        let inner = self.lock();
        inner
            .snapshots
            .keys()
            .map(|name| self.snapshot_info(&inner, name))
            .collect()
    }

    /// `snapshot-info`: one snapshot.
    ///
    /// # Errors
    /// No such snapshot.
    pub fn describe_snapshot(&self, name: &str) -> Result<SnapshotInfo> {
        let inner = self.lock();
        self.snapshot_info(&inner, name)
    }

    /// `snapshot-set`: change a live snapshot's store maximum (raise it before the store
    /// fills, or lift it with `None`), kept in the state for restarts.
    ///
    /// # Errors
    /// No such snapshot, unavailable, or the new maximum is below what the store uses.
    pub fn set_snapshot_max(&self, name: &str, max: Option<u64>) -> Result<SnapshotInfo> {
        let mut inner = self.lock();
        let snap = Self::snapshot(&inner, name)?;
        snap.set_max_store_bytes(max)?;
        if let Some(e) = inner.snapshots.get_mut(name) {
            e.record.max_store_bytes = max;
        }
        self.save(&inner)?;
        tracing::info!(snapshot = name, max = ?max, "store maximum changed");
        self.snapshot_info(&inner, name)
    }

    /// `snapshot-verify`: check a snapshot's store against its checksums.
    ///
    /// # Errors
    /// No such snapshot, unavailable, or the store cannot be read.
    pub fn verify_snapshot(&self, name: &str) -> Result<VerifyInfo> {
        let snap = Self::snapshot(&self.lock(), name)?;
        let r = snap.verify()?;
        // Intact blocks do not make an invalid snapshot whole: a pre-image it needed is lost.
        if let CoreState::Invalid(reason) = snap.info().state {
            return Err(DaemonError::new(
                ErrorKind::InvalidSnapshot,
                format!(
                    "snapshot '{name}' is invalid ({reason}): its store's {} checked blocks are \
                     intact, but a pre-image it needed was never preserved, so its contents \
                     cannot be trusted; delete it",
                    r.blocks_checked
                ),
            ));
        }
        Ok(VerifyInfo {
            name: name.to_string(),
            checksummed: r.checksummed,
            blocks_checked: r.blocks_checked,
            damaged: r.damaged,
        })
    }

    pub(super) fn snapshot(inner: &Inner, name: &str) -> Result<Snapshot> {
        if let Some(s) = inner.snapshot(name) {
            return Ok(s.clone());
        }
        if let Some(r) = inner
            .snapshots
            .get(name)
            .and_then(SnapshotEntry::unavailable)
        {
            return Err(DaemonError::new(
                ErrorKind::InvalidSnapshot,
                format!("snapshot '{name}' is unavailable: {r}"),
            ));
        }
        Err(DaemonError::not_found(format!(
            "no snapshot named '{name}'; see `fss snapshot list`"
        )))
    }

    /// A snapshot whose contents can be trusted now: live, valid, on a verified volume.
    pub(super) fn usable(inner: &Inner, name: &str) -> Result<Snapshot> {
        let snap = Self::snapshot(inner, name)?;
        if let Some(s) = inner.snapshots.get(name) {
            if let Some(r) = inner.unverified(&s.record.volume) {
                return Err(DaemonError::new(
                    ErrorKind::InvalidSnapshot,
                    format!(
                        "snapshot '{name}' is unverified: its volume '{}' changed while fss was \
                         not running ({r}), so its contents cannot be trusted",
                        s.record.volume
                    ),
                ));
            }
        }
        if let CoreState::Invalid(r) = snap.info().state {
            return Err(DaemonError::new(
                ErrorKind::InvalidSnapshot,
                format!("snapshot '{name}' is invalid: {r}"),
            ));
        }
        Ok(snap)
    }

    pub(super) fn check_spec(&self, inner: &Inner, spec: &SnapshotSpec) -> Result<()> {
        check_name(&spec.name)?;
        if Self::name_taken(inner, &spec.name) {
            return Err(DaemonError::exists(format!(
                "the name '{}' is taken by a volume or snapshot; choose another",
                spec.name
            )));
        }
        if inner.volume(&spec.volume).is_none() {
            return Err(match inner.offline(&spec.volume) {
                Some(r) => DaemonError::busy(format!("volume '{}' is offline: {r}", spec.volume)),
                None => DaemonError::not_found(format!(
                    "no volume named '{}'; see `fss volume list`",
                    spec.volume
                )),
            });
        }
        if spec.unlink_store && !spec.transient {
            return Err(DaemonError::invalid(
                "an unlinked store (-x) makes a transient snapshot; add --transient",
            ));
        }
        spec_policy(spec)?;
        Ok(())
    }

    /// Where a new snapshot's store goes and with which options.
    pub(super) fn snapshot_plan(
        &self,
        inner: &Inner,
        spec: &SnapshotSpec,
    ) -> Result<(Volume, StorePlace, SnapshotOptions, StorePolicy)> {
        let vol = inner
            .volume(&spec.volume)
            .cloned()
            .ok_or_else(|| DaemonError::not_found("volume vanished"))?;
        let store_arg = spec
            .store
            .clone()
            .unwrap_or_else(|| self.paths.stores_dir());
        if spec.store.is_none() {
            crate::paths::own_private_dir(&store_arg).map_err(|e| {
                DaemonError::io(&format!("cannot create {}", store_arg.display()), &e)
            })?;
        }
        self.check_not_own(inner, &store_arg, own_files::Use::Store)?;
        let place = stores::place(&store_arg, &spec.volume, &spec.name)?;
        let on_err = spec_policy(spec)?;
        let opts = SnapshotOptions {
            cluster_size: spec.cluster_size,
            persistent: !spec.transient,
            on_store_error: on_err.into(),
            max_store_bytes: spec.max_store_size,
            ..SnapshotOptions::default()
        };
        Ok((vol, place, opts, on_err))
    }

    /// The state entry of a snapshot just made.
    pub(super) fn snapshot_record(
        spec: &SnapshotSpec,
        place: StorePlace,
        on_err: StorePolicy,
        snap: &Snapshot,
    ) -> SnapshotState {
        let info = snap.info();
        SnapshotState {
            name: spec.name.clone(),
            volume: spec.volume.clone(),
            id: info.id,
            persistent: !spec.transient,
            store: place.path,
            store_owned: place.owned,
            store_is_device: place.is_device,
            max_store_bytes: spec.max_store_size,
            on_store_error: on_err,
            created: info
                .created
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            cluster_size: info.cluster_size,
            mount_point: spec.mount_point.clone(),
            deleting: false,
            invalid: None,
        }
    }

    /// Make the store and the engine snapshot; returns its record (not yet saved) and the
    /// snapshot.
    pub(super) fn snapshot_make(
        &self,
        inner: &Inner,
        spec: &SnapshotSpec,
    ) -> Result<(SnapshotState, Snapshot)> {
        let (vol, place, opts, on_err) = self.snapshot_plan(inner, spec)?;
        let snap = vol.create_snapshot(&spec.name, &opts, |p| {
            stores::create(&place, p, spec.unlink_store, &self.space)
        })?;
        Ok((Self::snapshot_record(spec, place, on_err, &snap), snap))
    }

    pub(super) fn snapshot_create(&self, inner: &mut Inner, spec: &SnapshotSpec) -> Result<()> {
        self.check_spec(inner, spec)?;
        let made = self.snapshot_make(inner, spec)?;
        self.commit_snapshots(inner, vec![made])
    }

    /// Record snapshots just made and serve them; if the state cannot be saved, they are
    /// deleted again.
    pub(super) fn commit_snapshots(
        &self,
        inner: &mut Inner,
        made: Vec<(SnapshotState, Snapshot)>,
    ) -> Result<()> {
        let names: Vec<(String, String)> = made
            .iter()
            .map(|(r, _)| (r.name.clone(), r.volume.clone()))
            .collect();
        for (record, snap) in made {
            let live = SnapshotLive::Live(snap);
            inner
                .snapshots
                .insert(record.name.clone(), SnapshotEntry { record, live });
        }
        if let Err(e) = self.save(inner) {
            for (name, volume) in &names {
                inner.snapshots.shift_remove(name);
                if let Some(v) = inner.volume(volume) {
                    let _ = v.delete_snapshot(name);
                }
            }
            return Err(e);
        }
        for (name, _) in &names {
            if let Some(entry) = inner.snapshots.get(name) {
                if let Some(snap) = entry.snapshot() {
                    self.publish(name, Export::Snapshot(snap.clone()));
                }
                let s = &entry.record;
                tracing::info!(snapshot = %s.name, volume = %s.volume, persistent = s.persistent, store = %s.store.display(), "snapshot created");
            }
        }
        Ok(())
    }

    /// Several snapshots at one instant: every volume's writes are held while all are taken.
    pub(super) fn snapshot_create_group(
        &self,
        inner: &mut Inner,
        members: &[SnapshotSpec],
    ) -> Result<()> {
        if members.is_empty() {
            return Err(DaemonError::invalid(
                "a group needs at least one VOLUME:NAME",
            ));
        }
        for (i, m) in members.iter().enumerate() {
            self.check_spec(inner, m)?;
            if members[..i]
                .iter()
                .any(|o| o.name == m.name || o.volume == m.volume)
            {
                return Err(DaemonError::invalid(format!(
                    "the group names '{}' or volume '{}' twice; one snapshot per volume",
                    m.name, m.volume
                )));
            }
        }
        // All at one instant: the engine holds every volume's barrier while it makes them.
        let plans: Vec<(Volume, StorePlace, SnapshotOptions, StorePolicy)> = members
            .iter()
            .map(|m| self.snapshot_plan(inner, m))
            .collect::<Result<_>>()?;
        // One store each: a shared file would be made for the first and refused (locked) for
        // the second, after the first's store was already there.
        for (i, (_, place, _, _)) in plans.iter().enumerate() {
            if let Some(j) = plans[..i]
                .iter()
                .position(|(_, p, _, _)| p.path == place.path)
            {
                return Err(DaemonError::invalid(format!(
                    "snapshots '{}' and '{}' of the group would share the store {}; each needs \
                     its own: give a directory as --store (a file is made inside it for each)",
                    members[j].name,
                    members[i].name,
                    place.path.display()
                )));
            }
        }
        let group: Vec<(&Volume, &str, &SnapshotOptions)> = plans
            .iter()
            .zip(members)
            .map(|((v, _, o, _), m)| (v, m.name.as_str(), o))
            .collect();
        let snaps = Volume::create_snapshot_group(&group, |p| {
            let i = members
                .iter()
                .position(|m| m.name == p.snapshot)
                .unwrap_or(0);
            stores::create(&plans[i].1, p, members[i].unlink_store, &self.space)
        })?;
        let made: Vec<(SnapshotState, Snapshot)> = plans
            .into_iter()
            .zip(members)
            .zip(snaps)
            .map(|(((_, place, _, on_err), m), snap)| {
                (Self::snapshot_record(m, place, on_err, &snap), snap)
            })
            .collect();
        self.commit_snapshots(inner, made)
    }

    pub(super) fn snapshot_delete(&self, inner: &mut Inner, name: &str) -> Result<()> {
        if !inner.snapshots.contains_key(name) {
            return Err(DaemonError::not_found(format!(
                "no snapshot named '{name}'; see `fss snapshot list`"
            )));
        }
        // Withdraw it from front-ends first, then look for users: an open racing the delete
        // either shows up in the count or finds nothing to open.
        self.unpublish(name);
        let open = self.opens_of(name);
        if open > 0 {
            self.republish(inner, name);
            return Err(DaemonError::busy(format!(
                "snapshot '{name}' is open ({open} times, by NBD clients or a loop device on its FUSE file); close it first"
            )));
        }
        let entry = inner.snapshots.get(name);
        let volume = entry.map(|e| e.record.volume.clone()).unwrap_or_default();
        // Only a snapshot in its volume's chain has entries to move.
        let attached = entry.is_some_and(|e| e.attached().is_some());
        let stand_in = entry.is_some_and(super::stand_ins::is_stand_in);
        let vol = inner.volume(&volume).filter(|_| attached).cloned();
        // Refused before anything changes when its entries cannot move (no room).
        if let Some(Err(e)) = vol.as_ref().map(|v| v.check_delete(name)) {
            self.republish(inner, name);
            return Err(e.into());
        }
        if stand_in {
            self.invalidate_older(inner, name);
        }
        // Remember the delete first: a crash midway is finished at the next start.
        if let Some(entry) = inner.snapshots.get_mut(name) {
            entry.record.deleting = true;
        }
        self.save(inner)?;
        let Some(entry) = inner.snapshots.get_mut(name) else {
            return Ok(());
        };
        let s = entry.record.clone();
        let why = "its delete did not finish; it is finished at the next start".to_string();
        let live = std::mem::replace(&mut entry.live, SnapshotLive::Unavailable(why));
        if let Some(vol) = vol {
            if let Err(e) = vol.delete_snapshot(name) {
                // Refused by the engine (the move lost a race for space): the snapshot stays.
                if let Some(entry) = inner.snapshots.get_mut(name) {
                    entry.record.deleting = false;
                    entry.live = live;
                }
                self.republish(inner, name);
                self.save(inner)?;
                return Err(e.into());
            }
            drop(live);
        } else if s.store_owned {
            let _ = std::fs::remove_file(&s.store);
        }
        inner.snapshots.shift_remove(name);
        self.block_dependents(inner, &s.volume);
        // With its last snapshot gone, there is nothing left to be unverified.
        if inner.snapshots_of(&s.volume).next().is_none() {
            if let Some(v) = inner.volumes.get_mut(&s.volume) {
                v.record.unverified = None;
            }
        }
        self.save(inner)?;
        // Its map (and the entries moved into the next older one) freed many small chunks.
        crate::heap::give_back_free_memory();
        tracing::info!(snapshot = name, "snapshot deleted");
        Ok(())
    }

    /// Before deleting `name`, which stands in for a store that is unavailable: the older
    /// snapshots of its volume may have resolved blocks through its map, lost with it.
    fn invalidate_older(&self, inner: &Inner, name: &str) {
        let Some(gone) = inner.snapshots.get(name).map(|e| e.record.clone()) else {
            return;
        };
        let reason = format!(
            "the newer snapshot '{name}', whose map it may have needed, was deleted while its \
             store was unavailable"
        );
        for e in inner.snapshots_of(&gone.volume) {
            if e.record.persistent && e.record.id < gone.id {
                if let Some(snap) = e.attached() {
                    snap.invalidate(&reason);
                }
            }
        }
    }

    /// Serve snapshot `name` to front-ends again after a refused delete.
    fn republish(&self, inner: &Inner, name: &str) {
        if let Some(snap) = inner.snapshot(name) {
            self.publish(name, Export::Snapshot(snap.clone()));
        }
    }

    pub(super) fn snapshot_info(&self, inner: &Inner, name: &str) -> Result<SnapshotInfo> {
        let entry = inner.snapshots.get(name).ok_or_else(|| {
            DaemonError::not_found(format!(
                "no snapshot named '{name}'; see `fss snapshot list`"
            ))
        })?;
        let s = &entry.record;
        let live = entry.attached().map(Snapshot::info);
        // Invalid is for good, so it wins over unavailable (a stand-in store can be invalid).
        let (state, reason) =
            if let Some(CoreState::Invalid(r)) = live.as_ref().map(|i| i.state.clone()) {
                (SnapshotHealth::Invalid, Some(r))
            } else if let Some(r) = entry.unavailable() {
                (SnapshotHealth::Unavailable, Some(r.to_string()))
            } else if let Some(r) = inner.unverified(&s.volume) {
                (
                    SnapshotHealth::Unverified,
                    Some(format!("the volume changed while fss was not running: {r}")),
                )
            } else {
                (SnapshotHealth::Valid, None)
            };
        let stats = live.as_ref().map(|i| i.stats.clone()).unwrap_or_default();
        Ok(SnapshotInfo {
            name: s.name.clone(),
            volume: s.volume.clone(),
            id: s.id,
            kind: if s.persistent {
                SnapshotKind::Persistent
            } else {
                SnapshotKind::Transient
            },
            state,
            reason,
            created: s.created,
            size: live.as_ref().map_or(0, |i| i.len),
            cluster_size: s.cluster_size,
            store: s.store.clone(),
            store_used: stats.store_bytes_used,
            store_max: stats.store_max_bytes.or(s.max_store_bytes),
            blocks_preserved: stats.blocks_preserved,
            clusters_preserved: stats.clusters_preserved,
            cow_calls: stats.cow_calls,
            busy_waits: stats.busy_waits,
            on_store_error: s.on_store_error,
            mount_point: s.mount_point.clone(),
        })
    }
}
