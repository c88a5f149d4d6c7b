//! fss-fuse: a directory with one regular file per fss volume and snapshot, for loop devices.
//!
//! [`FuseFrontEnd::mount`] mounts a directory and serves a [`Catalog`](fss_core::export::Catalog)
//! on it from background threads: each export is a file named after it (no extension, no
//! subdirectories), of exactly the export's length; volumes are mode 0600 and read-write,
//! snapshots 0400 and read-only (writing, or opening for writing, fails with EROFS). Entry and
//! attribute caching is off, so a file appears or disappears as soon as the catalog changes.
//! Files are opened with `FOPEN_DIRECT_IO` so `losetup --direct-io=on` works and data is not
//! cached twice; fsync is the device's FLUSH; `fallocate` punch-hole and zero-range are the
//! device's DISCARD and WRITE_ZEROES.
//!
//! The request loop is this crate's own (no fuser, no libfuse): see the `session` module for
//! why. A connection can outlive the process serving it: a supervisor mounts it with
//! [`mount_connection`] and keeps the descriptor; each serving process serves it with
//! [`FuseFrontEnd::serve_connection`] ([`Start::Fresh`] the first time, [`Start::Resume`]
//! after), and files opened under one process keep working under the next.
//!
//! ```no_run
//! use fss_core::export::{Catalog, Export, ExportInfo};
//! use fss_fuse::{FuseFrontEnd, Hooks};
//! use std::sync::Arc;
//!
//! struct Empty;
//! impl Catalog for Empty {
//!     fn lookup(&self, _name: &str) -> Option<Export> { None }
//!     fn list(&self) -> Vec<ExportInfo> { Vec::new() }
//! }
//!
//! let hooks = Hooks {
//!     on_open_change: Some(Arc::new(|name: &str, open: bool| {
//!         println!("{name} is {}", if open { "open" } else { "closed" });
//!     })),
//! };
//! let mut fuse = FuseFrontEnd::mount("/var/lib/fss/dev".as_ref(), Arc::new(Empty), hooks)?;
//! // ... serve ...
//! fuse.stop()?; // Err(FuseError::Busy { .. }) while a loop device holds a file open
//! # Ok::<(), fss_fuse::FuseError>(())
//! ```

mod attr;
pub mod connection;
mod dispatch;
mod error;
pub mod file_io;
mod filesystem;
mod front_end;
mod fusermount;
mod handles;
mod inodes;
mod mount_point;
pub mod persist;
mod session;
pub mod wire;

pub use attr::{SNAPSHOT_MODE, VOLUME_MODE};
pub use connection::{abort_connection, connection_id, detach_mount, mount_connection, unmount};
pub use error::{FuseError, Result};
pub use front_end::{FuseFrontEnd, FuseOptions, Hooks};
pub use handles::OpenHook;
pub use session::Start;
