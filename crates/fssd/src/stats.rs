//! `stats`: the daemon's figures at one moment (what `fss stats --json` prints and what
//! `GET /metrics` encodes, see [`crate::metrics`]), gathered from the registry, the engine's
//! counters and the front-ends' counts.

use crate::catalog::UsageKind;
use crate::error::Result;
use crate::protocol::SnapshotHealth;
use crate::registry::Registry;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;

/// The answer to `stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Serving processes the supervisor replaced since it started (crashes, `fss restart`).
    pub restarts: u64,
    /// NBD connections with an export open.
    pub nbd_connections: u64,
    /// Files open in the FUSE directory.
    pub fuse_open_files: u64,
    /// One entry per online volume.
    pub volumes: Vec<VolumeStat>,
    /// One entry per snapshot, oldest first per volume.
    pub snapshots: Vec<SnapshotStat>,
    /// One entry per snapshot schedule (`fss schedule`).
    #[serde(default)]
    pub schedules: Vec<ScheduleStat>,
}

/// A schedule's last outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleStat {
    /// The volume it snapshots.
    pub volume: String,
    /// When a run last succeeded, seconds since the epoch (`None`: never).
    pub last_success: Option<u64>,
    /// Whether the last run succeeded (`None`: no run yet).
    pub last_run_ok: Option<bool>,
}

/// A volume's counters since this serving process started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeStat {
    /// The volume.
    pub name: String,
    /// Bytes read from it (NBD and FUSE).
    pub read_bytes: u64,
    /// Bytes written, discarded or zeroed.
    pub written_bytes: u64,
    /// Pre-image blocks (4 KiB) written to its snapshots' stores.
    pub preserved_blocks: u64,
    /// Bytes of acknowledged writes not applied to the volume yet.
    pub held_write_bytes: u64,
}

/// A snapshot's store and health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotStat {
    /// The snapshot.
    pub name: String,
    /// Its volume.
    pub volume: String,
    /// Bytes its store uses.
    pub store_used_bytes: u64,
    /// Its store's maximum (`None`: no limit but the medium's).
    pub store_max_bytes: Option<u64>,
    /// Valid (not invalidated, unverified or unavailable).
    pub valid: bool,
    /// Creation time, seconds since the epoch.
    pub created: u64,
}

impl Registry {
    /// Record how many serving processes the supervisor replaced before this one.
    pub fn set_restarts(&self, restarts: u64) {
        self.restarts.store(restarts, Ordering::Relaxed);
    }

    /// `stats`: the figures now.
    ///
    /// # Errors
    /// Not expected (see [`Registry::list_snapshots`]).
    pub fn stats(&self) -> Result<Stats> {
        let snapshots = self
            .list_snapshots()?
            .into_iter()
            .map(|s| SnapshotStat {
                valid: s.state == SnapshotHealth::Valid,
                name: s.name,
                volume: s.volume,
                store_used_bytes: s.store_used,
                store_max_bytes: s.store_max,
                created: s.created,
            })
            .collect();
        Ok(Stats {
            restarts: self.restarts.load(Ordering::Relaxed),
            nbd_connections: self.users_of_kind(UsageKind::Nbd),
            fuse_open_files: self.users_of_kind(UsageKind::Fuse),
            volumes: self.volume_stats(),
            snapshots,
            schedules: self
                .list_schedules()
                .into_iter()
                .map(|s| ScheduleStat {
                    volume: s.volume,
                    last_success: s.last_success,
                    last_run_ok: s.last_run_ok,
                })
                .collect(),
        })
    }
}
