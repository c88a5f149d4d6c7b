//! The daemon's error: a stable kind (the control protocol's) and a sentence.

use crate::protocol::ErrorBody;
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

/// The stable kind of a failure, as the control protocol names it (`docs/CONTROL.md`): the
/// engine's kinds ([`fss_core::ErrorKind`]), the daemon's own, and the client's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The named object does not exist.
    NotFound,
    /// An object of that name already exists.
    Exists,
    /// An argument is not acceptable.
    InvalidArgument,
    /// The object is in use; try again later.
    Busy,
    /// A file system or store has no space left.
    NoSpace,
    /// An I/O failed.
    Io,
    /// The snapshot is invalid, unavailable or unverified.
    InvalidSnapshot,
    /// A store's contents are damaged.
    CorruptStore,
    /// A store belongs to another volume or chain position.
    ForeignStore,
    /// A store uses an unknown format.
    UnsupportedFormat,
    /// A write to something read-only.
    ReadOnly,
    /// An offset or length outside the device.
    OutOfRange,
    /// The request itself is malformed or of another protocol version.
    InvalidRequest,
    /// Another daemon serves the state directory.
    AlreadyRunning,
    /// A bug or an unexpected answer.
    Internal,
    /// Client side: no daemon answers, or it went away.
    Unavailable,
    /// Client side: the output of a backup could not be written.
    Output,
    /// A kind this release does not know (from a newer daemon).
    #[serde(other)]
    Other,
}

impl ErrorKind {
    /// The kind's name on the wire.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not-found",
            ErrorKind::Exists => "exists",
            ErrorKind::InvalidArgument => "invalid-argument",
            ErrorKind::Busy => "busy",
            ErrorKind::NoSpace => "no-space",
            ErrorKind::Io => "io",
            ErrorKind::InvalidSnapshot => "invalid-snapshot",
            ErrorKind::CorruptStore => "corrupt-store",
            ErrorKind::ForeignStore => "foreign-store",
            ErrorKind::UnsupportedFormat => "unsupported-format",
            ErrorKind::ReadOnly => "read-only",
            ErrorKind::OutOfRange => "out-of-range",
            ErrorKind::InvalidRequest => "invalid-request",
            ErrorKind::AlreadyRunning => "already-running",
            ErrorKind::Internal => "internal",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Output => "output",
            ErrorKind::Other => "other",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compares with a wire name, as programs that read the protocol do.
impl PartialEq<&str> for ErrorKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl From<fss_core::ErrorKind> for ErrorKind {
    /// The engine's kind of the same wire name ([`ErrorKind::Other`] for one this release
    /// does not list).
    fn from(k: fss_core::ErrorKind) -> Self {
        serde_json::from_value(serde_json::Value::String(k.as_str().to_string()))
            .unwrap_or(ErrorKind::Other)
    }
}

/// A daemon operation's failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DaemonError {
    /// Stable kind.
    pub kind: ErrorKind,
    /// What failed, on which object, and what to do.
    pub message: String,
}

impl DaemonError {
    /// A new error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        DaemonError {
            kind,
            message: message.into(),
        }
    }

    /// `not-found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// `invalid-argument`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    /// `exists`.
    pub fn exists(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Exists, message)
    }

    /// `busy`.
    pub fn busy(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Busy, message)
    }

    /// `internal`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// `invalid-request`.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, message)
    }

    /// An I/O failure on `what`.
    pub fn io(what: &str, e: &std::io::Error) -> Self {
        let errno = e.raw_os_error().map(Errno::from_raw_os_error);
        let kind = if errno == Some(Errno::NOSPC) {
            ErrorKind::NoSpace
        } else {
            ErrorKind::Io
        };
        let hint = match errno {
            Some(Errno::NOSPC) => "; free space on that file system or choose another place",
            Some(Errno::ACCESS) => "; check permissions",
            Some(Errno::NOENT) => "; check the path",
            _ => "",
        };
        Self::new(kind, format!("{what}: {e}{hint}"))
    }

    /// The body sent over the control socket.
    #[must_use]
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            kind: self.kind,
            message: self.message.clone(),
        }
    }
}

impl From<ErrorBody> for DaemonError {
    fn from(b: ErrorBody) -> Self {
        DaemonError {
            kind: b.kind,
            message: b.message,
        }
    }
}

impl From<fss_core::Error> for DaemonError {
    fn from(e: fss_core::Error) -> Self {
        DaemonError::new(e.kind().into(), e.to_string())
    }
}

impl From<crate::names::Invalid> for DaemonError {
    fn from(e: crate::names::Invalid) -> Self {
        DaemonError::invalid(e.0)
    }
}

impl From<crate::state::StateError> for DaemonError {
    fn from(e: crate::state::StateError) -> Self {
        DaemonError::new(ErrorKind::Io, e.to_string())
    }
}

/// The daemon's result type.
pub type Result<T> = std::result::Result<T, DaemonError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_keep_their_wire_names() {
        for k in [
            ErrorKind::NotFound,
            ErrorKind::InvalidArgument,
            ErrorKind::AlreadyRunning,
            ErrorKind::InvalidSnapshot,
            ErrorKind::NoSpace,
        ] {
            let json = serde_json::to_string(&k).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
        }
        let unknown: ErrorKind =
            serde_json::from_str("\"from-the-future\"").unwrap_or(ErrorKind::Io);
        assert_eq!(unknown, ErrorKind::Other);
    }

    #[test]
    fn engine_kinds_keep_the_engine_names() {
        use fss_core::ErrorKind as K;
        for k in [
            K::Io,
            K::OutOfRange,
            K::ReadOnly,
            K::InvalidSnapshot,
            K::NoSpace,
            K::CorruptStore,
            K::ForeignStore,
            K::UnsupportedFormat,
            K::Busy,
            K::NotFound,
            K::Exists,
            K::InvalidArgument,
        ] {
            assert_eq!(ErrorKind::from(k).as_str(), k.as_str());
        }
    }

    #[test]
    fn no_space_is_its_own_kind() {
        let e = DaemonError::io("cannot write x", &std::io::Error::from_raw_os_error(28));
        assert_eq!(e.kind, ErrorKind::NoSpace);
        assert!(e.message.contains("free space"));
    }
}
