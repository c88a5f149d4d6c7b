//! What long operations (diff, backup, restore, rollback) send: progress lines and their
//! final results.

use super::BackupKind;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A progress line sent before the final response of a long operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressLine {
    /// Protocol version.
    pub v: u32,
    /// The request's id.
    pub id: u64,
    /// How far it is.
    pub progress: Progress,
}

/// How far a long operation is, in bytes of the volume covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Bytes done.
    pub done: u64,
    /// Bytes in all.
    pub total: u64,
}

/// One extent of a `diff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffExtent {
    /// Volume byte offset (a multiple of 4096).
    pub offset: u64,
    /// Length in bytes (a multiple of 4096, except at the end of a volume whose length is not).
    pub length: u64,
}

/// The first response to `backup`, before the data frames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupStart {
    /// The snapshot backed up.
    pub snapshot: String,
    /// Its volume.
    pub volume: String,
    /// `full` or `incremental`.
    pub kind: BackupKind,
    /// The base of an incremental backup.
    pub since: Option<String>,
    /// The volume's size in bytes.
    pub size: u64,
}

/// The final response to `backup`, after the data frames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupDone {
    /// The snapshot backed up.
    pub snapshot: String,
    /// `full` or `incremental`.
    pub kind: BackupKind,
    /// The base of an incremental backup.
    pub since: Option<String>,
    /// The backup's id (hex), recorded in its header.
    pub backup_id: String,
    /// Volume bytes the backup covers (the volume's size for a full backup).
    pub covered: u64,
    /// Extent records written.
    pub records: u64,
    /// Volume bytes carried as data.
    pub data_bytes: u64,
    /// Volume bytes recorded as zero, without data.
    pub zero_bytes: u64,
    /// Bytes of the whole backup stream.
    pub stream_bytes: u64,
}

/// The response to `restore`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreDone {
    /// The volume restored onto.
    pub volume: String,
    /// The snapshot it now holds (the last backup's).
    pub snapshot: String,
    /// Backups applied.
    pub backups: u64,
    /// Bytes written from data records.
    pub data_bytes: u64,
    /// Bytes zeroed.
    pub zero_bytes: u64,
}

/// The response to `restore-abandon`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreAbandoned {
    /// The volume.
    pub volume: String,
    /// The backups of the restore abandoned.
    pub files: Vec<PathBuf>,
    /// Whether the volume is served now (false: it could not be opened at start, and is
    /// served as it is once it can be).
    pub online: bool,
}

/// The response to `rollback`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackDone {
    /// The volume.
    pub volume: String,
    /// The snapshot it was returned to.
    pub snapshot: String,
    /// Extents rewritten (those changed since the snapshot).
    pub extents: u64,
    /// Bytes rewritten.
    pub bytes: u64,
}
