//! What the supervisor holds for the serving processes: the listening sockets, the FUSE
//! connection (once wired: [`open_fuse_connection`]), and the record of the serving process
//! (`<state-dir>/serving.pid`) that lets the next supervisor wait for an orphan to be gone.

use crate::config::ServeOptions;
use crate::error::Result;
use crate::handover::{FdName, FdTable};
use crate::listeners::{bind_socket, bind_tcp};
use crate::paths::Paths;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long a new daemon waits for the serving process of a killed supervisor to be gone (it
/// dies with its supervisor: `PR_SET_PDEATHSIG`).
const ORPHAN_WAIT: Duration = Duration::from_secs(10);

/// The FUSE connection the supervisor opened and mounted.
#[derive(Debug)]
pub(crate) struct HeldFuse {
    /// `/dev/fuse`.
    pub(crate) fd: OwnedFd,
    /// The mount point.
    pub(crate) dir: PathBuf,
}

/// The descriptors the supervisor keeps for its whole life.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) control: UnixListener,
    pub(crate) nbd_unix: UnixListener,
    pub(crate) nbd_tcp: Option<TcpListener>,
    pub(crate) fuse: Option<HeldFuse>,
    pub(crate) metrics: Option<TcpListener>,
}

impl Held {
    /// Make them, in DESIGN's order: the FUSE directory, NBD, the control socket last.
    pub(crate) fn open(opts: &ServeOptions) -> Result<Self> {
        let fuse = open_fuse_connection(opts);
        let nbd_unix = bind_socket(&opts.paths.nbd_socket)?;
        let nbd_tcp = opts.nbd_listen.as_deref().map(bind_tcp).transpose()?;
        let metrics = opts
            .metrics_listen
            .as_deref()
            .map(crate::metrics::http::bind)
            .transpose()?;
        let control = bind_socket(&opts.paths.control_socket())?;
        Ok(Held {
            control,
            nbd_unix,
            nbd_tcp,
            fuse,
            metrics,
        })
    }

    /// Each descriptor with its name in `FSS_SUPERVISOR_FDS`.
    pub(crate) fn named(&self) -> Vec<(FdName, BorrowedFd<'_>)> {
        let mut v = vec![
            (FdName::Control, self.control.as_fd()),
            (FdName::NbdUnix, self.nbd_unix.as_fd()),
        ];
        if let Some(t) = &self.nbd_tcp {
            v.push((FdName::NbdTcp, t.as_fd()));
        }
        if let Some(f) = &self.fuse {
            v.push((FdName::Fuse, f.fd.as_fd()));
        }
        if let Some(m) = &self.metrics {
            v.push((FdName::Metrics, m.as_fd()));
        }
        v
    }

    /// The table a serving process gets (the channel is added per process).
    pub(crate) fn table(&self) -> FdTable {
        FdTable(
            self.named()
                .into_iter()
                .map(|(n, fd)| (n, fd.as_raw_fd()))
                .collect(),
        )
    }

    /// The final stop: unmount the FUSE directory, remove the socket files (the lock goes
    /// with the process).
    pub(crate) fn release(self, paths: &Paths) {
        if let Some(f) = &self.fuse {
            unmount_fuse(f);
        }
        let _ = std::fs::remove_file(paths.control_socket());
        let _ = std::fs::remove_file(&paths.nbd_socket);
        let _ = std::fs::remove_file(serving_record(paths));
    }
}

/// Open `/dev/fuse` and mount it on the FUSE directory ([`ServeOptions::fuse_mount`]),
/// returning the connection for the supervisor to hold; every serving process then gets it as
/// `FSS_SUPERVISOR_FDS=...,fuse=N`, with `FSS_FUSE_RESUME=1` from the second on, and serves it
/// (`FrontEndSockets::fuse`) instead of mounting itself; the supervisor unmounts it at the
/// final stop and aborts it in a crash loop. Without a mount function, with `--fuse-dir
/// none`, or when the mount fails (logged once), there is none and the daemon serves NBD only.
fn open_fuse_connection(opts: &ServeOptions) -> Option<HeldFuse> {
    let mount = opts.fuse_mount.filter(|_| opts.fuse_enabled)?;
    let dir = opts.paths.fuse_dir.clone();
    match mount(&dir) {
        Ok(fd) => Some(HeldFuse { fd, dir }),
        Err(e) => {
            // The message already names the directory and the likely cause.
            tracing::warn!("{e}; serving NBD only (--fuse-dir none skips FUSE on purpose)");
            None
        }
    }
}

/// Abort the FUSE connection (a crash loop: no process will answer it again), so that users
/// of the file system get errors instead of hanging; detach the directory if that fails.
pub(crate) fn abort_fuse(f: &HeldFuse) {
    let aborted = fuse_connection_id(&f.dir).is_some_and(|id| {
        let dir = format!("/sys/fs/fuse/connections/{id}");
        if !std::path::Path::new(&dir).exists() {
            // The FUSE control file system is not always mounted (it was not on our CI
            // machine): mount it, or the abort falls back to a detach that may hang users.
            let _ = rustix::mount::mount(
                "fusectl",
                "/sys/fs/fuse/connections",
                "fusectl",
                rustix::mount::MountFlags::empty(),
                None,
            );
        }
        std::fs::write(format!("{dir}/abort"), b"1").is_ok()
    });
    if aborted {
        tracing::error!(dir = %f.dir.display(), "aborted the FUSE connection: its users get errors");
    } else {
        unmount_fuse(f);
    }
}

fn unmount_fuse(f: &HeldFuse) {
    if rustix::mount::unmount(&f.dir, rustix::mount::UnmountFlags::empty()).is_err() {
        if let Err(e) = rustix::mount::unmount(&f.dir, rustix::mount::UnmountFlags::DETACH) {
            tracing::warn!(dir = %f.dir.display(), error = %e, "cannot unmount the FUSE directory");
        }
    }
}

/// The number of the FUSE connection mounted at `dir` (its device's minor number, which
/// names it under `/sys/fs/fuse/connections/`), read from mountinfo: a `stat` of the mount
/// would wait on a connection nobody serves.
/// The FUSE connection number of the mount on `dir` (its device's minor number), read from
/// mountinfo: a stat of the directory would wait while no process serves it.
fn fuse_connection_id(dir: &std::path::Path) -> Option<u32> {
    crate::own_files::fuse_device(dir).map(rustix::fs::minor)
}

fn serving_record(paths: &Paths) -> PathBuf {
    paths.state_dir.join("serving.pid")
}

/// The start time of process `pid` (field 22 of `/proc/PID/stat`), unless it is gone or
/// every one of its threads has exited (its descriptors, and so its volume locks, are then
/// closed). The main thread alone is not enough: killed, it shows as a zombie while the
/// other threads, which share the descriptor table, are still on their way out.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let started = stat_fields(&stat)?.get(19)?.parse().ok()?;
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let running = tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|s| stat_fields(&s)?.first().map(|st| !matches!(*st, "Z" | "X")))
            .unwrap_or(false)
    });
    running.then_some(started)
}

/// The fields of a `stat` line after the command name (in parentheses, possibly with
/// spaces), from the state on.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    Some(stat[stat.rfind(')')? + 2..].split(' ').collect())
}

/// Record the serving process just started.
pub(crate) fn record_serving(paths: &Paths, pid: u32) {
    let text = format!("{pid} {}\n", start_time(pid).unwrap_or(0));
    if let Err(e) = std::fs::write(serving_record(paths), text) {
        tracing::warn!(error = %e, "cannot record the serving process's pid");
    }
}

/// A daemon starting on a state directory whose supervisor was killed: wait (briefly) for
/// that supervisor's serving process to be gone, so that two processes never hold one volume.
pub fn wait_for_previous_serving_process(paths: &Paths) {
    let Ok(text) = std::fs::read_to_string(serving_record(paths)) else {
        return;
    };
    let mut it = text.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(pid)), Some(Ok(started))) = (it.next(), it.next()) else {
        return;
    };
    let Ok(pid) = u32::try_from(pid) else {
        return;
    };
    let alive = || start_time(pid).is_some_and(|t| t == started);
    if !alive() {
        return;
    }
    tracing::info!(
        pid,
        "waiting for the serving process of the previous fss serve to end"
    );
    let deadline = Instant::now() + ORPHAN_WAIT;
    while alive() {
        if Instant::now() > deadline {
            tracing::error!(pid, "the serving process of the previous fss serve is still alive; its volumes stay locked");
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
