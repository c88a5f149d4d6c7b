//! Backup repositories: deduplicated, compressed, optionally encrypted copies of volume
//! snapshots on a directory (`file:///PATH`) or S3-compatible object storage
//! (`s3://BUCKET/PREFIX`). The format is `docs/REPOSITORY.md`.
//!
//! A volume is cut into fixed-size chunks named by a keyed hash of their content; new chunks
//! are compressed, sealed and gathered into packs with an index each; a backup's manifest lists
//! every chunk of the volume, so every backup is a logical full that restores on its own.
//!
//! This crate knows nothing of the daemon, the CLI, NBD or FUSE: callers feed a
//! [`BackupWriter`] volume extents and give [`restore()`] a function that writes bytes.
//! Everything is synchronous; the S3 client's tokio runtime stays inside [`s3`].

pub mod backend;
pub mod cache;
pub mod calendar;
pub mod crypto;
pub mod error;
pub mod format;
pub mod prune;
pub mod repo;
pub mod restore;
pub mod s3;
mod upload;
pub mod verify;
pub mod writer;

pub use backend::{is_repo_url, open_url, Backend, FileBackend};
pub use error::{RepoError, Result};
pub use format::Manifest;
pub use prune::{prune, KeepPolicy, PruneOptions, PruneReport};
pub use repo::Repository;
pub use restore::{restore, RestoreStats};
pub use verify::{verify, VerifyReport};
pub use writer::{BackupMeta, BackupWriter};
