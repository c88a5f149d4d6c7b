//! The one writer side of a connection in transmission: every reply is written whole under a
//! mutex, so replies from different workers never interleave inside a message.
//!
//! A failed write marks the connection broken and shuts the socket down, which wakes the reader;
//! later replies are dropped. A write that makes no progress for the reply timeout (the client
//! is not reading its replies) fails too, so a stalled client releases its share of the
//! server's buffer budget instead of holding it for ever.

use crate::protocol::{self, Chunk, NbdErrno, REPLY_FLAG_DONE};
use crate::stream::Stream;
use std::io::{self, BufWriter, IoSlice, Write};
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
        self.send_then(true, f);
    }

    /// Write a reply, and flush it unless `flush` is false (the caller flushes soon, with
    /// [`ReplyWriter::flush`]).
    fn send_then(&self, flush: bool, f: impl FnOnce(&mut BufWriter<Stream>) -> io::Result<()>) {
        if self.is_broken() {
            return;
        }
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let sent = f(&mut out).and_then(|()| if flush { out.flush() } else { Ok(()) });
        if let Err(e) = sent {
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

    /// Whether a reply of `len` bytes can be written now without waiting for the writer or,
    /// most likely, for the client (see [`Stream::reply_room`]; replies buffered and not yet
    /// flushed count as sent).
    pub fn has_room(&self, len: usize) -> bool {
        match self.out.try_lock() {
            Ok(out) => out.get_ref().reply_room(len + out.buffer().len()),
            Err(_) => false,
        }
    }

    /// A successful read's reply (a data chunk, or a simple reply), left in the buffer: the
    /// caller answers several reads that completed together and then calls
    /// [`ReplyWriter::flush`] once, so the client reads them in one wake-up. A reply larger
    /// than the buffer goes out at once.
    pub fn read_data_unflushed(&self, cookie: u64, offset: u64, data: &[u8]) {
        let head = if self.structured {
            Chunk::Data { offset, data }.encode_head(REPLY_FLAG_DONE, cookie)
        } else {
            protocol::simple_reply(0, cookie).to_vec()
        };
        self.send_then(false, |w| {
            write_reply(w, &mut [IoSlice::new(&head), IoSlice::new(data)])
        });
    }

    /// Send whatever replies are buffered.
    pub fn flush(&self) {
        self.send(|_| Ok(()));
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
        let head = protocol::simple_reply(0, cookie);
        self.send(|w| write_reply(w, &mut [IoSlice::new(&head), IoSlice::new(data)]));
    }

    /// A structured reply made of `chunks`; the last one carries `NBD_REPLY_FLAG_DONE`.
    pub fn chunks(&self, cookie: u64, chunks: &[Chunk<'_>]) {
        let last = chunks.len().saturating_sub(1);
        let heads: Vec<Vec<u8>> = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| c.encode_head(if i == last { REPLY_FLAG_DONE } else { 0 }, cookie))
            .collect();
        let mut slices: Vec<IoSlice<'_>> = heads
            .iter()
            .zip(chunks)
            .flat_map(|(h, c)| [IoSlice::new(h), IoSlice::new(c.bulk())])
            .filter(|s| !s.is_empty())
            .collect();
        self.send(|w| write_reply(w, &mut slices));
    }

    /// Flush anything buffered and shut the socket down (the end of the connection).
    pub fn close(&self) {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = out.flush();
        out.get_ref().close_notify();
        let _ = out.get_ref().shutdown(Shutdown::Both);
    }
}

/// Write a reply. One larger than the buffer goes straight to the socket as one `writev` of
/// headers and data, instead of a write of the header and then one of the data: a segment and
/// a client wake-up less per large read reply. (`BufWriter` cannot do that itself here: it
/// writes vectored only to a writer that says it can, which a stable `Write` impl such as
/// `Stream`'s cannot say.)
fn write_reply<W: Write>(w: &mut BufWriter<W>, bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    if total >= w.capacity() {
        w.flush()?;
        write_all_vectored(w.get_mut(), bufs)
    } else {
        write_all_vectored(w, bufs)
    }
}

/// Write every byte of `bufs`, resuming after short writes.
fn write_all_vectored(w: &mut impl Write, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `max` bytes per call, vectored or not.
    struct Trickle {
        got: Vec<u8>,
        max: usize,
        calls: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(b)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.max - n);
                self.got.extend_from_slice(&b[..take]);
                n += take;
                if n == self.max {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn vectored_writes_survive_short_writes_at_every_split() {
        let head: Vec<u8> = (0..16).collect();
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let want: Vec<u8> = head.iter().chain(&data).copied().collect();
        for max in [1, 3, 15, 16, 17, 999, 1016, 5000] {
            let mut t = Trickle {
                got: Vec::new(),
                max,
                calls: 0,
            };
            let mut bufs = [IoSlice::new(&[]), IoSlice::new(&head), IoSlice::new(&data)];
            write_all_vectored(&mut t, &mut bufs).unwrap();
            assert_eq!(t.got, want, "max {max}");
            assert_eq!(t.calls, want.len().div_ceil(max), "max {max}");
        }
    }

    #[test]
    fn a_large_reply_is_one_write_and_a_small_one_is_buffered() {
        let sink = Trickle {
            got: Vec::new(),
            max: usize::MAX,
            calls: 0,
        };
        let mut w = BufWriter::with_capacity(64, sink);
        let head = [1u8; 16];
        write_reply(&mut w, &mut [IoSlice::new(&head), IoSlice::new(&[3u8; 8])]).unwrap();
        assert_eq!(w.get_ref().calls, 0, "small replies wait in the buffer");
        write_reply(
            &mut w,
            &mut [IoSlice::new(&head), IoSlice::new(&[2u8; 100])],
        )
        .unwrap();
        assert_eq!(
            w.get_ref().calls,
            2,
            "the buffered reply, then the large one whole"
        );
        assert_eq!(w.get_ref().got.len(), 24 + 116);
        assert_eq!(&w.get_ref().got[24..40], &head);
    }
}
