//! Mounting and unmounting through the setuid helper `fusermount3` (package `fuse3`), for a
//! process that is not root: the helper opens `/dev/fuse`, mounts it, and passes the
//! descriptor back over a unix socket (`SCM_RIGHTS`), as libfuse does. fuser is not needed
//! for this any more.

use rustix::io::FdFlags;
use rustix::net::{
    recvmsg, socketpair, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags,
    SocketFlags, SocketType,
};
use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};

/// The helpers, newest first.
const HELPERS: [&str; 2] = ["fusermount3", "fusermount"];

fn command(args: impl Fn(&mut Command) -> &mut Command) -> io::Result<std::process::Child> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "fusermount3 is not installed");
    for helper in HELPERS {
        let mut c = Command::new(helper);
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        match args(&mut c).spawn() {
            Ok(child) => return Ok(child),
            Err(e) if e.kind() == io::ErrorKind::NotFound => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Mount a new FUSE connection on `dir` with `options` (comma-separated, as `-o` takes
/// them) and return its `/dev/fuse` descriptor.
///
/// The helper inherits its end of the socket pair: close-on-exec is cleared on it for the
/// spawn, so a process another thread starts at that moment inherits it too (harmless, but
/// it would delay the end-of-file that tells a failed mount).
///
/// # Errors
/// The helper is missing, fails (its message is in the error), or sends no descriptor.
pub fn mount(dir: &Path, options: &str) -> io::Result<OwnedFd> {
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::io::fcntl_setfd(&theirs, FdFlags::empty())?;
    let spawned = command(|c| {
        c.arg("-o")
            .arg(options)
            .arg("--")
            .arg(dir)
            .env("_FUSE_COMMFD", theirs.as_raw_fd().to_string())
    });
    drop(theirs);
    let child = spawned?;
    let received = receive_fd(&ours);
    let out = child.wait_with_output()?;
    match received {
        Ok(Some(fd)) if out.status.success() => Ok(fd),
        other => Err(io::Error::other(format!(
            "fusermount3 failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            match other {
                Err(e) => format!(" (receiving the descriptor: {e})"),
                _ => String::new(),
            }
        ))),
    }
}

/// The descriptor the helper sends, if it sends one before closing the socket.
fn receive_fd(socket: &OwnedFd) -> io::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    recvmsg(
        socket,
        &mut [IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = message {
            if let Some(fd) = fds.next() {
                return Ok(Some(fd));
            }
        }
    }
    Ok(None)
}

/// `fusermount3 -u`: unmount `dir` as its (non-root) owner.
///
/// # Errors
/// The helper is missing or fails.
pub fn unmount(dir: &Path) -> io::Result<()> {
    let out = command(|c| c.arg("-u").arg("-q").arg("--").arg(dir))?.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        let msg = String::from_utf8_lossy(&out.stderr);
        // As umount(2) says it, so that callers can tell a busy directory.
        if msg.contains("busy") {
            Err(io::Error::from_raw_os_error(
                rustix::io::Errno::BUSY.raw_os_error(),
            ))
        } else {
            Err(io::Error::other(format!(
                "fusermount3 -u failed: {}",
                msg.trim()
            )))
        }
    }
}
