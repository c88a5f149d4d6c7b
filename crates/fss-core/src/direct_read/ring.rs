//! Direct reads in flight together from one thread (io_uring), each finished by the engine and
//! handed to its caller's completion there.
//!
//! Why: at queue depth 16, a 4 KiB read on a thread of its own cost about four context
//! switches (the hand-off to the thread, its wait for the disk, its wake-up, its return to
//! idle): over NBD, 180k switches a second at 45k IOPS with both cores busy, where qemu-nbd's
//! one thread with Linux AIO made 15k at 60k IOPS (docs/PERFORMANCE.md). A front-end queues
//! the read here instead; the ring's thread hands everything queued to the kernel at once and
//! sleeps until anything completes, and the kernel runs each completion's work on that thread
//! when it waits (`IORING_SETUP_DEFER_TASKRUN`), so it wakes once for many reads.
//!
//! Hand-written on the io-uring crate: the runtimes that wrap io_uring (tokio-uring, glommio)
//! would own the front-ends' threads, which are blocking threads throughout.

use super::DirectRead;
use crate::device::AlignedBuf;
use crate::error::{Error, ErrorKind, Result};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

/// Entries of a ring (and twice as many completions).
const RING_ENTRIES: u32 = 256;

/// The most reads in the kernel's hands at once: the ring's entries, but for the wake-up read.
/// More wait in the queue (callers bound what they queue: NBD by its per-connection budget,
/// FUSE by the kernel's `max_background`).
const MAX_IN_FLIGHT: usize = RING_ENTRIES as usize - 1;

/// What a ring read's caller is told: the buffer, and whether it holds the bytes asked for.
pub type Completion = Box<dyn FnOnce(AlignedBuf, Result<()>) + Send>;

/// One read for a [`ReadRing`].
pub struct RingRead {
    /// The read, from [`crate::export::Export::direct_read`].
    pub read: DirectRead,
    /// What it fills: the buffer given to `direct_read`, of the read's length.
    pub buf: AlignedBuf,
    /// Called on the ring's thread once the read is finished ([`DirectRead::finish`]).
    pub done: Completion,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the queue consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Default)]
struct Queue {
    /// Queued and not yet handed to the kernel.
    reads: Vec<RingRead>,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// An eventfd: the ring's thread keeps a read of it in flight, so a write wakes it.
    wake: OwnedFd,
    /// Set by the ring's thread before it sleeps, cleared by whoever wakes it.
    sleeping: AtomicBool,
}

impl Shared {
    fn wake(&self) {
        // A failed write leaves the counter as it was: the thread is then awake already, or
        // the counter is full, which wakes it too.
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }
}

/// A thread that runs direct reads through its own io_uring.
pub struct ReadRing {
    shared: Arc<Shared>,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for ReadRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadRing").finish_non_exhaustive()
    }
}

impl ReadRing {
    /// Start the ring's thread, named `name`. `None` when io_uring is unavailable here
    /// (disabled by `kernel.io_uring_disabled`, refused by a seccomp filter, or too old for
    /// `DEFER_TASKRUN`, Linux 6.1): the caller reads as before.
    #[must_use]
    pub fn start(name: String) -> Option<ReadRing> {
        let wake = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).ok()?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake,
            sleeping: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::sync_channel(1);
        let s = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                // Made on this thread: with DEFER_TASKRUN only the ring's one submitter runs
                // its completions, and only when it waits for them.
                match LocalRing::build() {
                    Ok(ring) => {
                        let _ = tx.send(Ok(()));
                        Reaper::new(ring, &s).run();
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })
            .ok()?;
        match rx.recv() {
            Ok(Ok(())) => Some(ReadRing {
                shared,
                handle: Mutex::new(Some(handle)),
            }),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "no io_uring here: reads run on their own threads");
                let _ = handle.join();
                None
            }
            Err(_) => {
                let _ = handle.join();
                None
            }
        }
    }

    /// Queue `read`. After [`ReadRing::finish`] it is completed at once, on this thread, with
    /// a `Busy` error.
    pub fn submit(&self, read: RingRead) {
        let mut q = lock(&self.shared.queue);
        if q.closed {
            drop(q);
            let e = Error::new(
                ErrorKind::Busy,
                "read",
                "a read ring",
                "the ring was finished (the front-end is stopping); read again",
            );
            (read.done)(read.buf, Err(e));
            return;
        }
        q.reads.push(read);
        drop(q);
        // Only a sleeping thread needs the system call: if it set `sleeping` before this read
        // was queued, its wake-up read is in flight and this write ends its sleep; if after,
        // it looks at the queue again before it sleeps.
        if self.shared.sleeping.swap(false, Ordering::SeqCst) {
            self.shared.wake();
        }
    }

    /// Take no more reads, complete every one taken, and stop the thread.
    pub fn finish(&self) {
        lock(&self.shared.queue).closed = true;
        self.shared.wake();
        if let Some(h) = lock(&self.handle).take() {
            if h.join().is_err() {
                tracing::error!("a read ring's thread panicked");
            }
        }
    }
}

impl Drop for ReadRing {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The ring thread's state.
struct Reaper<'a> {
    ring: LocalRing,
    shared: &'a Shared,
    /// Where the wake-up read puts the eventfd's counter.
    wake_buf: Box<[u8; 8]>,
}

impl<'a> Reaper<'a> {
    fn new(ring: LocalRing, shared: &'a Shared) -> Self {
        Reaper {
            ring,
            shared,
            wake_buf: Box::new([0; 8]),
        }
    }

    /// Until finished with nothing in flight: hand queued reads to the kernel, sleep until
    /// something completes or is queued, complete what did. Returns only with nothing in the
    /// kernel's hands (their buffers are this thread's).
    fn run(mut self) {
        loop {
            let (reads, closed) = {
                let mut q = lock(&self.shared.queue);
                let room = MAX_IN_FLIGHT
                    .saturating_sub(self.ring.in_kernel())
                    .min(q.reads.len());
                (q.reads.drain(..room).collect::<Vec<_>>(), q.closed)
            };
            for r in reads {
                self.ring.push(r);
            }
            if closed && !self.ring.busy() && lock(&self.shared.queue).reads.is_empty() {
                break;
            }
            if !self.ring.aux_armed() {
                self.arm_wake();
            }
            // Sleep (wait for a completion: a read, or the wake-up read) only with nothing
            // queued that fits; a read queued after this look finds `sleeping` set and wakes
            // us.
            self.shared.sleeping.store(true, Ordering::SeqCst);
            let wait =
                lock(&self.shared.queue).reads.is_empty() || self.ring.in_kernel() >= MAX_IN_FLIGHT;
            self.ring.enter(usize::from(wait));
            self.shared.sleeping.store(false, Ordering::SeqCst);
            self.ring.reap();
        }
        // The wake-up read writes into `wake_buf`: end it before both go.
        if self.ring.aux_armed() {
            self.shared.wake();
            while self.ring.aux_armed() {
                self.ring.enter(1);
                self.ring.reap();
            }
        }
    }

    #[allow(unsafe_code)]
    fn arm_wake(&mut self) {
        let entry = io_uring::opcode::Read::new(
            io_uring::types::Fd(self.shared.wake.as_raw_fd()),
            self.wake_buf.as_mut_ptr(),
            8,
        )
        .build()
        .user_data(local::AUX);
        // SAFETY: `wake_buf` (boxed: it does not move) and the eventfd live as long as this
        // value, and `run` returns only after this read completed.
        let armed = unsafe { self.ring.push_entry(&entry) };
        self.ring.set_aux_armed(armed);
    }
}

/// Finish a read whose I/O ended with `io`, and hand it to its completion. A panic in either
/// stays on this read: the engine's becomes an error for the completion.
fn complete(r: RingRead, io: io::Result<usize>) {
    let RingRead {
        read,
        mut buf,
        done,
    } = r;
    let outcome =
        catch_unwind(AssertUnwindSafe(|| read.finish(&mut buf, io))).unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Io,
                "read",
                "a ring read",
                "finishing it panicked (a bug; see the log)",
            ))
        });
    if catch_unwind(AssertUnwindSafe(|| done(buf, outcome))).is_err() {
        tracing::error!("a ring read's completion panicked");
    }
}

mod local;
#[cfg(test)]
mod tests;

pub use local::LocalRing;
