//! The transmission phase of one connection.
//!
//! One reader (the connection's thread) parses requests, checks them, reads write payloads and
//! queues the work; a small per-connection [`Pool`] runs it and answers through the shared
//! [`ReplyWriter`], so replies go out in completion order, not request order. The reader takes
//! a share of the connection's [`Budget`] before it reads a payload or queues a request, which
//! bounds the memory and threads one client can use.
//!
//! A request that is wrong but well-formed (out of range, too large, unknown command or flag,
//! a write to a snapshot) gets an error reply and the connection goes on. Only a broken stream
//! ends it: a bad magic or a truncated message. A write payload too large to accept, up to the
//! 4 GiB a header can claim, is read and thrown away through a small buffer, then refused.

use crate::errno;
use crate::error::ConnError;
use crate::handshake::Negotiated;
use crate::meta_context::{self, MetaContext, MAX_DESCRIPTORS, MAX_STATUS_LEN};
use crate::payloads::Payloads;
use crate::pool::{Budget, Pool, SharedBudget};
use crate::protocol::{self as p, Chunk, Command, NbdErrno, Request};
use crate::reply::ReplyWriter;
use crate::stream::{discard, read_message, Stream};
use crate::{ServerOptions, MAX_PAYLOAD};
use fss_core::device::{AlignedBuf, Extent};
use fss_core::export::Export;
use std::cell::RefCell;
use std::io::{BufReader, Read};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// Trims and write-zeroes are passed to the engine in pieces of at most this: the engine reads
/// the pre-images of a whole call into memory.
const ZERO_CHUNK: u64 = MAX_PAYLOAD as u64;

/// Reads at least this long on a volume look for holes first, and send them as hole chunks.
const HOLE_READ_MIN: u32 = 64 * 1024;

/// Holes shorter than this are sent as data.
const HOLE_CHUNK_MIN: u64 = 4096;

/// How a connection's transmission phase ended normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The client sent `NBD_CMD_DISC`.
    Disconnect,
    /// The client closed the socket between requests.
    Closed,
    /// A reply could not be written (the client went away, or the server shut the socket).
    WriteFailed,
}

/// What every request of the connection shares.
struct Conn {
    export: Export,
    contexts: Vec<MetaContext>,
    writer: ReplyWriter,
    payloads: Payloads,
}

/// Requests in a row that must find nothing else in flight before the next runs on the
/// connection's reader thread (see `serve`).
const INLINE_AFTER: u32 = 3;

/// What the reader does with a request.
enum Plan {
    /// Run it (in the pool) with this many budget bytes.
    Run(Op, usize),
    /// Answer with an error.
    Reject(Reject),
    /// End the connection after in-flight requests.
    Disconnect,
}

/// What a connection's transmission phase needs from the server.
pub(crate) struct Setup<'a> {
    /// The server's tunables.
    pub opts: &'a ServerOptions,
    /// The budget shared by every connection.
    pub shared: &'a Arc<SharedBudget>,
    /// The name of the connection's worker threads.
    pub thread_name: String,
    /// The client, for logs.
    pub peer: String,
}

/// Serve requests until the client disconnects or the stream breaks.
///
/// # Errors
/// The stream broke (the connection ends; in-flight requests still complete).
pub(crate) fn serve(
    mut rd: BufReader<Stream>,
    w: Stream,
    n: Negotiated,
    setup: &Setup<'_>,
) -> Result<End, ConnError> {
    let opts = setup.opts;
    let conn = Arc::new(Conn {
        export: n.export,
        contexts: n.contexts,
        writer: ReplyWriter::new(w, n.structured, &setup.peer, opts.reply_timeout),
        payloads: Payloads::default(),
    });
    let budget = Budget::new(
        opts.max_requests_in_flight,
        opts.max_bytes_in_flight,
        Arc::clone(setup.shared),
    );
    let mut pool = Pool::new(opts.workers_per_connection, setup.thread_name.clone());
    let mut alone_streak = 0u32;
    let mut ring = by_ring::RingState::NotStarted;
    let result = loop {
        if conn.writer.is_broken() {
            break Ok(End::WriteFailed);
        }
        ring.before_read(&rd, &mut pool);
        let mut h = [0u8; p::REQUEST_LEN];
        match read_message(&mut rd, &mut h) {
            Ok(true) => {}
            Ok(false) => break Ok(End::Closed),
            Err(_) if conn.writer.is_broken() => break Ok(End::WriteFailed),
            Err(e) => break Err(e.into()),
        }
        let req = match Request::decode(&h) {
            Ok(r) => r,
            Err(found) => {
                break Err(ConnError::BadMagic {
                    found: u64::from(found),
                    expected: "NBD_REQUEST_MAGIC",
                })
            }
        };
        match plan(&req, &conn) {
            Plan::Disconnect => break Ok(End::Disconnect),
            Plan::Reject(r) => {
                if req.command == Command::Write {
                    // The payload follows whatever we think of the request. Skipping even 4 GiB
                    // takes seconds and no memory, and keeps the connection usable (as DESIGN
                    // promises) for a client that sent a payload it believed acceptable.
                    if let Err(e) = discard(&mut rd, u64::from(req.length)) {
                        break Err(e.into());
                    }
                }
                tracing::debug!(cookie = req.cookie, command = ?req.command, error = ?r.errno,
                    message = %r.message, "NBD request refused");
                conn.writer.error(req.cookie, r.errno, &r.message);
            }
            Plan::Run(mut op, bytes) => {
                let permit = ring.acquire(&budget, bytes, &mut pool);
                if let Op::Write { data, .. } = &mut op {
                    *data = conn.payloads.take(req.length as usize);
                    if let Err(e) = read_payload(&mut rd, data) {
                        break Err(e.into());
                    }
                }
                // A client that sends one request at a time (the last INLINE_AFTER found
                // nothing else in flight and nothing more sent) has its reads and writes run
                // on this thread: handing one to a worker costs a cross-CPU wake-up, about a
                // third of a 4 KiB read's time at queue depth 1. A deeper client only passes
                // through such moments, and the reader must go on reading its requests.
                let alone = budget.requests_in_flight() == 1
                    && rd.buffer().is_empty()
                    && !rd.get_ref().has_pending();
                alone_streak = if alone {
                    alone_streak.saturating_add(1)
                } else {
                    0
                };
                // The reader must never block on a reply, or a client that sends a batch
                // before it reads the replies (allowed, and with blocking sockets the natural
                // way) deadlocks with it: so only a reply the socket takes at once runs here.
                let inline = alone_streak > INLINE_AFTER
                    && match &op {
                        Op::Read { .. } => rd.get_ref().reply_fits(req.length as usize + 4096),
                        Op::Write { .. } => rd.get_ref().reply_fits(4096),
                        _ => false,
                    };
                if inline {
                    run(&conn, &req, op);
                    drop(permit);
                    continue;
                }
                let permit = match op {
                    Op::Read { .. } if req.length < HOLE_READ_MIN => {
                        match by_ring::by_ring(
                            &conn,
                            &mut ring,
                            &rd,
                            &setup.thread_name,
                            &req,
                            permit,
                        ) {
                            Some(p) => p,
                            None => continue,
                        }
                    }
                    _ => permit,
                };
                let c = Arc::clone(&conn);
                pool.submit(Box::new(move || {
                    run(&c, &req, op);
                    drop(permit);
                }));
            }
        }
    };
    // Every request read so far is answered (the protocol asks this of NBD_CMD_DISC; after a
    // broken stream the replies may have nowhere to go, but the writes still complete).
    ring.finish(&mut pool);
    pool.finish();
    conn.writer.close();
    result
}

/// Read a write payload into all of `data`.
fn read_payload(rd: &mut impl Read, data: &mut [u8]) -> std::io::Result<()> {
    let want = data.len();
    let mut n = 0;
    while n < want {
        match rd.read(&mut data[n..]) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the stream ended after {n} of {want} write payload bytes"),
                ))
            }
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Check a request against the export and what was negotiated.
fn plan(req: &Request, conn: &Conn) -> Plan {
    match check(
        req,
        &conn.export,
        !conn.contexts.is_empty(),
        conn.writer.structured(),
    ) {
        Ok(Some((op, bytes))) => Plan::Run(op, bytes),
        Ok(None) => Plan::Disconnect,
        Err(r) => Plan::Reject(r),
    }
}

/// The largest read buffer a worker thread keeps between requests: enough for the usual
/// 1 MiB transfers, while a rare 32 MiB read does not stay resident for the thread's life.
const KEEP_READ_BUF: usize = 4 << 20;

thread_local! {
    /// Each worker's read buffer, page-aligned so a volume opened with O_DIRECT reads straight
    /// into it (no bounce buffer and copy), and reused so large reads do not fault in fresh
    /// pages every time. In huge pages: a 1 MiB read in scattered 4 KiB pages was two disk
    /// requests (the virtio disk takes 254 segments per request); see `AlignedBuf`.
    static READ_BUF: RefCell<AlignedBuf> = RefCell::new(AlignedBuf::in_huge_pages());
}

/// Run `f` on this thread's read buffer, sized to `len` bytes.
fn with_read_buf<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    READ_BUF.with_borrow_mut(|buf| {
        buf.resize(len);
        let r = f(buf);
        buf.shrink_to(KEEP_READ_BUF);
        r
    })
}

/// Budget bytes for a trim or write-zeroes: the engine may read pre-images of one piece.
fn zero_budget(len: u64) -> usize {
    len.min(ZERO_CHUNK) as usize
}

/// Run a checked request and reply; a panic in the engine becomes an `EIO` reply.
fn run(conn: &Conn, req: &Request, op: Op) {
    let r = catch_unwind(AssertUnwindSafe(|| execute(conn, req, op)));
    if r.is_err() {
        tracing::error!(cookie = req.cookie, command = ?req.command,
            "an NBD request panicked; answering EIO");
        conn.writer
            .error(req.cookie, NbdErrno::Io, "internal server error");
    }
}

fn execute(conn: &Conn, req: &Request, op: Op) {
    let export = &conn.export;
    let (off, len) = (req.offset, u64::from(req.length));
    let done = match op {
        Op::Read { df } => return read(conn, req, df),
        Op::BlockStatus { req_one } => return block_status(conn, req, req_one),
        Op::Write { data, fua } => {
            let written = export.write(&data, off);
            conn.payloads.give(data);
            written.and_then(|()| flush_if(export, fua))
        }
        Op::Flush => export.flush(),
        Op::Trim { fua } => {
            in_pieces(off, len, |o, l| export.discard(o, l)).and_then(|()| flush_if(export, fua))
        }
        // NO_HOLE needs nothing: the engine's write-zeroes never punches holes.
        Op::WriteZeroes { fua } => in_pieces(off, len, |o, l| export.write_zeroes(o, l))
            .and_then(|()| flush_if(export, fua)),
        Op::Cache => Ok(()),
    };
    match done {
        Ok(()) => conn.writer.ok(req.cookie),
        Err(e) => engine_error(conn, req, &e),
    }
}

fn engine_error(conn: &Conn, req: &Request, e: &fss_core::Error) {
    let errno = errno::from_engine(e);
    tracing::debug!(cookie = req.cookie, command = ?req.command, error = %e, "NBD request failed");
    conn.writer.error(req.cookie, errno, &e.to_string());
}

fn flush_if(export: &Export, fua: bool) -> fss_core::Result<()> {
    if fua {
        export.flush()
    } else {
        Ok(())
    }
}

fn in_pieces(
    off: u64,
    len: u64,
    mut f: impl FnMut(u64, u64) -> fss_core::Result<()>,
) -> fss_core::Result<()> {
    let end = off + len;
    let mut pos = off;
    while pos < end {
        let n = (end - pos).min(ZERO_CHUNK);
        f(pos, n)?;
        pos += n;
    }
    Ok(())
}

fn read(conn: &Conn, req: &Request, df: bool) {
    let export = &conn.export;
    let off = req.offset;
    let len = req.length;
    if !conn.writer.structured() {
        return with_read_buf(len as usize, |buf| match export.read(buf, off) {
            Ok(()) => conn.writer.simple_data(req.cookie, buf),
            Err(e) => engine_error(conn, req, &e),
        });
    }
    if len == 0 {
        conn.writer.chunks(req.cookie, &[Chunk::None]);
        return;
    }
    let layout = if !df && len >= HOLE_READ_MIN && matches!(export, Export::Volume(_)) {
        export
            .allocation(off, u64::from(len))
            .ok()
            .and_then(|raw| segments(&raw, off, u64::from(len)))
    } else {
        None
    };
    let layout = layout.unwrap_or_else(|| {
        vec![Extent {
            offset: off,
            len: u64::from(len),
            data: true,
        }]
    });
    let data_len: u64 = layout.iter().filter(|s| s.data).map(|s| s.len).sum();
    with_read_buf(data_len as usize, |buf| {
        read_segments(conn, req, &layout, buf);
    });
}

/// Read the data segments of `layout` one after another into `buf` (exactly their total
/// length) and reply with them as data chunks, the other segments as holes.
fn read_segments(conn: &Conn, req: &Request, layout: &[Extent], buf: &mut [u8]) {
    let export = &conn.export;
    let mut pos = 0usize;
    let mut parts = Vec::with_capacity(layout.len());
    for s in layout {
        if s.data {
            let n = s.len as usize;
            if let Err(e) = export.read(&mut buf[pos..pos + n], s.offset) {
                return engine_error(conn, req, &e);
            }
            parts.push((s.offset, Some(pos..pos + n)));
            pos += n;
        } else {
            parts.push((s.offset, None));
        }
    }
    let chunks: Vec<Chunk<'_>> = parts
        .iter()
        .zip(layout)
        .map(|((offset, range), s)| match range {
            Some(r) => Chunk::Data {
                offset: *offset,
                data: &buf[r.clone()],
            },
            None => Chunk::Hole {
                offset: *offset,
                len: s.len as u32,
            },
        })
        .collect();
    conn.writer.chunks(req.cookie, &chunks);
}

/// The data and hole segments of `[off, off + len)` from an allocation map, with short holes
/// folded into data; `None` if the map does not cover the range exactly.
fn segments(raw: &[Extent], off: u64, len: u64) -> Option<Vec<Extent>> {
    let mut out: Vec<Extent> = Vec::new();
    let mut pos = off;
    for e in raw {
        if e.offset != pos || e.len == 0 {
            return None;
        }
        let data = e.data || e.len < HOLE_CHUNK_MIN;
        match out.last_mut() {
            Some(last) if last.data == data => last.len += e.len,
            _ => out.push(Extent {
                offset: pos,
                len: e.len,
                data,
            }),
        }
        pos += e.len;
    }
    (pos == off + len).then_some(out)
}

fn block_status(conn: &Conn, req: &Request, req_one: bool) {
    let max = if req_one { 1 } else { MAX_DESCRIPTORS };
    let len = req.length.min(MAX_STATUS_LEN);
    let mut all = Vec::with_capacity(conn.contexts.len());
    for c in &conn.contexts {
        match meta_context::extents(c, &conn.export, req.offset, len, max) {
            Ok(d) => all.push((c.id(), d)),
            Err(e) => return engine_error(conn, req, &e),
        }
    }
    let chunks: Vec<Chunk<'_>> = all
        .iter()
        .map(|(id, d)| Chunk::BlockStatus {
            context: *id,
            extents: d,
        })
        .collect();
    conn.writer.chunks(req.cookie, &chunks);
}

mod by_ring;
mod check;
#[cfg(test)]
mod tests;

pub(crate) use check::{check, Op, Reject};
