//! The listening sockets of `fss serve` (control, NBD unix, NBD TCP): made once, by the
//! supervisor, or by the daemon itself when it runs unsupervised.

use crate::error::{DaemonError, Result};
use crate::paths::check_socket_path;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;

/// Bind a unix socket with mode 0600, replacing a stale one (the caller holds the state
/// directory's lock, so nobody listens on it any more).
///
/// # Errors
/// The path is too long or cannot be bound.
pub fn bind_socket(path: &Path) -> Result<UnixListener> {
    check_socket_path(path).map_err(DaemonError::invalid)?;
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)
        .map_err(|e| DaemonError::io(&format!("cannot listen on {}", path.display()), &e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| DaemonError::io(&format!("cannot restrict {}", path.display()), &e))?;
    Ok(l)
}

/// Listen for NBD over TCP at `addr`. The front-end that serves it warns when other
/// machines can reach it without authentication (it knows whether TLS is set up).
///
/// # Errors
/// The address cannot be bound.
pub fn bind_tcp(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .map_err(|e| DaemonError::io(&format!("cannot listen for NBD on {addr}"), &e))
}
