//! `fss serve`: take the state directory's lock, bring everything back, start the front-ends,
//! open the control socket last, say `ready`, and stop cleanly on SIGTERM or SIGINT.

use crate::config::ServeOptions;
use crate::control::{self, Leases};
use crate::error::{DaemonError, Result};
use crate::paths::{check_socket_path, Paths};
use crate::registry::Registry;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a stop waits for open devices before giving up on them.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A front-end the daemon runs (NBD, FUSE): started with the registry, stopped at the end.
pub trait FrontEnd: Send {
    /// Stop serving; return when no request is in flight.
    fn stop(&mut self);
}

/// Starts the front-ends once the registry is open.
pub type StartFrontEnds<'a> =
    Box<dyn FnOnce(&Arc<Registry>, &ServeOptions) -> Result<Vec<Box<dyn FrontEnd>>> + 'a>;

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

fn bind_private(path: &Path) -> Result<UnixListener> {
    check_socket_path(path).map_err(DaemonError::invalid)?;
    // A socket left by a crashed run: nobody listens on it any more (we hold the lock).
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)
        .map_err(|e| DaemonError::io(&format!("cannot listen on {}", path.display()), &e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| DaemonError::io(&format!("cannot restrict {}", path.display()), &e))?;
    Ok(l)
}

/// Bind a unix socket with mode 0600, replacing a stale one; for front-ends.
///
/// # Errors
/// The path is too long or cannot be bound.
pub fn bind_socket(path: &Path) -> Result<UnixListener> {
    bind_private(path)
}

fn notify_systemd() {
    if let Some(sock) = std::env::var_os("NOTIFY_SOCKET") {
        if let Ok(d) = UnixDatagram::unbound() {
            let _ = d.send_to(b"READY=1", sock);
        }
    }
}

/// Run the daemon until SIGTERM or SIGINT (a second one forces the stop).
///
/// # Errors
/// Another daemon holds the state directory, the state is damaged, or a socket cannot be made.
pub fn run(opts: &ServeOptions, start: StartFrontEnds<'_>) -> Result<()> {
    let paths = &opts.paths;
    let control_path = paths.control_socket();
    check_socket_path(&control_path).map_err(DaemonError::invalid)?;
    let _lock = lock_state_dir(paths)?;
    let stop = Arc::new(AtomicBool::new(false));
    let force = Arc::new(AtomicBool::new(false));
    install_signals(&stop, &force)?;
    let registry = Arc::new(Registry::open(
        paths.clone(),
        opts.volume_io,
        opts.test_hooks,
    )?);
    let mut frontends = start(&registry, opts)?;
    let listener = bind_private(&control_path)?;
    let leases = Arc::new(Leases::default());
    println!("ready");
    let _ = std::io::stdout().flush();
    notify_systemd();
    tracing::info!(state_dir = %paths.state_dir.display(), "fss daemon ready");
    control::serve(&listener, &registry, &leases, &stop);
    drop(listener);
    let _ = std::fs::remove_file(&control_path);
    tracing::info!("stopping: waiting for open devices to close (a second signal forces)");
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
            break;
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
    Ok(())
}

fn install_signals(stop: &Arc<AtomicBool>, force: &Arc<AtomicBool>) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| DaemonError::io("cannot install signal handlers", &e))?;
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
