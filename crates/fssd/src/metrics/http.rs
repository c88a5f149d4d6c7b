//! A tiny HTTP/1.1 responder for `GET /metrics` on a listener the supervisor holds (so a
//! restart of the serving process keeps the port). One request per connection, answered and
//! closed; connections are served one at a time with short timeouts, which is plenty for a
//! scraper every few seconds and bounds what a slow client can hold.

use super::encode;
use crate::daemon::FrontEnd;
use crate::error::{DaemonError, Result};
use crate::registry::Registry;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a client may take to send its request, or to read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the accept loop looks at the stop flag.
const POLL: Duration = Duration::from_millis(100);
/// The most bytes of a request head read.
const MAX_HEAD: usize = 8192;

/// Listen for metrics scrapes at `addr`, warning when other machines can reach it.
///
/// # Errors
/// The address cannot be bound.
pub fn bind(addr: &str) -> Result<TcpListener> {
    let l = TcpListener::bind(addr).map_err(|e| {
        DaemonError::io(
            &format!("cannot listen for metrics on {addr} (--metrics-listen)"),
            &e,
        )
    })?;
    if l.local_addr().is_ok_and(|a| !a.ip().is_loopback()) {
        tracing::warn!(
            addr,
            "metrics on a non-loopback address: anyone who can reach it sees volume and snapshot names"
        );
    }
    Ok(l)
}

/// The metrics front-end: a thread answering scrapes until stopped.
pub struct MetricsServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Serve `GET /metrics` on `listener` from `registry`'s figures.
    ///
    /// # Errors
    /// The listener cannot be made non-blocking, or the thread cannot start.
    pub fn start(listener: TcpListener, registry: Arc<Registry>) -> Result<Self> {
        listener
            .set_nonblocking(true)
            .map_err(|e| DaemonError::io("cannot prepare the metrics listener", &e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("fss-metrics".into())
            .spawn(move || accept_loop(&listener, &registry, &flag))
            .map_err(|e| DaemonError::io("cannot start the metrics thread", &e))?;
        Ok(MetricsServer {
            stop,
            thread: Some(thread),
        })
    }
}

impl FrontEnd for MetricsServer {
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, registry: &Registry, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = answer(stream, registry) {
                    tracing::debug!(error = %e, "metrics request failed");
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener failed; retrying");
                std::thread::sleep(POLL);
            }
        }
    }
}

/// Read one request head and answer it.
fn answer(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let (status, body) = respond(&line, registry);
    let headers = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(headers.as_bytes())?;
    if !line.starts_with("HEAD ") {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}

/// The status line and body for a request line.
fn respond(line: &str, registry: &Registry) -> (&'static str, String) {
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return (
            "405 Method Not Allowed",
            "only GET /metrics is served\n".into(),
        );
    }
    if path != "/metrics" {
        return (
            "404 Not Found",
            "fss serves its metrics at /metrics\n".into(),
        );
    }
    match registry.stats() {
        Ok(stats) => ("200 OK", encode(&stats)),
        Err(e) => ("500 Internal Server Error", format!("{}\n", e.message)),
    }
}
