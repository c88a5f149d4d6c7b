//! Backups of snapshots to byte streams, and restores from them (format: `docs/BACKUP.md`).
//!
//! - [`write_full`] writes every byte of a snapshot (all-zero blocks as compact `ZERO` records,
//!   so a sparse volume makes a small backup);
//! - [`write_incremental`] writes only the extents changed between an older snapshot and a
//!   newer one of the same volume;
//! - [`restore`] applies a full backup and its incrementals, in order, onto a target device,
//!   refusing a chain with a gap, a wrong order, another volume or a damaged file, with an error
//!   that names the file and what was expected.
//!
//! Both directions are streaming: one pass, no seeking, so a pipe works at either end.
//! [`format`] encodes and checks, without I/O; the writer and the reader do the I/O.
//!
//! ```
//! use fss_core::backup::{restore, write_full};
//! use fss_core::device::{BlockDevice, MemDevice};
//! use fss_core::{store::DeviceStore, SnapshotOptions, Volume};
//! use std::sync::Arc;
//!
//! let vol = Volume::new("vol0", Arc::new(MemDevice::new(1 << 20)));
//! vol.write(&[7; 4096], 8192).unwrap();
//! let snap = vol.create_snapshot("s1", &SnapshotOptions::default(), DeviceStore::in_memory).unwrap();
//! let mut file = Vec::new();
//! write_full(&snap, &mut file, &mut |_, _| {}).unwrap();
//! assert!(file.len() < 8192 + 1024); // one data block, the rest is recorded as zero extents
//!
//! let target = MemDevice::new(1 << 20);
//! let input: Box<dyn std::io::Read> = Box::new(std::io::Cursor::new(file));
//! restore(vec![("s1.fss".into(), input)], &target, &mut |_, _| {}).unwrap();
//! let mut buf = [0u8; 4096];
//! target.read_at(&mut buf, 8192).unwrap();
//! assert_eq!(buf, [7; 4096]);
//! ```

pub mod format;
mod reader;
mod writer;

pub use format::{BackupHeader, BackupKind, SnapshotRef};
pub use reader::{
    check_restore, restore, restore_readers, BackupExtent, BackupReader, RestoreSummary,
};
pub use writer::{
    new_backup_id, write_full, write_incremental, write_incremental_aligned, StreamWriter,
};

/// What a backup holds: its header and the counts of its records. Returned by the writers and
/// by [`BackupReader::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    /// The header: which volume and snapshot, which base, the backup id.
    pub header: BackupHeader,
    /// Extent records.
    pub records: u64,
    /// Volume bytes carried as data.
    pub data_bytes: u64,
    /// Volume bytes recorded as zero, without data.
    pub zero_bytes: u64,
    /// Bytes of the whole stream (header, records, payloads, trailer).
    pub stream_bytes: u64,
}
