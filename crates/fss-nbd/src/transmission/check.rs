//! Checking a request against the export and what was negotiated, before it runs: the
//! operation to run and its budget bytes, or why it is refused.

use super::zero_budget;
use crate::protocol::{self as p, Command, NbdErrno, Request};
use crate::MAX_PAYLOAD;
use fss_core::device::AlignedBuf;
use fss_core::export::Export;

/// A checked request, ready to run.
#[derive(Debug)]
pub(crate) enum Op {
    Read { df: bool },
    Write { data: AlignedBuf, fua: bool },
    Flush,
    Trim { fua: bool },
    WriteZeroes { fua: bool },
    BlockStatus { req_one: bool },
    Cache,
}

/// A request refused before it runs.
#[derive(Debug)]
pub(crate) struct Reject {
    /// The error to answer.
    pub errno: NbdErrno,
    /// Why, for structured replies and the log.
    pub message: String,
}

fn reject(errno: NbdErrno, message: String) -> Reject {
    Reject { errno, message }
}

pub(super) fn allowed_flags(cmd: Command, structured: bool) -> u16 {
    let df = if structured { p::CMD_FLAG_DF } else { 0 };
    p::CMD_FLAG_FUA
        | match cmd {
            Command::Read => df,
            Command::WriteZeroes => p::CMD_FLAG_NO_HOLE | p::CMD_FLAG_FAST_ZERO,
            Command::BlockStatus => p::CMD_FLAG_REQ_ONE,
            _ => 0,
        }
}

/// Check a request against `export` and what was negotiated (structured replies, whether a
/// metadata context was selected): what to run and with how many budget bytes, `None` to end
/// the connection, or why it is refused.
pub(crate) fn check(
    req: &Request,
    export: &Export,
    has_contexts: bool,
    structured: bool,
) -> Result<Option<(Op, usize)>, Reject> {
    let size = export.len();
    let len = u64::from(req.length);
    let off = req.offset;
    let what = |verb: &str| format!("{verb} of {len} bytes at offset {off}");
    let in_range = off.checked_add(len).is_some_and(|end| end <= size);
    let past_end = |verb: &str| format!("{} ends past the export's {size} bytes", what(verb));
    let read_only = export.is_read_only();
    let ro = |verb: &str| {
        reject(
            NbdErrno::Perm,
            format!(
                "export '{}' is a snapshot and read-only; {verb} the volume instead",
                export.name()
            ),
        )
    };
    if req.command == Command::Disc {
        return Ok(None);
    }
    if let Command::Unknown(c) = req.command {
        return Err(reject(NbdErrno::Inval, format!("unknown command {c}")));
    }
    let bad_flags = req.flags & !allowed_flags(req.command, structured);
    if bad_flags != 0 {
        return Err(reject(
            NbdErrno::Inval,
            format!("flags {bad_flags:#x} are not valid for {:?}", req.command),
        ));
    }
    let fua = req.flags & p::CMD_FLAG_FUA != 0;
    let op = match req.command {
        Command::Read => {
            if req.length > MAX_PAYLOAD {
                // Structured replies could split it, but the protocol lets a server refuse.
                let errno = if structured {
                    NbdErrno::Overflow
                } else {
                    NbdErrno::Inval
                };
                return Err(reject(
                    errno,
                    format!(
                        "{} exceeds the maximum of {MAX_PAYLOAD} bytes",
                        what("read")
                    ),
                ));
            }
            if !in_range {
                return Err(reject(NbdErrno::Inval, past_end("read")));
            }
            (
                Op::Read {
                    df: req.flags & p::CMD_FLAG_DF != 0,
                },
                req.length as usize,
            )
        }
        Command::Write => {
            if read_only {
                return Err(ro("write to"));
            }
            if req.length > MAX_PAYLOAD {
                return Err(reject(
                    NbdErrno::Inval,
                    format!(
                        "{} exceeds the maximum of {MAX_PAYLOAD} bytes",
                        what("write")
                    ),
                ));
            }
            if !in_range {
                return Err(reject(NbdErrno::Inval, past_end("write")));
            }
            let data = AlignedBuf::default();
            (Op::Write { data, fua }, req.length as usize)
        }
        Command::Flush => (Op::Flush, 0),
        Command::Trim => {
            if read_only {
                return Err(ro("trim"));
            }
            if !in_range {
                return Err(reject(NbdErrno::Inval, past_end("trim")));
            }
            (Op::Trim { fua }, zero_budget(len))
        }
        Command::WriteZeroes => {
            if read_only {
                return Err(ro("write zeroes to"));
            }
            if !in_range {
                return Err(reject(NbdErrno::Inval, past_end("write zeroes")));
            }
            if req.flags & p::CMD_FLAG_FAST_ZERO != 0 {
                // Zeroing may have to preserve pre-images first, which is no faster than a
                // write: the protocol asks for a quick ENOTSUP then.
                return Err(reject(
                    NbdErrno::NotSup,
                    "fast zeroing cannot be guaranteed on this export".into(),
                ));
            }
            (Op::WriteZeroes { fua }, zero_budget(len))
        }
        Command::BlockStatus => {
            if !structured || !has_contexts {
                return Err(reject(
                    NbdErrno::Inval,
                    "block status needs a metadata context selected with \
                     NBD_OPT_SET_META_CONTEXT"
                        .into(),
                ));
            }
            if len == 0 {
                return Err(reject(NbdErrno::Inval, "block status of 0 bytes".into()));
            }
            if !in_range {
                return Err(reject(NbdErrno::Inval, past_end("block status")));
            }
            (
                Op::BlockStatus {
                    req_one: req.flags & p::CMD_FLAG_REQ_ONE != 0,
                },
                0,
            )
        }
        Command::Cache => {
            if !in_range {
                return Err(reject(NbdErrno::Inval, past_end("cache")));
            }
            (Op::Cache, 0)
        }
        Command::Disc | Command::Unknown(_) => return Ok(None),
    };
    Ok(Some(op))
}
