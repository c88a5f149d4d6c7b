//! `fss serve`'s serving side: bring everything back, start the front-ends, say `ready`, serve
//! the control socket, and stop cleanly on SIGTERM or SIGINT, or drain and save for
//! `fss restart`. [`run_serving`] is the serving process a supervisor starts
//! ([`crate::supervisor`]); [`run`] is the whole daemon in one process (`--no-supervisor`):
//! it also takes the state directory's lock and makes its sockets, control socket last.

use crate::config::ServeOptions;
use crate::control::{self, Services};
use crate::error::{DaemonError, Result};
use crate::leases::Leases;
use crate::listeners::{bind_socket, bind_tcp};
use crate::paths::{check_socket_path, Paths};
use crate::registry::Registry;
use crate::restart::{Handoff, RestartGate};
use crate::serving::{FuseConnection, Handover, Supervision};
use std::fs::File;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a stop waits for open devices before giving up on them.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A front-end the daemon runs (NBD, FUSE): started with the registry, stopped at the end.
pub trait FrontEnd: Send {
    /// For a hand-over to the next process: stop taking requests, answer those in flight,
    /// close connections; how many were closed. Nothing by default.
    fn drain(&mut self) -> usize {
        0
    }

    /// Stop serving; return when no request is in flight.
    fn stop(&mut self);
}

/// The sockets the front-ends serve on, made by the supervisor (inherited) or by [`run`].
#[derive(Debug)]
pub struct FrontEndSockets {
    /// NBD on the unix socket.
    pub nbd_unix: UnixListener,
    /// NBD over TCP (`--nbd-listen`).
    pub nbd_tcp: Option<TcpListener>,
    /// The FUSE directory: inherited, to mount here, or none.
    pub fuse: FuseSocket,
    /// The metrics HTTP listener (`--metrics-listen`).
    pub metrics: Option<TcpListener>,
    /// Whether the front-ends remove their socket files when they stop (not when a supervisor
    /// holds the sockets for the next process).
    pub own_socket_files: bool,
}

/// Where the FUSE front-end gets its connection.
#[derive(Debug)]
pub enum FuseSocket {
    /// The supervisor opened and mounted it, and holds it for the next process.
    Inherited(FuseConnection),
    /// The front-end mounts the directory itself (unsupervised); if it cannot, NBD only.
    Mount,
    /// No FUSE directory: `--fuse-dir none`, or the supervisor could not mount it.
    Off,
}

/// Starts the front-ends once the registry is open.
pub type StartFrontEnds<'a> = Box<
    dyn FnOnce(&Arc<Registry>, &ServeOptions, FrontEndSockets) -> Result<Vec<Box<dyn FrontEnd>>>
        + 'a,
>;

/// How the daemon stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// SIGTERM or SIGINT.
    Clean,
    /// Drained and saved for `fss restart`: exit with
    /// [`EXIT_UPGRADE`](crate::handover::EXIT_UPGRADE).
    Upgrade,
}

impl Stopped {
    /// The exit status that says it.
    #[must_use]
    pub fn exit_code(self) -> i32 {
        match self {
            Stopped::Clean => 0,
            Stopped::Upgrade => crate::handover::EXIT_UPGRADE,
        }
    }
}

/// The held lock of a state directory; released when dropped (and when the process dies).
pub struct StateLock {
    _file: File,
}

/// Take the state directory's lock, creating the directory.
///
/// # Errors
/// `already-running` if another daemon holds it, `io` otherwise.
pub fn lock_state_dir(paths: &Paths) -> Result<StateLock> {
    let dir = &paths.state_dir;
    crate::paths::own_private_dir(dir).map_err(|e| {
        DaemonError::io(
            &format!("cannot create state directory {}", dir.display()),
            &e,
        )
    })?;
    let lock_path = paths.lock_file();
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(fss_core::device::FILE_MODE)
        .open(&lock_path)
        .map_err(|e| DaemonError::io(&format!("cannot open {}", lock_path.display()), &e))?;
    if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        let pid = std::fs::read_to_string(&lock_path).unwrap_or_default();
        return Err(DaemonError::new(
            crate::error::ErrorKind::AlreadyRunning,
            format!(
                "another fss daemon (pid {}) already serves state directory {}; stop it first or use another --state-dir",
                pid.trim(),
                dir.display()
            ),
        ));
    }
    let _ = file.set_len(0);
    let _ = writeln!(file, "{}", std::process::id());
    // Directories and files an older release made readable by everyone.
    let _ = file.set_permissions(std::fs::Permissions::from_mode(fss_core::device::FILE_MODE));
    for own in [paths.volumes_dir(), paths.stores_dir()] {
        if own.is_dir() {
            crate::paths::own_private_dir(&own).map_err(|e| {
                DaemonError::io(
                    &format!("cannot restrict {} to mode 0700", own.display()),
                    &e,
                )
            })?;
        }
    }
    Ok(StateLock { _file: file })
}

fn notify_systemd() {
    if let Some(sock) = std::env::var_os("NOTIFY_SOCKET") {
        if let Ok(d) = UnixDatagram::unbound() {
            let _ = d.send_to(b"READY=1", sock);
        }
    }
}

/// Say `ready` as DESIGN fixes it: one line on stdout, and to systemd when run under it.
pub fn announce_ready() {
    println!("ready");
    let _ = std::io::stdout().flush();
    notify_systemd();
}

/// Run the daemon unsupervised (`fss serve --no-supervisor`, in-process use) until SIGTERM or
/// SIGINT (a second one forces the stop): it takes the state directory's lock and makes its
/// sockets itself, and removes them at the end.
///
/// # Errors
/// Another daemon holds the state directory, the state is damaged, or a socket cannot be made.
pub fn run(opts: &ServeOptions, start: StartFrontEnds<'_>) -> Result<Stopped> {
    let paths = &opts.paths;
    let control_path = paths.control_socket();
    check_socket_path(&control_path).map_err(DaemonError::invalid)?;
    let _lock = lock_state_dir(paths)?;
    crate::supervisor::wait_for_previous_serving_process(paths);
    let signals = Signals::install(true)?;
    let registry = Arc::new(Registry::open(
        paths.clone(),
        opts.volume_io,
        opts.test_hooks,
    )?);
    let sockets = FrontEndSockets {
        nbd_unix: bind_socket(&paths.nbd_socket)?,
        nbd_tcp: opts.nbd_listen.as_deref().map(bind_tcp).transpose()?,
        fuse: if opts.fuse_enabled {
            FuseSocket::Mount
        } else {
            FuseSocket::Off
        },
        metrics: opts
            .metrics_listen
            .as_deref()
            .map(crate::metrics::http::bind)
            .transpose()?,
        own_socket_files: true,
    };
    let frontends = start(&registry, opts, sockets)?;
    let listener = bind_socket(&control_path)?;
    let gate = RestartGate::new(None, Supervision::default(), Arc::clone(&signals.stop));
    let stopped = serve(&registry, frontends, &listener, gate, &signals, opts);
    drop(listener);
    let _ = std::fs::remove_file(&control_path);
    Ok(stopped)
}

/// Run the serving process of a supervisor ([`crate::serving::adopt`] gave `handover`): as
/// [`run`], on the inherited sockets, without the lock (the supervisor holds it), saying
/// `ready` to the supervisor; the sockets stay for the next process.
///
/// # Errors
/// The state is damaged, or a front-end cannot start.
pub fn run_serving(
    opts: &ServeOptions,
    handover: Handover,
    start: StartFrontEnds<'_>,
) -> Result<Stopped> {
    let signals = Signals::install(false)?;
    let registry = Arc::new(Registry::open(
        opts.paths.clone(),
        opts.volume_io,
        opts.test_hooks,
    )?);
    let sockets = FrontEndSockets {
        nbd_unix: handover.nbd_unix,
        nbd_tcp: handover.nbd_tcp,
        fuse: handover.fuse.map_or(FuseSocket::Off, FuseSocket::Inherited),
        metrics: handover.metrics,
        own_socket_files: false,
    };
    registry.set_restarts(handover.supervision.restarts);
    let frontends = start(&registry, opts, sockets)?;
    let gate = RestartGate::new(
        Some(handover.link),
        handover.supervision,
        Arc::clone(&signals.stop),
    );
    Ok(serve(
        &registry,
        frontends,
        &handover.control,
        gate,
        &signals,
        opts,
    ))
}

/// Serve the control socket until a stop or a restart, then stop the front-ends and save.
fn serve(
    registry: &Arc<Registry>,
    mut frontends: Vec<Box<dyn FrontEnd>>,
    listener: &UnixListener,
    gate: RestartGate,
    signals: &Signals,
    opts: &ServeOptions,
) -> Stopped {
    let paths = registry.paths();
    let services = Arc::new(Services {
        registry: Arc::clone(registry),
        leases: Arc::new(Leases::recover(paths.state_dir.join("leases.json"))),
        restart: Arc::new(gate),
    });
    match services.restart.link() {
        Some(link) => link.ready(),
        None => announce_ready(),
    }
    tracing::info!(state_dir = %paths.state_dir.display(), "fss daemon ready");
    let gate = Arc::clone(&services.restart);
    let paused: crate::schedule::timer::Paused = Arc::new(move || gate.is_active());
    let timers = crate::schedule::timer::Timers::start(registry, &paused)
        .map_err(|e| tracing::error!(error = %e, "schedules do not run"))
        .ok();
    control::serve_with(listener, &services, &signals.stop);
    // Before anything records the stop: no schedule writes the state after it.
    if let Some(t) = timers {
        t.stop();
    }
    if let Some(handoff) = services.restart.take_handoff() {
        finish_restart(
            registry,
            &mut frontends,
            handoff,
            opts.test_hooks.restart_hold,
        );
        return Stopped::Upgrade;
    }
    tracing::info!("stopping: waiting for open devices to close (a second signal forces)");
    wait_for_devices(registry, &services.leases, &signals.force);
    for f in &mut frontends {
        f.stop();
    }
    let running = registry.running_operations();
    if running.is_empty() {
        registry.shutdown();
        tracing::info!("fss daemon stopped cleanly");
    } else {
        // Left as after a crash: the next start resumes what was interrupted.
        tracing::warn!(
            ?running,
            "forced stop with operations in progress; the next start resumes them"
        );
    }
    Stopped::Clean
}

/// The end of `fss restart` (the control connection that asked waited for long operations):
/// drain the front-ends, save (a clean stop unless operations are carried over), answer.
fn finish_restart(
    registry: &Registry,
    frontends: &mut [Box<dyn FrontEnd>],
    handoff: Handoff,
    hold: Option<Duration>,
) {
    let mut info = handoff.info;
    tracing::info!("restart: draining the front-ends");
    for f in frontends.iter_mut() {
        info.nbd_connections_drained += f.drain() as u64;
    }
    for f in frontends.iter_mut() {
        f.stop();
    }
    // Operations still running now (carried over, or a backup cut off) are resumed at the
    // next start as after a crash: the state must not say clean under them.
    if registry.running_operations().is_empty() {
        registry.shutdown();
    } else {
        registry.flush_volumes();
    }
    tracing::info!("restart: state saved; handing over to the next process");
    if let Some(hold) = hold {
        tracing::warn!(?hold, "test hook: holding the restart before exiting");
        std::thread::sleep(hold);
    }
    if handoff.saved.send(info).is_ok() {
        let _ = handoff.answered.recv_timeout(Duration::from_secs(5));
    }
}

/// A stop waits for open devices (up to [`STOP_TIMEOUT`]) and for rollbacks and restores,
/// unless forced.
fn wait_for_devices(registry: &Registry, leases: &Leases, force: &AtomicBool) {
    let started = Instant::now();
    let mut last_report = Instant::now() - Duration::from_secs(10);
    loop {
        let open = registry.open_devices();
        // A rollback or restore in progress is finished first: it is resumed after a crash,
        // but a clean stop must not record a clean state under it.
        let running = registry.running_operations();
        let forced = force.load(Ordering::Acquire);
        if forced || (running.is_empty() && (open.is_empty() || started.elapsed() > STOP_TIMEOUT)) {
            if !open.is_empty() {
                tracing::warn!(?open, "stopping with devices still open");
            }
            return;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            let mut list: Vec<String> = open.iter().map(|(n, c)| format!("{n} ({c})")).collect();
            list.extend(running.iter().map(|r| format!("{r} in progress")));
            tracing::info!("still open: {}", list.join(", "));
            last_report = Instant::now();
        }
        leases.expire();
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM and SIGINT: the first stops, a second forces.
struct Signals {
    stop: Arc<AtomicBool>,
    force: Arc<AtomicBool>,
}

impl Signals {
    /// `interrupt`: SIGINT stops too (not in a serving process, see [`install_signals`]).
    fn install(interrupt: bool) -> Result<Self> {
        let s = Signals {
            stop: Arc::new(AtomicBool::new(false)),
            force: Arc::new(AtomicBool::new(false)),
        };
        install_signals(&s.stop, &s.force, interrupt)?;
        Ok(s)
    }
}

/// `SIGTERM` (and `SIGINT` when `interrupt`) stop, a second one forces; `SIGHUP` is
/// ignored here (the TLS reloader takes it). A serving process
/// takes no `SIGINT` (it swallows it): a Ctrl-C reaches the whole foreground process group,
/// and the supervisor passes it on as one `SIGTERM`.
fn install_signals(stop: &Arc<AtomicBool>, force: &Arc<AtomicBool>, interrupt: bool) -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let failed = |e: std::io::Error| DaemonError::io("cannot install signal handlers", &e);
    // SIGHUP reloads TLS certificates where TLS is set up; without it, it must not kill the
    // daemon (its default action) when an administrator sends it out of habit.
    signal_hook::flag::register(SIGHUP, Arc::new(AtomicBool::new(false))).map_err(failed)?;
    let mut signals = if interrupt {
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
    } else {
        signal_hook::flag::register(SIGINT, Arc::new(AtomicBool::new(false))).map_err(failed)?;
        signal_hook::iterator::Signals::new([SIGTERM])
    }
    .map_err(failed)?;
    let (stop, force) = (Arc::clone(stop), Arc::clone(force));
    std::thread::Builder::new()
        .name("fss-signals".into())
        .spawn(move || {
            for _ in signals.forever() {
                if stop.swap(true, Ordering::AcqRel) {
                    force.store(true, Ordering::Release);
                }
            }
        })
        .map_err(|e| DaemonError::io("cannot start the signal thread", &e))?;
    Ok(())
}
