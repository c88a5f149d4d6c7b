//! The server's tunables.

use std::sync::Arc;
use std::time::Duration;

/// Tunables. The defaults suit a daemon serving a handful of clients on a small machine.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Connections at once. At the limit the oldest unfinished handshake is closed to admit a
    /// new client; when every connection is serving an export, the new one is closed right
    /// after accept (with a warning).
    pub max_connections: usize,
    /// Worker threads per connection (started on demand): how many of one client's requests
    /// run at once.
    pub workers_per_connection: usize,
    /// Requests one connection may have in flight (read but not yet answered).
    pub max_requests_in_flight: usize,
    /// Buffer bytes one connection may have in flight (write payloads read, read buffers).
    /// A single request of up to 32 MiB always fits (it then runs alone). Kept below
    /// `max_total_bytes_in_flight`, so that one stalled client cannot take the whole of it.
    pub max_bytes_in_flight: usize,
    /// Buffer bytes all connections together may have in flight: what bounds the server's
    /// memory when many clients pipeline large requests and do not read the replies (their
    /// sockets are then not read until replies go out). A single request always fits, alone.
    pub max_total_bytes_in_flight: usize,
    /// How long the whole handshake (greeting to the choice of an export) may take
    /// (`None`: forever). Transmission has no such limit: clients may stay idle.
    pub handshake_timeout: Option<Duration>,
    /// How long a reply may wait for the client to read (no progress at all) before the
    /// connection is closed, releasing its share of the budget (`None`: forever).
    pub reply_timeout: Option<Duration>,
    /// Connections still in the handshake at once, from all peers; when full, the oldest is
    /// closed to make room for a new one.
    pub max_handshakes: usize,
    /// Connections still in the handshake at once from one peer (a TCP address, or the process
    /// on a unix socket); when over, that peer's oldest is closed.
    pub max_handshakes_per_peer: usize,
    /// TLS on TCP connections (`None`: not offered). The unix socket never offers it.
    pub tls: Option<Arc<crate::tls::Tls>>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_connections: 256,
            workers_per_connection: 4,
            max_requests_in_flight: 64,
            max_bytes_in_flight: 64 << 20,
            max_total_bytes_in_flight: 256 << 20,
            handshake_timeout: Some(Duration::from_secs(10)),
            reply_timeout: Some(Duration::from_secs(60)),
            max_handshakes: 64,
            max_handshakes_per_peer: 8,
            tls: None,
        }
    }
}
