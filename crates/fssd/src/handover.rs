//! The contract between the supervisor (`fss serve`, [`crate::supervisor`]) and the serving
//! process it starts ([`crate::serving`]): the environment the serving process gets, the lines
//! the two exchange on their channel, the exit status of a drained process, and the restart
//! record `status` reports. Both sides read it here; nothing else reads these variables.
//!
//! Environment of a serving process:
//! - `FSS_SUPERVISOR_FDS=control=N,nbd-unix=N,nbd-tcp=N,fuse=N,channel=N` (absent entries
//!   omitted): inherited descriptors, at these numbers;
//! - `FSS_SUPERVISOR_PID`: the supervisor (the serving process exits if its parent is not it);
//! - `FSS_RESTARTS`: serving processes that ended since the supervisor started;
//! - `FSS_LAST_RESTART`: the last one's end, as the JSON of [`LastRestart`] (absent before
//!   the first);
//! - `FSS_FUSE_RESUME=1`: the FUSE connection has already done INIT (every process after the
//!   first one that got it).
//!
//! The channel (a unix stream socket pair) carries lines: the serving process sends `ready`
//! once it serves, and `restart` when `fss restart` asks; the supervisor answers `restart`
//! with `proceed VERSION` (the binary on disk ran `--version`) or `refused WHY`.

use crate::error::{DaemonError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::fd::RawFd;

/// Inherited descriptors: `name=N,...`.
pub const ENV_FDS: &str = "FSS_SUPERVISOR_FDS";
/// The supervisor's pid.
pub const ENV_PID: &str = "FSS_SUPERVISOR_PID";
/// Serving processes that ended since the supervisor started.
pub const ENV_RESTARTS: &str = "FSS_RESTARTS";
/// The last end, as JSON.
pub const ENV_LAST_RESTART: &str = "FSS_LAST_RESTART";
/// `1`: the inherited FUSE connection is past INIT.
pub const ENV_FUSE_RESUME: &str = "FSS_FUSE_RESUME";

/// The exit status of a serving process that drained and saved for `fss restart`
/// (`EX_TEMPFAIL`): the supervisor starts the binary on disk in its place.
pub const EXIT_UPGRADE: i32 = 75;

/// The descriptors a supervisor hands over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FdName {
    /// The control socket's listener.
    Control,
    /// The NBD unix socket's listener.
    NbdUnix,
    /// The NBD TCP listener (`--nbd-listen`).
    NbdTcp,
    /// The `/dev/fuse` connection of the FUSE directory, mounted by the supervisor.
    Fuse,
    /// The channel to the supervisor.
    Channel,
    /// The metrics HTTP listener (`--metrics-listen`).
    Metrics,
}

impl FdName {
    const ALL: [FdName; 6] = [
        FdName::Control,
        FdName::NbdUnix,
        FdName::NbdTcp,
        FdName::Fuse,
        FdName::Channel,
        FdName::Metrics,
    ];

    /// The name in `FSS_SUPERVISOR_FDS`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            FdName::Control => "control",
            FdName::NbdUnix => "nbd-unix",
            FdName::NbdTcp => "nbd-tcp",
            FdName::Fuse => "fuse",
            FdName::Channel => "channel",
            FdName::Metrics => "metrics",
        }
    }
}

/// Descriptor numbers by name, as `FSS_SUPERVISOR_FDS` carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FdTable(pub BTreeMap<FdName, RawFd>);

impl FdTable {
    /// `control=3,nbd-unix=4,...`.
    #[must_use]
    pub fn format(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{}={v}", k.as_str()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Parse `FSS_SUPERVISOR_FDS`.
    ///
    /// # Errors
    /// An entry is not `name=N` with a known name and a descriptor number above 2.
    pub fn parse(s: &str) -> Result<Self> {
        let mut t = BTreeMap::new();
        for entry in s.split(',').filter(|e| !e.is_empty()) {
            let bad = || DaemonError::internal(format!("{ENV_FDS}: bad entry '{entry}' in '{s}'"));
            let (name, n) = entry.split_once('=').ok_or_else(bad)?;
            let name = FdName::ALL
                .into_iter()
                .find(|f| f.as_str() == name)
                .ok_or_else(bad)?;
            let n: RawFd = n.parse().map_err(|_| bad())?;
            if n < 3 {
                return Err(bad());
            }
            t.insert(name, n);
        }
        Ok(FdTable(t))
    }
}

/// Why a serving process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartReason {
    /// Killed by a signal (a crash, `kill -9`).
    Signal,
    /// Exited by itself, with a status other than [`EXIT_UPGRADE`].
    Exit,
    /// Drained for `fss restart`.
    Upgrade,
}

impl std::fmt::Display for RestartReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RestartReason::Signal => "signal",
            RestartReason::Exit => "exit",
            RestartReason::Upgrade => "upgrade",
        })
    }
}

/// How the previous serving process ended (`status` field `last_restart`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRestart {
    /// When, in seconds since the epoch.
    pub time: u64,
    /// Why.
    pub reason: RestartReason,
    /// The signal that killed it (`signal`).
    pub signal: Option<i32>,
    /// Its exit status (`exit`, `upgrade`).
    pub exit_code: Option<i32>,
    /// Set when `fss restart` started a new binary that ended before it was ready, and the
    /// previous binary was started again: what happened to the new one.
    #[serde(default)]
    pub upgrade_error: Option<String>,
}

/// A line from the serving process to the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToSupervisor {
    /// It serves (the control socket answers).
    Ready,
    /// `fss restart` asks to hand over to the binary on disk: may it?
    Restart,
}

/// A line from the supervisor to the serving process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToServing {
    /// Drain and exit with [`EXIT_UPGRADE`]: the binary on disk runs (its `--version`).
    Proceed(String),
    /// Keep serving: the binary on disk cannot take over (why).
    Refused(String),
}

impl ToSupervisor {
    /// The line, with its newline.
    #[must_use]
    pub fn line(&self) -> &'static str {
        match self {
            ToSupervisor::Ready => "ready\n",
            ToSupervisor::Restart => "restart\n",
        }
    }

    /// Parse a line (without its newline).
    #[must_use]
    pub fn parse(line: &str) -> Option<Self> {
        match line.trim_end() {
            "ready" => Some(ToSupervisor::Ready),
            "restart" => Some(ToSupervisor::Restart),
            _ => None,
        }
    }
}

impl ToServing {
    /// The line, with its newline (newlines inside become spaces).
    #[must_use]
    pub fn line(&self) -> String {
        let (word, text) = match self {
            ToServing::Proceed(v) => ("proceed", v),
            ToServing::Refused(why) => ("refused", why),
        };
        format!("{word} {}\n", text.replace('\n', " ").trim())
    }

    /// Parse a line.
    #[must_use]
    pub fn parse(line: &str) -> Option<Self> {
        let (word, text) = line
            .trim_end()
            .split_once(' ')
            .unwrap_or((line.trim_end(), ""));
        match word {
            "proceed" => Some(ToServing::Proceed(text.to_string())),
            "refused" => Some(ToServing::Refused(text.to_string())),
            _ => None,
        }
    }
}

/// What `restart` answers, once the serving process has drained and saved (its successor then
/// takes over; the client waits for it to answer `status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartInfo {
    /// The process that drained.
    pub old_pid: u32,
    /// Its version.
    pub old_version: String,
    /// What the binary on disk said to `--version`.
    pub new_binary: String,
    /// Long operations that finished while the restart waited for them.
    pub waited_for: Vec<String>,
    /// Long operations still running at the timeout: the next process resumes them (a backup
    /// is cut off: its client sees an error).
    pub carried_over: Vec<String>,
    /// Transient snapshots dropped (`drop_transient`).
    pub dropped_transient: Vec<String>,
    /// NBD connections closed after their last reply.
    pub nbd_connections_drained: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_tables_round_trip_and_refuse_nonsense() {
        let mut t = FdTable::default();
        t.0.insert(FdName::Control, 3);
        t.0.insert(FdName::NbdTcp, 9);
        t.0.insert(FdName::Channel, 12);
        let s = t.format();
        assert_eq!(s, "control=3,nbd-tcp=9,channel=12");
        assert_eq!(FdTable::parse(&s), Ok(t));
        for bad in ["control=1", "ctl=4", "control", "control=x"] {
            assert!(FdTable::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn channel_lines_round_trip() {
        for m in [ToSupervisor::Ready, ToSupervisor::Restart] {
            assert_eq!(ToSupervisor::parse(m.line()), Some(m));
        }
        for m in [
            ToServing::Proceed("fss 0.2.0".into()),
            ToServing::Refused("/usr/bin/fss --version exited with status 1".into()),
        ] {
            assert_eq!(ToServing::parse(&m.line()), Some(m));
        }
        assert_eq!(ToSupervisor::parse("nonsense"), None);
    }

    #[test]
    fn the_restart_record_is_the_documented_json() {
        let r = LastRestart {
            time: 1,
            reason: RestartReason::Signal,
            signal: Some(9),
            exit_code: None,
            upgrade_error: None,
        };
        let v = serde_json::to_value(&r).unwrap_or_default();
        assert_eq!(
            v,
            serde_json::json!({"time": 1, "reason": "signal", "signal": 9, "exit_code": null,
                "upgrade_error": null})
        );
    }
}
