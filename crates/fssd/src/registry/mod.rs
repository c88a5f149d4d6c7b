//! The daemon's live objects: volumes and snapshots by name, their persistent state, and the
//! operations of the control API (typed results; [`crate::control`] puts them on the wire).
//! Front-ends see it as a [`Catalog`](fss_core::export::Catalog) ([`crate::catalog`]).
//!
//! - `mod.rs`: the registry, its state, opening it, saving, publishing, status, stop;
//! - `recovery.rs`: bringing volumes and snapshots back at start, finishing interrupted
//!   deletes and rollbacks (interrupted restores: `restore.rs`);
//! - `fingerprint.rs`: what identifies a volume's image between runs, and the check at start
//!   that nobody changed it while fss was not running;
//! - `volumes.rs`: create, add, list, remove volumes;
//! - `snapshots.rs`: create (alone or as a group), list, describe, verify, delete snapshots;
//! - `jobs.rs`: what holds names during long operations, diffs, checksums, backups;
//! - `restore.rs`: restoring backups onto a volume, recorded so that an interrupted one is
//!   finished at start or leaves the volume offline; abandoning one;
//! - `rollback.rs`: returning a volume to a snapshot;
//! - `schedules.rs`: snapshot schedules, their runs, retention and `--min-free`;
//! - `entries.rs`: the state: one entry per volume and per snapshot, with its record and
//!   either its live engine object or why it has none.
//!
//! # Lock order
//!
//! `inner` (the entries and the state file) is taken first, by every operation, and held
//! while it checks and changes them. Under it (or alone), the other locks are each taken
//! briefly and released before another is taken, so none of them nests:
//! `held` (names used by long operations), `exports` (what front-ends may open; front-ends
//! read it without `inner`), `usage` (front-ends' open counts: its sources take the
//! front-ends' own locks, so a front-end never calls into the registry while holding one)
//! and `endpoints`. `runs` (a schedule run in progress) is taken before `inner`, never under
//! it. Long operations (backup, restore, rollback) drop `inner` before their
//! long part and keep their names in `held` instead.

use crate::catalog::{UsageKind, UsageSource};
use crate::config::{TestHooks, VolumeIo};
use crate::error::{DaemonError, Result};
use crate::heartbeat::Heartbeat;
use crate::paths::Paths;
use crate::protocol::{Frontends, StatusInfo};
use crate::schedule::space::SpaceWatch;
use crate::state::State;
use fingerprint::{settled_fingerprint, PreviousStop};
use fss_core::export::Export;
use fss_core::Volume;
use indexmap::IndexMap;
pub(crate) use recovery::boot_id;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock};

mod entries;
mod fingerprint;
mod jobs;
mod journals;
mod recovery;
mod restore;
mod rollback;
mod schedules;
mod snapshots;
mod stand_ins;
mod volumes;

use entries::Inner;
pub use jobs::{BackupJob, Hold};
pub use schedules::now_secs;

/// The size of the volume made on a fresh state directory.
pub const DEFAULT_VOLUME_SIZE: u64 = 1 << 30;

/// Everything the daemon serves.
pub struct Registry {
    /// The state directory's places.
    paths: Paths,
    /// How volumes are opened.
    volume_io: VolumeIo,
    /// Test-only hooks.
    hooks: TestHooks,
    /// The entries and the state file (see the lock order above).
    inner: Mutex<Inner>,
    /// What front-ends may open, by name.
    pub(crate) exports: RwLock<BTreeMap<String, Export>>,
    /// Front-ends' counts of users per export (see [`crate::catalog`]).
    pub(crate) usage: Mutex<Vec<(UsageKind, UsageSource)>>,
    /// Serving processes the supervisor replaced before this one (for metrics).
    pub(crate) restarts: AtomicU64,
    /// Front-end addresses, for `status`.
    pub(crate) endpoints: Mutex<Frontends>,
    /// Names (volumes, snapshots) in use by long operations running now (backup, restore,
    /// rollback), with what holds them.
    held: Mutex<HashMap<String, Vec<String>>>,
    /// The heartbeat, from the moment volumes may be written on.
    heartbeat: OnceLock<Heartbeat>,
    /// The `--min-free` floors every store file is watched against.
    space: Arc<SpaceWatch>,
    /// Held for the whole of a schedule run, and by `schedule-remove` (taken before `inner`),
    /// so a removal waits for a run in progress and no run ends after its schedule is gone.
    runs: Mutex<()>,
}

impl Registry {
    /// The daemon's paths.
    #[must_use]
    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// The `--min-free` watch on store file systems (the reclaimer waits on it).
    #[must_use]
    pub fn space_watch(&self) -> &Arc<SpaceWatch> {
        &self.space
    }

    /// Load the state (or start one with a 1 GiB volume `default`), open every volume (the
    /// snapshots of one changed while fss was not running become unverified), bring back
    /// persistent snapshots, drop transient ones, start the heartbeat, replay the journals of
    /// held writes, finish interrupted deletes, rollbacks and restores (or leave their volumes
    /// offline). Volumes are opened as `volume_io` says.
    ///
    /// # Errors
    /// The state file is unreadable or damaged, or the default volume cannot be made.
    pub fn open(paths: Paths, volume_io: VolumeIo, hooks: TestHooks) -> Result<Registry> {
        let state_file = paths.state_file();
        let loaded = State::load(&state_file)?;
        let fresh = loaded.is_none();
        let mut state = loaded.unwrap_or_default();
        stand_ins::fold_invalidations(&paths, &mut state)?;
        let recovered_from_crash = !state.clean_shutdown;
        let stop = previous_stop(&state, &paths);
        let reg = Registry {
            paths,
            volume_io,
            hooks,
            inner: Mutex::new(Inner {
                meta: State {
                    volumes: Vec::new(),
                    snapshots: Vec::new(),
                    ..state.clone()
                },
                volumes: IndexMap::new(),
                snapshots: IndexMap::new(),
                recovered_from_crash,
            }),
            exports: RwLock::new(BTreeMap::new()),
            usage: Mutex::new(Vec::new()),
            restarts: AtomicU64::new(0),
            endpoints: Mutex::new(Frontends::default()),
            held: Mutex::new(HashMap::new()),
            heartbeat: OnceLock::new(),
            space: Arc::new(SpaceWatch::default()),
            runs: Mutex::new(()),
        };
        {
            let mut inner = reg.lock();
            let snapshots = std::mem::take(&mut state.snapshots);
            reg.bring_back_volumes(&mut inner, state.volumes, &snapshots, stop);
            reg.bring_back_snapshots(&mut inner, snapshots);
            if fresh && inner.volumes.is_empty() {
                let image = reg.paths.volumes_dir().join("default.img");
                if let Err(e) = reg.volume_create(
                    &mut inner,
                    "default",
                    DEFAULT_VOLUME_SIZE,
                    Some(image.clone()),
                ) {
                    // A default image left by a run whose state was lost: serve it again.
                    if image.exists() {
                        reg.volume_add(&mut inner, "default", &image)?;
                    } else {
                        return Err(e);
                    }
                }
                tracing::info!(image = %image.display(), "no volume configured: serving a new 1 GiB sparse volume 'default'");
            }
            reg.start_running(&mut inner)?;
            reg.update_floors(&inner);
        }
        // Replaying store logs allocated and freed a record per preserved block run.
        crate::heap::give_back_free_memory();
        Ok(reg)
    }

    /// Record that this run is under way, start the heartbeat, then replay the journals of
    /// held writes and finish the rollbacks and restores a stop interrupted, in that order
    /// (oldest writes first). In this order: the state is saved before any volume is written, so
    /// a crash from then on is judged as one; and before the last run's heartbeat is
    /// overwritten, so a failure to save leaves the next start what this one had to judge.
    fn start_running(&self, inner: &mut Inner) -> Result<()> {
        inner.meta.clean_shutdown = false;
        inner.meta.boot_id = boot_id();
        self.save(inner)?;
        let file = self.paths.heartbeat_file();
        let heartbeat = Heartbeat::start(&file)
            .map_err(|e| DaemonError::io(&format!("cannot write {}", file.display()), &e))?;
        let _ = self.heartbeat.set(heartbeat);
        self.replay_journals(inner);
        self.resume_rollbacks(inner);
        self.resume_restores(inner);
        self.save(inner)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Operations update the maps and the state together before any fallible step that
        // could panic; a poisoned lock still holds consistent data.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn save(&self, inner: &Inner) -> Result<()> {
        inner
            .to_state()
            .save(&self.paths.state_file())
            .map_err(Into::into)
    }

    fn publish(&self, name: &str, export: Export) {
        self.exports
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string(), export);
    }

    fn unpublish(&self, name: &str) {
        self.exports
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
    }

    /// Record where front-ends serve, for `status`.
    pub fn set_endpoints(&self, frontends: Frontends) {
        *self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = frontends;
    }

    fn name_taken(inner: &Inner, name: &str) -> bool {
        inner.volumes.contains_key(name) || inner.snapshots.contains_key(name)
    }

    /// `status`: the daemon's version, places and counts.
    #[must_use]
    pub fn status(&self) -> StatusInfo {
        let inner = self.lock();
        self.status_of(&inner)
    }

    fn status_of(&self, inner: &Inner) -> StatusInfo {
        let ep = self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        StatusInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            state_dir: self.paths.state_dir.clone(),
            fuse_dir: ep.fuse.clone(),
            nbd_socket: ep.nbd_unix.clone(),
            nbd_listen: ep.nbd_tcp.clone(),
            volumes: inner.volumes.len() as u64,
            snapshots: inner.snapshots.len() as u64,
            recovered_from_crash: inner.recovered_from_crash,
            supervisor_pid: None,
            restarts: 0,
            last_restart: None,
            frontends: ep,
        }
    }

    /// The transient snapshots (their records live in this process only: they are dropped
    /// when it ends).
    #[must_use]
    pub fn transient_snapshots(&self) -> Vec<String> {
        self.lock()
            .snapshots
            .values()
            .filter(|s| !s.record.persistent)
            .map(|s| s.record.name.clone())
            .collect()
    }

    /// Flush every volume (held writes are applied and made durable) without recording a
    /// clean stop: for a stop that leaves long operations to the next start.
    pub fn flush_volumes(&self) {
        flush_all(&self.lock());
    }

    /// Flush every volume, record fingerprints and a clean stop.
    pub fn shutdown(&self) {
        let mut inner = self.lock();
        for (name, entry) in &mut inner.volumes {
            match entry.volume().map(Volume::flush) {
                // Nothing is held any more: the journal has nothing to keep.
                Some(Ok(())) => self.remove_journal(&entry.record.id),
                Some(Err(e)) => tracing::error!(volume = %name, error = %e, "flush at stop failed"),
                None => {}
            }
            entry.record.fingerprint = settled_fingerprint(&entry.record.path);
        }
        inner.meta.clean_shutdown = true;
        if let Err(e) = self.save(&inner) {
            tracing::error!(error = %e, "could not record the clean stop");
        }
    }
}

/// How the run that left `state` ended (logged when not cleanly); read before this run beats.
fn previous_stop(state: &State, paths: &Paths) -> PreviousStop {
    let reboot = !state.boot_id.is_empty() && state.boot_id != boot_id();
    if !state.clean_shutdown {
        tracing::warn!(
            "the previous run did not stop cleanly ({}); persistent snapshots are recovered from their stores",
            if reboot { "the machine rebooted or lost power" } else { "the daemon crashed or was killed" }
        );
    }
    let stop = PreviousStop::of(state.clean_shutdown, reboot, &paths.heartbeat_file());
    if stop == (PreviousStop::Died { last_beat: None }) {
        tracing::warn!(
            "no heartbeat of the previous run in {}: images changed after it died cannot be told from its own last writes, and are not checked",
            paths.heartbeat_file().display()
        );
    }
    stop
}

fn flush_all(inner: &Inner) {
    for (name, entry) in &inner.volumes {
        if let Err(e) = entry.volume().map_or(Ok(()), Volume::flush) {
            tracing::error!(volume = %name, error = %e, "flush at stop failed");
        }
    }
}
