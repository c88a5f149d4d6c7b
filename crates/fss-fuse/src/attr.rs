//! File attributes: the root directory and one regular file per export.

use crate::inodes::{Entry, ROOT_INO};
use crate::wire::abi::{S_IFDIR, S_IFREG};
use crate::wire::Attr;
use std::time::SystemTime;

/// Block size reported in `st_blksize` (the engine's preservation unit).
pub const BLOCK_SIZE: u32 = 4096;

/// Mode bits of a volume's file (read-write for the owner).
pub const VOLUME_MODE: u16 = 0o600;
/// Mode bits of a snapshot's file (read-only for the owner).
pub const SNAPSHOT_MODE: u16 = 0o400;
/// Mode bits of the root directory.
pub const ROOT_MODE: u16 = 0o755;

/// Who owns the files: the serving process's effective user and group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

impl Owner {
    /// The current process's effective ids.
    pub fn current() -> Self {
        Owner {
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        }
    }
}

/// The root directory's attributes.
pub fn root(owner: Owner, mounted: SystemTime) -> Attr {
    Attr {
        ino: ROOT_INO,
        size: 0,
        blocks: 0,
        time: mounted.into(),
        mode: S_IFDIR | u32::from(ROOT_MODE),
        nlink: 2,
        uid: owner.uid,
        gid: owner.gid,
        blksize: BLOCK_SIZE,
    }
}

/// The attributes of an export's file: its exact length, mode by kind, times of first sight.
pub fn export(owner: Owner, entry: Entry, len: u64, read_only: bool) -> Attr {
    let perm = if read_only {
        SNAPSHOT_MODE
    } else {
        VOLUME_MODE
    };
    Attr {
        ino: entry.ino,
        size: len,
        // As if fully allocated: the device's whole length is addressable.
        blocks: len.div_ceil(512),
        time: entry.born.into(),
        mode: S_IFREG | u32::from(perm),
        nlink: 1,
        uid: owner.uid,
        gid: owner.gid,
        blksize: BLOCK_SIZE,
    }
}

/// The permission bits of `attr` (what chmod would change).
pub fn perm(attr: &Attr) -> u32 {
    attr.mode & 0o7777
}
