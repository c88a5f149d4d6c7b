//! A client of the control socket, for the CLI and tests.

use crate::error::DaemonError;
use crate::protocol::{Envelope, Request, Response, PROTOCOL_VERSION};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// A connection to the daemon.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl Client {
    /// Connect to the daemon of `state_dir`.
    ///
    /// # Errors
    /// No daemon answers there.
    pub fn connect(state_dir: &Path) -> Result<Client, DaemonError> {
        let sock = state_dir.join("control.sock");
        let stream = UnixStream::connect(&sock).map_err(|e| {
            DaemonError::new(
                "unavailable",
                format!(
                    "cannot reach the fss daemon at {} ({e}); is `fss serve` running for this state directory (FSS_STATE_DIR)?",
                    sock.display()
                ),
            )
        })?;
        let writer = stream
            .try_clone()
            .map_err(|e| DaemonError::io("control socket", &e))?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
            next_id: 1,
        })
    }

    /// Send a request and wait for its answer.
    ///
    /// # Errors
    /// The daemon answered with an error, or the connection broke.
    pub fn call(&mut self, request: Request) -> Result<serde_json::Value, DaemonError> {
        let id = self.next_id;
        self.next_id += 1;
        let env = Envelope {
            v: PROTOCOL_VERSION,
            id,
            request,
        };
        let mut text =
            serde_json::to_vec(&env).map_err(|e| DaemonError::new("internal", e.to_string()))?;
        text.push(b'\n');
        let broken = |e: std::io::Error| {
            DaemonError::new("unavailable", format!("the fss daemon went away: {e}"))
        };
        self.writer.write_all(&text).map_err(broken)?;
        let mut line = String::new();
        if self.reader.read_line(&mut line).map_err(broken)? == 0 {
            return Err(DaemonError::new(
                "unavailable",
                "the fss daemon closed the connection",
            ));
        }
        let resp: Response = serde_json::from_str(&line).map_err(|e| {
            DaemonError::new(
                "internal",
                format!("unreadable answer from the daemon: {e}"),
            )
        })?;
        if resp.ok {
            Ok(resp.result.unwrap_or(serde_json::Value::Null))
        } else {
            let body = resp.error.unwrap_or(crate::protocol::ErrorBody {
                kind: "internal".into(),
                message: "unknown error".into(),
            });
            Err(DaemonError {
                kind: body.kind,
                message: body.message,
            })
        }
    }
}
