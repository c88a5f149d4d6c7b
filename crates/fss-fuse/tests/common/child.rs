//! A serving process the tests can kill -9: the test executable itself, run with
//! [`ENV_MODE`] set so that its `helper_child` test serves a FUSE connection (handed over as
//! its standard input) over a volume in an image file, and waits to be killed.

use super::{HookedDevice, TestCatalog};
use fss_core::device::{BlockDevice, FileDevice, OpenOptions};
use fss_core::export::Export;
use fss_core::Volume;
use fss_fuse::{FuseFrontEnd, Hooks, Start};
use std::io::{self, BufRead};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// `fresh` or `resume`.
pub const ENV_MODE: &str = "FSS_FUSE_HELPER_MODE";
const ENV_DIR: &str = "FSS_FUSE_HELPER_DIR";
const ENV_IMAGE: &str = "FSS_FUSE_HELPER_IMAGE";
const ENV_SESSION: &str = "FSS_FUSE_HELPER_SESSION";
/// A read touching this offset never completes; the helper creates [`ENV_STALL_MARKER`] first.
const ENV_STALL_AT: &str = "FSS_FUSE_HELPER_STALL_AT";
const ENV_STALL_MARKER: &str = "FSS_FUSE_HELPER_STALL_MARKER";
const READY: &str = "FSS-FUSE-HELPER-READY";

/// Where the helper serves, and what.
#[derive(Debug, Clone)]
pub struct Serving {
    /// The mount point.
    pub dir: PathBuf,
    /// The volume "vol" is this file.
    pub image: PathBuf,
    /// The session file.
    pub session: PathBuf,
}

/// A volume "vol" over `image`, in a catalog.
pub fn catalog_over(image: &Path, device: Option<Arc<dyn BlockDevice>>) -> Arc<TestCatalog> {
    let dev = device.unwrap_or_else(|| {
        Arc::new(FileDevice::open(image, &OpenOptions::default()).expect("open the image"))
    });
    let catalog = Arc::new(TestCatalog::default());
    catalog.add(Export::Volume(Volume::new("vol", dev)));
    catalog
}

/// A helper process serving `fd`; killed (SIGKILL) on drop.
pub struct Helper {
    child: Child,
}

impl Helper {
    /// Start the helper test `test` of this executable and wait until it serves. `stall`:
    /// reads at this offset hang, after creating the marker file.
    pub fn spawn(
        test: &str,
        fd: &OwnedFd,
        s: &Serving,
        start: Start,
        stall: Option<(u64, &Path)>,
    ) -> Helper {
        let mut cmd = Command::new(std::env::current_exe().expect("test executable"));
        cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(
                ENV_MODE,
                if start == Start::Fresh {
                    "fresh"
                } else {
                    "resume"
                },
            )
            .env(ENV_DIR, &s.dir)
            .env(ENV_IMAGE, &s.image)
            .env(ENV_SESSION, &s.session)
            .stdin(Stdio::from(
                fd.try_clone().expect("dup the FUSE descriptor"),
            ))
            .stdout(Stdio::piped());
        if let Some((at, marker)) = stall {
            cmd.env(ENV_STALL_AT, at.to_string())
                .env(ENV_STALL_MARKER, marker);
        }
        let mut child = cmd.spawn().expect("spawn the helper");
        let stdout = child.stdout.take().expect("helper stdout");
        let helper = Helper { child };
        // The helper prints nothing after this line.
        let ready = io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains(READY));
        assert!(ready, "the helper never served (see its output above)");
        helper
    }

    /// kill -9, and reap it.
    pub fn kill(mut self) {
        self.kill_now();
    }

    fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// Reads touching `at` hang forever, after creating `marker`.
fn stalling(inner: FileDevice, at: u64, marker: PathBuf) -> HookedDevice<FileDevice> {
    HookedDevice {
        inner,
        before_read: Box::new(move |offset, len| {
            if offset <= at && at < offset + len as u64 {
                std::fs::write(&marker, b"stalled")?;
                loop {
                    std::thread::sleep(Duration::from_secs(60));
                }
            }
            Ok(())
        }),
    }
}

/// Declare after the guards of anything stacked on the FUSE file (loop devices, mounts), so
/// that it is dropped before them: if the test failed, abort the FUSE connection first, so
/// that undoing them gets errors rather than waits for a server that is gone.
pub struct AbortOnPanic(pub PathBuf);

impl Drop for AbortOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = fss_fuse::abort_connection(&self.0);
        }
    }
}

/// Declare first, so that it is dropped last: detaches the FUSE mount whatever happened.
pub struct DetachLast(pub PathBuf);

impl Drop for DetachLast {
    fn drop(&mut self) {
        // Not is_mount_point: a stat of a mount nobody serves would wait forever.
        if fss_fuse::connection_id(&self.0).is_ok() {
            let _ = fss_fuse::detach_mount(&self.0);
        }
    }
}

/// In the helper process (when [`ENV_MODE`] is set): serve the connection on standard input
/// until killed. Elsewhere: return at once.
pub fn serve_if_helper() {
    let Ok(mode) = std::env::var(ENV_MODE) else {
        return;
    };
    let var = |k: &str| PathBuf::from(std::env::var_os(k).unwrap_or_default());
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .expect("the FUSE descriptor on stdin");
    let image = var(ENV_IMAGE);
    let device: Option<Arc<dyn BlockDevice>> = std::env::var(ENV_STALL_AT).ok().map(|at| {
        let inner = FileDevice::open(&image, &OpenOptions::default()).expect("open the image");
        let at = at.parse().expect("a stall offset");
        Arc::new(stalling(inner, at, var(ENV_STALL_MARKER))) as Arc<dyn BlockDevice>
    });
    let catalog = catalog_over(&image, device);
    let start = if mode == "fresh" {
        Start::Fresh
    } else {
        Start::Resume
    };
    let fuse = FuseFrontEnd::serve_connection(
        fd,
        &var(ENV_DIR),
        catalog,
        Hooks::default(),
        &var(ENV_SESSION),
        start,
    )
    .expect("serve the connection");
    println!("\n{READY}");
    std::thread::sleep(Duration::from_secs(600));
    drop(fuse);
}
