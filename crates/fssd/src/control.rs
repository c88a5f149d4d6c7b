//! The control socket: one thread per connection, one JSON request per line, one response per
//! line. Freeze leases ([`crate::leases`]) live with the connection that opened them: if it
//! drops, or a lease is not closed within [`LEASE_TIMEOUT`], the daemon thaws the file system.
//! `restart` runs through [`crate::restart`].

use crate::error::DaemonError;
pub use crate::leases::{Leases, LEASE_TIMEOUT};
use crate::protocol::{
    BackupDone, Envelope, Progress, ProgressLine, Request, Response, MAX_FRAME, PROTOCOL_VERSION,
};
use crate::registry::Registry;
use crate::restart::RestartGate;
use crate::serving::Supervision;
use std::cell::RefCell;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest request line accepted.
const MAX_LINE: usize = 1 << 20;
/// How long `restart` waits for long operations unless told.
pub const DEFAULT_RESTART_TIMEOUT: Duration = Duration::from_secs(30);

/// What every control connection shares.
pub struct Services {
    /// The live objects.
    pub registry: Arc<Registry>,
    /// Freeze leases.
    pub leases: Arc<Leases>,
    /// `restart`, and what `status` says of the process model.
    pub restart: Arc<RestartGate>,
}

/// Serve the control socket until `stop` is set, unsupervised (`restart` is refused): for
/// in-process use.
pub fn serve(
    listener: &UnixListener,
    registry: &Arc<Registry>,
    leases: &Arc<Leases>,
    stop: &Arc<AtomicBool>,
) {
    let services = Arc::new(Services {
        registry: Arc::clone(registry),
        leases: Arc::clone(leases),
        restart: Arc::new(RestartGate::new(
            None,
            Supervision::default(),
            Arc::clone(stop),
        )),
    });
    serve_with(listener, &services, stop);
}

/// Serve the control socket until `stop` is set.
pub fn serve_with(listener: &UnixListener, services: &Arc<Services>, stop: &AtomicBool) {
    if let Err(e) = listener.set_nonblocking(true) {
        tracing::error!(error = %e, "control socket cannot be polled");
        return;
    }
    while !stop.load(Ordering::Acquire) {
        services.leases.expire();
        match listener.accept() {
            Ok((stream, _)) => {
                let services = Arc::clone(services);
                let spawned = std::thread::Builder::new()
                    .name("fss-control".into())
                    .spawn(move || connection(stream, &services));
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "cannot start a control connection thread");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Wake as soon as a client connects or a restart is handed off; look at the
                // stop flag and the leases at least every 50 ms.
                let mut fds = vec![rustix::event::PollFd::new(
                    listener,
                    rustix::event::PollFlags::IN,
                )];
                if let Some(w) = services.restart.waker() {
                    fds.push(rustix::event::PollFd::from_borrowed_fd(
                        w,
                        rustix::event::PollFlags::IN,
                    ));
                }
                let timeout = rustix::event::Timespec {
                    tv_sec: 0,
                    tv_nsec: 50_000_000,
                };
                if rustix::event::poll(&mut fds, Some(&timeout)).is_err() {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn connection(stream: UnixStream, services: &Services) {
    let _ = stream.set_nonblocking(false);
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut out = write_half;
    let mut reader = BufReader::new(stream);
    let mut mine: Vec<u64> = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if n > MAX_LINE {
            let too_long = DaemonError::invalid_request("request line longer than 1 MiB");
            let _ = send(&mut out, &failure(0, &too_long));
            break;
        }
        let sent = match envelope(&line) {
            Ok(env) => {
                let mut conn = Connection {
                    services,
                    mine: &mut mine,
                    out: &mut out,
                };
                conn.dispatch(&env)
            }
            Err(refusal) => send(&mut out, &refusal),
        };
        if sent.is_err() {
            break;
        }
    }
    for id in mine {
        services
            .leases
            .abandon(id, "the client holding the freeze lease went away");
    }
}

/// Write one response line.
fn send<W: Write, T: serde::Serialize>(out: &mut W, v: &T) -> std::io::Result<()> {
    let mut text = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    text.push(b'\n');
    out.write_all(&text)
}

fn expired() -> DaemonError {
    DaemonError::busy(format!(
        "the freeze lease expired (the daemon thawed the file system after {} s), so a snapshot \
         now would not be consistent; try again",
        LEASE_TIMEOUT.as_secs()
    ))
}

fn failure(id: u64, e: &DaemonError) -> Response {
    Response {
        v: PROTOCOL_VERSION,
        id,
        ok: false,
        result: None,
        error: Some(e.body()),
    }
}

/// The request of a line, or the response refusing it (malformed, another version).
fn envelope(line: &[u8]) -> Result<Envelope, Response> {
    let env: Envelope = match serde_json::from_slice(line) {
        Ok(e) => e,
        Err(e) => {
            let v: Option<serde_json::Value> = serde_json::from_slice(line).ok();
            let id = v
                .as_ref()
                .and_then(|v| v.get("id"))
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            return Err(failure(
                id,
                &DaemonError::invalid_request(format!(
                    "malformed request: {e}; see docs/CONTROL.md"
                )),
            ));
        }
    };
    if env.v != PROTOCOL_VERSION {
        return Err(failure(
            env.id,
            &DaemonError::invalid_request(format!(
                "protocol version {} is not supported (this daemon speaks {PROTOCOL_VERSION}); use the fss CLI of the same release",
                env.v
            )),
        ));
    }
    Ok(env)
}

/// A reply's result as JSON: serde stays on the wire, the registry returns typed values.
fn encode<T: serde::Serialize>(
    r: Result<T, DaemonError>,
) -> Result<serde_json::Value, DaemonError> {
    r.and_then(|v| {
        serde_json::to_value(v)
            .map_err(|e| DaemonError::internal(format!("cannot encode a reply: {e}")))
    })
}

/// One control connection's view while it answers a request.
struct Connection<'a, W: Write> {
    services: &'a Services,
    /// The freeze leases this connection opened (thawed if it goes away).
    mine: &'a mut Vec<u64>,
    out: &'a mut W,
}

impl<W: Write> Connection<'_, W> {
    /// Answer one request: the one place every [`Request`] is handled. A new variant does not
    /// compile until it is handled here. An error means the connection broke.
    fn dispatch(&mut self, env: &Envelope) -> std::io::Result<()> {
        let reg = self.services.registry.as_ref();
        let leases = self.services.leases.as_ref();
        if self.services.restart.is_active() && !env.request.changes_nothing() {
            let e = DaemonError::busy(
                "the daemon is restarting (fss restart); try again once it answers",
            );
            return send(self.out, &failure(env.id, &e));
        }
        if let Some(p) = env.request.relative_path() {
            let e = DaemonError::invalid(format!(
                "the path '{}' is relative: paths sent to the daemon must be absolute (the CLI \
                 makes them so against its working directory)",
                p.display()
            ));
            return send(self.out, &failure(env.id, &e));
        }
        let result = match &env.request {
            Request::Status => encode(Ok(self.status())),
            Request::Stats => encode(reg.stats()),
            Request::VolumeCreate { name, size, image } => {
                encode(reg.create_volume(name, *size, image.clone()))
            }
            Request::VolumeAdd { name, device } => encode(reg.add_volume(name, device)),
            Request::VolumeList => encode(Ok(reg.list_volumes())),
            Request::VolumeRemove { name } => encode(reg.remove_volume(name)),
            Request::SnapshotCreate(spec) => {
                if leases.all_open(&spec.lease) {
                    encode(reg.create_snapshot(spec))
                } else {
                    Err(expired())
                }
            }
            Request::SnapshotCreateGroup { members } => {
                if members.iter().all(|m| leases.all_open(&m.lease)) {
                    encode(reg.create_snapshot_group(members))
                } else {
                    Err(expired())
                }
            }
            Request::SnapshotDelete { name } => encode(reg.delete_snapshot(name)),
            Request::SnapshotSet {
                name,
                max_store_size,
            } => encode(reg.set_snapshot_max(name, *max_store_size)),
            Request::SnapshotList => encode(reg.list_snapshots()),
            Request::SnapshotInfo { name } => encode(reg.describe_snapshot(name)),
            Request::SnapshotVerify { name } => encode(reg.verify_snapshot(name)),
            Request::Checksum { name } => encode(reg.checksum(name)),
            Request::Diff { snapshot, until } => encode(reg.diff(snapshot, until.as_deref())),
            Request::LeaseOpen { mount_point } => self.lease_open(mount_point),
            Request::LeaseClose { lease } => self.lease_close(*lease),
            Request::Backup {
                snapshot,
                since,
                align,
            } => {
                let chan = Channel::new(self.out, env.id);
                let job = (snapshot.as_str(), since.as_deref(), align.unwrap_or(0));
                return backup(env.id, job, reg, chan);
            }
            Request::Restore { volume, files } => {
                let mut chan = Channel::new(self.out, env.id);
                let r = reg.restore_volume(volume, files, &mut |d, t| chan.progress(d, t));
                return chan.finish(encode(r));
            }
            Request::RestoreAbandon { volume } => encode(reg.abandon_restore(volume)),
            Request::ScheduleAdd(spec) => encode(reg.add_schedule(spec.clone())),
            Request::ScheduleList => encode(Ok(reg.list_schedules())),
            Request::ScheduleRemove { volume } => encode(reg.remove_schedule(volume)),
            Request::Restart {
                timeout_seconds,
                drop_transient,
            } => {
                let timeout = timeout_seconds.map_or(DEFAULT_RESTART_TIMEOUT, Duration::from_secs);
                return self.restart(env.id, timeout, *drop_transient);
            }
            Request::Rollback {
                volume,
                snapshot,
                force,
            } => {
                let mut chan = Channel::new(self.out, env.id);
                let r = reg.rollback(volume, snapshot, *force, &mut |d, t| chan.progress(d, t));
                return chan.finish(encode(r));
            }
        };
        let response = match result {
            Ok(v) => success(env.id, v),
            Err(e) => failure(env.id, &e),
        };
        send(self.out, &response)
    }

    /// `status`, with the process model's fields.
    fn status(&self) -> crate::protocol::StatusInfo {
        let mut s = self.services.registry.status();
        let sup = self.services.restart.supervision();
        s.supervisor_pid = sup.supervisor_pid;
        s.restarts = sup.restarts;
        s.last_restart.clone_from(&sup.last_restart);
        s
    }

    /// `restart`: answered once this process has drained and saved; it then exits.
    fn restart(&mut self, id: u64, timeout: Duration, drop_transient: bool) -> std::io::Result<()> {
        let gate = &self.services.restart;
        match gate.run(&self.services.registry, timeout, drop_transient) {
            Ok((info, answered)) => {
                let r = match encode(Ok(&info)) {
                    Ok(v) => send(self.out, &success(id, v)),
                    Err(e) => send(self.out, &failure(id, &e)),
                };
                let _ = answered.send(());
                r
            }
            Err(e) => send(self.out, &failure(id, &e)),
        }
    }

    fn lease_open(&mut self, mount_point: &str) -> Result<serde_json::Value, DaemonError> {
        // The daemon thaws what a lease names when it expires: only file systems it serves.
        if !crate::own_files::is_on_export(
            self.services.registry.paths(),
            std::path::Path::new(mount_point),
        ) {
            return Err(DaemonError::invalid(format!(
                "{mount_point} is not a file system on an fss volume (a loop device over a file \
                 in the FUSE directory); freeze leases are only for those"
            )));
        }
        let id = self.services.leases.open(mount_point)?;
        self.mine.push(id);
        Ok(serde_json::json!({ "lease": id, "timeout_seconds": LEASE_TIMEOUT.as_secs() }))
    }

    fn lease_close(&mut self, lease: u64) -> Result<serde_json::Value, DaemonError> {
        self.mine.retain(|x| *x != lease);
        if self.services.leases.close(lease) {
            Ok(serde_json::Value::Null)
        } else {
            Err(DaemonError::not_found(format!(
                "freeze lease {lease} is not open (it expired after {} s and the daemon thawed the file system)",
                LEASE_TIMEOUT.as_secs()
            )))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Long operations (backup, restore, rollback): progress lines before the final response, and
// for a backup, data frames between its first and its final response (docs/CONTROL.md).

/// The least time between two progress lines (the last one, `done == total`, always goes).
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

fn success(id: u64, result: serde_json::Value) -> Response {
    Response {
        v: PROTOCOL_VERSION,
        id,
        ok: true,
        result: Some(result),
        error: None,
    }
}

/// The connection's write side during a long operation.
struct Channel<'a, W: Write> {
    out: &'a mut W,
    id: u64,
    last_progress: Option<Instant>,
    broken: bool,
}

impl<'a, W: Write> Channel<'a, W> {
    fn new(out: &'a mut W, id: u64) -> Self {
        Channel {
            out,
            id,
            last_progress: None,
            broken: false,
        }
    }

    /// The final response of a long operation.
    fn finish(&mut self, result: Result<serde_json::Value, DaemonError>) -> std::io::Result<()> {
        match result {
            Ok(v) => self.line(&success(self.id, v)),
            Err(e) => self.line(&failure(self.id, &e)),
        }
    }

    fn line<T: serde::Serialize>(&mut self, v: &T) -> std::io::Result<()> {
        let mut text = serde_json::to_vec(v).map_err(std::io::Error::other)?;
        text.push(b'\n');
        let r = self.out.write_all(&text);
        self.broken |= r.is_err();
        r
    }

    fn progress(&mut self, done: u64, total: u64) {
        let due = done >= total
            || self
                .last_progress
                .is_none_or(|t| t.elapsed() >= PROGRESS_EVERY);
        if self.broken || !due {
            return;
        }
        self.last_progress = Some(Instant::now());
        let p = ProgressLine {
            v: PROTOCOL_VERSION,
            id: self.id,
            progress: Progress { done, total },
        };
        // A broken connection is noticed (and the operation stopped) at the next data write
        // or at the final response.
        let _ = self.line(&p);
    }

    /// One data frame: a 4-byte big-endian length, then the bytes; a zero length ends the data.
    fn frame(&mut self, data: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(data.len()).map_err(std::io::Error::other)?;
        let r = self
            .out
            .write_all(&len.to_be_bytes())
            .and_then(|()| self.out.write_all(data));
        self.broken |= r.is_err();
        r
    }
}

/// The backup stream, as data frames of at most [`MAX_FRAME`] bytes.
struct FrameWriter<'c, 'a, W: Write>(&'c RefCell<Channel<'a, W>>);

impl<W: Write> Write for FrameWriter<'_, '_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = buf.len().min(MAX_FRAME);
        self.0.borrow_mut().frame(&buf[..n])?;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.borrow_mut().out.flush()
    }
}

/// `backup`: the first response, the data frames, a zero frame, the final response.
/// `(snapshot, since, align)` of a backup request.
type BackupArgs<'a> = (&'a str, Option<&'a str>, u64);

fn backup<W: Write>(
    id: u64,
    (snapshot, since, align): BackupArgs<'_>,
    registry: &Registry,
    mut chan: Channel<'_, W>,
) -> std::io::Result<()> {
    let job = match registry.backup_job(snapshot, since) {
        Ok(j) => j,
        Err(e) => return chan.line(&failure(id, &e)),
    };
    match encode(Ok(&job.start)) {
        Ok(v) => chan.line(&success(id, v))?,
        Err(e) => return chan.line(&failure(id, &e)),
    }
    tracing::info!(snapshot, since, "backup started");
    let chan = RefCell::new(chan);
    let written = {
        let mut w = FrameWriter(&chan);
        let mut p = |d: u64, t: u64| chan.borrow_mut().progress(d, t);
        match &job.base {
            None => fss_core::backup::write_full(&job.snapshot, &mut w, &mut p),
            Some(base) => fss_core::backup::write_incremental_aligned(
                base,
                &job.snapshot,
                align,
                &mut w,
                &mut p,
            ),
        }
    };
    let mut chan = chan.into_inner();
    if chan.broken {
        tracing::warn!(snapshot, "backup abandoned: the client went away");
        return Err(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "the client went away",
        ));
    }
    chan.frame(&[])?;
    let done = encode(written.map_err(DaemonError::from).map(|s| BackupDone {
        snapshot: snapshot.to_string(),
        kind: job.start.kind,
        since: since.map(str::to_string),
        backup_id: fss_core::backup::format::hex(&s.header.backup_id),
        covered: s.header.covered,
        records: s.records,
        data_bytes: s.data_bytes,
        zero_bytes: s.zero_bytes,
        stream_bytes: s.stream_bytes,
    }));
    match done {
        Ok(v) => {
            tracing::info!(snapshot, since, "backup done");
            chan.line(&success(id, v))
        }
        Err(e) => {
            tracing::error!(snapshot, error = %e, "backup failed");
            chan.line(&failure(id, &e))
        }
    }
}
