//! The `FUSE_INIT` handshake of a fresh connection, and the parameters it settles, which a
//! resumed session reuses (the kernel sends `FUSE_INIT` once per connection).

use super::channel::Channel;
use crate::dispatch::Answer;
use crate::error::FuseError;
use crate::persist::{SessionParams, FORMAT};
use crate::wire::abi::{self, init_flags};
use crate::wire::{reply, InitIn, InitOut, Operation, ParseError};
use rustix::io::Errno;
use std::time::{SystemTime, UNIX_EPOCH};

/// The largest write the kernel sends in one request (through `max_pages`, as reads): a loop
/// device's 1 MiB direct write is one request, which the volume takes with O_DIRECT (at least
/// [`fss_core::device::DIRECT_WRITE_MIN`], and aligned: see `session::serve`), as a loop
/// device over a plain file writes it. With 128 KiB requests, each written through the page
/// cache, a sustained 1 MiB stream ran at copy speed until writeback throttled it, then at
/// 350 MB/s (bench case 8, 2026-12-05). Smaller writes still land in the page cache.
pub const MAX_WRITE: u32 = 1 << 20;

/// The largest read the kernel sends in one request (through `max_pages`; the kernel caps it
/// at 256 pages): a loop device's 1 MiB direct read is then one request and one O_DIRECT read
/// of the volume, not eight 128 KiB ones (bench case 8, seq read 1M at qd1, 2026-12-04).
pub const MAX_READ: u32 = 1 << 20;

/// What is asked of the kernel: asynchronous reads and direct I/O (a loop device keeps
/// several requests in flight), large writes, `max_pages`, and the extended flags.
const WANTED: u64 = init_flags::ASYNC_READ
    | init_flags::BIG_WRITES
    | init_flags::ASYNC_DIO
    | init_flags::MAX_PAGES
    | init_flags::INIT_EXT;

/// What to do with one `FUSE_INIT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Accept with these parameters.
    Accept(SessionParams),
    /// The kernel speaks a newer major version: answer with ours and wait for another INIT.
    OfferOurVersion,
    /// Refuse the connection.
    Refuse(String),
}

/// Decide how to answer `init`.
pub fn negotiate(init: &InitIn, max_background: u16, mounted: SystemTime) -> Step {
    if init.major > abi::KERNEL_VERSION {
        return Step::OfferOurVersion;
    }
    if init.major < abi::KERNEL_VERSION || init.minor < abi::MIN_KERNEL_MINOR {
        return Step::Refuse(format!(
            "the kernel speaks FUSE {}.{}; at least {}.{} is needed",
            init.major,
            init.minor,
            abi::KERNEL_VERSION,
            abi::MIN_KERNEL_MINOR
        ));
    }
    let page = u32::try_from(rustix::param::page_size())
        .unwrap_or(4096)
        .max(1);
    let largest = MAX_WRITE.max(MAX_READ).max(init.max_readahead).max(1);
    let since = mounted.duration_since(UNIX_EPOCH).unwrap_or_default();
    Step::Accept(SessionParams {
        format: FORMAT,
        kernel_minor: init.minor,
        minor: init.minor.min(abi::KERNEL_MINOR_VERSION),
        kernel_flags: init.flags,
        flags: WANTED & init.flags,
        max_readahead: init.max_readahead,
        max_write: MAX_WRITE,
        max_pages: u16::try_from((largest - 1) / page + 1).unwrap_or(u16::MAX),
        max_background,
        congestion_threshold: max_background.saturating_mul(3) / 4,
        mounted_secs: since.as_secs(),
        mounted_nanos: since.subsec_nanos(),
    })
}

/// The INIT reply for these parameters.
pub fn init_out(p: &SessionParams) -> InitOut {
    InitOut {
        major: abi::KERNEL_VERSION,
        minor: abi::KERNEL_MINOR_VERSION,
        max_readahead: p.max_readahead,
        flags: p.flags,
        max_background: p.max_background,
        congestion_threshold: p.congestion_threshold,
        max_write: p.max_write,
        time_gran: 1,
        max_pages: p.max_pages,
    }
}

/// Whether the kernel can resend requests a dead process had read.
pub fn can_resend(p: &SessionParams) -> bool {
    p.kernel_flags & init_flags::HAS_RESEND != 0
}

/// Read `FUSE_INIT` from a fresh connection and answer it. `before_reply` runs once the
/// parameters are settled and before the kernel hears them (it persists them); if it fails,
/// the INIT is answered with EIO.
///
/// # Errors
/// The connection ended, the first request was not INIT (the connection was initialised by
/// an earlier process: resume it instead; the request is left unanswered for that), the
/// kernel's protocol is too old, or `before_reply` failed.
pub fn handshake(
    channel: &Channel,
    buf: &mut [u8],
    max_background: u16,
    before_reply: impl FnOnce(&SessionParams) -> Result<(), FuseError>,
) -> Result<SessionParams, FuseError> {
    let handshake = |reason: String| FuseError::Handshake { reason };
    loop {
        let n = channel
            .receive(buf)
            .ok_or_else(|| handshake("the connection ended before FUSE_INIT".into()))?;
        let req = match crate::wire::request::parse(&buf[..n]) {
            Ok(r) => r,
            Err(ParseError::Header(e)) => {
                tracing::warn!(error = %e, "ignoring a malformed FUSE request");
                continue;
            }
            Err(ParseError::Body(h, e)) => {
                channel.send(h.unique, &Answer::Error(e));
                continue;
            }
        };
        let unique = req.header.unique;
        let Operation::Init(init) = req.op else {
            return Err(handshake(format!(
                "the first request is opcode {}, not FUSE_INIT: the connection was initialised \
                 by an earlier process (resume it)",
                req.header.opcode
            )));
        };
        match negotiate(&init, max_background, SystemTime::now()) {
            Step::OfferOurVersion => {
                let ours = InitOut {
                    major: abi::KERNEL_VERSION,
                    minor: abi::KERNEL_MINOR_VERSION,
                    ..InitOut::default()
                };
                channel.send(unique, &Answer::Body(reply::init_out(&ours)));
            }
            Step::Refuse(reason) => {
                channel.send(unique, &Answer::Error(Errno::PROTO));
                return Err(handshake(reason));
            }
            Step::Accept(params) => {
                if let Err(e) = before_reply(&params) {
                    channel.send(unique, &Answer::Error(Errno::IO));
                    return Err(e);
                }
                channel.send(unique, &Answer::Body(reply::init_out(&init_out(&params))));
                return Ok(params);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init(major: u32, minor: u32, flags: u64) -> InitIn {
        InitIn {
            major,
            minor,
            max_readahead: 128 << 10,
            flags,
        }
    }

    #[test]
    fn accepts_what_we_want_and_the_kernel_has() {
        let kernel = init_flags::ASYNC_READ
            | init_flags::ASYNC_DIO
            | init_flags::INIT_EXT
            | init_flags::HAS_RESEND
            | (1 << 13);
        let Step::Accept(p) = negotiate(&init(7, 44, kernel), 64, UNIX_EPOCH) else {
            panic!("refused");
        };
        assert_eq!(p.minor, 40);
        assert_eq!(p.kernel_minor, 44);
        assert_eq!(
            p.flags,
            init_flags::ASYNC_READ | init_flags::ASYNC_DIO | init_flags::INIT_EXT
        );
        assert!(can_resend(&p));
        assert_eq!((p.max_background, p.congestion_threshold), (64, 48));
        assert_eq!(p.max_write, MAX_WRITE);
        let out = init_out(&p);
        assert_eq!((out.major, out.minor, out.time_gran), (7, 40, 1));
        assert_eq!(out.max_pages, 256);
        let Step::Accept(old) = negotiate(&init(7, 31, init_flags::ASYNC_READ), 64, UNIX_EPOCH)
        else {
            panic!("refused");
        };
        assert_eq!(old.minor, 31);
        assert!(!can_resend(&old));
    }

    #[test]
    fn other_versions() {
        assert_eq!(
            negotiate(&init(8, 0, 0), 64, UNIX_EPOCH),
            Step::OfferOurVersion
        );
        assert!(matches!(
            negotiate(&init(7, 22, 0), 64, UNIX_EPOCH),
            Step::Refuse(_)
        ));
        assert!(matches!(
            negotiate(&init(6, 50, 0), 64, UNIX_EPOCH),
            Step::Refuse(_)
        ));
    }
}
