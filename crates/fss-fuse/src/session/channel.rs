//! The `/dev/fuse` connection as this process uses it: requests are read by one thread at a
//! time (the leader; the others wait for the leader token), without blocking in `read(2)`, so
//! that a stop can wake every thread; replies are written by whichever thread served the
//! request.
//!
//! Why not blocking reads on several threads: a thread blocked in `read(2)` on `/dev/fuse` can
//! only be woken by a request, and a request it wakes for must then be answered by it, so a
//! session could not stop (and leave the connection to the next process) without unmounting.
//! Here the descriptor is non-blocking (`O_NONBLOCK` on its open file description, which the
//! next process shares and sets again), the leader waits in `poll(2)` on it and on an
//! `eventfd` that a stop writes, and only the leader polls, so a request wakes one thread.

use crate::dispatch::Answer;
use crate::wire::reply;
use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};
use rustix::fs::OFlags;
use rustix::io::Errno;
use std::io::{self, IoSlice};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

/// A connection to the kernel's FUSE device.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
    /// Readable once the session stops.
    wake: OwnedFd,
    /// Set by a stop, or when the connection ends (unmounted, aborted).
    stop: AtomicBool,
    /// Held by the thread that reads the next request.
    leader: Mutex<()>,
}

impl Channel {
    /// Use `fd` (a `/dev/fuse` descriptor of a mounted connection).
    ///
    /// # Errors
    /// The descriptor cannot be made non-blocking, or no eventfd can be made.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        let flags = rustix::fs::fcntl_getfl(&fd)?;
        rustix::fs::fcntl_setfl(&fd, flags | OFlags::NONBLOCK)?;
        let wake = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(Channel {
            fd,
            wake,
            stop: AtomicBool::new(false),
            leader: Mutex::new(()),
        })
    }

    /// Read the next request into `buf`; `None` once the session stops or the connection
    /// ends. Only one thread reads at a time.
    pub fn receive(&self, buf: &mut [u8]) -> Option<usize> {
        let _leader = self.leader.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if self.stop.load(Ordering::Acquire) {
                return None;
            }
            match rustix::io::read(&self.fd, &mut *buf) {
                Ok(n) => return Some(n),
                Err(Errno::AGAIN) => self.wait(),
                // Interrupted, or the request went away while it was being read: read again.
                Err(Errno::INTR | Errno::NOENT) => {}
                Err(Errno::NODEV | Errno::CONNABORTED) => {
                    tracing::debug!("the FUSE connection ended (unmounted or aborted)");
                    self.stop();
                    return None;
                }
                Err(e) => {
                    tracing::error!(error = %e, "reading /dev/fuse failed; the session stops");
                    self.stop();
                    return None;
                }
            }
        }
    }

    /// Wait until a request may be there or the session stops.
    fn wait(&self) {
        let mut fds = [
            PollFd::new(&self.fd, PollFlags::IN),
            PollFd::new(&self.wake, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => {
                tracing::warn!(error = %e, "poll on /dev/fuse failed");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }

    /// Stop every thread once it has answered the request it is serving; requests not yet
    /// read stay queued in the kernel for whoever reads the connection next.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        if let Err(e) = rustix::io::write(&self.wake, &1u64.to_ne_bytes()) {
            tracing::warn!(error = %e, "cannot wake the FUSE serving threads");
        }
    }

    /// Send the answer to request `unique` (echoed exactly, resend bit included).
    pub fn send(&self, unique: u64, answer: &Answer<'_>) {
        let (error, body): (i32, &[u8]) = match answer {
            Answer::Nothing => return,
            Answer::Done => (0, &[]),
            Answer::Error(e) => (-e.raw_os_error(), &[]),
            Answer::Body(b) => (0, b),
            Answer::Data(d) => (0, d),
        };
        let header = reply::out_header(body.len(), error, unique);
        let iov = [IoSlice::new(&header), IoSlice::new(body)];
        match rustix::io::writev(&self.fd, &iov) {
            Ok(_) => {}
            // The request was interrupted or the connection aborted meanwhile: nobody waits.
            Err(Errno::NOENT) => tracing::debug!(unique, "a FUSE request went away unanswered"),
            Err(e) => tracing::warn!(unique, error = %e, "cannot send a FUSE reply"),
        }
    }

    /// Write `FUSE_NOTIFY_RESEND`: the kernel queues again every request that was read from
    /// this connection but not answered (by a process that died), ahead of new ones.
    ///
    /// # Errors
    /// The kernel refused the notification (EINVAL before Linux 6.9).
    pub fn notify_resend(&self) -> io::Result<()> {
        rustix::io::write(&self.fd, &reply::notify_resend())?;
        Ok(())
    }
}
