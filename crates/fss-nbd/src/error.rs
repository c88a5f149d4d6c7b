//! Error types: [`ServeError`] for the caller of the accept loops, [`ConnError`] for why one
//! connection ended early (logged, never returned to the daemon).

use std::io;

/// Why an accept loop stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listening socket could not be set up for polling.
    #[error("could not prepare the NBD listening socket: {0}")]
    Listener(#[source] io::Error),
    /// Waiting for connections failed.
    #[error("waiting for NBD connections failed: {0}")]
    Poll(#[source] io::Error),
    /// Accepting a connection failed in a way that will not go away.
    #[error("accepting an NBD connection failed: {0}")]
    Accept(#[source] io::Error),
}

/// Why a connection was ended by the server (a broken stream or a client that broke a MUST).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    /// Reading or writing the socket failed (including a truncated message).
    #[error("connection I/O failed: {0}")]
    Io(#[from] io::Error),
    /// A message did not start with its magic.
    #[error("bad magic {found:#x} where {expected} was expected")]
    BadMagic {
        /// What was on the wire.
        found: u64,
        /// The magic's name.
        expected: &'static str,
    },
    /// The client set flags the server did not offer.
    #[error("the client sent unknown handshake flags {0:#x}")]
    ClientFlags(u32),
    /// `NBD_OPT_EXPORT_NAME` named an export that does not exist (the option has no error
    /// reply: the protocol says to end the session).
    #[error("NBD_OPT_EXPORT_NAME asked for unknown export {0:?}")]
    UnknownExport(String),
    /// `NBD_OPT_EXPORT_NAME` carried a name that is not a valid string.
    #[error("NBD_OPT_EXPORT_NAME carried an invalid name")]
    BadExportName,
    /// An option too large even to skip.
    #[error("an option of {0} bytes is too large")]
    OptionTooLarge(u32),
    /// The handshake went on longer than the handshake timeout (formatted).
    #[error("handshake not finished within {0}, closing")]
    HandshakeTimeout(String),
    /// `NBD_OPT_EXPORT_NAME` before `NBD_OPT_STARTTLS` where TLS is required (the option has
    /// no error reply: the protocol says to end the session).
    #[error("NBD_OPT_EXPORT_NAME in plaintext, but this server requires TLS")]
    TlsRequired,
    /// The client sent more after `NBD_OPT_STARTTLS` before the server's reply (bytes that
    /// would otherwise be taken as sent over TLS).
    #[error("the client sent data after NBD_OPT_STARTTLS before its reply")]
    DataAfterStartTls,
    /// The TLS handshake failed.
    #[error("{0}")]
    Tls(#[from] crate::tls::stream::HandshakeError),
    /// The handshake was closed to make room for a new client.
    #[error("unfinished handshake closed to make room for a new client: {0}")]
    Evicted(String),
}

impl ConnError {
    /// Whether a read or write on the socket timed out (the handshake deadline).
    pub(crate) fn timed_out(&self) -> bool {
        use crate::tls::stream::HandshakeError;
        let (ConnError::Io(io) | ConnError::Tls(HandshakeError::Failed(io))) = self else {
            return false;
        };
        matches!(
            io.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        )
    }
}
