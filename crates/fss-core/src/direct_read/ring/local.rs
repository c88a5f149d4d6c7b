//! An io_uring owned by the thread that uses it: the reads it queues, and its waits for them and
//! for a socket to become readable, all on that thread.
//!
//! Why: a connection's reader that hands its small reads to a [`super::ReadRing`] thread still
//! pays a wake-up for each batch, one thread to the other. With the ring on the reader itself
//! (as qemu-nbd's one thread per connection does with Linux AIO), the reader sleeps in one place
//! for both its socket and its reads, and the kernel runs their completions when it waits
//! (`DEFER_TASKRUN`); `TASKRUN_FLAG` lets it see finished reads without a system call when it
//! has not waited.

use super::{complete, RingRead, RING_ENTRIES};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// The most reads in the kernel's hands at once, leaving room for one wait entry.
const MAX_IN_FLIGHT: usize = RING_ENTRIES as usize - 1;

/// The `user_data` of an auxiliary entry (a poll, a wake-up read): not a read's slot.
pub(super) const AUX: u64 = u64::MAX;

/// A ring used only by the thread that made it (not `Send`: the kernel allows one issuer).
pub struct LocalRing {
    ring: io_uring::IoUring,
    /// Reads in the kernel's hands, by `user_data`.
    slots: Vec<Option<RingRead>>,
    free: Vec<usize>,
    /// Reads waiting for room in the ring.
    waiting: VecDeque<RingRead>,
    /// Whether an auxiliary entry (the poll of [`LocalRing::wait_readable`]) is in flight.
    aux_armed: bool,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl std::fmt::Debug for LocalRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRing")
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl LocalRing {
    /// A ring for the calling thread; `None` when io_uring is unavailable here (disabled by
    /// `kernel.io_uring_disabled`, refused by a seccomp filter, or older than Linux 6.1).
    #[must_use]
    pub fn new() -> Option<LocalRing> {
        Self::build().ok()
    }

    pub(super) fn build() -> io::Result<LocalRing> {
        let ring = io_uring::IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .build(RING_ENTRIES)?;
        Ok(LocalRing {
            ring,
            slots: Vec::new(),
            free: Vec::new(),
            waiting: VecDeque::new(),
            aux_armed: false,
            _not_send: std::marker::PhantomData,
        })
    }

    /// Reads queued and not yet completed.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len() + self.waiting.len()
    }

    /// Whether any read is queued and not yet completed.
    #[must_use]
    pub fn busy(&self) -> bool {
        self.in_flight() > 0
    }

    /// Queue `read`; it is handed to the kernel at the next [`LocalRing::progress`] or wait,
    /// and its completion runs on this thread in one of them.
    pub fn push(&mut self, read: RingRead) {
        if self.slots.len() - self.free.len() < MAX_IN_FLIGHT {
            self.queue_read(read);
        } else {
            self.waiting.push_back(read);
        }
    }

    /// Hand queued reads to the kernel and complete the finished ones, without waiting.
    pub fn progress(&mut self) {
        self.refill();
        if !self.ring.submission().is_empty() || self.ring.submission().taskrun() {
            self.enter(0);
        }
        self.reap();
    }

    /// Wait until at least one read completes (at once if none is queued).
    pub fn wait_any(&mut self) {
        let before = self.in_flight();
        while before > 0 && self.in_flight() == before {
            self.refill();
            self.enter(1);
            self.reap();
        }
    }

    /// Complete reads until `fd` is readable (or in error, which the caller's read then
    /// reports): the thread's one place to sleep while reads are in flight. `after_reap` runs
    /// after each batch of completions, for work they left to the caller (which may be what
    /// the peer waits for before it sends anything).
    #[allow(unsafe_code)]
    pub fn wait_readable(&mut self, fd: BorrowedFd<'_>, mut after_reap: impl FnMut()) {
        let poll = io_uring::opcode::PollAdd::new(
            io_uring::types::Fd(fd.as_raw_fd()),
            u32::from(rustix::event::PollFlags::IN.bits()),
        )
        .build()
        .user_data(AUX);
        if !self.aux_armed {
            self.refill();
            // SAFETY: a poll holds no buffer; the fd is the caller's and outlives this wait,
            // which returns only once the poll completed (it is one-shot).
            if unsafe { self.push_entry(&poll) } {
                self.aux_armed = true;
            } else {
                return;
            }
        }
        while self.aux_armed {
            self.refill();
            self.enter(1);
            self.reap();
            after_reap();
        }
    }

    /// Complete every read queued; returns with none in the kernel's hands.
    pub fn finish(&mut self) {
        while self.busy() {
            self.wait_any();
        }
    }

    /// Push `entry` to the submission queue; `false` if it is full.
    ///
    /// # Safety
    /// Whatever `entry` points to must stay valid until its completion is reaped.
    #[allow(unsafe_code)]
    pub(super) unsafe fn push_entry(&mut self, entry: &io_uring::squeue::Entry) -> bool {
        // SAFETY: passed on to the caller.
        unsafe { self.ring.submission().push(entry) }.is_ok()
    }

    /// Submit what is queued, and wait for `wait` completions.
    pub(super) fn enter(&mut self, wait: usize) {
        match self.ring.submit_and_wait(wait) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // EBUSY: completions to reap first. Anything else: try again after a pause
                // rather than spin, without leaving a read in flight behind.
                tracing::debug!(error = %e, "io_uring_enter failed on a read ring");
                if e.raw_os_error() != Some(rustix::io::Errno::BUSY.raw_os_error()) {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
    }

    /// Move waiting reads into the ring while it has room.
    fn refill(&mut self) {
        while self.slots.len() - self.free.len() < MAX_IN_FLIGHT {
            let Some(r) = self.waiting.pop_front() else {
                break;
            };
            self.queue_read(r);
        }
    }

    #[allow(unsafe_code)]
    fn queue_read(&mut self, mut r: RingRead) {
        let len = u32::try_from(r.buf.len()).unwrap_or(u32::MAX);
        let idx = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let entry =
            io_uring::opcode::Read::new(io_uring::types::Fd(r.read.fd()), r.buf.as_mut_ptr(), len)
                .offset(r.read.offset())
                .build()
                .user_data(idx as u64);
        // SAFETY: the buffer is the read's, kept in `slots` (its heap memory does not move)
        // until the completion with this `user_data` is reaped; the file stays open while the
        // `DirectRead` holds its export; the ring is not dropped with a read in flight.
        if unsafe { self.push_entry(&entry) } {
            self.slots[idx] = Some(r);
        } else {
            // The queue holds at most what the ring has room for: not expected. Reported as a
            // short read, which `finish` redoes the engine's way.
            self.free.push(idx);
            complete(r, Ok(0));
        }
    }

    /// Complete the reads whose completions are in; returns how many auxiliary entries
    /// completed.
    pub(super) fn reap(&mut self) -> usize {
        let done: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        let mut aux = 0;
        for (user_data, result) in done {
            if user_data == AUX {
                self.aux_armed = false;
                aux += 1;
                continue;
            }
            let Ok(idx) = usize::try_from(user_data) else {
                continue;
            };
            let Some(r) = self.slots.get_mut(idx).and_then(Option::take) else {
                continue;
            };
            self.free.push(idx);
            let read = usize::try_from(result).map_err(|_| io::Error::from_raw_os_error(-result));
            complete(r, read);
        }
        aux
    }

    /// Mark an auxiliary entry as in flight (for [`super::ReadRing`]'s wake-up read).
    pub(super) fn set_aux_armed(&mut self, armed: bool) {
        self.aux_armed = armed;
    }

    /// Whether an auxiliary entry is in flight.
    pub(super) fn aux_armed(&self) -> bool {
        self.aux_armed
    }

    /// Reads in the kernel's hands (not counting those waiting for room).
    pub(super) fn in_kernel(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

impl Drop for LocalRing {
    fn drop(&mut self) {
        // The kernel must not write into a buffer freed with its slot.
        self.finish();
    }
}
