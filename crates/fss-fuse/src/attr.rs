//! File attributes: the root directory and one regular file per export.

use crate::inodes::{Entry, ROOT_INO};
use fuser::{FileAttr, FileType, INodeNo};
use std::time::{Duration, SystemTime};

/// Entry and attribute time-to-live: zero, so the kernel asks again every time and files appear
/// and disappear as soon as the catalog changes.
pub const TTL: Duration = Duration::ZERO;

/// Block size reported in `st_blksize` (the engine's preservation unit).
pub const BLOCK_SIZE: u32 = 4096;

/// Mode bits of a volume's file (read-write for the owner).
pub const VOLUME_MODE: u16 = 0o600;
/// Mode bits of a snapshot's file (read-only for the owner).
pub const SNAPSHOT_MODE: u16 = 0o400;
/// Mode bits of the root directory.
pub const ROOT_MODE: u16 = 0o755;

/// Who owns the files: the serving process's effective user and group.
#[derive(Debug, Clone, Copy)]
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
pub fn root(owner: Owner, mounted: SystemTime) -> FileAttr {
    FileAttr {
        ino: INodeNo(ROOT_INO),
        size: 0,
        blocks: 0,
        atime: mounted,
        mtime: mounted,
        ctime: mounted,
        crtime: mounted,
        kind: FileType::Directory,
        perm: ROOT_MODE,
        nlink: 2,
        uid: owner.uid,
        gid: owner.gid,
        rdev: 0,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

/// The attributes of an export's file: its exact length, mode by kind, times of first sight.
pub fn export(owner: Owner, entry: Entry, len: u64, read_only: bool) -> FileAttr {
    FileAttr {
        ino: INodeNo(entry.ino),
        size: len,
        // As if fully allocated: the device's whole length is addressable.
        blocks: len.div_ceil(512),
        atime: entry.born,
        mtime: entry.born,
        ctime: entry.born,
        crtime: entry.born,
        kind: FileType::RegularFile,
        perm: if read_only {
            SNAPSHOT_MODE
        } else {
            VOLUME_MODE
        },
        nlink: 1,
        uid: owner.uid,
        gid: owner.gid,
        rdev: 0,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}
