//! From a decoded request to its answer: the one `match` on the operation, and who may ask.

use crate::filesystem::FssFs;
use crate::wire::{InHeader, Operation, Request};
use fss_core::device::AlignedBuf;
use rustix::io::Errno;

/// What to send back.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer<'b> {
    /// Nothing (FORGET).
    Nothing,
    /// Success with an empty body.
    Done,
    /// Failure.
    Error(Errno),
    /// Success with an encoded structure.
    Body(Vec<u8>),
    /// Success with data read into the worker's buffer.
    Data(&'b [u8]),
}

impl<'b> From<Result<Vec<u8>, Errno>> for Answer<'b> {
    fn from(r: Result<Vec<u8>, Errno>) -> Self {
        r.map_or_else(Answer::Error, Answer::Body)
    }
}

impl<'b> From<Result<(), Errno>> for Answer<'b> {
    fn from(r: Result<(), Errno>) -> Self {
        r.map_or_else(Answer::Error, |()| Answer::Done)
    }
}

/// Only the owner of the mount may use it (as fuser's `SessionACL::Owner` did), but for
/// requests the kernel may send without the caller's ids: I/O on files already open, their
/// release, and the protocol's own requests.
fn allowed(fs: &FssFs, header: &InHeader, op: &Operation<'_>) -> bool {
    header.uid == fs.owner().uid
        || matches!(
            op,
            Operation::Init(_)
                | Operation::Destroy
                | Operation::Read { .. }
                | Operation::ReadDir { .. }
                | Operation::Forget
                | Operation::Write { .. }
                | Operation::Fsync { .. }
                | Operation::DirDone
                | Operation::Release { .. }
        )
}

/// Serve `req`. `init_reply` answers a `FUSE_INIT` that arrives after the handshake (one the
/// kernel resent because the process that read it died before answering). Reads go into
/// `buf`.
pub fn answer<'b>(
    fs: &FssFs,
    init_reply: &[u8],
    req: &Request<'_>,
    buf: &'b mut AlignedBuf,
) -> Answer<'b> {
    let h = &req.header;
    if !allowed(fs, h, &req.op) {
        return Answer::Error(Errno::ACCESS);
    }
    match req.op {
        Operation::Init(_) => Answer::Body(init_reply.to_vec()),
        Operation::Destroy | Operation::Flush | Operation::DirDone => Answer::Done,
        Operation::Forget => Answer::Nothing,
        // Operations are short; telling the kernel interrupts are not supported (ENOSYS)
        // makes it stop sending them.
        Operation::Interrupt => Answer::Error(Errno::NOSYS),
        Operation::Lookup { name } => fs.lookup(h.nodeid, name).into(),
        Operation::GetAttr { fh } => fs.getattr(h.nodeid, fh).into(),
        Operation::SetAttr(s) => fs.setattr(h.nodeid, &s).into(),
        Operation::Open { flags } => fs.open(h, flags).into(),
        Operation::Read { fh, offset, size } => match fs.read(fh, offset, size, buf) {
            Ok(n) => Answer::Data(&buf[..n]),
            Err(e) => Answer::Error(e),
        },
        Operation::Write { fh, offset, data } => fs.write(fh, offset, data).into(),
        Operation::Release { fh } => {
            fs.release(fh);
            Answer::Done
        }
        Operation::Fsync { fh } => fs.fsync(fh).into(),
        Operation::OpenDir => fs.opendir(h.nodeid).into(),
        Operation::ReadDir { offset, size } => fs.readdir(h.nodeid, offset, size).into(),
        Operation::StatFs => Answer::Body(fs.statfs()),
        Operation::Lseek { fh, offset, whence } => fs.lseek(fh, offset, whence).into(),
        Operation::Fallocate {
            fh,
            offset,
            length,
            mode,
        } => fs.fallocate(fh, offset, length, mode).into(),
        // Names come from `fss` commands.
        Operation::NamespaceChange => Answer::Error(Errno::PERM),
        Operation::Unsupported(_) => Answer::Error(Errno::NOSYS),
    }
}
