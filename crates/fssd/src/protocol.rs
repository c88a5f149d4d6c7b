//! The control protocol: versioned JSON lines over `<state-dir>/control.sock` (see
//! `docs/CONTROL.md`). One request per line, one response per line, in order.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The protocol version this daemon speaks.
pub const PROTOCOL_VERSION: u32 = 1;

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
}

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
    pub kind: String,
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
    pub kind: String,
    /// Live snapshots.
    pub snapshots: u64,
    /// Cluster size fixed by its snapshots, if any.
    pub cluster_size: Option<u64>,
    /// `online`, or why it is not served.
    pub state: String,
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
    pub kind: String,
    /// `valid`, `invalid`, `unverified`, or `unavailable`.
    pub state: String,
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
    pub on_store_error: String,
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
}
