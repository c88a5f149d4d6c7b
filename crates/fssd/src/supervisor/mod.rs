//! `fss serve`: the supervisor. It holds what must outlive the process that serves I/O (the
//! state directory's lock, the listening sockets, later the FUSE connection), starts the
//! serving process ([`crate::serving`], [`crate::daemon::run_serving`]) with them, and starts
//! another within a second when it dies. It does no I/O on volumes and reads no state: it has
//! little to crash on. The contract with the serving process is [`crate::handover`].
//!
//! - A serving process that dies is replaced at once; each end is logged once with its cause
//!   and reported by `status` (`restarts`, `last_restart`).
//! - Crash loop: [`CRASH_LIMIT`] processes that die before they are ready within
//!   [`CRASH_WINDOW`]: the supervisor stops (aborting the FUSE connection it holds, so that
//!   its users get errors rather than hang) and exits with status 1. The first serving
//!   process failing with an error (a damaged state, a FUSE directory that cannot be
//!   mounted) ends the supervisor with its status at once, as `fss serve` always did.
//! - `fss restart`: the serving process asks on the channel; the supervisor runs the binary
//!   on disk (`--version`) and answers. On the drained process's exit
//!   ([`EXIT_UPGRADE`](crate::handover::EXIT_UPGRADE)) it starts that binary; if it dies
//!   before it is ready, the previous image (held open) is started again and `last_restart`
//!   says why.
//! - SIGTERM, SIGINT: passed on to the serving process as SIGTERM (a second one forces its
//!   stop; the serving process swallows SIGINT, which a Ctrl-C sends it too, being in the
//!   same process group); once it has stopped, the supervisor removes the socket files and
//!   exits.
//! - SIGHUP: passed on to the serving process, which reloads its TLS certificates.

mod held;
mod spawn;

use crate::config::ServeOptions;
use crate::daemon::{announce_ready, lock_state_dir};
use crate::error::{DaemonError, Result};
use crate::handover::{LastRestart, RestartReason, ToServing, ToSupervisor, EXIT_UPGRADE};
use crate::paths::check_socket_path;
pub use held::wait_for_previous_serving_process;
use held::Held;
use spawn::{ChildEnv, Image, Started};
use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

/// Deaths before ready within [`CRASH_WINDOW`] that make a crash loop.
pub const CRASH_LIMIT: usize = 5;
/// See [`CRASH_LIMIT`].
pub const CRASH_WINDOW: Duration = Duration::from_secs(60);
/// How often the supervisor looks at its serving process and signals.
const TICK: Duration = Duration::from_millis(20);

/// Run the supervisor until SIGTERM or SIGINT, a crash loop, or a first serving process that
/// cannot start; the exit status. `child_args` are the serving process's arguments
/// (`serve --serving-child` and the user's).
///
/// # Errors
/// Another daemon holds the state directory, a socket cannot be made, or this binary cannot
/// be found.
pub fn run(opts: &ServeOptions, child_args: Vec<OsString>) -> Result<i32> {
    let paths = &opts.paths;
    check_socket_path(&paths.control_socket()).map_err(DaemonError::invalid)?;
    let _lock = lock_state_dir(paths)?;
    wait_for_previous_serving_process(paths);
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| DaemonError::io("cannot install signal handlers", &e))?;
    // Resolved once: after a rebuild, /proc/self/exe names a deleted file, this path the new one.
    let exe =
        std::env::current_exe().map_err(|e| DaemonError::io("cannot find the fss binary", &e))?;
    let current = Image::this_process(&exe)
        .map_err(|e| DaemonError::io("cannot open the running fss binary", &e))?;
    let held = Held::open(opts)?;
    let mut sup = Supervisor {
        opts,
        held,
        exe,
        current,
        candidate: None,
        args: child_args,
        started: 0,
        restarts: 0,
        last: None,
        early_deaths: VecDeque::new(),
        ever_ready: false,
        stopping: false,
    };
    let code = sup.supervise(&mut signals);
    sup.held.release(paths);
    Ok(code)
}

/// The serving process now.
struct Running {
    started: Started,
    pid: u32,
    ready: bool,
    /// Set when it runs the binary `fss restart` handed over to (not ready yet).
    upgrade: Option<Image>,
}

struct Supervisor<'a> {
    opts: &'a ServeOptions,
    held: Held,
    /// The binary's path, resolved at start.
    exe: PathBuf,
    /// The image the last ready serving process ran (crash restarts start it again).
    current: Image,
    /// The binary on disk, checked for a `fss restart` under way.
    candidate: Option<Image>,
    args: Vec<OsString>,
    started: u64,
    restarts: u64,
    last: Option<LastRestart>,
    /// When serving processes died before they were ready, within [`CRASH_WINDOW`].
    early_deaths: VecDeque<Instant>,
    ever_ready: bool,
    stopping: bool,
}

enum Next {
    Serve(Running),
    Exit(i32),
}

impl Supervisor<'_> {
    fn supervise(&mut self, signals: &mut signal_hook::iterator::Signals) -> i32 {
        let mut running = match self.start(None) {
            Next::Serve(r) => r,
            Next::Exit(code) => return code,
        };
        loop {
            for signal in signals.pending() {
                let child = rustix::process::Pid::from_child(&running.started.child);
                if signal == signal_hook::consts::SIGHUP {
                    // The serving process reloads what it reloads (TLS certificates).
                    tracing::info!(pid = running.pid, "SIGHUP passed on to the serving process");
                    let _ = rustix::process::kill_process(child, rustix::process::Signal::HUP);
                    continue;
                }
                self.stopping = true;
                tracing::info!(
                    pid = running.pid,
                    "stopping: passing the signal on to the serving process"
                );
                let _ = rustix::process::kill_process(child, rustix::process::Signal::TERM);
            }
            match running.started.messages.recv_timeout(TICK) {
                Ok(ToSupervisor::Ready) => self.on_ready(&mut running),
                Ok(ToSupervisor::Restart) => self.on_restart_request(&mut running),
                Err(RecvTimeoutError::Timeout) => {}
                // The process is going: its end shows below, in a moment.
                Err(RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            let status = match running.started.child.try_wait() {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "cannot wait for the serving process");
                    std::thread::sleep(TICK);
                    continue;
                }
            };
            if self.stopping {
                let clean = status.success() || status.code() == Some(EXIT_UPGRADE);
                tracing::info!(
                    pid = running.pid,
                    "the serving process stopped ({})",
                    describe(status)
                );
                return if clean { 0 } else { 1 };
            }
            match self.after_death(running, status) {
                Next::Serve(r) => running = r,
                Next::Exit(code) => return code,
            }
        }
    }

    fn on_ready(&mut self, running: &mut Running) {
        running.ready = true;
        self.early_deaths.clear();
        if let Some(image) = running.upgrade.take() {
            tracing::info!(pid = running.pid, binary = %image.path.display(),
                "fss restart: the new binary serves");
            self.current = image;
        }
        if self.ever_ready {
            tracing::info!(pid = running.pid, "the serving process is ready");
        } else {
            self.ever_ready = true;
            announce_ready();
        }
    }

    /// `fss restart` asks: does the binary on disk run?
    fn on_restart_request(&mut self, running: &mut Running) {
        let answer = if self.stopping {
            ToServing::Refused("the daemon is stopping".into())
        } else {
            match Image::open(&self.exe) {
                Err(e) => ToServing::Refused(format!("cannot open {}: {e}", self.exe.display())),
                Ok(image) => match spawn::preflight(&image) {
                    Ok(version) => {
                        self.candidate = Some(image);
                        ToServing::Proceed(version)
                    }
                    Err(why) => ToServing::Refused(why),
                },
            }
        };
        match &answer {
            ToServing::Proceed(v) => {
                tracing::info!(new_binary = %v, "fss restart: the binary on disk runs; the serving process drains");
            }
            ToServing::Refused(why) => tracing::warn!("fss restart refused: {why}"),
        }
        if let Err(e) = running.started.channel.write_all(answer.line().as_bytes()) {
            tracing::warn!(error = %e, "cannot answer the serving process");
        }
    }

    /// The serving process ended (not at a stop): say why, and start the next.
    fn after_death(&mut self, running: Running, status: ExitStatus) -> Next {
        let reason = match (status.signal(), status.code()) {
            (Some(_), _) => RestartReason::Signal,
            (None, Some(EXIT_UPGRADE)) => RestartReason::Upgrade,
            _ => RestartReason::Exit,
        };
        self.restarts += 1;
        let mut last = LastRestart {
            time: now_seconds(),
            reason,
            signal: status.signal(),
            exit_code: status.code(),
            upgrade_error: None,
        };
        let how = describe(status);
        if !running.ready {
            if let Some(image) = &running.upgrade {
                let why = format!(
                    "the new binary {} {how} before it was ready",
                    image.path.display()
                );
                tracing::error!("fss restart failed: {why}; starting the previous binary again");
                last.upgrade_error = Some(why);
            } else if !self.ever_ready && reason == RestartReason::Exit {
                tracing::error!(
                    pid = running.pid,
                    "the serving process could not start ({how}); see above"
                );
                return Next::Exit(status.code().filter(|c| *c != 0).unwrap_or(1));
            }
            if self.crash_loop() {
                return Next::Exit(1);
            }
        }
        if last.upgrade_error.is_some() {
            // Said above.
        } else if reason == RestartReason::Upgrade {
            tracing::info!(
                pid = running.pid,
                restarts = self.restarts,
                "the serving process drained for fss restart; starting the binary on disk"
            );
        } else {
            tracing::warn!(
                pid = running.pid,
                restarts = self.restarts,
                "the serving process {how}; starting a new one"
            );
        }
        self.last = Some(last);
        let upgrade = if reason == RestartReason::Upgrade && running.upgrade.is_none() {
            self.candidate
                .take()
                .or_else(|| Image::open(&self.exe).ok())
        } else {
            None
        };
        self.start(upgrade)
    }

    /// One more death before ready: whether it makes a crash loop (then it is said, and the
    /// FUSE connection aborted).
    fn crash_loop(&mut self) -> bool {
        let now = Instant::now();
        self.early_deaths.push_back(now);
        while self
            .early_deaths
            .front()
            .is_some_and(|t| now.duration_since(*t) > CRASH_WINDOW)
        {
            self.early_deaths.pop_front();
        }
        if self.early_deaths.len() < CRASH_LIMIT {
            return false;
        }
        tracing::error!(
            "CRASH LOOP: {CRASH_LIMIT} serving processes died before they were ready within {} s; \
             fss stops restarting them and exits. Nothing serves the volumes now: read the log \
             above for the cause, then start `fss serve` again",
            CRASH_WINDOW.as_secs()
        );
        if let Some(f) = &self.held.fuse {
            held::abort_fuse(f);
        }
        true
    }

    /// Start a serving process: of `upgrade` (falling back to the current image if it cannot
    /// be started), else of the current image, retrying as a crash loop allows.
    fn start(&mut self, upgrade: Option<Image>) -> Next {
        let mut upgrade = upgrade;
        loop {
            let env = ChildEnv {
                restarts: self.restarts,
                last_restart: self.last.as_ref(),
                fuse_resume: self.held.fuse.is_some() && self.started > 0,
            };
            let image = upgrade.as_ref().unwrap_or(&self.current);
            match spawn::start(&self.held, image, &self.args, &env) {
                Ok(started) => {
                    self.started += 1;
                    let pid = started.child.id();
                    held::record_serving(&self.opts.paths, pid);
                    tracing::info!(pid, binary = %image.path.display(), "serving process started");
                    return Next::Serve(Running {
                        started,
                        pid,
                        ready: false,
                        upgrade,
                    });
                }
                Err(e) if upgrade.is_some() => {
                    let why = format!("cannot start the new binary {}: {e}", image.path.display());
                    tracing::error!(
                        "fss restart failed: {why}; starting the previous binary again"
                    );
                    if let Some(l) = &mut self.last {
                        l.upgrade_error = Some(why);
                    }
                    upgrade = None;
                }
                Err(e) => {
                    tracing::error!(error = %e, binary = %image.path.display(), "cannot start a serving process");
                    if self.crash_loop() {
                        return Next::Exit(1);
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
}

fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How a process ended, for people: `was killed by signal 9 (SIGKILL)`, `exited with status 1`.
fn describe(status: ExitStatus) -> String {
    match (status.signal(), status.code()) {
        (Some(sig), _) => {
            let name = match sig {
                4 => " (SIGILL)",
                6 => " (SIGABRT)",
                7 => " (SIGBUS)",
                9 => " (SIGKILL)",
                11 => " (SIGSEGV)",
                15 => " (SIGTERM)",
                _ => "",
            };
            format!("was killed by signal {sig}{name}")
        }
        (None, Some(EXIT_UPGRADE)) => {
            format!("exited with status {EXIT_UPGRADE} (drained for fss restart)")
        }
        (None, Some(code)) => format!("exited with status {code}"),
        (None, None) => "ended".into(),
    }
}
