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
mod error;
pub mod file_io;
mod filesystem;
mod front_end;
mod handles;
mod inodes;
mod mount_point;

pub use attr::{SNAPSHOT_MODE, VOLUME_MODE};
pub use error::{FuseError, Result};
pub use front_end::{FuseFrontEnd, FuseOptions, Hooks};
pub use handles::OpenHook;
