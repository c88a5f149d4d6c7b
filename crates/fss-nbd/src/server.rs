//! The server: accept loops on unix and TCP listeners, one thread per connection, a registry of
//! open connections (which export each one uses), and the shutdown handle.

use crate::error::{ConnError, ServeError};
use crate::handshake::{self, Outcome};
use crate::stream::Stream;
use crate::transmission::{self, End};
use fss_core::export::Catalog;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use std::collections::BTreeMap;
use std::io::{self, BufReader};
use std::net::{Shutdown, TcpListener};
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How often an accept loop looks at the shutdown flag while no client connects.
const ACCEPT_POLL: Duration = Duration::from_millis(100);

/// Tunables. The defaults suit a daemon serving a handful of clients on a small machine.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Connections at once; more are closed right after accept (with a warning).
    pub max_connections: usize,
    /// Worker threads per connection (started on demand): how many of one client's requests
    /// run at once.
    pub workers_per_connection: usize,
    /// Requests one connection may have in flight (read but not yet answered).
    pub max_requests_in_flight: usize,
    /// Buffer bytes one connection may have in flight (write payloads read, read buffers).
    /// A single request of up to 32 MiB always fits (it then runs alone).
    pub max_bytes_in_flight: usize,
    /// How long option haggling may wait for the client (`None`: forever). Transmission has
    /// no timeout: clients may stay idle.
    pub handshake_timeout: Option<Duration>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_connections: 256,
            workers_per_connection: 4,
            max_requests_in_flight: 64,
            max_bytes_in_flight: 64 << 20,
            handshake_timeout: Some(Duration::from_secs(30)),
        }
    }
}

/// One open connection, as [`Server::connections`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// A number unique within this server.
    pub id: u64,
    /// The peer: `unix`, or a TCP address.
    pub peer: String,
    /// The export in use, once the client chose one (`None` during the handshake).
    pub export: Option<String>,
    /// How long it has been open.
    pub open_for: Duration,
}

struct Entry {
    peer: String,
    export: Option<String>,
    since: Instant,
    /// A handle on the socket, to shut it down from [`ShutdownHandle::disconnect_all`].
    stream: Stream,
}

struct Inner {
    catalog: Arc<dyn Catalog>,
    options: ServerOptions,
    shutdown: AtomicBool,
    next_id: AtomicU64,
    conns: Mutex<BTreeMap<u64, Entry>>,
    conns_changed: Condvar,
}

impl Inner {
    fn conns(&self) -> MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An NBD server over a [`Catalog`]. Cheap to clone (clones share everything), so one clone
/// can run [`Server::serve_unix`] and another [`Server::serve_tcp`] on other threads.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("options", &self.inner.options)
            .field("connections", &self.connection_count())
            .finish_non_exhaustive()
    }
}

/// Stops a [`Server`]: the accept loops return, and new negotiations are refused.
#[derive(Clone)]
pub struct ShutdownHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ShutdownHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownHandle")
            .field("shutdown", &self.is_shutdown())
            .finish()
    }
}

impl ShutdownHandle {
    /// Stop accepting: every accept loop returns within about 100 ms; connections still in
    /// option haggling get `NBD_REP_ERR_SHUTDOWN`. Connections already serving an export go on
    /// until their clients disconnect (see [`Server::wait_idle`]) or
    /// [`ShutdownHandle::disconnect_all`] is called.
    pub fn shutdown(&self) {
        if !self.inner.shutdown.swap(true, Ordering::SeqCst) {
            tracing::info!("NBD server shutting down: no new connections");
        }
    }

    /// Whether [`ShutdownHandle::shutdown`] was called.
    #[must_use]
    pub fn is_shutdown(&self) -> bool {
        self.inner.shutdown.load(Ordering::SeqCst)
    }

    /// Force every open connection closed (a hard disconnect). Requests already running finish
    /// in the engine (no write is torn), but their replies may not reach the client. Returns
    /// how many connections were told to close; [`Server::wait_idle`] waits for them.
    pub fn disconnect_all(&self) -> usize {
        let conns = self.inner.conns();
        for (id, e) in conns.iter() {
            tracing::info!(connection = id, peer = %e.peer, export = ?e.export,
                "closing NBD connection");
            // Already closed by the client is fine.
            let _ = e.stream.shutdown(Shutdown::Both);
        }
        conns.len()
    }
}

/// Removes a connection from the registry when its thread ends (however it ends).
struct Registered {
    inner: Arc<Inner>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.inner.conns().remove(&self.id);
        self.inner.conns_changed.notify_all();
    }
}

impl Server {
    /// A server for the exports of `catalog`.
    #[must_use]
    pub fn new(catalog: Arc<dyn Catalog>, options: ServerOptions) -> Self {
        Server {
            inner: Arc::new(Inner {
                catalog,
                options,
                shutdown: AtomicBool::new(false),
                next_id: AtomicU64::new(1),
                conns: Mutex::new(BTreeMap::new()),
                conns_changed: Condvar::new(),
            }),
        }
    }

    /// A handle that stops this server (and every clone of it).
    #[must_use]
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Accept clients on `listener` until [`ShutdownHandle::shutdown`]; each connection runs on
    /// its own thread and outlives this call. The caller keeps the socket file (and removes it).
    ///
    /// # Errors
    /// The listener failed in a way that will not go away (transient accept errors such as
    /// running out of file descriptors are logged and retried).
    pub fn serve_unix(&self, listener: UnixListener) -> Result<(), ServeError> {
        listener
            .set_nonblocking(true)
            .map_err(ServeError::Listener)?;
        self.accept_loop(&listener, |l| {
            let (s, _) = l.accept()?;
            s.set_nonblocking(false)?;
            Ok(Stream::Unix(s))
        })
    }

    /// As [`Server::serve_unix`], on TCP (with `TCP_NODELAY` on every connection).
    ///
    /// # Errors
    /// As [`Server::serve_unix`].
    pub fn serve_tcp(&self, listener: TcpListener) -> Result<(), ServeError> {
        listener
            .set_nonblocking(true)
            .map_err(ServeError::Listener)?;
        self.accept_loop(&listener, |l| {
            let (s, _) = l.accept()?;
            s.set_nonblocking(false)?;
            s.set_nodelay(true)?;
            Ok(Stream::Tcp(s))
        })
    }

    fn accept_loop<L: AsFd>(
        &self,
        listener: &L,
        accept: impl Fn(&L) -> io::Result<Stream>,
    ) -> Result<(), ServeError> {
        let timeout = Timespec {
            tv_sec: 0,
            tv_nsec: i64::from(ACCEPT_POLL.subsec_nanos()),
        };
        loop {
            if self.inner.shutdown.load(Ordering::SeqCst) {
                return Ok(());
            }
            let mut fds = [PollFd::new(listener, PollFlags::IN)];
            match poll(&mut fds, Some(&timeout)) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(e) if e == rustix::io::Errno::INTR => continue,
                Err(e) => return Err(ServeError::Poll(e.into())),
            }
            if self.inner.shutdown.load(Ordering::SeqCst) {
                return Ok(());
            }
            match accept(listener) {
                Ok(stream) => self.start_connection(stream),
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock
                    | io::ErrorKind::Interrupted
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::ConnectionReset => {}
                    _ if is_resource_shortage(&e) => {
                        tracing::warn!(error = %e, "cannot accept NBD connections now; retrying");
                        std::thread::sleep(ACCEPT_POLL);
                    }
                    _ => return Err(ServeError::Accept(e)),
                },
            }
        }
    }

    fn start_connection(&self, stream: Stream) {
        let peer = stream.peer();
        let handle = match stream.try_clone() {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, %peer, "dropping an NBD connection");
                return;
            }
        };
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut conns = self.inner.conns();
            if conns.len() >= self.inner.options.max_connections {
                tracing::warn!(%peer, max = self.inner.options.max_connections,
                    "too many NBD connections; closing the new one");
                return;
            }
            conns.insert(
                id,
                Entry {
                    peer: peer.clone(),
                    export: None,
                    since: Instant::now(),
                    stream: handle,
                },
            );
        }
        let guard = Registered {
            inner: Arc::clone(&self.inner),
            id,
        };
        let inner = Arc::clone(&self.inner);
        let spawned = std::thread::Builder::new()
            .name(format!("nbd-conn-{id}"))
            .spawn(move || {
                let _guard = guard;
                run_connection(&inner, id, stream);
            });
        if let Err(e) = spawned {
            // The closure (and the registration in it) is dropped with the error.
            tracing::warn!(error = %e, %peer, "could not start a thread for an NBD connection");
        }
    }

    /// How many connections are open (in negotiation or serving an export).
    #[must_use]
    pub fn connection_count(&self) -> usize {
        self.inner.conns().len()
    }

    /// Every open connection.
    #[must_use]
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.inner
            .conns()
            .iter()
            .map(|(id, e)| ConnectionInfo {
                id: *id,
                peer: e.peer.clone(),
                export: e.export.clone(),
                open_for: e.since.elapsed(),
            })
            .collect()
    }

    /// The exports open now, by name, with how many connections use each.
    #[must_use]
    pub fn exports_in_use(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for e in self.inner.conns().values() {
            if let Some(name) = &e.export {
                *out.entry(name.clone()).or_insert(0) += 1;
            }
        }
        out
    }

    /// Whether any connection uses the export `name`.
    #[must_use]
    pub fn is_export_in_use(&self, name: &str) -> bool {
        self.inner
            .conns()
            .values()
            .any(|e| e.export.as_deref() == Some(name))
    }

    /// Wait until no connection is open, at most `timeout`. Returns whether none is.
    #[must_use]
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut conns = self.inner.conns();
        while !conns.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            conns = self
                .inner
                .conns_changed
                .wait_timeout(conns, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

fn is_resource_shortage(e: &io::Error) -> bool {
    use rustix::io::Errno;
    let code = e.raw_os_error();
    [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM]
        .iter()
        .any(|x| Some(x.raw_os_error()) == code)
}

fn run_connection(inner: &Inner, id: u64, stream: Stream) {
    let peer = stream.peer();
    match serve_connection(inner, id, stream) {
        Ok(why) => tracing::debug!(connection = id, %peer, %why, "NBD connection ended"),
        Err(e) => tracing::info!(connection = id, %peer, error = %e, "NBD connection ended"),
    }
}

fn serve_connection(inner: &Inner, id: u64, stream: Stream) -> Result<String, ConnError> {
    stream.set_read_timeout(inner.options.handshake_timeout)?;
    let mut w = stream.try_clone()?;
    let mut rd = BufReader::with_capacity(128 * 1024, stream);
    let shutting_down = || inner.shutdown.load(Ordering::SeqCst);
    let chosen = |name: &str| {
        if let Some(e) = inner.conns().get_mut(&id) {
            e.export = Some(name.to_string());
        }
    };
    let ctx = handshake::Context {
        catalog: inner.catalog.as_ref(),
        shutting_down: &shutting_down,
        chosen: &chosen,
    };
    let n = match handshake::negotiate(&mut rd, &mut w, &ctx)? {
        Outcome::Transmission(n) => n,
        Outcome::Ended(why) => return Ok(why.to_string()),
    };
    rd.get_ref().set_read_timeout(None)?;
    tracing::info!(connection = id, export = %n.name, structured = n.structured,
        contexts = ?n.contexts, "NBD client connected");
    let end = transmission::serve(rd, w, n, &inner.options, format!("nbd-io-{id}"))?;
    Ok(match end {
        End::Disconnect => "the client disconnected",
        End::Closed => "the client closed the connection",
        End::WriteFailed => "a reply could not be sent",
    }
    .to_string())
}
