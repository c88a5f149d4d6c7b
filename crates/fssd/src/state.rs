//! The daemon's persistent state: volumes, snapshots, their order and settings, in
//! `<state-dir>/state.json`, written atomically (temp file, fsync, rename, fsync of the
//! directory) so that a crash leaves either the old or the new file, never a mix.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The state file's format version.
pub const STATE_VERSION: u32 = 1;

/// How a volume's storage was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeKind {
    /// A sparse image fss created (`fss volume create`).
    CreatedImage,
    /// An existing image file (`fss volume add`).
    Image,
    /// An existing block device (`fss volume add`).
    BlockDevice,
}

/// What identifies a volume's storage between runs, to notice changes made while fss was not
/// running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Fingerprint {
    /// Size in bytes.
    pub size: u64,
    /// Device and inode numbers of the image (0 for block devices).
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Modification time (ns) when fss last stopped cleanly; `None` after an unclean stop.
    #[serde(default)]
    pub mtime_ns: Option<i128>,
    /// Status change time (ns), recorded when the volume was added, at each start and at each
    /// clean stop; `None` for block devices and in states of older releases, which did not
    /// record it (absent from the file then, so those releases read it as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctime_ns: Option<i128>,
}

/// A volume, as remembered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeState {
    /// Name.
    pub name: String,
    /// Identity recorded in its snapshots' stores (hex).
    pub id: String,
    /// Image file or block device.
    pub path: PathBuf,
    /// How it was given.
    pub kind: VolumeKind,
    /// Size in bytes.
    pub size: u64,
    /// Fingerprint (see [`Fingerprint`] for when each part was taken).
    #[serde(default)]
    pub fingerprint: Fingerprint,
    /// Set when the volume was found changed while fss was not running: its snapshots are
    /// unverified until they are deleted. Kept across restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unverified: Option<String>,
}

/// A snapshot, as remembered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotState {
    /// Name.
    pub name: String,
    /// Its volume's name.
    pub volume: String,
    /// Creation order within the volume.
    pub id: u64,
    /// Survives restarts.
    pub persistent: bool,
    /// Store file or device.
    pub store: PathBuf,
    /// Whether fss made the store file (and removes it on delete).
    pub store_owned: bool,
    /// Whether the store is a raw block device.
    pub store_is_device: bool,
    /// The store's maximum size.
    pub max_store_bytes: Option<u64>,
    /// `invalidate` or `fail-write`.
    pub on_store_error: crate::protocol::StorePolicy,
    /// Creation time, seconds since the epoch.
    pub created: u64,
    /// Cluster size in bytes.
    pub cluster_size: u64,
    /// Mount point it was taken of, if any (for listings).
    #[serde(default)]
    pub mount_point: Option<String>,
    /// Set while a delete is in progress; a restart finishes it.
    #[serde(default)]
    pub deleting: bool,
    /// Why it is invalid, when that could not be recorded in its store (a pre-image was lost
    /// while the store was unavailable): it stays invalid for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
}

/// A rollback in progress: written before the first byte of the volume is rewritten and
/// removed once the rollback is complete, so that a restart redoes an interrupted one before
/// the volume is served (a rollback is idempotent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackState {
    /// The volume's name.
    pub volume: String,
    /// The volume's identity (hex), so a volume removed and added again under the same name is
    /// not mistaken for it.
    pub volume_id: String,
    /// The snapshot the volume is returned to.
    pub snapshot: String,
    /// The snapshot's creation order within the volume.
    pub snapshot_id: u64,
    /// When the rollback started, seconds since the epoch.
    pub started: u64,
}

/// A restore onto a volume in progress: written (and flushed) before the first byte of the
/// volume is written and removed once the restored volume is flushed, so that a restart
/// finishes an interrupted one (restoring the same chain again from the start is idempotent:
/// the full backup rewrites every byte) or, when its backups are gone, leaves the volume
/// offline instead of serving it half restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreState {
    /// The volume's name.
    pub volume: String,
    /// The volume's identity (hex), so a volume removed and added again under the same name is
    /// not mistaken for it.
    pub volume_id: String,
    /// The backup files, the full one first, as the daemon opens them.
    pub files: Vec<PathBuf>,
    /// Their backup ids (hex), in the same order, so that a file replaced by another backup
    /// is not restored in its place.
    pub backup_ids: Vec<String>,
    /// When the restore started, seconds since the epoch.
    pub started: u64,
}

/// Everything in `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Format version of this file.
    pub version: u32,
    /// Whether the last run stopped cleanly.
    pub clean_shutdown: bool,
    /// The kernel boot id of the last run, to tell a daemon crash from a reboot.
    pub boot_id: String,
    /// Volumes.
    pub volumes: Vec<VolumeState>,
    /// Snapshots, oldest first.
    pub snapshots: Vec<SnapshotState>,
    /// Rollbacks in progress (absent from the file when there are none, so older fss
    /// releases read it as before).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollbacks: Vec<RollbackState>,
    /// Restores onto volumes in progress (absent when there are none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restores: Vec<RestoreState>,
    /// Snapshot schedules, with the snapshots each took (absent when there are none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<crate::schedule::ScheduleState>,
}

impl Default for State {
    fn default() -> Self {
        State {
            version: STATE_VERSION,
            clean_shutdown: true,
            boot_id: String::new(),
            volumes: Vec::new(),
            snapshots: Vec::new(),
            rollbacks: Vec::new(),
            restores: Vec::new(),
            schedules: Vec::new(),
        }
    }
}

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file system said no.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Which file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid JSON of the expected shape.
    #[error(
        "{path} is damaged ({detail}); restore it from a backup or move it away to start empty"
    )]
    Damaged {
        /// Which file.
        path: PathBuf,
        /// The parser's complaint.
        detail: String,
    },
    /// A newer fss wrote it.
    #[error("{path} has state format {found}, newer than this fss understands ({STATE_VERSION}); use a newer fss")]
    TooNew {
        /// Which file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
}

impl State {
    /// Load `path`, or the default if it does not exist.
    ///
    /// # Errors
    /// Unreadable, damaged, or too new.
    pub fn load(path: &Path) -> Result<Option<State>, StateError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Io {
                    op: "read",
                    path: path.into(),
                    source,
                })
            }
        };
        let state: State = serde_json::from_str(&text).map_err(|e| StateError::Damaged {
            path: path.into(),
            detail: e.to_string(),
        })?;
        if state.version > STATE_VERSION {
            return Err(StateError::TooNew {
                path: path.into(),
                found: state.version,
            });
        }
        Ok(Some(state))
    }

    /// Write atomically to `path`.
    ///
    /// # Errors
    /// The write, fsync or rename failed (the old file is then intact).
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let io = |op, source| StateError::Io {
            op,
            path: path.into(),
            source,
        };
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|e| StateError::Damaged {
            path: path.into(),
            detail: e.to_string(),
        })?;
        // Made fresh with mode 0600 (a leftover temp file keeps its old mode otherwise); the
        // rename then replaces an older state.json's mode too.
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(fss_core::device::FILE_MODE)
            .open(&tmp)
            .map_err(|e| io("create", e))?;
        f.write_all(text.as_bytes()).map_err(|e| io("write", e))?;
        f.write_all(b"\n").map_err(|e| io("write", e))?;
        f.sync_all().map_err(|e| io("fsync", e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| io("rename", e))?;
        if let Some(dir) = path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("fsync directory of", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        assert_eq!(State::load(&p).unwrap(), None);
        let mut s = State::default();
        s.volumes.push(VolumeState {
            name: "v".into(),
            id: "00".into(),
            path: "/x".into(),
            kind: VolumeKind::Image,
            size: 1,
            fingerprint: Fingerprint::default(),
            unverified: None,
        });
        s.save(&p).unwrap();
        assert_eq!(State::load(&p).unwrap(), Some(s));
        std::fs::write(&p, "{not json").unwrap();
        let e = State::load(&p).unwrap_err();
        assert!(e.to_string().contains("damaged"), "{e}");
        std::fs::write(
            &p,
            r#"{"version":9,"clean_shutdown":true,"boot_id":"","volumes":[],"snapshots":[]}"#,
        )
        .unwrap();
        assert!(State::load(&p).unwrap_err().to_string().contains("newer"));
    }

    #[test]
    fn restores_are_optional_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        State::default().save(&p).unwrap();
        assert!(!std::fs::read_to_string(&p).unwrap().contains("restores"));
        let mut s = State::default();
        s.restores.push(RestoreState {
            volume: "v".into(),
            volume_id: "00".into(),
            files: vec!["/b/full.fss".into(), "/b/incr.fss".into()],
            backup_ids: vec!["01".into(), "02".into()],
            started: 3,
        });
        s.save(&p).unwrap();
        assert_eq!(State::load(&p).unwrap(), Some(s));
    }

    #[test]
    fn a_fingerprint_without_a_ctime_reads_and_writes_as_before() {
        let old = r#"{"size":1,"dev":2,"ino":3,"mtime_ns":null}"#;
        let f: Fingerprint = serde_json::from_str(old).unwrap();
        assert_eq!(f.ctime_ns, None);
        assert_eq!(serde_json::to_string(&f).unwrap(), old);
        let with = Fingerprint {
            ctime_ns: Some(5),
            ..f
        };
        let text = serde_json::to_string(&with).unwrap();
        assert!(text.contains(r#""ctime_ns":5"#), "{text}");
        assert_eq!(serde_json::from_str::<Fingerprint>(&text).unwrap(), with);
    }

    #[test]
    fn schedules_are_optional_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        State::default().save(&p).unwrap();
        assert!(!std::fs::read_to_string(&p).unwrap().contains("schedules"));
        let mut s = State::default();
        s.schedules.push(crate::schedule::ScheduleState {
            spec: crate::schedule::ScheduleSpec {
                volume: "v".into(),
                every_seconds: 60,
                min_free: Some(1 << 20),
                ..Default::default()
            },
            added: 5,
            members: vec!["v-20261204T2031Z".into()],
            last_run: Some(6),
            last_error: None,
            last_success: Some(6),
        });
        s.save(&p).unwrap();
        assert_eq!(State::load(&p).unwrap(), Some(s));
    }

    #[test]
    fn rollbacks_are_optional_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        // A file written before rollbacks existed loads, with none in progress.
        std::fs::write(
            &p,
            r#"{"version":1,"clean_shutdown":true,"boot_id":"","volumes":[],"snapshots":[]}"#,
        )
        .unwrap();
        assert!(State::load(&p).unwrap().unwrap().rollbacks.is_empty());
        // None in progress: the field is left out, as older releases wrote it.
        State::default().save(&p).unwrap();
        assert!(!std::fs::read_to_string(&p).unwrap().contains("rollbacks"));
        let mut s = State::default();
        s.rollbacks.push(RollbackState {
            volume: "v".into(),
            volume_id: "00".into(),
            snapshot: "s".into(),
            snapshot_id: 1,
            started: 2,
        });
        s.save(&p).unwrap();
        assert_eq!(State::load(&p).unwrap(), Some(s));
    }
}
