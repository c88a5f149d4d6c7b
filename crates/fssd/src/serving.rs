//! The serving process's side of the hand-over ([`crate::handover`]): it dies with its
//! supervisor, adopts the descriptors it inherited, and talks to the supervisor over their
//! channel (`ready`; may `fss restart` proceed?).

use crate::config::TestHooks;
use crate::error::{DaemonError, Result};
use crate::handover::{self, FdName, FdTable, LastRestart, ToServing, ToSupervisor};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// How long the serving process waits for the supervisor to check the binary on disk.
const PREFLIGHT_WAIT: Duration = Duration::from_secs(30);

/// What `status` says of the process model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Supervision {
    /// The supervisor's pid (`None`: unsupervised, `fss serve --no-supervisor`).
    pub supervisor_pid: Option<u32>,
    /// Serving processes that ended since the supervisor started.
    pub restarts: u64,
    /// How the last one ended.
    pub last_restart: Option<LastRestart>,
}

/// The FUSE connection the supervisor opened and mounted (not handed over yet: see
/// `supervisor::open_fuse_connection`).
#[derive(Debug)]
pub struct FuseConnection {
    /// `/dev/fuse`, mounted on the FUSE directory.
    pub fd: OwnedFd,
    /// Past INIT: resume the session (`FSS_FUSE_RESUME=1`) instead of starting one.
    pub resume: bool,
}

/// What a serving process inherited.
#[derive(Debug)]
pub struct Handover {
    /// The control socket's listener.
    pub control: UnixListener,
    /// The NBD unix socket's listener.
    pub nbd_unix: UnixListener,
    /// The NBD TCP listener, with `--nbd-listen`.
    pub nbd_tcp: Option<TcpListener>,
    /// The FUSE connection, when the supervisor holds it.
    pub fuse: Option<FuseConnection>,
    /// The metrics listener, with `--metrics-listen`.
    pub metrics: Option<TcpListener>,
    /// The channel to the supervisor.
    pub link: Link,
    /// For `status`.
    pub supervision: Supervision,
}

/// The channel to the supervisor.
#[derive(Debug)]
pub struct Link {
    stream: Mutex<(UnixStream, BufReader<UnixStream>)>,
}

impl Link {
    /// Tell the supervisor this process serves.
    pub fn ready(&self) {
        let mut s = self.stream.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = s.0.write_all(ToSupervisor::Ready.line().as_bytes()) {
            tracing::error!(error = %e, "cannot tell the supervisor this process is ready");
        }
    }

    /// Ask the supervisor whether the binary on disk can take over: its `--version` line.
    ///
    /// # Errors
    /// The supervisor refused (the binary on disk does not run, and why), or did not answer.
    pub fn ask_restart(&self) -> Result<String> {
        let mut s = self.stream.lock().unwrap_or_else(PoisonError::into_inner);
        let lost = |e: std::io::Error| {
            DaemonError::internal(format!("the supervisor did not answer the restart: {e}"))
        };
        s.0.write_all(ToSupervisor::Restart.line().as_bytes())
            .map_err(lost)?;
        s.1.get_ref()
            .set_read_timeout(Some(PREFLIGHT_WAIT))
            .map_err(lost)?;
        let mut line = String::new();
        s.1.read_line(&mut line).map_err(lost)?;
        match ToServing::parse(&line) {
            Some(ToServing::Proceed(version)) => Ok(version),
            Some(ToServing::Refused(why)) => Err(DaemonError::new(
                crate::error::ErrorKind::Io,
                format!("restart refused, the daemon keeps serving: {why}"),
            )),
            None => Err(DaemonError::internal(format!(
                "unexpected answer from the supervisor: '{}'",
                line.trim_end()
            ))),
        }
    }
}

fn env(name: &str) -> Result<String> {
    std::env::var(name).map_err(|_| {
        DaemonError::invalid(format!(
            "{name} is not set: --serving-child is for the process `fss serve` starts itself"
        ))
    })
}

/// Become the serving process of the supervisor that started this one: die with it, adopt
/// the descriptors it handed over, and read what `status` reports. The first `N` serving
/// processes of a supervisor kill themselves here when the test hook
/// [`TestHooks::child_crash_at_start`] says `N`.
///
/// # Errors
/// Not started by a supervisor (the environment is missing), the supervisor is gone already,
/// or an inherited descriptor is missing.
pub fn adopt(hooks: &TestHooks) -> Result<Handover> {
    let pid: u32 = env(handover::ENV_PID)?
        .parse()
        .map_err(|_| DaemonError::invalid(format!("{} is not a pid", handover::ENV_PID)))?;
    // First, so that a kill -9 of the supervisor ends this process too; then check that the
    // supervisor did not die before it was set (this process would be an orphan).
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .map_err(|e| DaemonError::io("cannot set the parent death signal", &e.into()))?;
    if rustix::process::getppid().map(rustix::process::Pid::as_raw_nonzero) != Some(nonzero(pid)?) {
        return Err(DaemonError::new(
            crate::error::ErrorKind::Unavailable,
            format!("the supervisor (pid {pid}) is gone; not serving"),
        ));
    }
    let restarts: u64 = env(handover::ENV_RESTARTS)?.parse().unwrap_or(0);
    if hooks.child_crash_at_start.is_some_and(|n| restarts < n) {
        tracing::warn!("test hook: the serving process kills itself at start");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
    let last_restart = std::env::var(handover::ENV_LAST_RESTART)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok());
    let mut fds = Fds::adopt(&FdTable::parse(&env(handover::ENV_FDS)?)?)?;
    let channel = UnixStream::from(fds.take(FdName::Channel)?);
    let reader = channel
        .try_clone()
        .map_err(|e| DaemonError::io("the supervisor channel", &e))?;
    Ok(Handover {
        control: UnixListener::from(fds.take(FdName::Control)?),
        nbd_unix: UnixListener::from(fds.take(FdName::NbdUnix)?),
        nbd_tcp: fds.take(FdName::NbdTcp).ok().map(TcpListener::from),
        metrics: fds.take(FdName::Metrics).ok().map(TcpListener::from),
        fuse: fds.take(FdName::Fuse).ok().map(|fd| FuseConnection {
            fd,
            resume: std::env::var(handover::ENV_FUSE_RESUME).is_ok_and(|v| v == "1"),
        }),
        link: Link {
            stream: Mutex::new((channel, BufReader::new(reader))),
        },
        supervision: Supervision {
            supervisor_pid: Some(pid),
            restarts,
            last_restart,
        },
    })
}

fn nonzero(pid: u32) -> Result<std::num::NonZeroI32> {
    i32::try_from(pid)
        .ok()
        .and_then(std::num::NonZeroI32::new)
        .ok_or_else(|| DaemonError::invalid(format!("{} is not a pid", handover::ENV_PID)))
}

/// Inherited descriptors, adopted.
struct Fds(std::collections::BTreeMap<FdName, OwnedFd>);

impl Fds {
    /// Duplicates of the inherited descriptors, owned (close-on-exec). `pidfd_getfd(2)` on
    /// this very process is how a number becomes an owned descriptor without `unsafe`; the
    /// inherited numbers stay open beside them (this process starts no other program).
    fn adopt(table: &FdTable) -> Result<Self> {
        let me = rustix::process::pidfd_open(
            rustix::process::getpid(),
            rustix::process::PidfdFlags::empty(),
        )
        .map_err(|e| DaemonError::io("pidfd_open on this process", &e.into()))?;
        let mut out = std::collections::BTreeMap::new();
        for (&name, &n) in &table.0 {
            let fd =
                rustix::process::pidfd_getfd(&me, n, rustix::process::PidfdGetfdFlags::empty())
                    .map_err(|e| {
                        DaemonError::io(
                            &format!("cannot take the inherited {} descriptor {n}", name.as_str()),
                            &e.into(),
                        )
                    })?;
            out.insert(name, fd);
        }
        Ok(Fds(out))
    }

    fn take(&mut self, name: FdName) -> Result<OwnedFd> {
        self.0.remove(&name).ok_or_else(|| {
            DaemonError::internal(format!(
                "the supervisor handed over no {} descriptor",
                name.as_str()
            ))
        })
    }
}
