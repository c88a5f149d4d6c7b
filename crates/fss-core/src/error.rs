//! The one public error type of the engine.
//!
//! Callers match on [`ErrorKind`] (stable, `#[non_exhaustive]`); front-ends map it to an errno
//! with [`Error::errno`], the CLI turns [`Error`]'s `Display` into a sentence. The context says
//! what failed (operation), on which object, and where (offset), and the detail says what to do.

use std::fmt;
use std::io;

/// What kind of failure an [`Error`] is. Stable: front-ends and tests match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The underlying device or store failed an I/O.
    Io,
    /// An offset or length lies outside the device.
    OutOfRange,
    /// A write was attempted on something read-only (a snapshot).
    ReadOnly,
    /// The snapshot is no longer valid (its store filled up or failed) and cannot be read.
    InvalidSnapshot,
    /// A store (or the device under it) has no space left.
    NoSpace,
    /// A store's contents are damaged.
    CorruptStore,
    /// A store belongs to another volume or another position in the chain.
    ForeignStore,
    /// A store uses a format this version does not know.
    UnsupportedFormat,
    /// The object is in use and the operation cannot proceed now.
    Busy,
    /// The named object does not exist (or no longer exists).
    NotFound,
    /// An object of that name already exists.
    Exists,
    /// An argument is not acceptable (a bad cluster size, a bad name, ...).
    InvalidArgument,
}

impl ErrorKind {
    /// A short lowercase name, stable across versions (used by the control protocol).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Io => "io",
            ErrorKind::OutOfRange => "out-of-range",
            ErrorKind::ReadOnly => "read-only",
            ErrorKind::InvalidSnapshot => "invalid-snapshot",
            ErrorKind::NoSpace => "no-space",
            ErrorKind::CorruptStore => "corrupt-store",
            ErrorKind::ForeignStore => "foreign-store",
            ErrorKind::UnsupportedFormat => "unsupported-format",
            ErrorKind::Busy => "busy",
            ErrorKind::NotFound => "not-found",
            ErrorKind::Exists => "exists",
            ErrorKind::InvalidArgument => "invalid-argument",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An engine error: a kind, the operation and object it concerns, an optional offset, a
/// sentence for people, and the underlying I/O error if there was one.
#[derive(Debug, thiserror::Error)]
pub struct Error {
    kind: ErrorKind,
    op: &'static str,
    object: String,
    offset: Option<u64>,
    detail: String,
    #[source]
    source: Option<io::Error>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.op, self.object)?;
        if let Some(off) = self.offset {
            write!(f, " at offset {off}")?;
        }
        write!(f, " failed: {}", self.detail)?;
        if let Some(src) = &self.source {
            write!(f, " ({src})")?;
        }
        Ok(())
    }
}

impl Error {
    /// A new error of `kind` for operation `op` (a verb such as "write") on `object`.
    pub fn new(
        kind: ErrorKind,
        op: &'static str,
        object: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Error {
            kind,
            op,
            object: object.into(),
            offset: None,
            detail: detail.into(),
            source: None,
        }
    }

    /// An error caused by an I/O error; the kind follows the errno (ENOSPC is `NoSpace`).
    pub fn io(op: &'static str, object: impl Into<String>, source: io::Error) -> Self {
        let (kind, detail) = classify_io(&source);
        Error {
            kind,
            op,
            object: object.into(),
            offset: None,
            detail: detail.to_string(),
            source: Some(source),
        }
    }

    /// The same error, located at byte `offset`.
    #[must_use]
    pub fn at(mut self, offset: u64) -> Self {
        self.offset = Some(offset);
        self
    }

    /// What kind of failure this is.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The operation that failed ("write", "read", "create snapshot", ...).
    #[must_use]
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// The object the operation was about (a volume, snapshot or store description).
    #[must_use]
    pub fn object(&self) -> &str {
        &self.object
    }

    /// The byte offset concerned, if any.
    #[must_use]
    pub fn offset(&self) -> Option<u64> {
        self.offset
    }

    /// The sentence describing the cause and the remedy.
    #[must_use]
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// The errno a block front-end (NBD, FUSE) should report for this error.
    #[must_use]
    pub fn errno(&self) -> i32 {
        if let Some(code) = self.source.as_ref().and_then(io::Error::raw_os_error) {
            return code;
        }
        match self.kind {
            ErrorKind::OutOfRange | ErrorKind::InvalidArgument => rustix::io::Errno::INVAL,
            ErrorKind::ReadOnly => rustix::io::Errno::ROFS,
            ErrorKind::NoSpace => rustix::io::Errno::NOSPC,
            ErrorKind::Busy => rustix::io::Errno::BUSY,
            ErrorKind::NotFound => rustix::io::Errno::NOENT,
            ErrorKind::Exists => rustix::io::Errno::EXIST,
            ErrorKind::UnsupportedFormat => rustix::io::Errno::NOTSUP,
            ErrorKind::Io
            | ErrorKind::InvalidSnapshot
            | ErrorKind::CorruptStore
            | ErrorKind::ForeignStore => rustix::io::Errno::IO,
        }
        .raw_os_error()
    }
}

fn classify_io(e: &io::Error) -> (ErrorKind, &'static str) {
    match e.raw_os_error() {
        Some(c) if c == rustix::io::Errno::NOSPC.raw_os_error() => (
            ErrorKind::NoSpace,
            "no space left on the underlying file system; free space or move the file",
        ),
        Some(c) if c == rustix::io::Errno::DQUOT.raw_os_error() => (
            ErrorKind::NoSpace,
            "disk quota exceeded; raise the quota or free space",
        ),
        _ if e.kind() == io::ErrorKind::UnexpectedEof => (
            ErrorKind::OutOfRange,
            "the device ended before the requested range; was it truncated?",
        ),
        _ => (
            ErrorKind::Io,
            "the device reported an I/O error; check the kernel log and the medium",
        ),
    }
}

/// The engine's result type.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_op_object_offset_and_cause() {
        let e = Error::new(
            ErrorKind::OutOfRange,
            "write",
            "volume 'vol0'",
            "ends past 1048576 bytes",
        )
        .at(4096);
        assert_eq!(
            e.to_string(),
            "write volume 'vol0' at offset 4096 failed: ends past 1048576 bytes"
        );
        assert_eq!(e.errno(), 22);
    }

    #[test]
    fn enospc_maps_to_no_space_and_keeps_errno() {
        let e = Error::io("write", "store", io::Error::from_raw_os_error(28));
        assert_eq!(e.kind(), ErrorKind::NoSpace);
        assert_eq!(e.errno(), 28);
        let e = Error::io("read", "store", io::Error::from_raw_os_error(5));
        assert_eq!(e.kind(), ErrorKind::Io);
        assert_eq!(e.errno(), 5);
    }

    #[test]
    fn errno_by_kind() {
        let ro = Error::new(
            ErrorKind::ReadOnly,
            "write",
            "snapshot 's'",
            "snapshots are read-only",
        );
        assert_eq!(ro.errno(), 30);
        assert_eq!(ErrorKind::InvalidSnapshot.as_str(), "invalid-snapshot");
    }
}
