//! What a FUSE connection needs to outlive the process serving it, kept in two JSON files the
//! next process reads (`Start::Resume`):
//!
//! - the session file (path given by the caller, e.g. `<state-dir>/fuse-session.json`): the
//!   parameters negotiated at `FUSE_INIT`, written once per connection, before the INIT reply;
//! - the table file next to it (`fuse-session.table.json`): inode numbers by name and the
//!   open file handles, rewritten after every change and before the reply that makes the
//!   change visible to the kernel (a LOOKUP that allocates an inode number, an OPEN, a
//!   RELEASE), so the kernel never holds a number the next process does not know.
//!
//! Both are written atomically (a temporary file renamed over the old one), mode 0600, and not
//! fsynced: they describe a connection that a reboot ends anyway, so only a process death has
//! to be survived, and the page cache survives it.

use serde::{Deserialize, Serialize};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// Format of the files; a different number is refused on resume.
pub const FORMAT: u32 = 1;

/// The parameters negotiated at `FUSE_INIT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionParams {
    /// [`FORMAT`].
    pub format: u32,
    /// The kernel's protocol minor version.
    pub kernel_minor: u32,
    /// The minor version in use (the smaller of the kernel's and ours).
    pub minor: u32,
    /// What the kernel offered (`init_flags`, 64 bits).
    pub kernel_flags: u64,
    /// What was accepted.
    pub flags: u64,
    /// The kernel's read-ahead limit, echoed.
    pub max_readahead: u32,
    /// Largest write request.
    pub max_write: u32,
    /// Largest request in pages.
    pub max_pages: u16,
    /// Queued asynchronous requests before the kernel throttles.
    pub max_background: u16,
    /// Where congestion is signalled.
    pub congestion_threshold: u16,
    /// When the directory was mounted (times of the root), seconds since the epoch.
    pub mounted_secs: u64,
    /// Nanoseconds of the mount time.
    pub mounted_nanos: u32,
}

/// One name's inode number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InodeRecord {
    /// Export name.
    pub name: String,
    /// Its inode number (the kernel's node id).
    pub ino: u64,
    /// When it was first seen, seconds since the epoch.
    pub born_secs: u64,
    /// Nanoseconds of that time.
    pub born_nanos: u32,
}

/// One open file handle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandleRecord {
    /// The handle the kernel holds.
    pub fh: u64,
    /// The export it was opened on.
    pub name: String,
    /// Opened for writing.
    pub writable: bool,
    /// The OPEN request's id (without the resend bit): a resent OPEN finds its handle.
    pub unique: u64,
}

/// The table file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tables {
    /// [`FORMAT`].
    pub format: u32,
    /// The next inode number to give out.
    pub next_ino: u64,
    /// Inode numbers by name.
    pub inodes: Vec<InodeRecord>,
    /// The last file handle given out.
    pub last_fh: u64,
    /// Open file handles.
    pub handles: Vec<HandleRecord>,
}

/// Why a session or table file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The content is not what this version writes.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The two files of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionFiles {
    /// The negotiated parameters.
    pub params: PathBuf,
    /// Inode numbers and open handles.
    pub table: PathBuf,
}

impl SessionFiles {
    /// The files of the session file `params`: the table is `<stem>.table.json` beside it.
    #[must_use]
    pub fn new(params: &Path) -> Self {
        SessionFiles {
            params: params.to_path_buf(),
            table: params.with_extension("table.json"),
        }
    }
}

/// Write `bytes` to `path` atomically with mode 0600.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PersistError> {
    let io_err = |source| PersistError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err)?;
    f.write_all(bytes).map_err(io_err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io_err)
}

fn save<T: Serialize>(path: &Path, value: &T) -> Result<(), PersistError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| PersistError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    write_atomic(path, &bytes)
}

fn load<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, PersistError> {
    let bytes = std::fs::read(path).map_err(|source| PersistError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| PersistError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn check_format(path: &Path, format: u32) -> Result<(), PersistError> {
    if format == FORMAT {
        Ok(())
    } else {
        Err(PersistError::Invalid {
            path: path.to_path_buf(),
            reason: format!("format {format}, this version reads {FORMAT}"),
        })
    }
}

/// Write the session parameters.
///
/// # Errors
/// The file cannot be written.
pub fn save_params(path: &Path, params: &SessionParams) -> Result<(), PersistError> {
    save(path, params)
}

/// Read the session parameters.
///
/// # Errors
/// The file is missing, unreadable, or not of this format.
pub fn load_params(path: &Path) -> Result<SessionParams, PersistError> {
    let p: SessionParams = load(path)?;
    check_format(path, p.format)?;
    Ok(p)
}

/// Read the table file.
///
/// # Errors
/// The file is missing, unreadable, or not of this format.
pub fn load_tables(path: &Path) -> Result<Tables, PersistError> {
    let t: Tables = load(path)?;
    check_format(path, t.format)?;
    Ok(t)
}

/// The table file, written by one writer at a time.
#[derive(Debug)]
pub struct TableFile {
    path: PathBuf,
    lock: Mutex<()>,
}

impl TableFile {
    /// The table file at `path`.
    #[must_use]
    pub fn new(path: PathBuf) -> Self {
        TableFile {
            path,
            lock: Mutex::new(()),
        }
    }

    /// Write what `snapshot` returns. It runs under this file's lock, so of two concurrent
    /// saves the one that writes last also took the later snapshot: the file never goes
    /// back to an older state.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn save(&self, snapshot: impl FnOnce() -> Tables) -> Result<(), PersistError> {
        let _one = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let mut tables = snapshot();
        tables.format = FORMAT;
        save(&self.path, &tables)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let files = SessionFiles::new(&dir.path().join("fuse-session.json"));
        assert_eq!(files.table, dir.path().join("fuse-session.table.json"));
        let params = SessionParams {
            format: FORMAT,
            kernel_minor: 44,
            minor: 40,
            kernel_flags: u64::MAX,
            flags: 1,
            max_readahead: 2,
            max_write: 3,
            max_pages: 4,
            max_background: 5,
            congestion_threshold: 6,
            mounted_secs: 7,
            mounted_nanos: 8,
        };
        save_params(&files.params, &params).unwrap();
        assert_eq!(load_params(&files.params).unwrap(), params);
        let table = TableFile::new(files.table.clone());
        let tables = Tables {
            format: 0,
            next_ino: 9,
            inodes: vec![InodeRecord {
                name: "vol".into(),
                ino: 2,
                born_secs: 1,
                born_nanos: 2,
            }],
            last_fh: 3,
            handles: vec![HandleRecord {
                fh: 3,
                name: "vol".into(),
                writable: true,
                unique: 77,
            }],
        };
        table.save(|| tables.clone()).unwrap();
        let back = load_tables(&files.table).unwrap();
        assert_eq!(back.format, FORMAT);
        assert_eq!(back.handles, tables.handles);
        assert_eq!(back.inodes, tables.inodes);
        for p in [&files.params, &files.table] {
            let mode = std::fs::metadata(p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", p.display());
        }
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn missing_garbled_and_foreign_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        assert!(matches!(load_params(&p), Err(PersistError::Io { .. })));
        std::fs::write(&p, b"{not json").unwrap();
        assert!(matches!(load_params(&p), Err(PersistError::Invalid { .. })));
        let t = dir.path().join("t.json");
        std::fs::write(
            &t,
            br#"{"format":2,"next_ino":2,"inodes":[],"last_fh":0,"handles":[]}"#,
        )
        .unwrap();
        let e = load_tables(&t).unwrap_err().to_string();
        assert!(e.contains("format 2"), "{e}");
    }
}
