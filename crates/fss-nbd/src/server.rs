//! The server: accept loops on unix and TCP listeners, one thread per connection, a registry of
//! open connections (which export each one uses), and the shutdown handle.

use crate::admission::{self, Admit, HalfOpen, Limits};
use crate::error::{ConnError, ServeError};
use crate::handshake::{self, Outcome, TlsOffer};
use crate::pool::SharedBudget;
use crate::stream::Stream;
use crate::transmission::{self, End};
use crate::ServerOptions;
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

/// How often an accept loop looks at the shutdown flag while no client connects (a shutdown
/// also wakes it at once).
const ACCEPT_POLL: Duration = Duration::from_millis(100);

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

/// Why the server is closing a connection that is still in its handshake.
#[derive(Debug, Clone)]
enum Closing {
    /// It did not finish the handshake in time.
    HandshakeTimeout,
    /// It was the oldest unfinished handshake when a new client needed room.
    Evicted(String),
}

struct Entry {
    peer: String,
    /// The client, for the limit per peer (see `Stream::peer_key`).
    peer_key: String,
    export: Option<String>,
    /// Set when the server closes it during the handshake, to say why in the log.
    closing: Option<Closing>,
    since: Instant,
    /// A handle on the socket, to shut it down from [`ShutdownHandle::disconnect_all`].
    stream: Stream,
}

struct Inner {
    catalog: Arc<dyn Catalog>,
    options: ServerOptions,
    shared: Arc<SharedBudget>,
    shutdown: AtomicBool,
    /// Readable once shut down (an eventfd): wakes the accept loops at once.
    wake: Option<std::os::fd::OwnedFd>,
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
            if let Some(w) = &self.inner.wake {
                let _ = rustix::io::write(w, &1u64.to_ne_bytes());
            }
        }
    }

    /// Whether [`ShutdownHandle::shutdown`] was called.
    #[must_use]
    pub fn is_shutdown(&self) -> bool {
        self.inner.shutdown.load(Ordering::SeqCst)
    }

    /// Stop accepting and stop reading requests, for a hand-over to another process: a
    /// connection serving an export answers every request it has already read, then closes
    /// (its client sees the end of the stream after the last reply, and may reconnect to the
    /// next process); a connection still negotiating is closed. Returns how many connections
    /// were told; [`Server::wait_idle`] waits for them.
    pub fn drain(&self) -> usize {
        self.shutdown();
        let conns = self.inner.conns();
        for (id, e) in conns.iter() {
            tracing::info!(connection = id, peer = %e.peer, export = ?e.export,
                "draining NBD connection: answering what it sent, then closing");
            let how = if e.export.is_some() {
                Shutdown::Read
            } else {
                Shutdown::Both
            };
            // Already closed by the client is fine.
            let _ = e.stream.shutdown(how);
        }
        conns.len()
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
                shared: SharedBudget::new(options.max_total_bytes_in_flight),
                options,
                shutdown: AtomicBool::new(false),
                wake: rustix::event::eventfd(
                    0,
                    rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
                )
                .ok(),
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
            self.reap_handshakes();
            let mut fds = vec![PollFd::new(listener, PollFlags::IN)];
            if let Some(w) = &self.inner.wake {
                fds.push(PollFd::new(w, PollFlags::IN));
            }
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

    /// Close the connections whose handshake has gone on longer than the handshake timeout
    /// (the socket's read timeout alone would let a client that sends a byte now and then stay).
    fn reap_handshakes(&self) {
        let Some(limit) = self.inner.options.handshake_timeout else {
            return;
        };
        for e in self.inner.conns().values_mut() {
            if e.export.is_none() && e.closing.is_none() && e.since.elapsed() > limit {
                e.closing = Some(Closing::HandshakeTimeout);
                // Wakes its thread, which logs why; already closed by the client is fine.
                let _ = e.stream.shutdown(Shutdown::Both);
            }
        }
    }

    /// Register a new connection, closing unfinished handshakes to make room (see
    /// [`admission`]); `false` if it must be closed instead.
    fn admit(&self, id: u64, peer: &str, peer_key: String, handle: Stream) -> bool {
        let o = &self.inner.options;
        let limits = Limits {
            max_connections: o.max_connections,
            max_handshakes: o.max_handshakes,
            max_handshakes_per_peer: o.max_handshakes_per_peer,
        };
        let mut conns = self.inner.conns();
        let decision = {
            let live = || conns.iter().filter(|(_, e)| e.closing.is_none());
            let half: Vec<HalfOpen<'_>> = live()
                .filter(|(_, e)| e.export.is_none())
                .map(|(id, e)| HalfOpen {
                    id: *id,
                    peer: &e.peer_key,
                    since: e.since,
                })
                .collect();
            admission::admit(live().count(), &half, &peer_key, limits)
        };
        let evict = match decision {
            Admit::Accept(evict) => evict,
            Admit::Refuse(why) => {
                tracing::warn!("NBD client {peer}: {why}");
                return false;
            }
        };
        for (old, why) in evict {
            if let Some(e) = conns.get_mut(&old) {
                tracing::warn!(
                    connection = old,
                    "NBD client {}: unfinished handshake open for \
                    {:.1} s closed to admit {peer}: {why}",
                    e.peer,
                    e.since.elapsed().as_secs_f64()
                );
                let _ = e.stream.shutdown(Shutdown::Both);
                e.closing = Some(Closing::Evicted(why));
            }
        }
        conns.insert(
            id,
            Entry {
                peer: peer.to_string(),
                peer_key,
                export: None,
                closing: None,
                since: Instant::now(),
                stream: handle,
            },
        );
        true
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
        if !self.admit(id, &peer, stream.peer_key(), handle) {
            return;
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

    /// Request and reply buffer bytes in flight now, across every connection, as counted
    /// against [`ServerOptions::max_total_bytes_in_flight`] (each connection's first 256 KiB
    /// of small requests are not counted: see the crate README).
    #[must_use]
    pub fn bytes_in_flight(&self) -> usize {
        self.inner.shared.in_use()
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
        Err(e @ ConnError::HandshakeTimeout(_)) => {
            tracing::warn!(connection = id, "NBD client {peer}: {e}");
        }
        // Logged when it was closed, with the client it made room for.
        Err(e @ ConnError::Evicted(_)) => {
            tracing::debug!(connection = id, "NBD client {peer}: {e}");
        }
        Err(e) => tracing::info!(connection = id, "NBD client {peer}: {e}; connection ended"),
    }
}

/// A duration for people: `10 s`, `0.3 s`.
pub(crate) fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// Why a handshake ended early, when the server ended it (a timeout, or room for others) rather
/// than the client; `None` otherwise. `timed_out` says whether a read or write timed out.
fn closed_by_server(inner: &Inner, id: u64, timed_out: bool) -> Option<ConnError> {
    let limit = inner
        .options
        .handshake_timeout
        .map_or_else(String::new, seconds);
    match inner.conns().get(&id).and_then(|e| e.closing.clone()) {
        Some(Closing::Evicted(why)) => Some(ConnError::Evicted(why)),
        Some(Closing::HandshakeTimeout) => Some(ConnError::HandshakeTimeout(limit)),
        None if timed_out => Some(ConnError::HandshakeTimeout(limit)),
        None => None,
    }
}

fn serve_connection(inner: &Inner, id: u64, stream: Stream) -> Result<String, ConnError> {
    // A backstop for the reaper in the accept loop, which stops with it at shutdown.
    stream.set_read_timeout(inner.options.handshake_timeout)?;
    stream.set_write_timeout(inner.options.handshake_timeout)?;
    let tls = crate::tls::offer(&stream, inner.options.tls.as_deref());
    let mut w = stream.try_clone()?;
    let mut rd = BufReader::with_capacity(128 * 1024, stream);
    let shutting_down = || inner.shutdown.load(Ordering::SeqCst);
    let chosen = |name: &str| {
        if let Some(e) = inner.conns().get_mut(&id) {
            e.export = Some(name.to_string());
        }
    };
    let mut ctx = handshake::Context {
        catalog: inner.catalog.as_ref(),
        shutting_down: &shutting_down,
        chosen: &chosen,
        tls,
    };
    let mut outcome = handshake::negotiate(&mut rd, &mut w, &ctx);
    if let (Ok(Outcome::StartTls(resume)), Some(tls)) = (&outcome, &inner.options.tls) {
        outcome = crate::tls::upgrade(&rd, tls).and_then(|upgraded| {
            w = upgraded.try_clone()?;
            rd = BufReader::with_capacity(128 * 1024, upgraded);
            ctx.tls = TlsOffer::Active;
            handshake::resume(&mut rd, &mut w, &ctx, *resume)
        });
    }
    let n = match outcome {
        Ok(Outcome::Transmission(n)) => n,
        Ok(Outcome::Ended(why)) => {
            return closed_by_server(inner, id, false).map_or_else(|| Ok(why.to_string()), Err)
        }
        Ok(Outcome::StartTls(_)) => return Ok("TLS was acknowledged but is not set up".into()),
        Err(e) => return Err(closed_by_server(inner, id, e.timed_out()).unwrap_or(e)),
    };
    rd.get_ref().set_read_timeout(None)?;
    w.set_write_timeout(inner.options.reply_timeout)?;
    tracing::info!(connection = id, export = %n.name, structured = n.structured,
        contexts = ?n.contexts, tls = %rd.get_ref().tls_client(), "NBD client connected");
    let peer = rd.get_ref().peer();
    let end = transmission::serve(
        rd,
        w,
        n,
        &transmission::Setup {
            opts: &inner.options,
            shared: &inner.shared,
            thread_name: format!("nbd-io-{id}"),
            peer,
        },
    )?;
    Ok(match end {
        End::Disconnect => "the client disconnected",
        End::Closed => "the client closed the connection",
        End::WriteFailed => "a reply could not be sent",
    }
    .to_string())
}
