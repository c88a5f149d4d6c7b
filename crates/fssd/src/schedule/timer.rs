//! The serving process's schedule threads. The timer runs due schedules: a volume's in this
//! process; a mount point's through a helper process (`fss snapshot create MOUNT NAME`, this
//! very binary) that opens a freeze lease, freezes, asks for the snapshot and thaws, because
//! the daemon must not freeze a file system whose dirty data it has to serve itself (DESIGN,
//! "Consistent snapshots"). The reclaimer deletes scheduled snapshots for `--min-free` when a
//! store write finds its file system low ([`super::space`]), and every second besides.
//!
//! Both stop before the registry records a stop or a restart hands over, so nothing is
//! written to the state after that.

use crate::error::{DaemonError, Result};
use crate::paths::Paths;
use crate::protocol::SnapshotSpec;
use crate::registry::{now_secs, Registry};
use crate::schedule::ScheduleState;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the timer looks for due schedules.
const TICK: Duration = Duration::from_millis(200);
/// How often the reclaimer looks without being woken.
const RECLAIM_TICK: Duration = Duration::from_secs(1);
/// How long a freeze helper may take (its lease expires after 10 s).
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether the daemon is busy restarting now (runs wait).
pub type Paused = Arc<dyn Fn() -> bool + Send + Sync>;

/// The running threads.
pub struct Timers {
    stop: Arc<AtomicBool>,
    registry: Arc<Registry>,
    threads: Vec<JoinHandle<()>>,
}

impl Timers {
    /// Start the timer and the reclaimer. A schedule missed while the daemon was down is due
    /// at once, and runs once.
    ///
    /// # Errors
    /// A thread could not be started.
    pub fn start(registry: &Arc<Registry>, paused: &Paused) -> Result<Timers> {
        let stop = Arc::new(AtomicBool::new(false));
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| DaemonError::io(&format!("cannot start the {name} thread"), &e))
        };
        let (r, s, p) = (Arc::clone(registry), Arc::clone(&stop), Arc::clone(paused));
        let timer = spawn("schedule-timer", Box::new(move || timer(&r, &s, &p)))?;
        let (r, s, p) = (Arc::clone(registry), Arc::clone(&stop), Arc::clone(paused));
        let reclaimer = spawn("space-reclaimer", Box::new(move || reclaimer(&r, &s, &p)))?;
        Ok(Timers {
            stop,
            registry: Arc::clone(registry),
            threads: vec![timer, reclaimer],
        })
    }

    /// Stop both threads and wait for them (a freeze helper running is ended).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        self.registry.space_watch().signal();
        for t in self.threads {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn timer(registry: &Registry, stop: &AtomicBool, paused: &Paused) {
    while !stop.load(Ordering::Acquire) {
        std::thread::park_timeout(TICK);
        for s in registry.due_schedules(now_secs()) {
            if stop.load(Ordering::Acquire) || paused() {
                break;
            }
            run(registry, &s, stop);
        }
    }
}

fn reclaimer(registry: &Registry, stop: &AtomicBool, paused: &Paused) {
    while !stop.load(Ordering::Acquire) {
        registry.space_watch().wait(RECLAIM_TICK);
        if !stop.load(Ordering::Acquire) && !paused() {
            registry.reclaim_space();
        }
    }
}

/// One run of `s` now: take the snapshot, record the outcome, prune.
fn run(registry: &Registry, s: &ScheduleState, stop: &AtomicBool) {
    let volume = &s.spec.volume;
    let _run = registry.run_lock();
    let now = now_secs();
    tracing::info!(volume = %volume, mount_point = ?s.spec.mount_point, "schedule run");
    let outcome = registry
        .begin_run(volume, now)
        .and_then(|spec| match &spec.mount_point {
            None => registry.create_snapshot(&spec).map(drop),
            Some(mp) => frozen(registry.paths(), &spec, mp, stop),
        });
    registry.finish_run(volume, now, &outcome);
}

/// Take `spec` of the file system at `mount_point` through a helper process.
fn frozen(paths: &Paths, spec: &SnapshotSpec, mount_point: &str, stop: &AtomicBool) -> Result<()> {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg("--state-dir").arg(&paths.state_dir).args([
        "snapshot",
        "create",
        mount_point,
        &spec.name,
    ]);
    if let Some(store) = &spec.store {
        cmd.arg("--store").arg(store);
    }
    if spec.transient {
        cmd.arg("--transient");
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| DaemonError::io("cannot start the freeze helper (fss snapshot create)", &e))?;
    let status = wait(&mut child, stop)?;
    if status.success() {
        return Ok(());
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    Err(DaemonError::new(
        crate::ErrorKind::Io,
        format!(
            "the consistent snapshot of {mount_point} failed ({status}): {}",
            err.trim()
        ),
    ))
}

/// Wait for the helper, ending it (SIGTERM: it thaws first) on a stop or after
/// [`HELPER_TIMEOUT`], then for good (SIGKILL) 2 s later.
fn wait(child: &mut Child, stop: &AtomicBool) -> Result<std::process::ExitStatus> {
    let started = Instant::now();
    let mut termed: Option<Instant> = None;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) => {}
            Err(e) => return Err(DaemonError::io("cannot wait for the freeze helper", &e)),
        }
        if termed.is_none() && (stop.load(Ordering::Acquire) || started.elapsed() > HELPER_TIMEOUT)
        {
            if let Some(pid) = rustix::process::Pid::from_raw(child.id().try_into().unwrap_or(0)) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            termed = Some(Instant::now());
        }
        if termed.is_some_and(|t| t.elapsed() > Duration::from_secs(2)) {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
