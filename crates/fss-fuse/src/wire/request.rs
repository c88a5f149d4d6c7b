//! Decoding requests read from `/dev/fuse`: the `fuse_in_header`, then the arguments of the
//! opcodes this file system serves. Every length is checked against the bytes actually
//! read: a malformed request is an error the caller answers (EINVAL, or EIO when even its
//! length is wrong), never a panic or a read past the buffer.

use super::abi::{self, opcode, size};
use rustix::io::Errno;

/// `struct fuse_in_header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InHeader {
    /// Length of the whole request, header included.
    pub len: u32,
    /// What is asked.
    pub opcode: u32,
    /// The request's id; the reply echoes it exactly (bit 63 set on a resent request).
    pub unique: u64,
    /// The inode the request is about.
    pub nodeid: u64,
    /// The caller's user id.
    pub uid: u32,
    /// The caller's group id.
    pub gid: u32,
    /// The caller's process id.
    pub pid: u32,
    /// Length of extensions after the arguments, in units of 8 bytes.
    pub total_extlen: u16,
}

impl InHeader {
    /// Whether the kernel sent this request again after a `FUSE_NOTIFY_RESEND`.
    #[must_use]
    pub fn is_resend(&self) -> bool {
        self.unique & abi::UNIQUE_RESEND != 0
    }
}

/// A read that is too short to hold a request header: it cannot even be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a request of {0} bytes is shorter than the 40-byte FUSE header")]
pub struct ShortHeader(pub usize);

/// `struct fuse_init_in`, with `flags2` folded into the upper half of `flags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitIn {
    /// The kernel's protocol major version.
    pub major: u32,
    /// The kernel's protocol minor version.
    pub minor: u32,
    /// The kernel's read-ahead limit.
    pub max_readahead: u32,
    /// What the kernel supports (`init_flags`).
    pub flags: u64,
}

/// The parts of `struct fuse_setattr_in` this file system looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetAttrIn {
    /// Which fields are set (`fattr`).
    pub valid: u32,
    /// New size.
    pub size: u64,
    /// New mode.
    pub mode: u32,
    /// New owner.
    pub uid: u32,
    /// New group.
    pub gid: u32,
}

/// A decoded request's operation and arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation<'a> {
    /// `FUSE_INIT`.
    Init(InitIn),
    /// `FUSE_DESTROY`: the file system is going away.
    Destroy,
    /// `FUSE_LOOKUP` of a name in the directory `nodeid`.
    Lookup {
        /// The name, without its terminating NUL.
        name: &'a [u8],
    },
    /// `FUSE_FORGET` / `FUSE_BATCH_FORGET`: never answered.
    Forget,
    /// `FUSE_GETATTR`.
    GetAttr {
        /// The open file the attributes are asked through, if any.
        fh: Option<u64>,
    },
    /// `FUSE_SETATTR`.
    SetAttr(SetAttrIn),
    /// `FUSE_OPEN`.
    Open {
        /// `open(2)` flags.
        flags: u32,
    },
    /// `FUSE_READ`.
    Read {
        /// File handle.
        fh: u64,
        /// Where.
        offset: u64,
        /// How many bytes.
        size: u32,
    },
    /// `FUSE_WRITE`.
    Write {
        /// File handle.
        fh: u64,
        /// Where.
        offset: u64,
        /// The bytes.
        data: &'a [u8],
    },
    /// `FUSE_FLUSH` (on close).
    Flush,
    /// `FUSE_RELEASE`: the last reference to an open file is gone.
    Release {
        /// File handle.
        fh: u64,
    },
    /// `FUSE_FSYNC`.
    Fsync {
        /// File handle.
        fh: u64,
    },
    /// `FUSE_OPENDIR`.
    OpenDir,
    /// `FUSE_READDIR`.
    ReadDir {
        /// Index of the first entry wanted.
        offset: u64,
        /// Room for entries in the reply, in bytes.
        size: u32,
    },
    /// `FUSE_RELEASEDIR` / `FUSE_FSYNCDIR`: nothing to do.
    DirDone,
    /// `FUSE_STATFS`.
    StatFs,
    /// `FUSE_INTERRUPT`.
    Interrupt,
    /// `FUSE_LSEEK`.
    Lseek {
        /// File handle.
        fh: u64,
        /// Where to start looking.
        offset: i64,
        /// `SEEK_DATA` or `SEEK_HOLE` (the kernel handles the others).
        whence: i32,
    },
    /// `FUSE_FALLOCATE`.
    Fallocate {
        /// File handle.
        fh: u64,
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        length: u64,
        /// `fallocate(2)` mode.
        mode: i32,
    },
    /// A change of the namespace (create, mknod, mkdir, unlink, rmdir, rename, link, symlink):
    /// refused, names come from `fss` commands.
    NamespaceChange,
    /// Anything else: not implemented.
    Unsupported(u32),
}

/// A request: its header and what it asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// The header.
    pub header: InHeader,
    /// The operation and its arguments.
    pub op: Operation<'a>,
}

/// Reads fixed-size fields in order from a byte slice.
struct Fields<'a> {
    buf: &'a [u8],
}

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Errno> {
        if self.buf.len() < n {
            return Err(Errno::INVAL);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Errno> {
        self.take(N)?.try_into().map_err(|_| Errno::INVAL)
    }

    fn u16(&mut self) -> Result<u16, Errno> {
        self.array().map(u16::from_ne_bytes)
    }

    fn u32(&mut self) -> Result<u32, Errno> {
        self.array().map(u32::from_ne_bytes)
    }

    fn i32(&mut self) -> Result<i32, Errno> {
        self.array().map(i32::from_ne_bytes)
    }

    fn u64(&mut self) -> Result<u64, Errno> {
        self.array().map(u64::from_ne_bytes)
    }

    fn i64(&mut self) -> Result<i64, Errno> {
        self.array().map(i64::from_ne_bytes)
    }

    /// Require at least `n` more bytes (a structure this long follows).
    fn need(&self, n: usize) -> Result<(), Errno> {
        if self.buf.len() < n {
            Err(Errno::INVAL)
        } else {
            Ok(())
        }
    }
}

/// Decode the header at the start of `buf`.
///
/// # Errors
/// `buf` is shorter than a header.
pub fn header(buf: &[u8]) -> Result<InHeader, ShortHeader> {
    if buf.len() < size::IN_HEADER {
        return Err(ShortHeader(buf.len()));
    }
    let mut f = Fields { buf };
    let short = |_| ShortHeader(buf.len());
    Ok(InHeader {
        len: f.u32().map_err(short)?,
        opcode: f.u32().map_err(short)?,
        unique: f.u64().map_err(short)?,
        nodeid: f.u64().map_err(short)?,
        uid: f.u32().map_err(short)?,
        gid: f.u32().map_err(short)?,
        pid: f.u32().map_err(short)?,
        total_extlen: f.u16().map_err(short)?,
    })
}

/// Decode the whole request in `buf` (exactly what one read returned).
///
/// # Errors
/// [`ParseError::Header`] when `buf` cannot hold a header; [`ParseError::Body`] with the
/// errno to answer when the header is fine but the rest is not: EIO if the lengths do not
/// add up, EINVAL if an argument is cut short or malformed.
pub fn parse(buf: &[u8]) -> Result<Request<'_>, ParseError> {
    let header = header(buf).map_err(ParseError::Header)?;
    let body = body(&header, buf).map_err(|e| ParseError::Body(header, e))?;
    let op = operation(&header, body).map_err(|e| ParseError::Body(header, e))?;
    Ok(Request { header, op })
}

/// Why a request could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not even a header: nothing can be answered.
    #[error(transparent)]
    Header(ShortHeader),
    /// The header is fine, the rest is not: answer with this errno.
    #[error("malformed FUSE request (opcode {opcode}): {errno}", opcode = .0.opcode, errno = .1)]
    Body(InHeader, Errno),
}

/// The arguments: after the header, before any extensions.
fn body<'a>(header: &InHeader, buf: &'a [u8]) -> Result<&'a [u8], Errno> {
    let len = usize::try_from(header.len).map_err(|_| Errno::IO)?;
    if len != buf.len() {
        return Err(Errno::IO);
    }
    let ext = usize::from(header.total_extlen) * 8;
    let end = len.checked_sub(ext).ok_or(Errno::IO)?;
    buf.get(size::IN_HEADER..end).ok_or(Errno::IO)
}

/// A NUL-terminated name.
fn name(body: &[u8]) -> Result<&[u8], Errno> {
    let end = body.iter().position(|&b| b == 0).ok_or(Errno::INVAL)?;
    Ok(&body[..end])
}

fn operation<'a>(header: &InHeader, body: &'a [u8]) -> Result<Operation<'a>, Errno> {
    let mut f = Fields { buf: body };
    Ok(match header.opcode {
        opcode::INIT => Operation::Init(init(&mut f)?),
        opcode::DESTROY => Operation::Destroy,
        opcode::LOOKUP => Operation::Lookup { name: name(body)? },
        opcode::FORGET | opcode::BATCH_FORGET => Operation::Forget,
        opcode::GETATTR => {
            f.need(size::GETATTR_IN)?;
            let flags = f.u32()?;
            f.u32()?;
            let fh = f.u64()?;
            Operation::GetAttr {
                fh: (flags & abi::GETATTR_FH != 0).then_some(fh),
            }
        }
        opcode::SETATTR => Operation::SetAttr(setattr(&mut f)?),
        opcode::OPEN => {
            f.need(size::OPEN_IN)?;
            Operation::Open { flags: f.u32()? }
        }
        opcode::READ
        | opcode::WRITE
        | opcode::FLUSH
        | opcode::RELEASE
        | opcode::FSYNC
        | opcode::LSEEK
        | opcode::FALLOCATE => file_operation(header.opcode, &mut f)?,
        opcode::OPENDIR => Operation::OpenDir,
        opcode::READDIR => {
            f.need(size::READ_IN)?;
            f.u64()?;
            Operation::ReadDir {
                offset: f.u64()?,
                size: f.u32()?,
            }
        }
        opcode::RELEASEDIR | opcode::FSYNCDIR => Operation::DirDone,
        opcode::STATFS => Operation::StatFs,
        opcode::INTERRUPT => {
            f.need(size::INTERRUPT_IN)?;
            Operation::Interrupt
        }
        opcode::CREATE
        | opcode::MKNOD
        | opcode::MKDIR
        | opcode::UNLINK
        | opcode::RMDIR
        | opcode::RENAME
        | opcode::RENAME2
        | opcode::LINK
        | opcode::SYMLINK => Operation::NamespaceChange,
        other => Operation::Unsupported(other),
    })
}

/// The operations on an open file (their arguments start with the file handle).
fn file_operation<'a>(opcode: u32, f: &mut Fields<'a>) -> Result<Operation<'a>, Errno> {
    Ok(match opcode {
        opcode::READ => {
            f.need(size::READ_IN)?;
            Operation::Read {
                fh: f.u64()?,
                offset: f.u64()?,
                size: f.u32()?,
            }
        }
        opcode::WRITE => write(f)?,
        opcode::FLUSH => {
            f.need(size::FLUSH_IN)?;
            Operation::Flush
        }
        opcode::RELEASE => {
            f.need(size::RELEASE_IN)?;
            Operation::Release { fh: f.u64()? }
        }
        opcode::FSYNC => {
            f.need(size::FSYNC_IN)?;
            Operation::Fsync { fh: f.u64()? }
        }
        opcode::LSEEK => {
            f.need(size::LSEEK_IN)?;
            Operation::Lseek {
                fh: f.u64()?,
                offset: f.i64()?,
                whence: f.i32()?,
            }
        }
        opcode::FALLOCATE => {
            f.need(size::FALLOCATE_IN)?;
            Operation::Fallocate {
                fh: f.u64()?,
                offset: f.u64()?,
                length: f.u64()?,
                mode: f.i32()?,
            }
        }
        other => Operation::Unsupported(other),
    })
}

fn init(f: &mut Fields<'_>) -> Result<InitIn, Errno> {
    f.need(size::INIT_IN_COMPAT)?;
    let major = f.u32()?;
    let minor = f.u32()?;
    let max_readahead = f.u32()?;
    let low = u64::from(f.u32()?);
    // flags2 exists from 7.36 and is meaningful only with FUSE_INIT_EXT.
    let high = match f.u32() {
        Ok(h) if low & abi::init_flags::INIT_EXT != 0 => u64::from(h) << 32,
        _ => 0,
    };
    Ok(InitIn {
        major,
        minor,
        max_readahead,
        flags: low | high,
    })
}

fn setattr(f: &mut Fields<'_>) -> Result<SetAttrIn, Errno> {
    f.need(size::SETATTR_IN)?;
    let valid = f.u32()?;
    f.u32()?; // padding
    f.u64()?; // fh
    let size = f.u64()?;
    f.take(8 + 3 * 8 + 3 * 4)?; // lock_owner, atime, mtime, ctime, their nanoseconds
    let mode = f.u32()?;
    f.u32()?; // unused4
    let uid = f.u32()?;
    let gid = f.u32()?;
    Ok(SetAttrIn {
        valid,
        size,
        mode,
        uid,
        gid,
    })
}

fn write<'a>(f: &mut Fields<'a>) -> Result<Operation<'a>, Errno> {
    f.need(size::WRITE_IN)?;
    let fh = f.u64()?;
    let offset = f.u64()?;
    let len = f.u32()?;
    f.take(size::WRITE_IN - 20)?; // write_flags, lock_owner, flags, padding
    let len = usize::try_from(len).map_err(|_| Errno::INVAL)?;
    Ok(Operation::Write {
        fh,
        offset,
        data: f.take(len)?,
    })
}

#[cfg(test)]
mod tests;
