//! The `fss` and `fssconfig` commands: clap front-ends to the daemon's control protocol, plus
//! `fss serve`, which runs the daemon in the foreground.
//!
//! - [`output`]: tables and JSON for listings;
//! - [`mounts`]: from a mount point to the fss volume under it (mountinfo -> loop device ->
//!   backing file in the FUSE directory);
//! - [`mount_helper`]: `fss mount` and `fss umount`;
//! - [`consistent`]: a snapshot of a mounted file system under a freeze lease;
//! - [`backup`]: `fss diff`, `backup`, `restore`, `rollback`;
//! - [`manual`]: man pages and shell completions;
//! - [`progress`]: progress bars and plain progress lines;
//! - [`frontends`]: starting and stopping NBD and FUSE for `fss serve`;
//! - [`nbd_tls`]: TLS for NBD over TCP (certificates, reload on SIGHUP);
//! - [`serve`]: `fss serve` (the supervisor, its serving process, or both in one process);
//! - [`restart`]: `fss restart`;
//! - [`stats`]: `fss stats` (the figures of `--metrics-listen`, without HTTP);
//! - here: the state directory, connecting and calling, and clap parsers for sizes and paths
//!   ([`size_arg`], [`path_arg`]: paths made absolute against the caller's directory).

pub mod backup;
pub mod consistent;
pub mod manual;
pub mod mount_helper;
pub mod mounts;
pub mod nbd_tls;
pub mod output;
pub mod progress;
pub mod repo;
pub mod repo_args;
pub mod repo_stream;
pub mod repo_volume;
pub mod restart;
pub mod schedule;
pub mod serve;
pub mod stats;

use anyhow::Context;
use std::path::PathBuf;

/// Exit status for a failed operation (a usage error is clap's 2).
pub const EXIT_FAILED: i32 = 1;

/// The state directory commands talk to.
#[must_use]
pub fn state_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(fssd::paths::default_state_dir)
}

/// Connect to the daemon.
///
/// # Errors
/// No daemon.
pub fn connect(state_dir: &std::path::Path) -> anyhow::Result<fssd::client::Client> {
    fssd::client::Client::connect(state_dir).map_err(|e| anyhow::anyhow!(e.message))
}

/// Parse a size argument for clap.
///
/// # Errors
/// Not a size.
pub fn size_arg(s: &str) -> Result<u64, String> {
    fssd::names::parse_size(s).map_err(|e| e.0)
}

/// Parse a path argument for clap: made absolute against the CLI's own working directory,
/// because the daemon that opens it runs elsewhere (and refuses relative paths). `-` (standard
/// input) is kept as it is. Symlinks and `..` are left for the daemon to resolve.
///
/// # Errors
/// The path is empty, or the working directory cannot be read.
pub fn path_arg(s: &str) -> Result<PathBuf, String> {
    if s == "-" {
        return Ok(PathBuf::from(s));
    }
    std::path::absolute(s).map_err(|e| format!("cannot make the path '{s}' absolute: {e}"))
}

/// Call the daemon and turn its error into a message.
///
/// # Errors
/// The daemon refused.
pub fn call(
    client: &mut fssd::client::Client,
    req: fssd::protocol::Request,
) -> anyhow::Result<serde_json::Value> {
    client.call(req).map_err(|e| anyhow::anyhow!(e.message))
}

/// Decode a daemon result.
///
/// # Errors
/// The daemon sent something else than expected.
pub fn decode<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> anyhow::Result<T> {
    serde_json::from_value(v)
        .context("unexpected answer from the daemon (is it the same fss release?)")
}

/// The front-ends `fss serve` starts (NBD, FUSE).
pub mod frontends {
    use fssd::catalog::UsageKind;
    use fssd::config::ServeOptions;
    use fssd::daemon::{FrontEnd, FrontEndSockets, FuseSocket};
    use fssd::protocol::Frontends;
    use fssd::registry::Registry;
    use fssd::DaemonError;
    use std::sync::Arc;
    use std::time::Duration;

    /// The NBD server on the unix socket (and TCP when asked).
    struct Nbd {
        server: fss_nbd::Server,
        stop: fss_nbd::ShutdownHandle,
        threads: Vec<std::thread::JoinHandle<()>>,
        /// The socket file to remove at the stop (not when a supervisor holds the socket).
        socket: Option<std::path::PathBuf>,
        tls: Option<crate::nbd_tls::Reloader>,
    }

    impl FrontEnd for Nbd {
        fn drain(&mut self) -> usize {
            let n = self.stop.drain();
            if !self.server.wait_idle(Duration::from_secs(5)) {
                let left = self.stop.disconnect_all();
                tracing::warn!(
                    connections = left,
                    "closed NBD connections that did not drain"
                );
            }
            n
        }

        fn stop(&mut self) {
            self.stop.shutdown();
            if !self.server.wait_idle(Duration::from_secs(5)) {
                let n = self.stop.disconnect_all();
                tracing::warn!(connections = n, "closed NBD connections still open at stop");
            }
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
            if let Some(r) = &mut self.tls {
                r.stop();
            }
            if let Some(socket) = &self.socket {
                let _ = std::fs::remove_file(socket);
            }
        }
    }

    fn start_nbd(
        registry: &Arc<Registry>,
        opts: &ServeOptions,
        unix: std::os::unix::net::UnixListener,
        tcp: Option<std::net::TcpListener>,
        own_socket_file: bool,
    ) -> fssd::Result<Nbd> {
        let catalog: Arc<dyn fss_core::export::Catalog> = Arc::clone(registry) as _;
        // As many workers as a deep client queue (fio iodepth 16, the kernel client's default
        // queue): concurrent first overwrites into persistent snapshots then share one flush.
        let tls = crate::nbd_tls::start(opts)?;
        let options = fss_nbd::ServerOptions {
            workers_per_connection: 16,
            tls: tls.as_ref().map(crate::nbd_tls::Reloader::tls),
            ..Default::default()
        };
        let server = fss_nbd::Server::new(catalog, options.clone());
        let stop = server.shutdown_handle();
        let mut threads = Vec::new();
        let s = server.clone();
        threads.push(spawn("fss-nbd-unix", move || {
            if let Err(e) = s.serve_unix(unix) {
                tracing::error!(error = %e, "NBD unix socket stopped");
            }
        })?);
        if let Some(tcp) = tcp {
            if let Ok(local) = tcp.local_addr() {
                let warning = crate::nbd_tls::exposure_warning(local, options.tls.as_deref());
                if let Some(w) = warning {
                    tracing::warn!("{w}");
                }
            }
            let s = server.clone();
            threads.push(spawn("fss-nbd-tcp", move || {
                if let Err(e) = s.serve_tcp(tcp) {
                    tracing::error!(error = %e, "NBD TCP listener stopped");
                }
            })?);
        }
        let counter = server.clone();
        registry.add_usage_source(
            UsageKind::Nbd,
            Box::new(move || counter.exports_in_use().into_iter().collect()),
        );
        let tls_mode = tls.as_ref().map(|t| t.tls().settings().mode);
        tracing::info!(socket = %opts.paths.nbd_socket.display(), tcp = ?opts.nbd_listen,
            tls = ?tls_mode, "NBD server listening");
        Ok(Nbd {
            server,
            stop,
            threads,
            socket: own_socket_file.then(|| opts.paths.nbd_socket.clone()),
            tls,
        })
    }

    fn spawn(
        name: &str,
        f: impl FnOnce() + Send + 'static,
    ) -> fssd::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(f)
            .map_err(|e| DaemonError::io("cannot start a front-end thread", &e))
    }

    /// The FUSE directory: one file per volume and snapshot; and whether its connection was
    /// handed over by the supervisor (which keeps it mounted for the next process).
    struct Fuse(Option<fss_fuse::FuseFrontEnd>, bool);

    impl FrontEnd for Fuse {
        fn stop(&mut self) {
            if self.1 {
                // Requests not read yet stay queued for the next process.
                if let Some(Err(e)) = self.0.take().map(fss_fuse::FuseFrontEnd::detach) {
                    tracing::warn!(error = %e, "FUSE session did not detach cleanly");
                }
                return;
            }
            if let Some(f) = self.0.take() {
                // Files still open (a loop device) are detached lazily and served until closed.
                if let Err(e) = f.unmount() {
                    tracing::warn!(error = %e, "FUSE directory did not unmount cleanly");
                }
            }
        }
    }

    /// The FUSE front-end, or `None` when there is no FUSE directory: off on purpose, or
    /// not mountable here (warned once, here or by the supervisor), so NBD serves alone.
    fn start_fuse(
        registry: &Arc<Registry>,
        opts: &ServeOptions,
        socket: FuseSocket,
    ) -> fssd::Result<Option<Fuse>> {
        let catalog: Arc<dyn fss_core::export::Catalog> = Arc::clone(registry) as _;
        let opens = Arc::new(fssd::catalog::OpenCounter::default());
        let source = opens.source();
        let hooks = fss_fuse::Hooks {
            on_open_change: Some(Arc::new(move |name: &str, open: bool| {
                opens.note(name, open);
            })),
        };
        let dir = &opts.paths.fuse_dir;
        let fuse = match socket {
            FuseSocket::Off => {
                tracing::info!("no FUSE directory: serving NBD only");
                return Ok(None);
            }
            FuseSocket::Inherited(conn) => {
                // The connection the supervisor mounted and holds: it outlives this process,
                // and a resumed one has the kernel resend what the previous process left
                // unanswered.
                let start = if conn.resume {
                    fss_fuse::Start::Resume
                } else {
                    fss_fuse::Start::Fresh
                };
                let session_file = opts.paths.state_dir.join("fuse-session.json");
                let fuse = fss_fuse::FuseFrontEnd::serve_connection(
                    conn.fd,
                    dir,
                    catalog,
                    hooks,
                    &session_file,
                    start,
                )
                .map_err(|e| {
                    DaemonError::new(
                        fssd::error::ErrorKind::Io,
                        format!("cannot serve the FUSE directory {}: {e}", dir.display()),
                    )
                })?;
                Fuse(Some(fuse), true)
            }
            FuseSocket::Mount => match fss_fuse::FuseFrontEnd::mount(dir, catalog, hooks) {
                Ok(fuse) => {
                    tracing::info!(dir = %dir.display(), "FUSE directory mounted");
                    Fuse(Some(fuse), false)
                }
                Err(e) => {
                    // The error names the directory and the likely cause already.
                    tracing::warn!("{e}; serving NBD only (--fuse-dir none skips FUSE on purpose)");
                    return Ok(None);
                }
            },
        };
        registry.add_usage_source(UsageKind::Fuse, source);
        Ok(Some(fuse))
    }

    /// Start every front-end, on the sockets made for them.
    ///
    /// # Errors
    /// A front-end could not start (no FUSE).
    pub fn start(
        registry: &Arc<Registry>,
        opts: &ServeOptions,
        sockets: FrontEndSockets,
    ) -> fssd::Result<Vec<Box<dyn FrontEnd>>> {
        let fuse = start_fuse(registry, opts, sockets.fuse)?;
        let nbd = start_nbd(
            registry,
            opts,
            sockets.nbd_unix,
            sockets.nbd_tcp,
            sockets.own_socket_files,
        )?;
        let metrics = sockets
            .metrics
            .map(|l| {
                let addr = l.local_addr().map(|a| a.to_string()).ok();
                fssd::metrics::http::MetricsServer::start(l, Arc::clone(registry))
                    .map(|m| (m, addr))
            })
            .transpose()?;
        registry.set_endpoints(Frontends {
            fuse: fuse.is_some().then(|| opts.paths.fuse_dir.clone()),
            nbd_unix: Some(opts.paths.nbd_socket.clone()),
            nbd_tcp: opts.nbd_listen.clone(),
            nbd_tls: match opts.nbd_tls.check(opts.nbd_listen.as_deref()) {
                Ok(Some(m)) if m != fssd::config::TlsChoice::Off => Some(m.name().to_string()),
                _ => None,
            },
            metrics: metrics.as_ref().and_then(|(_, addr)| addr.clone()),
        });
        let mut started: Vec<Box<dyn FrontEnd>> = vec![Box::new(nbd)];
        started.extend(fuse.map(|f| Box::new(f) as Box<dyn FrontEnd>));
        started.extend(metrics.map(|(m, _)| Box::new(m) as Box<dyn FrontEnd>));
        Ok(started)
    }
}
