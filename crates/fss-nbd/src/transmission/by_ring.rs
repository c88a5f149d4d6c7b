//! Small reads through io_uring: on the connection's reader thread itself for a plain socket,
//! on a ring thread of the connection's for TLS.
//!
//! Why the reader: at queue depth 16, handing each batch of 4 KiB reads to another thread cost
//! a wake-up each way (docs/PERFORMANCE.md); qemu-nbd's one thread per connection sleeps in one
//! place for its socket and its reads. With a [`LocalRing`] the reader does the same: when it
//! has no whole request buffered it sleeps in the ring until the socket is readable, completing
//! reads (and writing their replies) meanwhile. TLS keeps the ring thread: rustls may hold
//! plaintext that no poll of the socket would announce.
//!
//! The reader must never block on a reply (see `serve`), so a completion whose reply might not
//! go into the socket at once hands it to the pool; and it never waits for budget that only its
//! own ring's reads would free without completing those first.

use super::Conn;
use crate::pool::{Budget, Job, Permit, Pool};
use crate::protocol::{Chunk, Request, REQUEST_LEN};
use crate::stream::Stream;
use fss_core::device::AlignedBuf;
use fss_core::direct_read::ring::{LocalRing, ReadRing, RingRead};
use std::io::BufReader;
use std::sync::{Arc, Mutex, PoisonError};

/// Replies of a local ring's completions that the reader could not write without blocking.
type Deferred = Arc<Mutex<Vec<Job>>>;

/// The connection's ring, started on its first read that can use it.
pub(super) enum RingState {
    NotStarted,
    Thread(ReadRing),
    /// Boxed: a ring's state is large beside the other variants.
    Local(Box<LocalRing>, Deferred, Arc<Conn>),
    Unavailable,
}

impl RingState {
    /// Before the reader reads the socket: hand queued reads to the kernel, complete those
    /// done, and, with reads in flight and no whole request buffered, sleep until the socket is
    /// readable (completing reads meanwhile).
    pub fn before_read(&mut self, rd: &BufReader<Stream>, pool: &mut Pool) {
        let RingState::Local(ring, deferred, conn) = self else {
            return;
        };
        ring.progress();
        if ring.busy() && rd.buffer().len() < REQUEST_LEN {
            ring.wait_readable(rd.get_ref().fd(), || after_reap(conn, deferred, pool));
        }
        after_reap(conn, deferred, pool);
    }

    /// A permit for a request of `bytes`. With reads of its own in flight, the reader completes
    /// them while it waits: their permits may be what it waits for.
    pub fn acquire(&mut self, budget: &Arc<Budget>, bytes: usize, pool: &mut Pool) -> Permit {
        if let RingState::Local(ring, deferred, conn) = self {
            while ring.busy() {
                if let Some(p) = budget.try_acquire(bytes) {
                    return p;
                }
                ring.wait_any();
                after_reap(conn, deferred, pool);
            }
        }
        budget.acquire(bytes)
    }

    /// Complete every read queued (the end of the connection); their replies are written
    /// before this returns, or queued to `pool`, which the caller finishes next.
    pub fn finish(self, pool: &mut Pool) {
        match self {
            RingState::Thread(r) => r.finish(),
            RingState::Local(mut r, deferred, conn) => {
                r.finish();
                after_reap(&conn, &deferred, pool);
            }
            RingState::NotStarted | RingState::Unavailable => {}
        }
    }
}

/// After completions ran on the reader: send the replies they left buffered (one wake-up of
/// the client for all of them), and give the pool those they could not write.
fn after_reap(conn: &Conn, deferred: &Deferred, pool: &mut Pool) {
    conn.writer.flush();
    hand_over(deferred, pool);
}

fn hand_over(deferred: &Deferred, pool: &mut Pool) {
    let jobs: Vec<Job> =
        std::mem::take(&mut *deferred.lock().unwrap_or_else(PoisonError::into_inner));
    for j in jobs {
        pool.submit(j);
    }
}

/// Hand a small read to the connection's ring if the engine allows a direct read of it (see
/// `fss_core::direct_read::ring` for why); otherwise give the permit back, for the pool.
pub(super) fn by_ring(
    conn: &Arc<Conn>,
    ring: &mut RingState,
    rd: &BufReader<Stream>,
    thread_name: &str,
    req: &Request,
    permit: Permit,
) -> Option<Permit> {
    if let RingState::NotStarted = ring {
        *ring = if rd.get_ref().is_tls() {
            let name = thread_name.replacen("nbd-io", "nbd-ring", 1);
            ReadRing::start(name).map_or(RingState::Unavailable, RingState::Thread)
        } else {
            LocalRing::new().map_or(RingState::Unavailable, |r| {
                RingState::Local(Box::new(r), Deferred::default(), Arc::clone(conn))
            })
        };
    }
    if !matches!(ring, RingState::Thread(_) | RingState::Local(..)) {
        return Some(permit);
    }
    let buf = conn.payloads.take(req.length as usize);
    let Some(read) = conn.export.direct_read(req.offset, &buf) else {
        conn.payloads.give(buf);
        return Some(permit);
    };
    let (c, req) = (Arc::clone(conn), *req);
    let reply = move |buf: AlignedBuf, outcome, flush| {
        read_reply(&c, &req, &buf, outcome, flush);
        c.payloads.give(buf);
        drop(permit);
    };
    match ring {
        RingState::Thread(r) => r.submit(RingRead {
            read,
            buf,
            done: Box::new(move |buf, outcome| reply(buf, outcome, true)),
        }),
        RingState::Local(r, deferred, _) => {
            let (deferred, c) = (Arc::clone(deferred), Arc::clone(conn));
            r.push(RingRead {
                read,
                buf,
                done: Box::new(move |buf, outcome| {
                    // Header and chunk header, generously.
                    if c.writer.has_room(buf.len() + 64) {
                        // Flushed by `after_reap`, with the others that completed together.
                        reply(buf, outcome, false);
                    } else {
                        let job: Job = Box::new(move || reply(buf, outcome, true));
                        deferred
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(job);
                    }
                }),
            });
        }
        // Not reached (no ring returned above); read here rather than drop the request: a
        // short read is redone the engine's way.
        RingState::NotStarted | RingState::Unavailable => {
            let mut buf = buf;
            let outcome = read.finish(&mut buf, Ok(0));
            reply(buf, outcome, true);
        }
    }
    None
}

/// The reply to a read of `buf` that a ring finished; a successful one stays in the writer's
/// buffer unless `flush`.
fn read_reply(conn: &Conn, req: &Request, buf: &[u8], outcome: fss_core::Result<()>, flush: bool) {
    match outcome {
        Ok(()) if !flush => conn.writer.read_data_unflushed(req.cookie, req.offset, buf),
        Ok(()) if conn.writer.structured() => conn.writer.chunks(
            req.cookie,
            &[Chunk::Data {
                offset: req.offset,
                data: buf,
            }],
        ),
        Ok(()) => conn.writer.simple_data(req.cookie, buf),
        Err(e) => super::engine_error(conn, req, &e),
    }
}
