//! The kernel side of a FUSE directory, apart from serving it: opening `/dev/fuse` and
//! mounting the connection on a directory, unmounting it, and aborting it.
//!
//! A supervisor uses these to hold the connection across serving processes:
//! [`mount_connection`] once, [`crate::FuseFrontEnd::serve_connection`] in each serving
//! process, [`unmount`] at the final stop, [`abort_connection`] when no process will serve
//! it again (requests then fail with EIO instead of waiting forever).

use crate::error::{FuseError, Result};
use crate::fusermount;
use crate::mount_point;
use rustix::fs::{Mode, OFlags};
use rustix::mount::{MountFlags, UnmountFlags};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The mount's source name (first column of `/proc/mounts`).
const FSNAME: &str = "fss";
/// Options of every mount besides those naming the descriptor and the owner. `subtype` is a
/// kernel option so that a direct mount(2) gets it too: type `fuse.fss`. No `allow_other`:
/// only the owner may use the directory.
const OPTIONS: &str = "subtype=fss,default_permissions";
/// Where the kernel's FUSE control file system lives.
const CONNECTIONS: &str = "/sys/fs/fuse/connections";

fn mount_error(dir: &Path, source: io::Error) -> FuseError {
    FuseError::Mount {
        dir: dir.to_path_buf(),
        source,
    }
}

/// Open `/dev/fuse` and mount a new connection on `dir` (created if missing; a dead FUSE
/// mount a crashed daemon left there is detached first), with the options fss always uses:
/// `fsname=fss`, type `fuse.fss`, `default_permissions`, `nodev,nosuid,noexec,noatime`. As
/// root this is mount(2); otherwise `fusermount3` mounts and passes the descriptor back.
///
/// The connection is not served yet: the kernel has queued `FUSE_INIT` on it, and any access
/// to the directory waits until a session answers it (start one with
/// [`crate::Start::Fresh`]).
///
/// # Errors
/// The directory cannot be prepared, `/dev/fuse` cannot be opened, or the mount fails.
pub fn mount_connection(dir: &Path) -> Result<OwnedFd> {
    mount_point::prepare(dir).map_err(|source| FuseError::Directory {
        dir: dir.to_path_buf(),
        source,
    })?;
    if rustix::process::geteuid().is_root() {
        mount_direct(dir)
    } else {
        mount_through_helper(dir)
    }
}

/// `fusermount3` mounts and passes the descriptor back.
fn mount_through_helper(dir: &Path) -> Result<OwnedFd> {
    let options = format!("fsname={FSNAME},{OPTIONS},nodev,nosuid,noexec,noatime");
    fusermount::mount(dir, &options).map_err(|e| mount_error(dir, e))
}

/// mount(2) with a descriptor of our own.
fn mount_direct(dir: &Path) -> Result<OwnedFd> {
    let fd = rustix::fs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| mount_error(dir, e.into()))?;
    let rootmode = std::fs::metadata(dir)
        .map_err(|e| mount_error(dir, e))?
        .mode();
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    let data = format!(
        "fd={},rootmode={rootmode:o},user_id={uid},group_id={gid},{OPTIONS}",
        fd.as_raw_fd()
    );
    let data = CString::new(data).map_err(|e| mount_error(dir, io::Error::other(e)))?;
    let flags = MountFlags::NODEV | MountFlags::NOSUID | MountFlags::NOEXEC | MountFlags::NOATIME;
    rustix::mount::mount(FSNAME, dir, "fuse", flags, data.as_c_str())
        .map_err(|e| mount_error(dir, e.into()))?;
    Ok(fd)
}

/// Unmount `dir` (the supervisor's final stop): it must not be busy. Not mounted is fine.
///
/// # Errors
/// [`FuseError::Busy`] while files are open (a loop device), [`FuseError::Unmount`] else.
pub fn unmount(dir: &Path) -> Result<()> {
    match mount_point::unmount(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => {
            Err(FuseError::Busy {
                dir: dir.to_path_buf(),
                open: Vec::new(),
            })
        }
        // Not a mount point: nothing to do.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => Ok(()),
        Err(source) => Err(FuseError::Unmount {
            dir: dir.to_path_buf(),
            source,
        }),
    }
}

/// Abort the FUSE connection mounted on `dir`: every request waiting for an answer, and
/// every later one, fails (EIO for a loop device) instead of waiting for a server that will
/// not come. The mount stays until unmounted. Works whether or not anything serves the
/// connection (it never asks the file system anything: the connection is found in
/// `/proc/self/mountinfo`). Mounts the control file system on `/sys/fs/fuse/connections` if
/// nothing is mounted there yet.
///
/// # Errors
/// No FUSE mount on `dir`, or the control file cannot be written.
pub fn abort_connection(dir: &Path) -> Result<()> {
    let abort_error = |source| FuseError::Abort {
        dir: dir.to_path_buf(),
        source,
    };
    let id = connection_id(dir).map_err(abort_error)?;
    let control = Path::new(CONNECTIONS).join(id.to_string());
    if !control.exists() {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(abort_error)?;
        if !mountinfo.lines().any(|l| fs_type(l) == Some("fusectl")) {
            rustix::mount::mount("fusectl", CONNECTIONS, "fusectl", MountFlags::empty(), None)
                .map_err(|e| abort_error(e.into()))?;
        }
    }
    std::fs::write(control.join("abort"), b"1").map_err(abort_error)?;
    tracing::warn!(dir = %dir.display(), connection = id, "FUSE connection aborted");
    Ok(())
}

/// Detach `dir` lazily (`umount -l`): it leaves the namespace now; the connection lives
/// until its last open file is closed.
///
/// # Errors
/// As `umount2(2)`.
pub fn detach_mount(dir: &Path) -> Result<()> {
    rustix::mount::unmount(dir, UnmountFlags::DETACH).map_err(|e| FuseError::Unmount {
        dir: dir.to_path_buf(),
        source: e.into(),
    })
}

/// The FUSE connection number of the mount on `dir` (its name in `/sys/fs/fuse/connections`:
/// the mount's device number), read from `/proc/self/mountinfo` so that nothing asks the
/// file system (a stat would wait for a server).
///
/// # Errors
/// `/proc/self/mountinfo` cannot be read, or no FUSE file system is mounted on `dir`.
pub fn connection_id(dir: &Path) -> io::Result<u64> {
    let target = resolved(dir)?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    // The last line is the top of a stack of mounts on the same directory.
    mountinfo
        .lines()
        .rev()
        .filter(|l| fs_type(l).is_some_and(|t| t == "fuse" || t.starts_with("fuse.")))
        .filter(|l| {
            l.split(' ').nth(4).map(unescape).as_deref() == Some(target.as_os_str().as_bytes())
        })
        .find_map(|l| device(l.split(' ').nth(2)?))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no FUSE file system is mounted on {}", target.display()),
            )
        })
}

/// `dir` made absolute through its parent's real path, without touching `dir` itself (which
/// may be a mount nobody serves).
fn resolved(dir: &Path) -> io::Result<PathBuf> {
    let abs = std::path::absolute(dir)?;
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => Ok(parent.canonicalize()?.join(name)),
        _ => Ok(abs),
    }
}

/// The file system type of a mountinfo line (the first field after ` - `).
fn fs_type(line: &str) -> Option<&str> {
    line.split_once(" - ")?.1.split(' ').next()
}

/// A `major:minor` field as the kernel's device number (`MKDEV`).
fn device(field: &str) -> Option<u64> {
    let (major, minor) = field.split_once(':')?;
    Some((major.parse::<u64>().ok()? << 20) | minor.parse::<u64>().ok()?)
}

/// Undo mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let code = b.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|s| u8::from_str_radix(s, 8).ok())
        });
        match code {
            Some(c) if b[i] == b'\\' => {
                out.push(c);
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::session::{Session, Setup, Start};
    use fss_core::export::{Catalog, Export, ExportInfo};
    use std::sync::Arc;

    struct Empty;
    impl Catalog for Empty {
        fn lookup(&self, _: &str) -> Option<Export> {
            None
        }
        fn list(&self) -> Vec<ExportInfo> {
            Vec::new()
        }
    }

    /// The path a process that is not root takes, run as root (these tests need root).
    #[test]
    fn mounting_through_fusermount3_hands_back_a_served_connection() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("dev");
        std::fs::create_dir(&dir).unwrap();
        let fd = mount_through_helper(&dir).unwrap();
        let setup = Setup {
            catalog: Arc::new(Empty),
            hook: None,
            threads: 2,
            max_background: 16,
            files: None,
        };
        let mut session = Session::start(fd, &setup, Start::Fresh).unwrap();
        let line = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .find(|l| l.split(' ').nth(4) == dir.to_str())
            .map(str::to_string)
            .unwrap();
        assert!(line.contains(" - fuse.fss fss "), "{line}");
        assert!(line.contains("nosuid,nodev,noexec,noatime"), "{line}");
        assert!(line.contains("default_permissions"), "{line}");
        assert!(std::fs::read_dir(&dir).unwrap().next().is_none());
        assert!(connection_id(&dir).is_ok());
        fusermount::unmount(&dir).unwrap();
        assert!(
            session.join(std::time::Duration::from_secs(10)),
            "the session ends"
        );
        assert!(connection_id(&dir).is_err());
    }

    #[test]
    fn mountinfo_fields() {
        let line = "98 29 0:57 / /var/lib/fss\\040x/dev rw,nosuid,nodev,noexec,noatime - \
                    fuse.fss fss rw,user_id=0,group_id=0,default_permissions";
        assert_eq!(fs_type(line), Some("fuse.fss"));
        assert_eq!(
            unescape(line.split(' ').nth(4).unwrap_or_default()),
            b"/var/lib/fss x/dev"
        );
        assert_eq!(device("0:57"), Some(57));
        assert_eq!(device("8:1"), Some((8 << 20) | 1));
        assert_eq!(device("x"), None);
        assert_eq!(unescape("a\\134b\\0"), b"a\\b\\0");
        assert_eq!(fs_type("no separator"), None);
    }
}
