//! Encoding replies: a `fuse_out_header` and the structure the opcode answers with, laid out
//! field by field as in `include/uapi/linux/fuse.h` (host byte order, no padding beyond the
//! header's explicit padding fields).

use super::abi::{self, size};
use std::time::{SystemTime, UNIX_EPOCH};

/// A time as `fuse_attr` carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timestamp {
    /// Seconds since the epoch.
    pub secs: u64,
    /// Nanoseconds.
    pub nsecs: u32,
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        Timestamp {
            secs: d.as_secs(),
            nsecs: d.subsec_nanos(),
        }
    }
}

/// `struct fuse_attr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks.
    pub blocks: u64,
    /// Access, modification and change time (one value for all three).
    pub time: Timestamp,
    /// Type and permission bits.
    pub mode: u32,
    /// Links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Preferred I/O size.
    pub blksize: u32,
}

/// What `statfs` reports (`struct fuse_kstatfs`, free counts zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatFs {
    /// Total blocks of `frsize`.
    pub blocks: u64,
    /// Total files.
    pub files: u64,
    /// Block size.
    pub bsize: u32,
    /// Longest name.
    pub namelen: u32,
    /// Fragment size.
    pub frsize: u32,
}

/// `struct fuse_init_out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InitOut {
    /// Protocol major version.
    pub major: u32,
    /// Protocol minor version.
    pub minor: u32,
    /// Read-ahead limit.
    pub max_readahead: u32,
    /// Accepted flags (the upper half goes into `flags2`).
    pub flags: u64,
    /// Queued asynchronous requests before the kernel throttles.
    pub max_background: u16,
    /// Where congestion is signalled.
    pub congestion_threshold: u16,
    /// Largest write request.
    pub max_write: u32,
    /// Time granularity in nanoseconds.
    pub time_gran: u32,
    /// Largest request in pages.
    pub max_pages: u16,
}

/// Appends fields in order.
#[derive(Debug, Default)]
struct Out(Vec<u8>);

impl Out {
    fn with_capacity(n: usize) -> Self {
        Out(Vec::with_capacity(n))
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    fn attr(&mut self, a: &Attr) -> &mut Self {
        self.u64(a.ino).u64(a.size).u64(a.blocks);
        self.u64(a.time.secs).u64(a.time.secs).u64(a.time.secs);
        self.u32(a.time.nsecs).u32(a.time.nsecs).u32(a.time.nsecs);
        self.u32(a.mode).u32(a.nlink).u32(a.uid).u32(a.gid);
        // rdev, blksize, flags
        self.u32(0).u32(a.blksize).u32(0)
    }
}

/// `struct fuse_out_header` for a reply of `body_len` bytes after it. `error` is zero or a
/// negated errno (or, with `unique` zero, a notification code).
#[must_use]
pub fn out_header(body_len: usize, error: i32, unique: u64) -> [u8; size::OUT_HEADER] {
    let len = u32::try_from(size::OUT_HEADER + body_len).unwrap_or(u32::MAX);
    let mut h = [0u8; size::OUT_HEADER];
    h[0..4].copy_from_slice(&len.to_ne_bytes());
    h[4..8].copy_from_slice(&error.to_ne_bytes());
    h[8..16].copy_from_slice(&unique.to_ne_bytes());
    h
}

/// The `FUSE_NOTIFY_RESEND` notification: a bare header, `unique` 0, the code in `error`.
#[must_use]
pub fn notify_resend() -> [u8; size::OUT_HEADER] {
    out_header(0, abi::NOTIFY_RESEND, 0)
}

/// `struct fuse_entry_out` (LOOKUP): node id = inode number, generation 0, no caching.
#[must_use]
pub fn entry_out(attr: &Attr) -> Vec<u8> {
    let mut o = Out::with_capacity(size::ENTRY_OUT);
    // nodeid, generation, entry_valid, attr_valid, and their nanoseconds
    o.u64(attr.ino)
        .u64(0)
        .u64(0)
        .u64(0)
        .u32(0)
        .u32(0)
        .attr(attr);
    o.0
}

/// `struct fuse_attr_out` (GETATTR, SETATTR): no caching.
#[must_use]
pub fn attr_out(attr: &Attr) -> Vec<u8> {
    let mut o = Out::with_capacity(size::ATTR_OUT);
    o.u64(0).u32(0).u32(0).attr(attr);
    o.0
}

/// `struct fuse_open_out` (OPEN, OPENDIR).
#[must_use]
pub fn open_out(fh: u64, open_flags: u32) -> Vec<u8> {
    let mut o = Out::with_capacity(size::OPEN_OUT);
    // backing_id 0: no passthrough
    o.u64(fh).u32(open_flags).u32(0);
    o.0
}

/// `struct fuse_write_out`.
#[must_use]
pub fn write_out(written: u32) -> Vec<u8> {
    let mut o = Out::with_capacity(size::WRITE_OUT);
    o.u32(written).u32(0);
    o.0
}

/// `struct fuse_statfs_out`.
#[must_use]
pub fn statfs_out(s: &StatFs) -> Vec<u8> {
    let mut o = Out::with_capacity(size::KSTATFS);
    // blocks, bfree, bavail, files, ffree
    o.u64(s.blocks).u64(0).u64(0).u64(s.files).u64(0);
    o.u32(s.bsize).u32(s.namelen).u32(s.frsize).u32(0);
    for _ in 0..6 {
        o.u32(0);
    }
    o.0
}

/// `struct fuse_lseek_out`.
#[must_use]
pub fn lseek_out(offset: i64) -> Vec<u8> {
    offset.to_ne_bytes().to_vec()
}

/// `struct fuse_init_out`.
#[must_use]
pub fn init_out(i: &InitOut) -> Vec<u8> {
    let mut o = Out::with_capacity(size::INIT_OUT);
    let (low, high) = (i.flags & 0xffff_ffff, i.flags >> 32);
    o.u32(i.major).u32(i.minor).u32(i.max_readahead);
    o.u32(u32::try_from(low).unwrap_or(0));
    o.u16(i.max_background).u16(i.congestion_threshold);
    o.u32(i.max_write).u32(i.time_gran);
    o.u16(i.max_pages).u16(0); // map_alignment
    o.u32(u32::try_from(high).unwrap_or(0));
    o.u32(0); // max_stack_depth
    for _ in 0..6 {
        o.u32(0);
    }
    o.0
}

/// The body of a READDIR reply: `struct fuse_dirent` records, each padded to 8 bytes, up to
/// the size the kernel asked for.
#[derive(Debug)]
pub struct DirBuf {
    out: Out,
    max: usize,
}

impl DirBuf {
    /// Room for `max` bytes of entries.
    #[must_use]
    pub fn new(max: usize) -> Self {
        DirBuf {
            out: Out::with_capacity(max.min(64 << 10)),
            max,
        }
    }

    /// Add an entry; `next` is the offset of the entry after it. Returns false (and adds
    /// nothing) when it does not fit.
    pub fn add(&mut self, ino: u64, next: u64, kind: u32, name: &[u8]) -> bool {
        let Ok(namelen) = u32::try_from(name.len()) else {
            return false;
        };
        let record = (size::DIRENT + name.len()).next_multiple_of(8);
        if self.out.0.len() + record > self.max {
            return false;
        }
        self.out.u64(ino).u64(next).u32(namelen).u32(kind);
        self.out.0.extend_from_slice(name);
        let padded = self.out.0.len().next_multiple_of(8);
        self.out.0.resize(padded, 0);
        true
    }

    /// The encoded entries.
    #[must_use]
    pub fn into_bytes(self) -> Vec<u8> {
        self.out.0
    }
}

#[cfg(test)]
mod tests;
