//! Snapshot schedules (`fss schedule add|list|remove`): what is kept of one in `state.json`,
//! what the control protocol says of it, and the pieces the registry and the daemon use.
//!
//! - `every.rs`: intervals (`30s`, `5m`, `1h`, `7d`);
//! - `calendar.rs`: UTC calendar fields of a time;
//! - `naming.rs`: the names of scheduled snapshots;
//! - `retention.rs`: which of a schedule's snapshots to keep;
//! - `space.rs`: `--min-free`: the watch on store file systems, checked at each store write;
//! - `timer.rs`: the threads of the serving process that run due schedules and reclaim space.
//!
//! The schedules and their runs are state on disk, not memory, so they survive a restart of
//! the serving process: the next one runs a missed schedule once at start.

mod calendar;
mod every;
mod naming;
mod retention;
pub mod space;
pub mod timer;

pub use calendar::Utc;
pub use every::{format_every, parse_every};
pub use naming::snapshot_name;
pub use retention::Retention;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What `schedule-add` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    /// The volume.
    pub volume: String,
    /// The mount point of a file system on it: each run freezes and thaws it.
    #[serde(default)]
    pub mount_point: Option<String>,
    /// Seconds between runs.
    pub every_seconds: u64,
    /// What to keep.
    #[serde(default)]
    pub retention: Retention,
    /// Take transient snapshots.
    #[serde(default)]
    pub transient: bool,
    /// Store directory (default `<state-dir>/stores/`).
    #[serde(default)]
    pub store: Option<PathBuf>,
    /// Bytes to keep free on the store's file system by deleting this schedule's oldest
    /// snapshots (never its newest).
    #[serde(default)]
    pub min_free: Option<u64>,
}

/// A schedule as kept in `state.json` (the list `schedules`; absent when empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleState {
    /// What was asked for.
    #[serde(flatten)]
    pub spec: ScheduleSpec,
    /// When it was added, seconds since the epoch: the first run is then.
    pub added: u64,
    /// The snapshots it took that still exist, oldest first: the only ones it deletes.
    #[serde(default)]
    pub members: Vec<String>,
    /// When it last ran.
    #[serde(default)]
    pub last_run: Option<u64>,
    /// `None` when the last run succeeded, else why it failed.
    #[serde(default)]
    pub last_error: Option<String>,
    /// When a run last succeeded.
    #[serde(default)]
    pub last_success: Option<u64>,
}

impl ScheduleState {
    /// When it runs next: at its addition, then one interval after the last run. A time in
    /// the past (the daemon was down) means one run now, not one per missed interval.
    #[must_use]
    pub fn next_run(&self) -> u64 {
        self.last_run
            .map_or(self.added, |l| l.saturating_add(self.spec.every_seconds))
    }
}

/// A schedule in `schedule-list` (and the answer to `schedule-add` and `schedule-remove`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleInfo {
    /// The volume.
    pub volume: String,
    /// The mount point frozen for each run, if any.
    pub mount_point: Option<String>,
    /// Seconds between runs.
    pub every_seconds: u64,
    /// What is kept.
    pub retention: Retention,
    /// Transient snapshots.
    pub transient: bool,
    /// Store directory, if not the default.
    pub store: Option<PathBuf>,
    /// `--min-free` in bytes.
    pub min_free: Option<u64>,
    /// Its snapshots, oldest first.
    pub snapshots: Vec<String>,
    /// When it last ran, seconds since the epoch.
    pub last_run: Option<u64>,
    /// Whether the last run succeeded (`None`: it has not run).
    pub last_run_ok: Option<bool>,
    /// Why the last run failed.
    pub last_error: Option<String>,
    /// When a run last succeeded.
    pub last_success: Option<u64>,
    /// When it runs next (now or earlier: at the next tick).
    pub next_run: u64,
}

impl From<&ScheduleState> for ScheduleInfo {
    fn from(s: &ScheduleState) -> Self {
        ScheduleInfo {
            volume: s.spec.volume.clone(),
            mount_point: s.spec.mount_point.clone(),
            every_seconds: s.spec.every_seconds,
            retention: s.spec.retention,
            transient: s.spec.transient,
            store: s.spec.store.clone(),
            min_free: s.spec.min_free,
            snapshots: s.members.clone(),
            last_run: s.last_run,
            last_run_ok: s.last_run.map(|_| s.last_error.is_none()),
            last_error: s.last_error.clone(),
            last_success: s.last_success,
            next_run: s.next_run(),
        }
    }
}
