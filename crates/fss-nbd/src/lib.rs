//! fss-nbd: an NBD server for fss volumes (read-write) and snapshots (read-only).
//!
//! It speaks the fixed newstyle handshake and the transmission phase of the NBD protocol, with
//! structured replies and block status (`base:allocation`, and `fss:preserved` on snapshots),
//! over unix sockets and TCP. Exports come from a [`Catalog`](fss_core::export::Catalog);
//! the server never touches state or stores.
//!
//! ```no_run
//! use fss_nbd::{Server, ServerOptions, StaticCatalog};
//! use std::os::unix::net::UnixListener;
//! use std::sync::Arc;
//!
//! let catalog = Arc::new(StaticCatalog::new());
//! let server = Server::new(catalog, ServerOptions::default());
//! let stop = server.shutdown_handle();
//! let listener = UnixListener::bind("/tmp/fss-nbd.sock").unwrap();
//! let s = server.clone();
//! let t = std::thread::spawn(move || s.serve_unix(listener));
//! // ... later, on SIGTERM:
//! stop.shutdown();
//! t.join().unwrap().unwrap();
//! if !server.wait_idle(std::time::Duration::from_secs(10)) {
//!     eprintln!("still open: {:?}", server.exports_in_use());
//!     stop.disconnect_all();
//! }
//! ```
//!
//! Threads: one per connection (reading requests), plus up to
//! [`ServerOptions::workers_per_connection`] workers per connection started on demand; replies
//! are written under one mutex per connection. See the crate README for the reasons.

mod admission;
mod catalog;
mod errno;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod handshake;
mod meta_context;
mod options;
mod payloads;
mod pool;
pub mod protocol;
mod reply;
mod server;
mod stream;
pub mod tls;
mod transmission;

pub use catalog::StaticCatalog;
pub use error::ServeError;
pub use handshake::DEFAULT_EXPORT;
pub use options::ServerOptions;
pub use server::{ConnectionInfo, Server, ShutdownHandle};
pub use tls::{Tls, TlsError, TlsMode, TlsSettings};

/// Minimum block size advertised: any byte offset and length is accepted.
pub const MIN_BLOCK_SIZE: u32 = 1;
/// Preferred block size advertised: the engine's 4 KiB block.
pub const PREFERRED_BLOCK_SIZE: u32 = 4096;
/// Maximum payload advertised (and accepted) for reads and writes: 32 MiB.
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// The metadata context on snapshots marking blocks changed on the volume since the snapshot.
pub const PRESERVED_CONTEXT: &str = "fss:preserved";
