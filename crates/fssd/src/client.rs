//! A client of the control socket, for the CLI and tests.

use crate::error::{DaemonError, ErrorKind};
use crate::protocol::{
    Envelope, Progress, ProgressLine, Request, Response, MAX_FRAME, PROTOCOL_VERSION,
};
use std::io::{BufRead, BufReader, Read, Write};
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
                ErrorKind::Unavailable,
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

    /// How long to wait for an answer before giving up with `unavailable` (`None`: forever).
    ///
    /// # Errors
    /// The socket refused the setting.
    pub fn set_timeout(&mut self, timeout: Option<std::time::Duration>) -> Result<(), DaemonError> {
        self.reader
            .get_ref()
            .set_read_timeout(timeout)
            .map_err(|e| DaemonError::io("control socket", &e))
    }

    /// Send a request and return its id.
    fn send(&mut self, request: Request) -> Result<u64, DaemonError> {
        let id = self.next_id;
        self.next_id += 1;
        let env = Envelope {
            v: PROTOCOL_VERSION,
            id,
            request,
        };
        let mut text = serde_json::to_vec(&env)
            .map_err(|e| DaemonError::new(ErrorKind::Internal, e.to_string()))?;
        text.push(b'\n');
        self.writer.write_all(&text).map_err(broken)?;
        Ok(id)
    }

    /// Read one line: a progress line (`Ok(Err(progress))`) or a response.
    fn read_answer(&mut self) -> Result<Result<Response, Progress>, DaemonError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).map_err(broken)? == 0 {
            return Err(DaemonError::new(
                ErrorKind::Unavailable,
                "the fss daemon closed the connection",
            ));
        }
        let unreadable = |e: serde_json::Error| {
            DaemonError::new(
                ErrorKind::Internal,
                format!("unreadable answer from the daemon: {e}"),
            )
        };
        let v: serde_json::Value = serde_json::from_str(&line).map_err(unreadable)?;
        if v.get("progress").is_some() {
            let p: ProgressLine = serde_json::from_value(v).map_err(unreadable)?;
            return Ok(Err(p.progress));
        }
        serde_json::from_value(v).map(Ok).map_err(unreadable)
    }

    /// Send a request whose final response may be preceded by progress lines (`restore`,
    /// `rollback`); `progress(done, total)` is called for each.
    ///
    /// # Errors
    /// The daemon answered with an error, or the connection broke.
    pub fn call_with_progress(
        &mut self,
        request: Request,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<serde_json::Value, DaemonError> {
        self.send(request)?;
        loop {
            match self.read_answer()? {
                Err(p) => progress(p.done, p.total),
                Ok(r) => return result(r),
            }
        }
    }

    /// Stream a backup (`request` is a `backup`): the data frames go to `out`, progress lines
    /// to `progress`. Returns the first response's result ([`BackupStart`]) and the final one's
    /// ([`BackupDone`]). `out` is flushed before the final response is looked at.
    ///
    /// # Errors
    /// The daemon refused or failed (its error), `out` could not be written (kind `output`),
    /// or the connection broke.
    ///
    /// [`BackupStart`]: crate::protocol::BackupStart
    /// [`BackupDone`]: crate::protocol::BackupDone
    pub fn backup(
        &mut self,
        request: Request,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(serde_json::Value, serde_json::Value), DaemonError> {
        self.send(request)?;
        let start = loop {
            match self.read_answer()? {
                Err(p) => progress(p.done, p.total),
                Ok(r) => break result(r)?,
            }
        };
        let output = |e: std::io::Error| DaemonError::new(ErrorKind::Output, e.to_string());
        let mut buf = Vec::new();
        loop {
            let first = self.reader.fill_buf().map_err(broken)?.first().copied();
            match first {
                None => {
                    return Err(DaemonError::new(
                        ErrorKind::Unavailable,
                        "the fss daemon closed the connection in the middle of the backup",
                    ))
                }
                Some(b'{') => match self.read_answer()? {
                    Err(p) => progress(p.done, p.total),
                    Ok(r) => {
                        // An error before the end of the data.
                        result(r)?;
                        return Err(DaemonError::new(
                            ErrorKind::Internal,
                            "the daemon ended the backup data without its end frame",
                        ));
                    }
                },
                Some(_) => {
                    let mut len = [0u8; 4];
                    self.reader.read_exact(&mut len).map_err(broken)?;
                    let len = u32::from_be_bytes(len) as usize;
                    if len == 0 {
                        break;
                    }
                    if len > MAX_FRAME {
                        return Err(DaemonError::new(
                            ErrorKind::Internal,
                            format!("a backup frame of {len} bytes from the daemon (at most {MAX_FRAME}): is it the same fss release?"),
                        ));
                    }
                    buf.resize(len, 0);
                    self.reader.read_exact(&mut buf).map_err(broken)?;
                    out.write_all(&buf).map_err(output)?;
                }
            }
        }
        out.flush().map_err(output)?;
        loop {
            match self.read_answer()? {
                Err(p) => progress(p.done, p.total),
                Ok(r) => return Ok((start, result(r)?)),
            }
        }
    }

    /// Send a request and wait for its answer.
    ///
    /// # Errors
    /// The daemon answered with an error, or the connection broke.
    pub fn call(&mut self, request: Request) -> Result<serde_json::Value, DaemonError> {
        self.send(request)?;
        let mut line = String::new();
        if self.reader.read_line(&mut line).map_err(broken)? == 0 {
            return Err(DaemonError::new(
                ErrorKind::Unavailable,
                "the fss daemon closed the connection",
            ));
        }
        let resp: Response = serde_json::from_str(&line).map_err(|e| {
            DaemonError::new(
                ErrorKind::Internal,
                format!("unreadable answer from the daemon: {e}"),
            )
        })?;
        result(resp)
    }
}

fn broken(e: std::io::Error) -> DaemonError {
    DaemonError::new(
        ErrorKind::Unavailable,
        format!("the fss daemon went away: {e}"),
    )
}

/// A response's result, or its error.
fn result(resp: Response) -> Result<serde_json::Value, DaemonError> {
    if resp.ok {
        Ok(resp.result.unwrap_or(serde_json::Value::Null))
    } else {
        let body = resp.error.unwrap_or(crate::protocol::ErrorBody {
            kind: ErrorKind::Internal,
            message: "unknown error".into(),
        });
        Err(body.into())
    }
}
