//! A TLS connection that one reader and several writers share, as the plaintext socket is
//! shared through `try_clone`: no pump thread and no extra copy through a socket pair.
//!
//! A rustls connection cannot be split into halves, so its state sits under one mutex, held
//! only for the in-memory work (decrypting what was received, encrypting a piece of a reply),
//! never across a blocking socket call:
//! - the reader (one thread) receives ciphertext into its own buffer without the lock, then
//!   takes the lock to decrypt it;
//! - a writer takes the send lock (which orders records on the wire), encrypts up to
//!   [`WRITE_CHUNK`] bytes under the connection lock and hands the records to the socket
//!   without blocking ([`DirectSend`]); what the socket cannot take now is copied aside and
//!   sent, blocking, once the connection lock is released. The reader can thus always
//!   decrypt while a writer waits for a client that does not read (a client that sends a
//!   large write before reading its replies must not deadlock against its own replies).
//!
//! Lock order: `incoming`, then `outgoing`, then `conn`. Memory per connection is bounded:
//! [`READ_BUFFER`] of ciphertext in, rustls' own buffers (a record, and 16 KiB of decrypted
//! plaintext), and [`WRITE_CHUNK`] of ciphertext out. The socket keeps its timeouts: the
//! handshake deadline while negotiating, the reply timeout for writes after.

use rustix::net::{SendAncillaryBuffer, SendFlags};
use rustls::{ServerConfig, ServerConnection};
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Ciphertext received ahead of decryption, at most.
const READ_BUFFER: usize = 256 * 1024;

/// Plaintext encrypted per send, at most.
const WRITE_CHUNK: usize = 256 * 1024;

/// Ciphertext received but not yet decrypted.
struct Incoming {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Incoming {
    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Receive more from `tcp`; `Ok(0)` at the end of the stream.
    fn fill(&mut self, mut tcp: &TcpStream) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = loop {
            match tcp.read(&mut self.buf[self.end..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => break r?,
            }
        };
        self.end += n;
        Ok(n)
    }
}

struct Shared {
    tcp: TcpStream,
    incoming: Mutex<Incoming>,
    /// The ciphertext being sent; its lock orders the records on the wire.
    outgoing: Mutex<Vec<u8>>,
    conn: Mutex<ServerConnection>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One TLS connection; clones share it (one reader, any number of writers).
#[derive(Clone)]
pub(crate) struct TlsStream {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("tcp", &self.shared.tcp)
            .finish_non_exhaustive()
    }
}

/// Why a TLS handshake failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    /// rustls refused to start a connection.
    #[error("cannot start TLS: {0}")]
    Start(#[source] rustls::Error),
    /// The handshake failed or the stream broke during it.
    #[error("TLS handshake failed: {0}")]
    Failed(#[source] io::Error),
}

/// Run the server side of a TLS handshake on `tcp`, bounded by the socket's read timeout (and
/// by the server's handshake deadline, which shuts the socket down).
///
/// # Errors
/// The handshake failed (a bad certificate, garbage, the client left, a timeout).
pub(crate) fn accept(
    tcp: TcpStream,
    config: Arc<ServerConfig>,
) -> Result<TlsStream, HandshakeError> {
    let mut conn = ServerConnection::new(config).map_err(HandshakeError::Start)?;
    conn.set_buffer_limit(Some(WRITE_CHUNK));
    let mut sock = &tcp;
    while conn.is_handshaking() {
        match conn.complete_io(&mut sock) {
            Ok((0, 0)) if conn.is_handshaking() => {
                return Err(HandshakeError::Failed(io::ErrorKind::UnexpectedEof.into()))
            }
            Ok(_) => {}
            Err(e) => return Err(HandshakeError::Failed(e)),
        }
    }
    Ok(TlsStream {
        shared: Arc::new(Shared {
            tcp,
            incoming: Mutex::new(Incoming {
                buf: vec![0u8; READ_BUFFER].into_boxed_slice(),
                start: 0,
                end: 0,
            }),
            outgoing: Mutex::new(Vec::new()),
            conn: Mutex::new(conn),
        }),
    })
}

impl TlsStream {
    /// The socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        &self.shared.tcp
    }

    /// The subject common names of the client's certificate (empty without one).
    pub fn client_names(&self) -> Vec<String> {
        let conn = lock(&self.shared.conn);
        conn.peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| super::x509::subject_common_names(c))
            .unwrap_or_default()
    }

    /// The protocol version and cipher suite negotiated, for the log.
    pub fn suite(&self) -> String {
        let conn = lock(&self.shared.conn);
        match conn.negotiated_cipher_suite() {
            Some(s) => format!("{:?}", s.suite()),
            None => "unknown".to_string(),
        }
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.shared.tcp.shutdown(how)
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.shared.tcp.set_read_timeout(t)
    }

    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.shared.tcp.set_write_timeout(t)
    }

    /// Send what rustls has queued (an alert, a key update, a close_notify).
    fn send_queued(&self) -> io::Result<()> {
        let mut out = lock(&self.shared.outgoing);
        drain(&mut lock(&self.shared.conn), &mut out)?;
        send(&self.shared.tcp, &mut out)
    }

    /// Tell the client the stream ends here (best effort: it may be gone).
    pub fn close_notify(&self) {
        lock(&self.shared.conn).send_close_notify();
        let _ = self.send_queued();
    }
}

/// Move every record rustls has ready into `out`.
fn drain(conn: &mut ServerConnection, out: &mut Vec<u8>) -> io::Result<()> {
    while conn.wants_write() {
        conn.write_tls(out)?;
    }
    Ok(())
}

/// Records written into it go straight to the socket as far as it takes them without
/// blocking; the rest, and everything after, is appended to `spill`.
struct DirectSend<'a> {
    tcp: &'a TcpStream,
    spill: &'a mut Vec<u8>,
}

impl Write for DirectSend<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut sent = 0;
        if self.spill.is_empty() {
            let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
            sent = loop {
                let mut control = SendAncillaryBuffer::default();
                match rustix::net::sendmsg(self.tcp, bufs, &mut control, flags) {
                    Ok(n) => break n,
                    Err(rustix::io::Errno::AGAIN) => break 0,
                    Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(e.into()),
                }
            };
        }
        let mut skip = sent;
        for b in bufs {
            let b: &[u8] = b;
            if skip >= b.len() {
                skip -= b.len();
                continue;
            }
            self.spill.extend_from_slice(&b[skip..]);
            skip = 0;
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Send `out` whole, and empty it whatever happens (after an error the stream is broken).
fn send(mut tcp: &TcpStream, out: &mut Vec<u8>) -> io::Result<()> {
    let r = tcp.write_all(out);
    out.clear();
    r
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut incoming = lock(&self.shared.incoming);
        loop {
            let (got, queued) = {
                let mut conn = lock(&self.shared.conn);
                let got = decrypt(&mut conn, &mut incoming, buf);
                (got, conn.wants_write())
            };
            if queued {
                self.send_queued()?;
            }
            if let Some(r) = got {
                return r;
            }
            if incoming.fill(&self.shared.tcp)? == 0 {
                // The client closed the socket; a message cut short shows in its framing.
                return Ok(0);
            }
        }
    }
}

/// Plaintext from what was received: `Some` with bytes (or the end, or an error), `None` when
/// more ciphertext is needed.
fn decrypt(
    conn: &mut ServerConnection,
    incoming: &mut Incoming,
    buf: &mut [u8],
) -> Option<io::Result<usize>> {
    loop {
        match conn.reader().read(buf) {
            Ok(n) => return Some(Ok(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // The socket closed without a close_notify: an end like any other for NBD.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Some(Ok(0)),
            Err(e) => return Some(Err(e)),
        }
        if incoming.pending().is_empty() {
            return None;
        }
        let mut pending = incoming.pending();
        match conn.read_tls(&mut pending) {
            Ok(0) => return Some(Ok(0)),
            Ok(n) => incoming.start += n,
            Err(e) => return Some(Err(e)),
        }
        if let Err(e) = conn.process_new_packets() {
            return Some(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = lock(&self.shared.outgoing);
        let n = {
            let mut conn = lock(&self.shared.conn);
            let n = conn.writer().write(&buf[..buf.len().min(WRITE_CHUNK)])?;
            let mut direct = DirectSend {
                tcp: &self.shared.tcp,
                spill: &mut out,
            };
            while conn.wants_write() {
                conn.write_tls(&mut direct)?;
            }
            n
        };
        if !out.is_empty() {
            send(&self.shared.tcp, &mut out)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
