//! Numbers of the kernel's FUSE protocol (`include/uapi/linux/fuse.h`), only those this file
//! system uses. Structures are encoded and decoded by hand in [`super::request`] and
//! [`super::reply`], field by field in the header's order, in the host's byte order.

/// The protocol's major version.
pub const KERNEL_VERSION: u32 = 7;
/// The minor version this code speaks: 7.40 added `FUSE_NOTIFY_RESEND` and `FUSE_HAS_RESEND`.
pub const KERNEL_MINOR_VERSION: u32 = 40;
/// The oldest minor version accepted: 7.23 fixed the sizes of every structure used here
/// (`fuse_init_out` of 64 bytes, `fuse_write_in` of 40, `fuse_getattr_in`), Linux 3.15.
pub const MIN_KERNEL_MINOR: u32 = 23;

/// The node id of the root directory.
pub const ROOT_ID: u64 = 1;
/// Set in `unique` of a request the kernel sends again after `FUSE_NOTIFY_RESEND`.
pub const UNIQUE_RESEND: u64 = 1 << 63;
/// Notification code (in `fuse_out_header.error`, with `unique` 0): queue every request
/// that was read but not answered again.
pub const NOTIFY_RESEND: i32 = 7;

/// Request opcodes.
pub mod opcode {
    #![allow(missing_docs)]
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
}

/// `FUSE_INIT` flags (bits 32 to 63 travel in `flags2`).
pub mod init_flags {
    #![allow(missing_docs)]
    pub const ASYNC_READ: u64 = 1 << 0;
    pub const BIG_WRITES: u64 = 1 << 5;
    pub const ASYNC_DIO: u64 = 1 << 15;
    pub const MAX_PAGES: u64 = 1 << 22;
    pub const INIT_EXT: u64 = 1 << 30;
    /// The kernel understands `FUSE_NOTIFY_RESEND` (Linux 6.9, protocol 7.40).
    pub const HAS_RESEND: u64 = 1 << 39;
}

/// `fuse_open_out.open_flags`.
pub const FOPEN_DIRECT_IO: u32 = 1 << 0;
/// `fuse_open_out.open_flags`: writes to one file may run in parallel.
pub const FOPEN_PARALLEL_DIRECT_WRITES: u32 = 1 << 6;

/// `fuse_setattr_in.valid` bits.
pub mod fattr {
    #![allow(missing_docs)]
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
}

/// `fuse_getattr_in.getattr_flags`: `fh` is valid.
pub const GETATTR_FH: u32 = 1 << 0;

/// Structure sizes in bytes.
pub mod size {
    #![allow(missing_docs)]
    pub const IN_HEADER: usize = 40;
    pub const OUT_HEADER: usize = 16;
    pub const ATTR: usize = 88;
    pub const ENTRY_OUT: usize = 40 + ATTR;
    pub const ATTR_OUT: usize = 16 + ATTR;
    pub const OPEN_OUT: usize = 16;
    pub const WRITE_OUT: usize = 8;
    pub const KSTATFS: usize = 80;
    pub const LSEEK_OUT: usize = 8;
    pub const INIT_OUT: usize = 64;
    /// `fuse_init_in` before 7.36 (major, minor, max_readahead, flags).
    pub const INIT_IN_COMPAT: usize = 16;
    pub const GETATTR_IN: usize = 16;
    pub const SETATTR_IN: usize = 88;
    pub const OPEN_IN: usize = 8;
    pub const READ_IN: usize = 40;
    pub const WRITE_IN: usize = 40;
    pub const RELEASE_IN: usize = 24;
    pub const FLUSH_IN: usize = 24;
    pub const FSYNC_IN: usize = 16;
    pub const INTERRUPT_IN: usize = 8;
    pub const LSEEK_IN: usize = 24;
    pub const FALLOCATE_IN: usize = 32;
    /// `fuse_dirent` without its name.
    pub const DIRENT: usize = 24;
}

/// File type bits of `fuse_attr.mode`.
pub const S_IFDIR: u32 = 0o040_000;
/// File type bits of `fuse_attr.mode`.
pub const S_IFREG: u32 = 0o100_000;
/// `fuse_dirent.type` of a directory (`DT_DIR`).
pub const DT_DIR: u32 = 4;
/// `fuse_dirent.type` of a regular file (`DT_REG`).
pub const DT_REG: u32 = 8;
/// The access mode bits of open flags.
pub const O_ACCMODE: u32 = 3;
/// Read-only access mode.
pub const O_RDONLY: u32 = 0;
