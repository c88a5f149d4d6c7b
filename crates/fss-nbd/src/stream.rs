//! One connected socket, unix, TCP or TLS over TCP, behind one type.

use crate::tls::stream::TlsStream;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// A connected client socket.
#[derive(Debug)]
pub(crate) enum Stream {
    /// A unix-domain stream.
    Unix(UnixStream),
    /// A TCP stream (Nagle's algorithm off, as the protocol asks).
    Tcp(TcpStream),
    /// TLS over a TCP stream, after `NBD_OPT_STARTTLS`.
    Tls(TlsStream),
}

impl Stream {
    /// Another handle on the same socket.
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Tls(s) => Stream::Tls(s.clone()),
        })
    }

    /// Shut down one or both directions (wakes a thread blocked reading it).
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.shutdown(how),
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Tls(s) => s.shutdown(how),
        }
    }

    /// The socket (under TLS, the TCP socket).
    pub fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Unix(s) => s.as_fd(),
            Stream::Tcp(s) => s.as_fd(),
            Stream::Tls(s) => s.tcp().as_fd(),
        }
    }

    /// Whether a reply of `len` bytes can be written now without blocking: the client has
    /// consumed (unix) or acknowledged (TCP) every byte sent to it so far, and `len` is at most
    /// half the socket's send buffer. An error counts as "no", the cautious answer.
    pub fn reply_fits(&self, len: usize) -> bool {
        let fd = self.fd();
        let room = rustix::net::sockopt::socket_send_buffer_size(fd).unwrap_or(0) / 2;
        len <= room && unsent_bytes(fd).is_ok_and(|n| n == 0)
    }

    /// Whether a reply of `len` bytes would, most likely, go into the socket without blocking
    /// even with replies still unread by the client: what is queued plus `len` is at most half
    /// the send buffer (the kernel counts its own overhead against the buffer too). An error
    /// counts as "no".
    pub fn reply_room(&self, len: usize) -> bool {
        let fd = self.fd();
        let room = rustix::net::sockopt::socket_send_buffer_size(fd).unwrap_or(0) / 2;
        unsent_bytes(fd).is_ok_and(|n| n.saturating_add(len) <= room)
    }

    /// Whether this is a TLS stream (whose plaintext rustls may hold without the socket being
    /// readable).
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// Whether bytes the client sent wait unread in the socket (for TLS: encrypted bytes;
    /// plaintext rustls already holds is not seen). An error counts as "yes", the cautious
    /// answer for the caller, which only skips an optimisation then.
    pub fn has_pending(&self) -> bool {
        let n = match self {
            Stream::Unix(s) => rustix::io::ioctl_fionread(s),
            Stream::Tcp(s) => rustix::io::ioctl_fionread(s),
            Stream::Tls(s) => rustix::io::ioctl_fionread(s.tcp()),
        };
        n.map_or(true, |n| n > 0)
    }

    /// Tell a TLS client the stream ends here (best effort; nothing to do in plaintext).
    pub fn close_notify(&self) {
        if let Stream::Tls(s) = self {
            s.close_notify();
        }
    }

    /// Limit how long a read may block (`None`: forever).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Tls(s) => s.set_read_timeout(t),
        }
    }

    /// Limit how long a write may block without progress (`None`: forever).
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_write_timeout(t),
            Stream::Tcp(s) => s.set_write_timeout(t),
            Stream::Tls(s) => s.set_write_timeout(t),
        }
    }

    /// TLS on this stream, for the log: `off`, or the cipher suite and the client
    /// certificate's subject (`TLS13_AES_256_GCM_SHA384 CN=alice`).
    pub fn tls_client(&self) -> String {
        match self {
            Stream::Tls(s) => match s.client_names().as_slice() {
                [] => s.suite(),
                names => format!("{} CN={}", s.suite(), names.join(",CN=")),
            },
            _ => "off".to_string(),
        }
    }

    /// Which client this is, for the limit on unfinished handshakes per client: the IP address
    /// for TCP (a client may use many ports); the process for a unix socket, since the socket
    /// is mode 0600 and so every local peer has uid 0 (a per-uid limit would be one limit for
    /// everyone).
    pub fn peer_key(&self) -> String {
        match self {
            Stream::Unix(s) => match rustix::net::sockopt::socket_peercred(s) {
                Ok(c) => format!("unix pid {}", c.pid.as_raw_nonzero()),
                Err(_) => "unix".to_string(),
            },
            Stream::Tcp(s) => tcp_peer_key(s),
            Stream::Tls(s) => tcp_peer_key(s.tcp()),
        }
    }

    /// Who is on the other end, for logs and listings.
    pub fn peer(&self) -> String {
        match self {
            Stream::Unix(s) => match rustix::net::sockopt::socket_peercred(s) {
                Ok(c) => format!(
                    "unix (pid {}, uid {})",
                    c.pid.as_raw_nonzero(),
                    c.uid.as_raw()
                ),
                Err(_) => "unix".to_string(),
            },
            Stream::Tcp(s) => tcp_peer(s),
            Stream::Tls(s) => tcp_peer(s.tcp()),
        }
    }
}

fn tcp_peer_key(s: &TcpStream) -> String {
    s.peer_addr()
        .map_or_else(|_| "tcp".to_string(), |a| format!("tcp {}", a.ip()))
}

fn tcp_peer(s: &TcpStream) -> String {
    s.peer_addr()
        .map_or_else(|_| "tcp".to_string(), |a| a.to_string())
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write_vectored(bufs),
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Tls(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// `SIOCOUTQ` (the same number as `TIOCOUTQ`).
const SIOCOUTQ: rustix::ioctl::Opcode = 0x5411;

/// Bytes written to a socket that its peer has not consumed yet (unix: still queued for it;
/// TCP: not acknowledged). rustix has no safe call for `SIOCOUTQ`.
#[allow(unsafe_code)]
fn unsent_bytes(fd: BorrowedFd<'_>) -> io::Result<usize> {
    // SAFETY: SIOCOUTQ writes one int through its argument, which `Getter<_, c_int>` allocates
    // and passes; `fd` is a valid open socket for the whole call.
    let n = unsafe {
        rustix::ioctl::ioctl(
            fd,
            rustix::ioctl::Getter::<SIOCOUTQ, std::ffi::c_int>::new(),
        )
    }?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Read exactly `buf.len()` bytes. `Ok(false)` if the stream ended before the first byte (a
/// clean end between messages); an end after some bytes is `UnexpectedEof`.
pub(crate) fn read_message<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the stream ended after {got} of {} bytes", buf.len()),
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Read and throw away `n` bytes through a small buffer (bounded memory whatever `n` is).
pub(crate) fn discard<R: Read>(r: &mut R, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.take(n), &mut io::sink())?;
    if copied < n {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the stream ended after {copied} of {n} payload bytes"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_message_tells_clean_end_from_truncation() {
        let mut empty: &[u8] = &[];
        let mut buf = [0u8; 4];
        assert!(!read_message(&mut empty, &mut buf).unwrap());
        let mut short: &[u8] = &[1, 2];
        let e = read_message(&mut short, &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let mut full: &[u8] = &[1, 2, 3, 4, 5];
        assert!(read_message(&mut full, &mut buf).unwrap());
        assert_eq!(buf, [1, 2, 3, 4]);
    }

    #[test]
    fn unsent_bytes_count_what_the_peer_has_not_read() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let a = Stream::Unix(a);
        assert_eq!(unsent_bytes(a.fd()).unwrap(), 0);
        assert!(a.reply_fits(4096));
        let mut w = a.try_clone().unwrap();
        w.write_all(&[1; 1000]).unwrap();
        assert!(unsent_bytes(a.fd()).unwrap() >= 1000);
        assert!(
            !a.reply_fits(16),
            "unread bytes are queued: a reply could block"
        );
        let mut got = [0u8; 1000];
        b.read_exact(&mut got).unwrap();
        assert_eq!(unsent_bytes(a.fd()).unwrap(), 0);
        assert!(a.reply_fits(16));
        assert!(!a.reply_fits(64 << 20), "larger than the send buffer");
    }

    #[test]
    fn discard_consumes_exactly() {
        let data = vec![9u8; 100_000];
        let mut r: &[u8] = &data;
        discard(&mut r, 99_999).unwrap();
        assert_eq!(r.len(), 1);
        let mut r: &[u8] = &data[..10];
        assert!(discard(&mut r, 11).is_err());
    }
}
