//! Engine errors as NBD error values.
//!
//! The protocol allows eight values; [`fss_core::Error::errno`] may give any errno (it keeps the
//! device's own). Permission-like errors become `EPERM`, space-like ones `ENOSPC` (the protocol
//! asks for `EDQUOT` and `EFBIG` to be reported so), the allowed values pass through, and
//! everything else is `EIO`.

use crate::protocol::NbdErrno;
use fss_core::ErrorKind;
use rustix::io::Errno;

/// The NBD error value for an engine error.
#[must_use]
pub fn from_engine(e: &fss_core::Error) -> NbdErrno {
    match e.kind() {
        ErrorKind::ReadOnly => NbdErrno::Perm,
        ErrorKind::NoSpace => NbdErrno::NoSpc,
        ErrorKind::OutOfRange | ErrorKind::InvalidArgument => NbdErrno::Inval,
        _ => from_os(e.errno()),
    }
}

/// The NBD error value for an operating-system errno.
#[must_use]
pub fn from_os(code: i32) -> NbdErrno {
    let is = |e: Errno| e.raw_os_error() == code;
    if is(Errno::PERM) || is(Errno::ACCESS) || is(Errno::ROFS) {
        NbdErrno::Perm
    } else if is(Errno::NOSPC) || is(Errno::DQUOT) || is(Errno::FBIG) {
        NbdErrno::NoSpc
    } else if is(Errno::INVAL) {
        NbdErrno::Inval
    } else if is(Errno::NOMEM) {
        NbdErrno::NoMem
    } else if is(Errno::OVERFLOW) {
        NbdErrno::Overflow
    } else if is(Errno::NOTSUP) || is(Errno::OPNOTSUPP) {
        NbdErrno::NotSup
    } else if is(Errno::SHUTDOWN) {
        NbdErrno::Shutdown
    } else {
        NbdErrno::Io
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fss_core::Error;
    use std::io;

    #[test]
    fn engine_kinds_map_to_the_allowed_values() {
        let ro = Error::new(ErrorKind::ReadOnly, "write", "snapshot 's'", "read-only");
        assert_eq!(from_engine(&ro), NbdErrno::Perm);
        let range = Error::new(ErrorKind::OutOfRange, "read", "volume 'v'", "past the end");
        assert_eq!(from_engine(&range), NbdErrno::Inval);
        let invalid = Error::new(ErrorKind::InvalidSnapshot, "read", "snapshot 's'", "lost");
        assert_eq!(from_engine(&invalid), NbdErrno::Io);
        let gone = Error::new(ErrorKind::NotFound, "read", "snapshot 's'", "deleted");
        assert_eq!(from_engine(&gone), NbdErrno::Io);
    }

    #[test]
    fn os_errors_map_to_the_allowed_values() {
        let quota = Error::io("write", "volume 'v'", io::Error::from_raw_os_error(122));
        assert_eq!(from_engine(&quota), NbdErrno::NoSpc);
        let fbig = Error::io("write", "volume 'v'", io::Error::from_raw_os_error(27));
        assert_eq!(from_engine(&fbig), NbdErrno::NoSpc);
        let eio = Error::io("read", "volume 'v'", io::Error::from_raw_os_error(5));
        assert_eq!(from_engine(&eio), NbdErrno::Io);
        assert_eq!(from_os(13), NbdErrno::Perm);
        assert_eq!(from_os(95), NbdErrno::NotSup);
        assert_eq!(from_os(12), NbdErrno::NoMem);
        assert_eq!(from_os(6), NbdErrno::Io);
    }
}
