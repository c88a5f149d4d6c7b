//! The mount point: creating it, recognising a dead FUSE mount left by a crash, unmounting.

use rustix::mount::UnmountFlags;
use std::io;
use std::path::Path;

/// Make `dir` ready to be mounted on: create it if missing; detach a dead FUSE mount (its
/// server is gone, every access fails with ENOTCONN) that a crashed daemon left there.
///
/// # Errors
/// The directory cannot be created, or a dead mount cannot be detached.
pub fn prepare(dir: &Path) -> io::Result<()> {
    match std::fs::metadata(dir) {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTCONN.raw_os_error()) => {
            tracing::warn!(dir = %dir.display(), "detaching a dead FUSE mount left by an earlier run");
            detach(dir)?;
        }
        _ => {}
    }
    std::fs::create_dir_all(dir)
}

/// The device number of the file system `dir` is on (its mount's, once mounted).
///
/// # Errors
/// `stat(2)` failed (ENOTCONN on a dead FUSE mount).
pub fn device_of(dir: &Path) -> io::Result<u64> {
    Ok(rustix::fs::stat(dir)?.st_dev)
}

/// `umount(2)`: fails with EBUSY while files are open. A process that is not root (EPERM)
/// goes through `fusermount3 -u`.
///
/// # Errors
/// As `umount(2)`.
pub fn unmount(dir: &Path) -> io::Result<()> {
    match rustix::mount::unmount(dir, UnmountFlags::empty()) {
        Err(rustix::io::Errno::PERM) if !rustix::process::geteuid().is_root() => {
            crate::fusermount::unmount(dir)
        }
        r => Ok(r?),
    }
}

/// `umount2(MNT_DETACH)`: leaves the namespace now; the file system lives on until its last
/// user is gone.
///
/// # Errors
/// As `umount2(2)`.
pub fn detach(dir: &Path) -> io::Result<()> {
    Ok(rustix::mount::unmount(dir, UnmountFlags::DETACH)?)
}
