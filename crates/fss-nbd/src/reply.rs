//! The one writer side of a connection in transmission: every reply is written whole under a
//! mutex, so replies from different workers never interleave inside a message.
//!
//! A failed write marks the connection broken and shuts the socket down, which wakes the reader;
//! later replies are dropped. A write that makes no progress for the reply timeout (the client
//! is not reading its replies) fails too, so a stalled client releases its share of the
//! server's buffer budget instead of holding it for ever.

use crate::protocol::{self, Chunk, NbdErrno, REPLY_FLAG_DONE};
use crate::stream::Stream;
use std::io::{self, BufWriter, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Writes replies for one connection.
pub(crate) struct ReplyWriter {
    out: Mutex<BufWriter<Stream>>,
    broken: AtomicBool,
    structured: bool,
    /// The client, for the log.
    peer: String,
    /// The socket's write timeout, for the log.
    timeout: Option<Duration>,
}

impl ReplyWriter {
    /// Replies go to `stream` (whose write timeout is `timeout`) for the client `peer`;
    /// `structured` says whether structured replies were negotiated.
    pub fn new(stream: Stream, structured: bool, peer: &str, timeout: Option<Duration>) -> Self {
        ReplyWriter {
            out: Mutex::new(BufWriter::with_capacity(64 * 1024, stream)),
            broken: AtomicBool::new(false),
            structured,
            peer: peer.to_string(),
            timeout,
        }
    }

    /// Whether structured replies are in use.
    pub fn structured(&self) -> bool {
        self.structured
    }

    /// Whether a write to the client has failed.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    fn send(&self, f: impl FnOnce(&mut BufWriter<Stream>) -> io::Result<()>) {
        if self.is_broken() {
            return;
        }
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = f(&mut out).and_then(|()| out.flush()) {
            match (e.kind(), self.timeout) {
                (io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut, Some(t)) => {
                    tracing::warn!(
                        "NBD client {}: a reply could not be sent for {} (the client is not \
                         reading its replies); closing the connection",
                        self.peer,
                        crate::server::seconds(t)
                    );
                }
                _ => tracing::debug!(error = %e, peer = %self.peer,
                    "could not send a reply; closing the connection"),
            }
            self.broken.store(true, Ordering::Release);
            // Wake the reader; ignore errors (the socket may be gone already).
            let _ = out.get_ref().shutdown(Shutdown::Both);
        }
    }

    /// Success with no payload (any command but a read under structured replies).
    pub fn ok(&self, cookie: u64) {
        self.send(|w| w.write_all(&protocol::simple_reply(0, cookie)));
    }

    /// A failed request: an error chunk with a message under structured replies, else a simple
    /// reply with the error value.
    pub fn error(&self, cookie: u64, errno: NbdErrno, message: &str) {
        if self.structured {
            self.chunks(
                cookie,
                &[Chunk::Error {
                    errno,
                    message: message.trim(),
                }],
            );
        } else {
            self.send(|w| w.write_all(&protocol::simple_reply(errno.code(), cookie)));
        }
    }

    /// A successful simple read reply: header and data.
    pub fn simple_data(&self, cookie: u64, data: &[u8]) {
        self.send(|w| {
            w.write_all(&protocol::simple_reply(0, cookie))?;
            w.write_all(data)
        });
    }

    /// A structured reply made of `chunks`; the last one carries `NBD_REPLY_FLAG_DONE`.
    pub fn chunks(&self, cookie: u64, chunks: &[Chunk<'_>]) {
        self.send(|w| {
            let last = chunks.len().saturating_sub(1);
            for (i, c) in chunks.iter().enumerate() {
                let flags = if i == last { REPLY_FLAG_DONE } else { 0 };
                w.write_all(&c.encode_head(flags, cookie))?;
                w.write_all(c.bulk())?;
            }
            Ok(())
        });
    }

    /// Flush anything buffered and shut the socket down (the end of the connection).
    pub fn close(&self) {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = out.flush();
        out.get_ref().close_notify();
        let _ = out.get_ref().shutdown(Shutdown::Both);
    }
}
