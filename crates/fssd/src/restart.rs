//! `fss restart` in the serving process. The control connection that receives `restart`
//! checks it may (no transient snapshot unless they may be dropped; the supervisor ran the
//! binary on disk), waits for long operations up to the timeout while I/O goes on, then hands
//! off to the main thread ([`RestartGate::take_handoff`]), which stops the control loop,
//! drains the front-ends and saves; the connection then answers and the process exits with
//! [`EXIT_UPGRADE`](crate::handover::EXIT_UPGRADE). While a restart runs, requests that would
//! change anything are refused with `busy`.

use crate::error::{DaemonError, Result};
use crate::handover::RestartInfo;
use crate::registry::Registry;
use crate::serving::{Link, Supervision};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// What the main thread gets from the connection that asked for the restart.
pub struct Handoff {
    /// The answer so far (the main thread adds what draining did).
    pub info: RestartInfo,
    /// Where the main thread sends the answer once the state is saved.
    pub saved: Sender<RestartInfo>,
    /// Closed or signalled once the answer is written.
    pub answered: Receiver<()>,
}

/// The restart state of a serving process, shared by its control connections and its main
/// thread.
pub struct RestartGate {
    link: Option<Link>,
    /// Wakes the control loop when a restart is handed off (an eventfd).
    wake: Option<OwnedFd>,
    supervision: Supervision,
    stop: Arc<AtomicBool>,
    active: AtomicBool,
    handoff: Mutex<Option<Handoff>>,
}

/// Clears the active flag unless the restart went ahead.
struct Active<'a>(&'a AtomicBool, bool);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.store(false, Ordering::Release);
        }
    }
}

impl RestartGate {
    /// The gate of a process; `link` is `None` when unsupervised (then `restart` is refused).
    /// Setting `stop` ends the control loop.
    #[must_use]
    pub fn new(link: Option<Link>, supervision: Supervision, stop: Arc<AtomicBool>) -> Self {
        let wake = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .ok();
        RestartGate {
            link,
            wake,
            supervision,
            stop,
            active: AtomicBool::new(false),
            handoff: Mutex::new(None),
        }
    }

    /// The supervisor's link, to say `ready`.
    #[must_use]
    pub fn link(&self) -> Option<&Link> {
        self.link.as_ref()
    }

    /// Readable once a restart is handed off: the control loop polls it beside its listener.
    #[must_use]
    pub fn waker(&self) -> Option<BorrowedFd<'_>> {
        self.wake.as_ref().map(AsFd::as_fd)
    }

    /// What `status` says of the process model.
    #[must_use]
    pub fn supervision(&self) -> &Supervision {
        &self.supervision
    }

    /// Whether a restart runs (requests that change anything are refused).
    #[must_use]
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// The hand-off, once a restart is ready for the main thread.
    pub fn take_handoff(&self) -> Option<Handoff> {
        self.handoff
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Run a restart for a control connection, up to the hand-off; returns the answer once
    /// the main thread has drained and saved, and the sender to signal once it is written.
    ///
    /// # Errors
    /// Unsupervised, a restart runs already, transient snapshots exist (without
    /// `drop_transient`), or the supervisor refused (the binary on disk does not run).
    pub fn run(
        &self,
        registry: &Registry,
        timeout: Duration,
        drop_transient: bool,
    ) -> Result<(RestartInfo, Sender<()>)> {
        let link = self.link.as_ref().ok_or_else(|| {
            DaemonError::invalid(
                "this daemon runs without its supervisor (fss serve --no-supervisor): stop it and \
                 start it again instead",
            )
        })?;
        if self.active.swap(true, Ordering::AcqRel) {
            return Err(DaemonError::busy("a restart is already in progress"));
        }
        let mut active = Active(&self.active, false);
        let transient = registry.transient_snapshots();
        if !transient.is_empty() && !drop_transient {
            return Err(DaemonError::busy(format!(
                "transient snapshots would be lost in the restart: {}; delete them, or restart \
                 with --drop-transient",
                transient.join(", ")
            )));
        }
        let new_binary = link.ask_restart()?;
        tracing::info!(new_binary = %new_binary, "restart: the binary on disk runs; waiting for long operations");
        let (waited_for, carried_over) = wait_for_operations(registry, timeout);
        let (saved_tx, saved_rx) = channel();
        let (answered_tx, answered_rx) = channel();
        *self.handoff.lock().unwrap_or_else(PoisonError::into_inner) = Some(Handoff {
            info: RestartInfo {
                old_pid: std::process::id(),
                old_version: env!("CARGO_PKG_VERSION").to_string(),
                new_binary,
                waited_for,
                carried_over,
                dropped_transient: transient,
                nbd_connections_drained: 0,
            },
            saved: saved_tx,
            answered: answered_rx,
        });
        active.1 = true;
        self.stop.store(true, Ordering::Release);
        if let Some(w) = &self.wake {
            let _ = rustix::io::write(w, &1u64.to_ne_bytes());
        }
        let info = saved_rx.recv().map_err(|_| {
            DaemonError::internal("the daemon stopped before the restart was saved")
        })?;
        Ok((info, answered_tx))
    }
}

/// Wait up to `timeout` for the long operations running now: (those that finished, those
/// still running, which the next process resumes).
fn wait_for_operations(registry: &Registry, timeout: Duration) -> (Vec<String>, Vec<String>) {
    let first = registry.running_operations();
    let deadline = Instant::now() + timeout;
    let mut running = first.clone();
    while !running.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        running = registry.running_operations();
    }
    let waited = first.into_iter().filter(|o| !running.contains(o)).collect();
    if !running.is_empty() {
        tracing::warn!(
            ?running,
            "restart: carrying over long operations still running; the next process resumes them"
        );
    }
    (waited, running)
}
