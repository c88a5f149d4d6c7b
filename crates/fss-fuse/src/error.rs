//! The errors of mounting and unmounting. Errors of single file operations are errnos sent to
//! the kernel (see [`crate::file_io`]); they never reach the daemon.

use crate::persist::PersistError;
use std::io;
use std::path::PathBuf;

/// Why mounting, serving or unmounting the FUSE directory failed.
#[derive(Debug, thiserror::Error)]
pub enum FuseError {
    /// The mount point could not be created or inspected.
    #[error("cannot prepare the FUSE directory {dir}: {source}")]
    Directory {
        /// The mount point.
        dir: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused the mount, or the FUSE handshake failed.
    #[error(
        "cannot mount the FUSE directory {dir}: {source} \
         (is /dev/fuse present and is this process root or fusermount3 installed?)"
    )]
    Mount {
        /// The mount point.
        dir: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The `/dev/fuse` descriptor could not be opened or used.
    #[error("cannot use the FUSE device: {0}")]
    Device(#[source] io::Error),
    /// The `FUSE_INIT` handshake failed, or a session could not start on the connection.
    #[error("FUSE handshake failed: {reason}")]
    Handshake {
        /// What went wrong.
        reason: String,
    },
    /// A session file could not be written or read.
    #[error("FUSE session file: {0}")]
    SessionFile(#[source] PersistError),
    /// Aborting the connection failed.
    #[error("cannot abort the FUSE connection of {dir}: {source}")]
    Abort {
        /// The mount point.
        dir: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The thread serving requests could not be started.
    #[error("cannot start the FUSE serving thread: {0}")]
    Thread(#[source] io::Error),
    /// Files are still open (or the directory is otherwise in use); nothing was unmounted.
    #[error(
        "the FUSE directory {dir} is busy; open files: {}",
        if open.is_empty() { "none (another process uses the directory)".to_string() }
        else { open.join(", ") }
    )]
    Busy {
        /// The mount point.
        dir: PathBuf,
        /// The names of the files open through this mount, as counted when the unmount failed.
        open: Vec<String>,
    },
    /// The unmount itself failed.
    #[error("cannot unmount the FUSE directory {dir}: {source}")]
    Unmount {
        /// The mount point.
        dir: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The directory was unmounted but the serving threads did not end in time (the mount may
    /// still be alive in another mount namespace).
    #[error("the FUSE directory {dir} was unmounted but its serving threads are still running")]
    StillServing {
        /// The mount point.
        dir: PathBuf,
    },
    /// The serving threads ended with an error (or panicked).
    #[error("serving the FUSE directory {dir} failed: {source}")]
    Session {
        /// The mount point.
        dir: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// This crate's result type.
pub type Result<T> = std::result::Result<T, FuseError>;
