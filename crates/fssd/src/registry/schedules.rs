//! Schedules: add, list, remove; a run's two halves (recording the snapshot it takes as a
//! member before taking it, then its result and the pruning); and `--min-free` reclaiming.
//! The timer threads that call these live in [`crate::schedule::timer`].

use super::{Inner, Registry};
use crate::error::{DaemonError, Result};
use crate::protocol::SnapshotSpec;
use crate::schedule::space::{file_system_of, free_bytes};
use crate::schedule::{snapshot_name, ScheduleInfo, ScheduleSpec, ScheduleState};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the epoch now.
#[must_use]
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Registry {
    /// `schedule-add`: one schedule per volume; a second one is refused (remove the first).
    ///
    /// # Errors
    /// No such volume, a schedule exists for it, a zero interval, or a store that is not a
    /// directory.
    pub fn add_schedule(&self, spec: ScheduleSpec) -> Result<ScheduleInfo> {
        let mut inner = self.lock();
        let volume = spec.volume.clone();
        if !inner.volumes.contains_key(&volume) {
            return Err(DaemonError::not_found(format!(
                "no volume named '{volume}'; see `fss volume list`"
            )));
        }
        if inner.meta.schedules.iter().any(|s| s.spec.volume == volume) {
            return Err(DaemonError::exists(format!(
                "volume '{volume}' has a schedule already; remove it first with `fss schedule \
                 remove {volume}` (its snapshots are kept)"
            )));
        }
        if spec.every_seconds == 0 {
            return Err(DaemonError::invalid(
                "a schedule's interval must be at least 1s",
            ));
        }
        if let Some(store) = spec.store.as_ref().filter(|s| !s.is_dir()) {
            return Err(DaemonError::invalid(format!(
                "store {} is not a directory: a schedule makes a new store file in it for each \
                 snapshot; give an existing directory",
                store.display()
            )));
        }
        let state = ScheduleState {
            spec,
            added: now_secs(),
            members: Vec::new(),
            last_run: None,
            last_error: None,
            last_success: None,
        };
        let info = ScheduleInfo::from(&state);
        inner.meta.schedules.push(state);
        self.save(&inner)?;
        self.update_floors(&inner);
        tracing::info!(volume = %volume, every = info.every_seconds, "schedule added");
        Ok(info)
    }

    /// `schedule-list`: every schedule, in the order added.
    #[must_use]
    pub fn list_schedules(&self) -> Vec<ScheduleInfo> {
        let inner = self.lock();
        inner
            .meta
            .schedules
            .iter()
            .map(|s| {
                let mut info = ScheduleInfo::from(s);
                info.snapshots
                    .retain(|n| is_member(&inner, &s.spec.volume, n));
                info
            })
            .collect()
    }

    /// `schedule-remove`: stop scheduling snapshots of `volume` (after a run in progress);
    /// its snapshots are kept as ordinary ones.
    ///
    /// # Errors
    /// No schedule for that volume.
    pub fn remove_schedule(&self, volume: &str) -> Result<ScheduleInfo> {
        let _run = self.run_lock();
        let mut inner = self.lock();
        let Some(i) = inner
            .meta
            .schedules
            .iter()
            .position(|s| s.spec.volume == volume)
        else {
            return Err(DaemonError::not_found(format!(
                "volume '{volume}' has no schedule; see `fss schedule list`"
            )));
        };
        let gone = inner.meta.schedules.remove(i);
        self.save(&inner)?;
        self.update_floors(&inner);
        tracing::info!(volume, "schedule removed; its snapshots are kept");
        Ok(ScheduleInfo::from(&gone))
    }

    /// Held for a whole schedule run (see the lock order in `registry/mod.rs`).
    pub fn run_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The schedules due at `now`.
    #[must_use]
    pub fn due_schedules(&self, now: u64) -> Vec<ScheduleState> {
        let inner = self.lock();
        inner
            .meta
            .schedules
            .iter()
            .filter(|s| s.next_run() <= now)
            .cloned()
            .collect()
    }

    /// The first half of a run of `volume`'s schedule at `now`: record the snapshot it is
    /// about to take as a member (so that even a crash right after leaves it owned), and
    /// return what to take.
    ///
    /// # Errors
    /// The schedule is gone, or the snapshot's name is taken.
    pub fn begin_run(&self, volume: &str, now: u64) -> Result<SnapshotSpec> {
        let mut inner = self.lock();
        let s = schedule_of(&inner, volume)?;
        let name = snapshot_name(volume, s.spec.every_seconds, now);
        if Self::name_taken(&inner, &name) {
            return Err(DaemonError::exists(format!(
                "the name '{name}' is taken; the schedule of volume '{volume}' skipped this run"
            )));
        }
        let spec = SnapshotSpec {
            volume: volume.to_string(),
            name: name.clone(),
            store: s.spec.store.clone(),
            transient: s.spec.transient,
            mount_point: s.spec.mount_point.clone(),
            ..SnapshotSpec::default()
        };
        if let Some(s) = inner
            .meta
            .schedules
            .iter_mut()
            .find(|s| s.spec.volume == volume)
        {
            s.members.push(name);
        }
        self.save(&inner)?;
        Ok(spec)
    }

    /// The second half of a run: record its outcome, forget members that do not exist (a
    /// failed run's, or ones deleted by hand), and prune what retention does not keep.
    pub fn finish_run(&self, volume: &str, now: u64, outcome: &Result<()>) {
        let mut inner = self.lock();
        let Ok(s) = schedule_of(&inner, volume) else {
            return;
        };
        let members: Vec<(String, u64)> = s
            .members
            .iter()
            .filter_map(|n| {
                let e = inner
                    .snapshots
                    .get(n)
                    .filter(|e| e.record.volume == volume)?;
                Some((n.clone(), e.record.created))
            })
            .collect();
        let prune = s.spec.retention.prune(&members);
        match outcome {
            Ok(()) => {
                tracing::info!(volume, snapshot = ?members.last().map(|m| &m.0), "scheduled snapshot taken");
            }
            Err(e) => tracing::error!(volume, error = %e, "scheduled snapshot failed"),
        }
        let mut kept: Vec<String> = members.into_iter().map(|m| m.0).collect();
        for name in prune {
            match self
                .check_snapshot_deletable(&inner, &name)
                .and_then(|()| self.snapshot_delete(&mut inner, &name))
            {
                Ok(()) => {
                    kept.retain(|n| *n != name);
                    tracing::info!(volume, snapshot = %name, "pruned by the schedule's retention");
                }
                Err(e) => {
                    tracing::warn!(volume, snapshot = %name, error = %e, "could not prune; tried again at the next run");
                }
            }
        }
        if let Some(s) = inner
            .meta
            .schedules
            .iter_mut()
            .find(|s| s.spec.volume == volume)
        {
            s.members = kept;
            s.last_run = Some(now);
            s.last_error = outcome.as_ref().err().map(|e| e.message.clone());
            if outcome.is_ok() {
                s.last_success = Some(now);
            }
        }
        if let Err(e) = self.save(&inner) {
            tracing::error!(volume, error = %e, "could not record the schedule's run");
        }
    }

    /// `--min-free`: for each schedule that sets it, while its store's file system has less
    /// free than that, delete the schedule's oldest snapshot, never its newest.
    pub fn reclaim_space(&self) {
        let wanted: Vec<(String, PathBuf, u64)> = {
            let inner = self.lock();
            inner
                .meta
                .schedules
                .iter()
                .filter_map(|s| {
                    let floor = s.spec.min_free?;
                    Some((s.spec.volume.clone(), self.store_dir(&s.spec), floor))
                })
                .collect()
        };
        for (volume, dir, floor) in wanted {
            while free_bytes(&dir).is_ok_and(|free| free < floor) {
                if !self.drop_oldest_member(&volume, &dir, floor) {
                    break;
                }
            }
        }
    }

    /// Delete the oldest of `volume`'s schedule's snapshots but the newest; whether one went.
    fn drop_oldest_member(&self, volume: &str, dir: &std::path::Path, floor: u64) -> bool {
        let mut inner = self.lock();
        let members: Vec<String> = match schedule_of(&inner, volume) {
            Ok(s) => s
                .members
                .iter()
                .filter(|n| is_member(&inner, volume, n))
                .cloned()
                .collect(),
            Err(_) => return false,
        };
        let [oldest, _, ..] = members.as_slice() else {
            if self.space.stuck(volume) {
                tracing::warn!(volume, dir = %dir.display(), floor, "the store's file system is below --min-free and the schedule has only its newest snapshot left; free space there or raise the file system's size");
            }
            return false;
        };
        self.space.unstuck(volume);
        let oldest = oldest.clone();
        if let Err(e) = self
            .check_snapshot_deletable(&inner, &oldest)
            .and_then(|()| self.snapshot_delete(&mut inner, &oldest))
        {
            tracing::warn!(volume, snapshot = %oldest, error = %e, "could not delete for --min-free");
            return false;
        }
        if let Some(s) = inner
            .meta
            .schedules
            .iter_mut()
            .find(|s| s.spec.volume == volume)
        {
            s.members.retain(|n| *n != oldest);
        }
        if let Err(e) = self.save(&inner) {
            tracing::error!(volume, error = %e, "could not record a schedule's deletion");
        }
        tracing::info!(volume, snapshot = %oldest, dir = %dir.display(), floor, "pruned for --min-free");
        true
    }

    /// Where `spec`'s stores go.
    fn store_dir(&self, spec: &ScheduleSpec) -> PathBuf {
        spec.store
            .clone()
            .unwrap_or_else(|| self.paths.stores_dir())
    }

    /// Tell the space watch the floors the schedules ask for, by file system.
    pub(super) fn update_floors(&self, inner: &Inner) {
        let mut floors: HashMap<u64, u64> = HashMap::new();
        for s in &inner.meta.schedules {
            let Some(floor) = s.spec.min_free else {
                continue;
            };
            if let Some(fs) = file_system_of(&self.store_dir(&s.spec)) {
                let f = floors.entry(fs).or_default();
                *f = (*f).max(floor);
            }
        }
        self.space.set_floors(floors);
    }
}

fn schedule_of<'a>(inner: &'a Inner, volume: &str) -> Result<&'a ScheduleState> {
    inner
        .meta
        .schedules
        .iter()
        .find(|s| s.spec.volume == volume)
        .ok_or_else(|| {
            DaemonError::not_found(format!(
                "volume '{volume}' has no schedule (it was removed)"
            ))
        })
}

/// Whether `name` is a snapshot of `volume` now.
fn is_member(inner: &Inner, volume: &str, name: &str) -> bool {
    inner
        .snapshots
        .get(name)
        .is_some_and(|e| e.record.volume == volume)
}
