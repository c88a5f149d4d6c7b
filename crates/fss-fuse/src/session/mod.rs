//! fss's own FUSE request loop over a `/dev/fuse` descriptor, able to take over a connection
//! that another process served.
//!
//! Why not fuser's `Session`: the serving process must be restartable (kill -9, upgrade)
//! while a file system on a loop device over a FUSE file stays mounted. A supervisor holds
//! the `/dev/fuse` descriptor and the mount; each serving process gets the descriptor by
//! inheritance. fuser 0.18's `Session::from_fd` insists on a `FUSE_INIT` handshake, which the
//! kernel sends once per connection, and its cloned per-thread descriptors (`clone_fd`) die
//! with the process, whereupon the kernel fails their in-flight requests with ECONNABORTED,
//! which a loop device reports as EIO. So this crate reads the one shared, non-cloned
//! descriptor itself:
//!
//! - [`Start::Fresh`]: answer `FUSE_INIT` (see [`init`]) and persist the negotiated
//!   parameters and, from then on, the inode and open-handle tables (see [`crate::persist`]);
//! - [`Start::Resume`]: load them, write `FUSE_NOTIFY_RESEND` before reading anything (the
//!   kernel then queues again, ahead of new requests, every request the dead process had read
//!   but not answered, with bit 63 of `unique` set), and serve. Without `FUSE_HAS_RESEND`
//!   (Linux before 6.9) those requests are lost: their callers wait forever.
//!
//! Replies echo `unique` exactly. Several threads serve; see [`channel`] for how they read.

pub mod channel;
pub mod init;

use crate::dispatch::{self, Answer};
use crate::error::FuseError;
use crate::file_io;
use crate::filesystem::FssFs;
use crate::handles::{Handles, OpenHook};
use crate::inodes::InodeTable;
use crate::persist::{self, SessionFiles, SessionParams, TableFile};
use crate::wire::abi::size;
use crate::wire::{reply, Operation, ParseError};
use channel::Channel;
use fss_core::device::{AlignedBuf, DIRECT_ALIGN};
use fss_core::direct_read::ring::{ReadRing, RingRead};
use fss_core::export::Catalog;
use std::os::fd::OwnedFd;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How a session begins on its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A connection just mounted: answer `FUSE_INIT`, then write the session files.
    Fresh,
    /// A connection an earlier process served: load the session files, have the kernel
    /// resend what that process left unanswered, serve. If the session file is missing
    /// (that process died before answering `FUSE_INIT`), the handshake is done here.
    Resume,
}

/// What a session serves and how.
pub struct Setup<'a> {
    /// Where exports are found.
    pub catalog: Arc<dyn Catalog>,
    /// Told of first opens and last closes.
    pub hook: Option<OpenHook>,
    /// Serving threads.
    pub threads: usize,
    /// Asked of the kernel at `FUSE_INIT`.
    pub max_background: u16,
    /// Where the session is persisted (none: it cannot be resumed).
    pub files: Option<&'a SessionFiles>,
}

/// Bytes of a request buffer: the largest WRITE (header, `fuse_write_in`, `max_write` bytes)
/// with room to spare, and never below the kernel's minimum of 8 KiB.
fn buffer_size(max_write: u32) -> usize {
    let w = usize::try_from(max_write).unwrap_or(usize::MAX >> 1);
    w.saturating_add(4096).max(8192)
}

/// Serving threads on one connection.
#[derive(Debug)]
pub struct Session {
    shared: Arc<Shared>,
    handles: Arc<Handles>,
    threads: Vec<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    channel: Channel,
    fs: FssFs,
    init_reply: Vec<u8>,
    buf_size: usize,
    /// Runs small reads many at once on one thread (`None`: no io_uring here).
    ring: Option<ReadRing>,
    /// Requests read and not yet answered (those the ring holds included).
    serving: AtomicUsize,
}

impl Session {
    /// Serve the connection `fd` with `setup.threads` threads.
    ///
    /// # Errors
    /// The descriptor cannot be used, the handshake or the session files fail, or the
    /// threads cannot start.
    pub fn start(fd: OwnedFd, setup: &Setup<'_>, start: Start) -> Result<Self, FuseError> {
        let channel = Channel::new(fd).map_err(FuseError::Device)?;
        let (params, fs, handles) = match (start, setup.files) {
            (Start::Fresh, files) => fresh(&channel, setup, files)?,
            (Start::Resume, Some(files)) => resume(&channel, setup, files)?,
            (Start::Resume, None) => {
                return Err(FuseError::Handshake {
                    reason: "a session without a session file cannot be resumed".into(),
                })
            }
        };
        let shared = Arc::new(Shared {
            channel,
            fs,
            init_reply: reply::init_out(&init::init_out(&params)),
            buf_size: buffer_size(params.max_write),
            ring: ReadRing::start("fss-fuse-ring".into()),
            serving: AtomicUsize::new(0),
        });
        let mut session = Session {
            shared,
            handles,
            threads: Vec::new(),
        };
        for i in 0..setup.threads.max(1) {
            let shared = Arc::clone(&session.shared);
            let spawned = std::thread::Builder::new()
                .name(format!("fss-fuse-{i}"))
                .spawn(move || serve(&shared));
            match spawned {
                Ok(t) => session.threads.push(t),
                Err(e) => {
                    // Leave the connection to whoever serves it next.
                    let _ = session.detach(Duration::from_secs(10));
                    return Err(FuseError::Thread(e));
                }
            }
        }
        Ok(session)
    }

    /// The open-file table.
    pub fn handles(&self) -> &Arc<Handles> {
        &self.handles
    }

    /// Whether every serving thread has ended (the connection ended, or a stop).
    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(JoinHandle::is_finished)
    }

    /// Wait up to `timeout` for every thread to end; true if they did.
    pub fn join(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.is_finished() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a FUSE serving thread panicked");
            }
        }
        // Nothing submits any more: answer what the ring holds before the connection is
        // left to whoever serves it next.
        if let Some(r) = &self.shared.ring {
            r.finish();
        }
        true
    }

    /// Stop serving without unmounting: each thread answers the request it is serving and
    /// ends; requests not yet read stay queued in the kernel for the next session. True if
    /// every thread ended within `timeout`.
    pub fn detach(&mut self, timeout: Duration) -> bool {
        self.shared.channel.stop();
        self.join(timeout)
    }
}

/// The handshake of a fresh connection; the session files are written before INIT is
/// answered.
fn fresh(
    channel: &Channel,
    setup: &Setup<'_>,
    files: Option<&SessionFiles>,
) -> Result<(SessionParams, FssFs, Arc<Handles>), FuseError> {
    let handles = Arc::new(Handles::new(setup.hook.clone()));
    let mut built = None;
    let mut buf = vec![0u8; buffer_size(init::MAX_WRITE)];
    let params = init::handshake(channel, &mut buf, setup.max_background, |params| {
        let fs = FssFs::new(
            Arc::clone(&setup.catalog),
            Arc::clone(&handles),
            InodeTable::default(),
            mounted(params),
            files.map(|f| TableFile::new(f.table.clone())),
        );
        if let Some(f) = files {
            // The table first: a session file always has its table.
            fs.save().map_err(FuseError::SessionFile)?;
            persist::save_params(&f.params, params).map_err(FuseError::SessionFile)?;
        }
        built = Some(fs);
        Ok(())
    })?;
    let fs = built.ok_or_else(|| FuseError::Handshake {
        reason: "INIT was answered without settling the session".into(),
    })?;
    tracing::info!(
        minor = params.kernel_minor,
        flags = format!("{:#x}", params.flags),
        resend = init::can_resend(&params),
        "FUSE connection initialised"
    );
    Ok((params, fs, handles))
}

/// Take over a connection an earlier process served.
fn resume(
    channel: &Channel,
    setup: &Setup<'_>,
    files: &SessionFiles,
) -> Result<(SessionParams, FssFs, Arc<Handles>), FuseError> {
    let params = match persist::load_params(&files.params) {
        Ok(p) => p,
        Err(persist::PersistError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            tracing::warn!(file = %files.params.display(),
                "no FUSE session file: the earlier process died before FUSE_INIT was answered");
            if let Err(e) = channel.notify_resend() {
                tracing::debug!(error = %e, "FUSE_NOTIFY_RESEND refused");
            }
            return fresh(channel, setup, Some(files));
        }
        Err(e) => return Err(FuseError::SessionFile(e)),
    };
    let tables = persist::load_tables(&files.table).map_err(FuseError::SessionFile)?;
    let catalog = Arc::clone(&setup.catalog);
    let handles = Arc::new(Handles::restore(
        setup.hook.clone(),
        tables.last_fh,
        &tables.handles,
        |name| catalog.lookup(name),
    ));
    let fs = FssFs::new(
        Arc::clone(&setup.catalog),
        Arc::clone(&handles),
        InodeTable::from_records(tables.next_ino, &tables.inodes),
        mounted(&params),
        Some(TableFile::new(files.table.clone())),
    );
    if init::can_resend(&params) {
        channel.notify_resend().map_err(FuseError::Device)?;
        tracing::info!(
            open = tables.handles.len(),
            "FUSE connection resumed; requests left unanswered are being resent"
        );
    } else {
        tracing::warn!(
            open = tables.handles.len(),
            "FUSE connection resumed, but this kernel cannot resend requests (FUSE_HAS_RESEND, \
             Linux 6.9): those the earlier process read and did not answer are lost"
        );
    }
    Ok((params, fs, handles))
}

fn mounted(p: &SessionParams) -> SystemTime {
    UNIX_EPOCH + Duration::new(p.mounted_secs, p.mounted_nanos.min(999_999_999))
}

/// A serving thread: read, answer, until the session stops.
/// Where a `FUSE_WRITE`'s data starts in its request: after the header and `fuse_write_in`.
const WRITE_DATA_AT: usize = size::IN_HEADER + size::WRITE_IN;

fn serve(shared: &Arc<Shared>) {
    // Requests are read to this offset of an aligned buffer so that a write's data starts on
    // an O_DIRECT boundary: a large write then goes from here to the volume with O_DIRECT and
    // no bounce copy (the engine writes an unaligned buffer through the page cache).
    let at = DIRECT_ALIGN - WRITE_DATA_AT;
    let mut request = AlignedBuf::new(at + shared.buf_size);
    let mut data = AlignedBuf::default();
    while let Some(n) = shared.channel.receive(&mut request[at..]) {
        shared.serving.fetch_add(1, Ordering::SeqCst);
        if !handle(shared, &request[at..at + n], &mut data) {
            shared.serving.fetch_sub(1, Ordering::SeqCst);
        }
        // A rare large read does not keep its memory for the life of the thread.
        data.shrink_to(4 << 20);
    }
}

/// Answer the request in `bytes`, or hand it to the read ring: true if the ring took it
/// (and counts it off `serving` once answered).
fn handle(shared: &Arc<Shared>, bytes: &[u8], data: &mut AlignedBuf) -> bool {
    let req = match crate::wire::request::parse(bytes) {
        Ok(r) => r,
        Err(ParseError::Header(e)) => {
            tracing::warn!(error = %e, "ignoring a malformed FUSE request");
            return false;
        }
        Err(ParseError::Body(h, e)) => {
            tracing::warn!(
                opcode = h.opcode,
                errno = e.raw_os_error(),
                "malformed FUSE request"
            );
            shared.channel.send(h.unique, &Answer::Error(e));
            return false;
        }
    };
    let unique = req.header.unique;
    if let Operation::Read { fh, offset, size } = req.op {
        if by_ring(shared, unique, fh, offset, size) {
            return true;
        }
    }
    let answered = std::panic::catch_unwind(AssertUnwindSafe(move || {
        let answer = dispatch::answer(&shared.fs, &shared.init_reply, &req, data);
        shared.channel.send(unique, &answer);
    }));
    if answered.is_err() {
        tracing::error!(
            opcode = req.header.opcode,
            "serving a FUSE request panicked"
        );
        shared
            .channel
            .send(unique, &Answer::Error(rustix::io::Errno::IO));
    }
    false
}

/// Hand a small READ to the session's read ring if the engine allows a direct read of it
/// (see `fss_core::direct_read::ring` for why) and other requests are being served; true if
/// it did, and the ring answers it. A request served alone is read on this thread: at queue
/// depth 1 the hand-off to the ring costs a wake-up (10% of loop's 4 KiB reads, measured).
fn by_ring(shared: &Arc<Shared>, unique: u64, fh: u64, offset: u64, size: u32) -> bool {
    let Some(ring) = &shared.ring else {
        return false;
    };
    if shared.serving.load(Ordering::SeqCst) <= 1 {
        return false;
    }
    let Some((read, buf)) = shared.fs.direct_read(fh, offset, size) else {
        return false;
    };
    let s = Arc::clone(shared);
    ring.submit(RingRead {
        read,
        buf,
        done: Box::new(move |buf, outcome| {
            match outcome {
                Ok(()) => s.channel.send(unique, &Answer::Data(&buf)),
                Err(e) => {
                    tracing::debug!(offset, size, error = %e, "read failed");
                    s.channel.send(unique, &Answer::Error(file_io::errno(&e)));
                }
            }
            s.serving.fetch_sub(1, Ordering::SeqCst);
        }),
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::abi::opcode;
    use crate::wire::Operation;

    #[test]
    fn a_write_received_where_serve_puts_it_has_aligned_data() {
        let data = vec![7u8; 8192];
        let mut req = Vec::new();
        let total = u32::try_from(WRITE_DATA_AT + data.len()).unwrap();
        for v in [total, opcode::WRITE] {
            req.extend_from_slice(&v.to_le_bytes());
        }
        for v in [9u64, 2] {
            req.extend_from_slice(&v.to_le_bytes()); // unique, node
        }
        req.extend_from_slice(&[0; 16]); // uid, gid, pid, extlen, padding
        for v in [5u64, 1 << 20] {
            req.extend_from_slice(&v.to_le_bytes()); // fh, offset
        }
        req.extend_from_slice(&8192u32.to_le_bytes());
        req.extend_from_slice(&[0; 20]); // write_flags, lock_owner, flags, padding
        req.extend_from_slice(&data);
        let at = DIRECT_ALIGN - WRITE_DATA_AT;
        let mut buf = AlignedBuf::new(at + req.len());
        buf[at..].copy_from_slice(&req);
        let parsed = crate::wire::request::parse(&buf[at..]).unwrap();
        let Operation::Write { data: got, .. } = parsed.op else {
            panic!("not parsed as a write: {:?}", parsed.op);
        };
        assert_eq!(got, &data[..]);
        assert!(fss_core::device::is_aligned(got));
    }
}
