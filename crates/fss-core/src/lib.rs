//! fss-core: copy-on-write snapshots of a live block device, in userspace.
//!
//! A [`Volume`] owns an origin [`BlockDevice`](device::BlockDevice) and its live
//! [`Snapshot`]s. Every write, discard and write-zeroes to the volume goes through
//! [`Volume::write`] and friends, which first preserve the pre-image of each 4 KiB block that the
//! newest snapshot does not hold yet, in that snapshot's [`Store`](store::Store). A snapshot read
//! resolves blocks through the chain of maps from itself to the newest snapshot, then the volume.
//!
//! The engine knows nothing of NBD, FUSE, sockets or command lines; front-ends build on it.
//!
//! ```
//! use fss_core::{device::MemDevice, store::DeviceStore, SnapshotOptions, Volume};
//! use std::sync::Arc;
//!
//! let vol = Volume::new("vol0", Arc::new(MemDevice::new(1 << 20)));
//! vol.write(&[1; 4096], 0).unwrap();
//! let snap = vol.create_snapshot("s1", &SnapshotOptions::default(), DeviceStore::in_memory).unwrap();
//! vol.write(&[2; 4096], 0).unwrap();
//! let mut buf = [0u8; 4096];
//! snap.read(&mut buf, 0).unwrap();
//! assert_eq!(buf, [1; 4096]);
//! ```

pub mod backup;
pub mod busy;
mod chain;
pub mod cluster_map;
mod core;
pub mod device;
pub mod direct_read;
pub mod error;
pub mod export;
pub mod format;
pub mod geometry;
mod held_journal;
mod held_writes;
pub mod snapshot;
mod snapshot_types;
pub mod store;
pub mod volume;

pub use error::{Error, ErrorKind, Result};
pub use geometry::{Geometry, BLOCK_SIZE, DEFAULT_CLUSTER_SIZE};
pub use snapshot::{
    OnStoreError, Snapshot, SnapshotInfo, SnapshotOptions, SnapshotState, SnapshotStats,
};
pub use volume::{Volume, VolumeStats};
