//! The control protocol: versioned JSON lines over `<state-dir>/control.sock` (see
//! `docs/CONTROL.md`). One request per line, one response per line, in order.

use crate::error::ErrorKind;
pub use crate::handover::{LastRestart, RestartInfo, RestartReason};
pub use crate::schedule::{Retention, ScheduleInfo, ScheduleSpec};
pub use crate::state::VolumeKind;
mod jobs;

pub use jobs::*;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::path::PathBuf;

/// The protocol version this daemon speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Defines a fieldless enum that is a kebab-case string on the wire, with `as_str` and
/// `Display` giving the same name.
macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(rename_all = "kebab-case")]
        pub enum $name {
            $($(#[$vm])* $variant,)+
        }

        impl $name {
            /// The name on the wire.
            #[must_use]
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum! {
    /// Whether a snapshot survives restarts.
    SnapshotKind {
        /// Kept in a store, brought back after a restart.
        Persistent = "persistent",
        /// Gone at the next restart.
        Transient = "transient",
    }
}

wire_enum! {
    /// Whether a snapshot's contents can be trusted.
    SnapshotHealth {
        /// Readable and correct.
        Valid = "valid",
        /// Invalidated (its store filled up or failed).
        Invalid = "invalid",
        /// Its volume changed while fss was not running.
        Unverified = "unverified",
        /// Could not be brought back at start.
        Unavailable = "unavailable",
    }
}

wire_enum! {
    /// What a backup holds.
    BackupKind {
        /// The whole snapshot.
        Full = "full",
        /// What changed since an older snapshot.
        Incremental = "incremental",
    }
}

wire_enum! {
    /// What a snapshot does when a pre-image cannot be preserved (`--on-store-error`).
    StorePolicy {
        /// Invalidate the snapshot; the volume write goes on (the default).
        Invalidate = "invalidate",
        /// Fail the volume write; the snapshot stays valid.
        FailWrite = "fail-write",
    }
}

impl StorePolicy {
    /// The policy named `s`, as `--on-store-error` takes it.
    ///
    /// # Errors
    /// `invalid-argument` for any other name.
    pub fn parse(s: &str) -> crate::Result<Self> {
        match s {
            "invalidate" => Ok(StorePolicy::Invalidate),
            "fail-write" => Ok(StorePolicy::FailWrite),
            other => Err(crate::DaemonError::invalid(format!(
                "unknown --on-store-error '{other}': use invalidate or fail-write"
            ))),
        }
    }
}

impl From<StorePolicy> for fss_core::OnStoreError {
    fn from(p: StorePolicy) -> Self {
        match p {
            StorePolicy::Invalidate => fss_core::OnStoreError::Invalidate,
            StorePolicy::FailWrite => fss_core::OnStoreError::FailWrite,
        }
    }
}

/// Whether a volume is served: `online`, or `offline: WHY` on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeStatus {
    /// Served.
    Online,
    /// Not served, and why.
    Offline(String),
}

impl std::fmt::Display for VolumeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VolumeStatus::Online => f.write_str("online"),
            VolumeStatus::Offline(why) => write!(f, "offline: {why}"),
        }
    }
}

impl Serialize for VolumeStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VolumeStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Ok(match text.strip_prefix("offline: ") {
            Some(why) => VolumeStatus::Offline(why.to_string()),
            None if text == "online" => VolumeStatus::Online,
            None => VolumeStatus::Offline(text),
        })
    }
}

/// Options of a new snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSpec {
    /// The volume's name.
    pub volume: String,
    /// The snapshot's name.
    pub name: String,
    /// Store file, directory, or raw device; default `<state-dir>/stores/`.
    #[serde(default)]
    pub store: Option<PathBuf>,
    /// Cluster size in bytes (first snapshot of the volume only).
    #[serde(default)]
    pub cluster_size: Option<u64>,
    /// Maximum store size in bytes.
    #[serde(default)]
    pub max_store_size: Option<u64>,
    /// Transient instead of persistent.
    #[serde(default)]
    pub transient: bool,
    /// `invalidate` (default) or `fail-write`.
    #[serde(default)]
    pub on_store_error: Option<String>,
    /// Unlink the store file once configured (fssconfig -x); implies transient.
    #[serde(default)]
    pub unlink_store: bool,
    /// The mount point the snapshot was taken of, for listings.
    #[serde(default)]
    pub mount_point: Option<String>,
    /// The freeze lease the file system is frozen under: the snapshot is refused if it expired
    /// (the daemon thawed the file system, so the snapshot would not be consistent).
    #[serde(default)]
    pub lease: Option<u64>,
}

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Daemon status.
    Status,
    /// The figures metrics report ([`crate::stats::Stats`]).
    Stats,
    /// Create a sparse image and serve it.
    VolumeCreate {
        /// Name.
        name: String,
        /// Size in bytes.
        size: u64,
        /// Image path; default `<state-dir>/volumes/NAME.img`.
        #[serde(default)]
        image: Option<PathBuf>,
    },
    /// Serve an existing image or block device.
    VolumeAdd {
        /// Name.
        name: String,
        /// The image or device.
        device: PathBuf,
    },
    /// List volumes.
    VolumeList,
    /// Stop serving a volume (its image is kept).
    VolumeRemove {
        /// Name.
        name: String,
    },
    /// Take a snapshot.
    SnapshotCreate(SnapshotSpec),
    /// Take several snapshots at one instant.
    SnapshotCreateGroup {
        /// The snapshots.
        members: Vec<SnapshotSpec>,
    },
    /// Delete a snapshot.
    SnapshotDelete {
        /// Name.
        name: String,
    },
    /// Change a live snapshot's settings: its store's maximum size (`null`: no limit but the
    /// medium's).
    SnapshotSet {
        /// Name.
        name: String,
        /// The new maximum in bytes, or `null`.
        max_store_size: Option<u64>,
    },
    /// List snapshots.
    SnapshotList,
    /// Describe a snapshot.
    SnapshotInfo {
        /// Name.
        name: String,
    },
    /// Check a snapshot's store against its checksums.
    SnapshotVerify {
        /// Name.
        name: String,
    },
    /// SHA-256 of a volume's or snapshot's whole contents (for checks and tests).
    Checksum {
        /// Name.
        name: String,
    },
    /// Open a freeze lease on a mount point: the daemon thaws it if the lease is not closed in
    /// time or the connection drops.
    LeaseOpen {
        /// The mount point.
        mount_point: String,
    },
    /// Close a lease (after the client thawed).
    LeaseClose {
        /// The lease id.
        lease: u64,
    },
    /// The extents changed on the volume between `snapshot` and the newer snapshot `until`
    /// (or now), exact to 4 KiB: an array of [`DiffExtent`].
    Diff {
        /// The older snapshot.
        snapshot: String,
        /// The newer snapshot; `None`: the volume now.
        #[serde(default)]
        until: Option<String>,
    },
    /// Stream a backup of `snapshot` (incremental from `since` when given): the response is
    /// followed by frames of the backup stream and a final line (`docs/CONTROL.md`).
    Backup {
        /// The snapshot to back up.
        snapshot: String,
        /// The older snapshot an incremental backup starts from.
        #[serde(default)]
        since: Option<String>,
        /// Incremental only: widen every changed extent out to multiples of this many bytes
        /// (a repository's chunk size), so each chunk the changes touch arrives whole.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        align: Option<u64>,
    },
    /// Restore backup files (a full backup, then incrementals in order) onto a volume that has
    /// no snapshots and is not open. Progress lines precede the response.
    Restore {
        /// The volume.
        volume: String,
        /// Backup files, as paths the daemon can open.
        files: Vec<PathBuf>,
    },
    /// Forget the unfinished restore onto a volume (interrupted or failed midway) and serve
    /// the volume as it is, partly restored: a [`RestoreAbandoned`].
    RestoreAbandon {
        /// The volume.
        volume: String,
    },
    /// Hand over to the binary on disk (`fss restart`): drain, save, answer a
    /// [`RestartInfo`], exit; the supervisor starts the new process.
    Restart {
        /// How long to wait for long operations before carrying them over (default 30 s).
        #[serde(default)]
        timeout_seconds: Option<u64>,
        /// Go ahead even though transient snapshots exist (they are dropped).
        #[serde(default)]
        drop_transient: bool,
    },
    /// Return a volume to a snapshot's contents. Progress lines precede the response.
    Rollback {
        /// The volume.
        volume: String,
        /// The snapshot (of that volume) to return to; it is kept.
        snapshot: String,
        /// Even while the volume is open by NBD clients or FUSE users.
        #[serde(default)]
        force: bool,
    },
    /// Take snapshots of a volume on a schedule: a [`ScheduleInfo`].
    ScheduleAdd(ScheduleSpec),
    /// Every schedule: an array of [`ScheduleInfo`].
    ScheduleList,
    /// Stop a volume's schedule (its snapshots are kept): the [`ScheduleInfo`] removed.
    ScheduleRemove {
        /// The volume.
        volume: String,
    },
}

impl Request {
    /// Whether the request changes nothing the next process would need to know (it is
    /// answered while a restart drains; the others are refused with `busy`).
    #[must_use]
    pub fn changes_nothing(&self) -> bool {
        matches!(
            self,
            Request::Status
                | Request::Stats
                | Request::VolumeList
                | Request::SnapshotList
                | Request::ScheduleList
                | Request::SnapshotInfo { .. }
                | Request::SnapshotVerify { .. }
                | Request::Checksum { .. }
                | Request::Diff { .. }
                | Request::LeaseClose { .. }
        )
    }

    /// The first relative path in the request, if any. Relative paths are refused on the
    /// socket: they would mean the daemon's working directory, not the caller's (the CLI makes
    /// every path absolute before sending it).
    #[must_use]
    pub fn relative_path(&self) -> Option<&std::path::Path> {
        let paths: Vec<&std::path::Path> = match self {
            Request::VolumeCreate { image, .. } => image.as_deref().into_iter().collect(),
            Request::VolumeAdd { device, .. } => vec![device.as_path()],
            Request::SnapshotCreate(spec) => spec.store.as_deref().into_iter().collect(),
            Request::SnapshotCreateGroup { members } => {
                members.iter().filter_map(|m| m.store.as_deref()).collect()
            }
            Request::Restore { files, .. } => files.iter().map(PathBuf::as_path).collect(),
            Request::ScheduleAdd(spec) => spec.store.as_deref().into_iter().collect(),
            _ => Vec::new(),
        };
        paths.into_iter().find(|p| p.is_relative())
    }
}

/// The largest data frame of a `backup` stream, in bytes.
pub const MAX_FRAME: usize = 1 << 20;

/// A request on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Protocol version.
    pub v: u32,
    /// Echoed in the response.
    #[serde(default)]
    pub id: u64,
    /// The request.
    #[serde(flatten)]
    pub request: Request,
}

/// A failure, for people and programs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable kind (`not-found`, `exists`, `invalid-argument`, `busy`, `no-space`, `io`, ...).
    pub kind: ErrorKind,
    /// What failed, on which object, and what to do.
    pub message: String,
}

/// A response on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Protocol version.
    pub v: u32,
    /// The request's id.
    pub id: u64,
    /// Whether it succeeded.
    pub ok: bool,
    /// The result, when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// The error, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// A volume in listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// Name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Image or device path.
    pub path: PathBuf,
    /// `created-image`, `image` or `block-device`.
    pub kind: VolumeKind,
    /// Live snapshots.
    pub snapshots: u64,
    /// Cluster size fixed by its snapshots, if any.
    pub cluster_size: Option<u64>,
    /// `online`, or why it is not served.
    pub state: VolumeStatus,
    /// Open by front-ends (NBD connections, FUSE opens).
    pub open: u64,
}

/// A snapshot in listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Name.
    pub name: String,
    /// Its volume.
    pub volume: String,
    /// Creation order within the volume.
    pub id: u64,
    /// `persistent` or `transient`.
    pub kind: SnapshotKind,
    /// `valid`, `invalid`, `unverified`, or `unavailable`.
    pub state: SnapshotHealth,
    /// Why it is not valid, if so.
    pub reason: Option<String>,
    /// Creation time, seconds since the epoch.
    pub created: u64,
    /// Volume size in bytes.
    pub size: u64,
    /// Cluster size in bytes.
    pub cluster_size: u64,
    /// The store's path.
    pub store: PathBuf,
    /// Store bytes used.
    pub store_used: u64,
    /// Store maximum, if any.
    pub store_max: Option<u64>,
    /// Blocks preserved in its store.
    pub blocks_preserved: u64,
    /// Clusters with a slot in its store.
    pub clusters_preserved: u64,
    /// Writes that preserved into its store.
    pub cow_calls: u64,
    /// Waits for a block being preserved.
    pub busy_waits: u64,
    /// `invalidate` or `fail-write`.
    pub on_store_error: StorePolicy,
    /// The mount point it was taken of, if any.
    pub mount_point: Option<String>,
}

/// The answer to `snapshot-verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyInfo {
    /// Name.
    pub name: String,
    /// Whether the store keeps checksums.
    pub checksummed: bool,
    /// Blocks checked.
    pub blocks_checked: u64,
    /// Volume byte offsets of damaged blocks.
    pub damaged: Vec<u64>,
}

/// The answer to `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// fss version.
    pub version: String,
    /// Daemon process id.
    pub pid: u32,
    /// State directory.
    pub state_dir: PathBuf,
    /// FUSE directory (if mounted).
    pub fuse_dir: Option<PathBuf>,
    /// NBD unix socket (if listening).
    pub nbd_socket: Option<PathBuf>,
    /// NBD TCP address (if listening).
    pub nbd_listen: Option<String>,
    /// Volumes.
    pub volumes: u64,
    /// Snapshots.
    pub snapshots: u64,
    /// Whether the previous run stopped cleanly.
    pub recovered_from_crash: bool,
    /// The supervisor's pid (`None`: `fss serve --no-supervisor`).
    #[serde(default)]
    pub supervisor_pid: Option<u32>,
    /// Serving processes that ended since the supervisor started.
    #[serde(default)]
    pub restarts: u64,
    /// How the last one ended.
    #[serde(default)]
    pub last_restart: Option<LastRestart>,
    /// Where each front-end serves (`null`: not serving).
    #[serde(default)]
    pub frontends: Frontends,
}

/// Where the daemon's front-ends serve, each `None` when it is not up: `status` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frontends {
    /// The FUSE directory (`None`: `--fuse-dir none`, or it could not be mounted).
    pub fuse: Option<PathBuf>,
    /// The NBD unix socket.
    pub nbd_unix: Option<PathBuf>,
    /// The NBD TCP address (`--nbd-listen`).
    pub nbd_tcp: Option<String>,
    /// TLS on that address: `on` (offered) or `require` (`None`: plaintext only).
    #[serde(default)]
    pub nbd_tls: Option<String>,
    /// The metrics HTTP address (`--metrics-listen`).
    pub metrics: Option<String>,
}
