//! The daemon's error: a stable kind (the control protocol's) and a sentence.

use crate::protocol::ErrorBody;

/// A daemon operation's failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DaemonError {
    /// Stable kind, as in [`fss_core::ErrorKind::as_str`], plus `invalid-request`,
    /// `already-running` and `internal`.
    pub kind: String,
    /// What failed, on which object, and what to do.
    pub message: String,
}

impl DaemonError {
    /// A new error.
    pub fn new(kind: &str, message: impl Into<String>) -> Self {
        DaemonError {
            kind: kind.to_string(),
            message: message.into(),
        }
    }

    /// `not-found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new("not-found", message)
    }

    /// `invalid-argument`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new("invalid-argument", message)
    }

    /// `exists`.
    pub fn exists(message: impl Into<String>) -> Self {
        Self::new("exists", message)
    }

    /// `busy`.
    pub fn busy(message: impl Into<String>) -> Self {
        Self::new("busy", message)
    }

    /// An I/O failure on `what`.
    pub fn io(what: &str, e: &std::io::Error) -> Self {
        let kind = if e.raw_os_error() == Some(28) {
            "no-space"
        } else {
            "io"
        };
        let hint = match e.raw_os_error() {
            Some(28) => "; free space on that file system or choose another place",
            Some(13) => "; check permissions",
            Some(2) => "; check the path",
            _ => "",
        };
        Self::new(kind, format!("{what}: {e}{hint}"))
    }

    /// The body sent over the control socket.
    #[must_use]
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            kind: self.kind.clone(),
            message: self.message.clone(),
        }
    }
}

impl From<fss_core::Error> for DaemonError {
    fn from(e: fss_core::Error) -> Self {
        DaemonError::new(e.kind().as_str(), e.to_string())
    }
}

impl From<crate::names::Invalid> for DaemonError {
    fn from(e: crate::names::Invalid) -> Self {
        DaemonError::invalid(e.0)
    }
}

impl From<crate::state::StateError> for DaemonError {
    fn from(e: crate::state::StateError) -> Self {
        DaemonError::new("io", e.to_string())
    }
}

/// The daemon's result type.
pub type Result<T> = std::result::Result<T, DaemonError>;
