//! Starting serving processes: the binary image they run (held open, so that the image that
//! serves can be started again after the file on disk changed), the descriptors they inherit
//! (close-on-exec cleared for the spawn only) and the environment that says where they are;
//! and the check that the binary on disk runs before `fss restart` hands over to it.

use super::held::Held;
use crate::handover::{self, FdName, LastRestart, ToSupervisor};
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// How long the binary on disk may take to answer `--version`.
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(10);

/// A binary, held open: `/proc/self/fd/N` executes exactly it, whatever is at its path now.
#[derive(Debug)]
pub(crate) struct Image {
    file: File,
    /// Where it was found (for messages, and the serving process's `argv[0]`).
    pub(crate) path: PathBuf,
}

impl Image {
    /// The binary at `path` now.
    pub(crate) fn open(path: &Path) -> io::Result<Image> {
        Ok(Image {
            file: File::open(path)?,
            path: path.to_path_buf(),
        })
    }

    /// The binary this process runs (found at `path` when it started).
    pub(crate) fn this_process(path: &Path) -> io::Result<Image> {
        Ok(Image {
            file: File::open("/proc/self/exe")?,
            path: path.to_path_buf(),
        })
    }

    fn exec_path(&self) -> String {
        format!("/proc/self/fd/{}", self.file.as_raw_fd())
    }

    /// A command that runs this image with `argv[0]` its path. Its descriptor is inherited
    /// during the spawn (see [`Inheritable`]), so that a script can be run too.
    fn command(&self) -> Command {
        let mut c = Command::new(self.exec_path());
        c.arg0(&self.path);
        c
    }
}

/// Descriptors made inheritable for one spawn, and close-on-exec again when dropped (nothing
/// else is spawned meanwhile: the supervisor spawns from one thread).
struct Inheritable<'a>(Vec<BorrowedFd<'a>>);

impl<'a> Inheritable<'a> {
    fn new(fds: Vec<BorrowedFd<'a>>) -> io::Result<Self> {
        let me = Inheritable(fds);
        me.set(false)?;
        Ok(me)
    }

    fn set(&self, cloexec: bool) -> io::Result<()> {
        for fd in &self.0 {
            let flags = rustix::io::fcntl_getfd(fd)?;
            let flags = if cloexec {
                flags | rustix::io::FdFlags::CLOEXEC
            } else {
                flags - rustix::io::FdFlags::CLOEXEC
            };
            rustix::io::fcntl_setfd(fd, flags)?;
        }
        Ok(())
    }
}

impl Drop for Inheritable<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.set(true) {
            tracing::error!(error = %e, "cannot make the held descriptors close-on-exec again");
        }
    }
}

/// What a serving process is told besides its descriptors.
pub(crate) struct ChildEnv<'a> {
    pub(crate) restarts: u64,
    pub(crate) last_restart: Option<&'a LastRestart>,
    pub(crate) fuse_resume: bool,
}

/// A serving process just started.
pub(crate) struct Started {
    pub(crate) child: Child,
    /// The supervisor's end of the channel, to answer.
    pub(crate) channel: UnixStream,
    /// Lines from the serving process.
    pub(crate) messages: Receiver<ToSupervisor>,
}

/// Start a serving process of `image` with `args`, handing over `held`.
pub(crate) fn start(
    held: &Held,
    image: &Image,
    args: &[OsString],
    env: &ChildEnv<'_>,
) -> io::Result<Started> {
    let (mine, theirs) = UnixStream::pair()?;
    let mut table = held.table();
    table.0.insert(FdName::Channel, theirs.as_raw_fd());
    let mut cmd = image.command();
    cmd.args(args)
        .env(handover::ENV_FDS, table.format())
        .env(handover::ENV_PID, std::process::id().to_string())
        .env(handover::ENV_RESTARTS, env.restarts.to_string())
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null());
    match env.last_restart.and_then(|l| serde_json::to_string(l).ok()) {
        Some(json) => cmd.env(handover::ENV_LAST_RESTART, json),
        None => cmd.env_remove(handover::ENV_LAST_RESTART),
    };
    if env.fuse_resume {
        cmd.env(handover::ENV_FUSE_RESUME, "1");
    } else {
        cmd.env_remove(handover::ENV_FUSE_RESUME);
    }
    let child = {
        let mut fds: Vec<BorrowedFd<'_>> = held.named().into_iter().map(|(_, fd)| fd).collect();
        fds.push(theirs.as_fd());
        fds.push(image.file.as_fd());
        let _inheritable = Inheritable::new(fds)?;
        cmd.spawn()?
    };
    drop(theirs);
    let reader = mine.try_clone()?;
    let (tx, rx) = channel();
    std::thread::Builder::new()
        .name("fss-supervisor-channel".into())
        .spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                match ToSupervisor::parse(&line) {
                    Some(m) => {
                        if tx.send(m).is_err() {
                            break;
                        }
                    }
                    None => tracing::warn!(line, "unknown line from the serving process"),
                }
            }
        })?;
    Ok(Started {
        child,
        channel: mine,
        messages: rx,
    })
}

/// Check that `image` runs: its `--version` line, or why not.
pub(crate) fn preflight(image: &Image) -> Result<String, String> {
    let shown = image.path.display();
    let mut child = {
        let _inheritable = Inheritable::new(vec![image.file.as_fd()])
            .map_err(|e| format!("cannot hand {shown} its own descriptor: {e}"))?;
        image
            .command()
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {shown}: {e}"))?
    };
    let deadline = Instant::now() + PREFLIGHT_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{shown} --version did not answer within {} s",
                    PREFLIGHT_TIMEOUT.as_secs()
                ));
            }
        }
    };
    let read = |r: Option<&mut dyn Read>| {
        let mut s = String::new();
        if let Some(r) = r {
            let _ = r.take(64 * 1024).read_to_string(&mut s);
        }
        s.lines().next().unwrap_or_default().trim().to_string()
    };
    let out = read(child.stdout.as_mut().map(|r| r as &mut dyn Read));
    let err = read(child.stderr.as_mut().map(|r| r as &mut dyn Read));
    if status.success() && !out.is_empty() {
        Ok(out)
    } else if status.success() {
        Err(format!("{shown} --version printed nothing"))
    } else {
        let said = if err.is_empty() { out } else { err };
        let said = if said.is_empty() {
            String::new()
        } else {
            format!(": {said}")
        };
        Err(format!("{shown} --version failed ({status}){said}"))
    }
}
