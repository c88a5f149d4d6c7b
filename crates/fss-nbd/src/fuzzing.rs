//! Entry points for the fuzz targets (`fuzz/fuzz_targets/nbd_request.rs`): the server's own
//! handshake and request checks run on bytes, without sockets. Not a stable API.

use crate::handshake::{self, Context, Outcome, TlsOffer};
use crate::protocol::{Command, NbdErrno, Request, REQUEST_LEN};
use crate::transmission;
use fss_core::export::{Catalog, Export};
use std::io::{self, Read};

/// How a fuzzed handshake ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeEnd {
    /// The client chose this export (canonical name), with structured replies or not, and
    /// this many metadata contexts.
    Transmission {
        /// The export's name.
        export: String,
        /// Whether structured replies were negotiated.
        structured: bool,
        /// How many metadata contexts were selected.
        contexts: usize,
    },
    /// The client aborted or went away (the server's reason).
    Ended(&'static str),
    /// The server ended the session (the error, as logged).
    Error(String),
}

/// A reader that hands out at most `step` bytes per read, so that messages split across reads
/// are exercised.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.step).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Run the server's handshake with `input` as everything the client sends (in reads of at
/// most `step` bytes; `shutting_down` as if the server were stopping). Returns what the
/// server wrote and how it ended.
pub fn handshake(
    catalog: &dyn Catalog,
    input: &[u8],
    step: usize,
    shutting_down: bool,
) -> (Vec<u8>, HandshakeEnd) {
    let mut out = Vec::new();
    let mut rd = Trickle {
        data: input,
        step: step.max(1),
    };
    let stopping = || shutting_down;
    let chosen = |_: &str| {};
    let ctx = Context {
        catalog,
        shutting_down: &stopping,
        chosen: &chosen,
        tls: TlsOffer::Refused("no TLS here"),
    };
    let end = match handshake::negotiate(&mut rd, &mut out, &ctx) {
        Ok(Outcome::Transmission(n)) => HandshakeEnd::Transmission {
            export: n.name,
            structured: n.structured,
            contexts: n.contexts.len(),
        },
        Ok(Outcome::Ended(why)) => HandshakeEnd::Ended(why),
        Ok(Outcome::StartTls(_)) => HandshakeEnd::Ended("upgraded to TLS"),
        Err(e) => HandshakeEnd::Error(e.to_string()),
    };
    (out, end)
}

/// What the server would do with one request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// Not a request: the magic was wrong (the connection ends).
    BadMagic(u32),
    /// Run it, taking this many bytes of the buffer budget.
    Run {
        /// The command.
        command: Command,
        /// Budget bytes taken.
        budget: usize,
    },
    /// Refuse it with this error (a write's payload is skipped first).
    Refused {
        /// The error.
        errno: NbdErrno,
        /// The message.
        message: String,
    },
    /// `NBD_CMD_DISC`: answer what is in flight, then close.
    Disconnect,
}

/// Decode a request header and check it against `export` as the server does, with structured
/// replies or not and with a metadata context selected or not.
#[must_use]
pub fn request(
    header: &[u8; REQUEST_LEN],
    export: &Export,
    structured: bool,
    has_contexts: bool,
) -> Checked {
    let req = match Request::decode(header) {
        Ok(r) => r,
        Err(magic) => return Checked::BadMagic(magic),
    };
    match transmission::check(&req, export, has_contexts, structured) {
        Ok(Some((_, budget))) => Checked::Run {
            command: req.command,
            budget,
        },
        Ok(None) => Checked::Disconnect,
        Err(r) => Checked::Refused {
            errno: r.errno,
            message: r.message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol as p;
    use crate::StaticCatalog;
    use fss_core::device::MemDevice;
    use fss_core::Volume;
    use std::sync::Arc;

    #[test]
    fn a_go_in_split_reads_reaches_transmission_and_requests_are_checked() {
        let volume = Export::Volume(Volume::new("default", Arc::new(MemDevice::new(1 << 20))));
        let catalog = StaticCatalog::new();
        catalog.insert(volume.clone());
        let mut input = (p::FLAG_C_FIXED_NEWSTYLE | p::FLAG_C_NO_ZEROES)
            .to_be_bytes()
            .to_vec();
        input.extend_from_slice(&p::IHAVEOPT.to_be_bytes());
        input.extend_from_slice(&p::OPT_GO.to_be_bytes());
        input.extend_from_slice(&6u32.to_be_bytes());
        input.extend_from_slice(&[0; 6]); // the empty name, no information requests
        let (out, end) = handshake(&catalog, &input, 3, false);
        assert_eq!(
            end,
            HandshakeEnd::Transmission {
                export: "default".into(),
                structured: false,
                contexts: 0,
            }
        );
        assert_eq!(&out[..8], b"NBDMAGIC");
        let (_, end) = handshake(&catalog, &input, 3, true);
        assert!(matches!(end, HandshakeEnd::Ended(_)), "{end:?}");

        let read = Request::encode(0, 0, 1, 4096, 4096);
        assert_eq!(
            request(&read, &volume, false, false),
            Checked::Run {
                command: Command::Read,
                budget: 4096
            }
        );
        let past_end = Request::encode(0, 0, 1, 1 << 20, 1);
        assert!(matches!(
            request(&past_end, &volume, false, false),
            Checked::Refused {
                errno: NbdErrno::Inval,
                ..
            }
        ));
        let mut bad = read;
        bad[0] ^= 1;
        assert!(matches!(
            request(&bad, &volume, false, false),
            Checked::BadMagic(_)
        ));
    }
}
