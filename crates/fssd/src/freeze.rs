//! Freezing and thawing a mounted file system (FIFREEZE / FITHAW), so a snapshot of it is
//! consistent. The CLI freezes; the daemon only ever thaws (freezing from the daemon would
//! deadlock: the freeze flushes dirty data through fss itself).

use std::fs::File;
use std::io;
use std::path::Path;

/// `_IOWR('X', 119, int)`.
const FIFREEZE: rustix::ioctl::Opcode = 0xC004_5877;
/// `_IOWR('X', 120, int)`.
const FITHAW: rustix::ioctl::Opcode = 0xC004_5878;

/// Open a mount point's root directory, the handle FIFREEZE and FITHAW act on.
///
/// # Errors
/// It cannot be opened.
pub fn open_mount(path: &Path) -> io::Result<File> {
    File::open(path)
}

/// Freeze the file system mounted at `dir` (an open handle on its root). Writers block until
/// it is thawed.
///
/// # Errors
/// Not a mount point of a file system that supports freezing, already frozen (EBUSY), or no
/// permission (EPERM: needs root).
#[allow(unsafe_code)]
pub fn freeze(dir: &File) -> io::Result<()> {
    // SAFETY: FIFREEZE takes no argument the kernel reads (the int* of its definition is
    // ignored by ioctl_fsfreeze), so NoArg passes nothing; `dir` is a valid open fd.
    unsafe { rustix::ioctl::ioctl(dir, rustix::ioctl::NoArg::<FIFREEZE>::new()) }
        .map_err(io::Error::from)
}

/// Thaw the file system mounted at `dir`.
///
/// # Errors
/// Not frozen (EINVAL), or no permission.
#[allow(unsafe_code)]
pub fn thaw(dir: &File) -> io::Result<()> {
    // SAFETY: as for FIFREEZE, FITHAW's argument is ignored by the kernel; `dir` is a valid fd.
    unsafe { rustix::ioctl::ioctl(dir, rustix::ioctl::NoArg::<FITHAW>::new()) }
        .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thawing_something_not_frozen_is_an_error_not_a_crash() {
        // A temporary directory's file system is not frozen: FITHAW fails cleanly (EINVAL as
        // root, EPERM otherwise), proving the wrapper passes a valid request.
        let d = tempfile::tempdir().unwrap();
        let f = open_mount(d.path()).unwrap();
        let e = thaw(&f).unwrap_err();
        assert!(matches!(e.raw_os_error(), Some(22 | 1 | 25 | 95)), "{e}");
        // (No freeze test here: FIFREEZE on any fd freezes that file's whole file system,
        // the root file system for a temporary directory. The end-to-end tests freeze file
        // systems on loop devices they made.)
    }
}
