//! Shared by the integration tests: a test catalog, requirement checks that fail loudly, a lock
//! that serialises tests using mounts and loop devices, and guards that undo loop devices and
//! mounts in every outcome.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod child;

use fss_core::device::{BlockDevice, FileDevice, OpenOptions};
use fss_core::export::{Catalog, Export, ExportInfo};
use fss_core::Volume;
use fss_fuse::Hooks;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// Tests in one binary run on parallel threads; those that mount or use loop devices take this.
static SERIAL: Mutex<()> = Mutex::new(());

/// Serialise this test with the others of its binary and check the machine can run it.
pub fn serial() -> MutexGuard<'static, ()> {
    let g = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    require_fuse();
    g
}

/// Fail (never skip) when FUSE cannot be used here.
pub fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "these tests need /dev/fuse (the fuse kernel module); it is missing"
    );
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests need root (to mount FUSE and attach loop devices); run them as root"
    );
}

/// Fail (never skip) when a command the test needs is missing.
pub fn require_commands(cmds: &[&str]) {
    for c in cmds {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(c).is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "this test needs `{c}` (packages: util-linux for losetup/fallocate, e2fsprogs for \
             mkfs.ext4/e2fsck, fio); it is not on PATH"
        );
    }
}

/// Run a command; panic with its output if it fails.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = output(cmd, args);
    assert!(
        out.status.success(),
        "`{cmd} {}` failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Run a command and return its output whatever the status.
pub fn output(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{cmd}`: {e}"))
}

/// A catalog the test changes while it is mounted.
#[derive(Default)]
pub struct TestCatalog {
    exports: RwLock<BTreeMap<String, Export>>,
}

impl TestCatalog {
    pub fn add(&self, export: Export) {
        self.exports
            .write()
            .unwrap()
            .insert(export.name().to_string(), export);
    }

    pub fn remove(&self, name: &str) -> Option<Export> {
        self.exports.write().unwrap().remove(name)
    }
}

impl Catalog for TestCatalog {
    fn lookup(&self, name: &str) -> Option<Export> {
        self.exports.read().unwrap().get(name).cloned()
    }

    fn list(&self) -> Vec<ExportInfo> {
        self.exports
            .read()
            .unwrap()
            .values()
            .map(|e| ExportInfo {
                name: e.name().to_string(),
                description: if e.is_read_only() {
                    "snapshot".into()
                } else {
                    "volume".into()
                },
                read_only: e.is_read_only(),
                len: e.len(),
            })
            .collect()
    }
}

/// Events from the open/close hook: (name, opened).
pub type Events = Arc<Mutex<Vec<(String, bool)>>>;

/// Hooks that record every open/close event.
pub fn recording_hooks() -> (Hooks, Events) {
    let events: Events = Arc::default();
    let e = Arc::clone(&events);
    let hooks = Hooks {
        on_open_change: Some(Arc::new(move |name: &str, open: bool| {
            e.lock().unwrap().push((name.to_string(), open));
        })),
    };
    (hooks, events)
}

/// Runs before each read of the device it is given to: (offset, length).
pub type BeforeRead = Box<dyn Fn(u64, usize) -> io::Result<()> + Send + Sync>;

/// A device that calls a function before every read (to hold or stall some reads).
pub struct HookedDevice<D> {
    pub inner: D,
    pub before_read: BeforeRead,
}

impl<D: BlockDevice> BlockDevice for HookedDevice<D> {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (self.before_read)(offset, buf.len())?;
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.discard(offset, len)
    }
    fn describe(&self) -> String {
        format!("hooked {}", self.inner.describe())
    }
}

/// A volume over a new sparse file of `len` bytes.
pub fn file_volume(name: &str, path: &Path, len: u64) -> Volume {
    let dev = FileDevice::open(
        path,
        &OpenOptions {
            create_len: Some(len),
            exclusive: true,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    Volume::new(name, Arc::new(dev))
}

/// A temporary directory on a disk file system (not tmpfs), for images and measurements.
pub fn disk_tempdir() -> tempfile::TempDir {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let tmp = std::env::temp_dir();
    // f_type is i64 on x86_64 but narrower elsewhere.
    #[allow(clippy::unnecessary_cast)]
    let on_tmpfs = |p: &Path| {
        rustix::fs::statfs(p)
            .map(|s| s.f_type as i64 == TMPFS_MAGIC)
            .unwrap_or(true)
    };
    let base = if on_tmpfs(&tmp) {
        PathBuf::from("/var/tmp")
    } else {
        tmp
    };
    assert!(
        !on_tmpfs(&base),
        "need a disk file system for test images: {} is tmpfs",
        base.display()
    );
    tempfile::Builder::new()
        .prefix("fss-fuse-test")
        .tempdir_in(base)
        .unwrap()
}

/// Whether `dir` is a mount point (its device differs from its parent's).
pub fn is_mount_point(dir: &Path) -> bool {
    let Some(parent) = dir.parent() else {
        return true;
    };
    match (rustix::fs::stat(dir), rustix::fs::stat(parent)) {
        (Ok(a), Ok(b)) => a.st_dev != b.st_dev,
        // A dead FUSE mount fails stat with ENOTCONN: still a mount point.
        _ => true,
    }
}

/// The mountinfo line of the mount at `dir`, if any.
pub fn mountinfo_line(dir: &Path) -> Option<String> {
    let dir = dir.canonicalize().ok()?;
    let dir = dir.to_str()?.to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()?
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(dir.as_str()))
        .map(str::to_string)
}

/// Poll `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A loop device, detached on drop.
pub struct LoopDev {
    pub dev: String,
}

impl LoopDev {
    /// `losetup -f --show [args] file`.
    pub fn attach(file: &Path, args: &[&str]) -> LoopDev {
        require_commands(&["losetup"]);
        let mut a = vec!["-f", "--show"];
        a.extend_from_slice(args);
        let f = file.to_str().unwrap();
        a.push(f);
        let dev = run("losetup", &a);
        assert!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
        LoopDev { dev }
    }

    /// Whether the kernel does direct I/O on the backing file.
    pub fn direct_io(&self) -> bool {
        let name = self.dev.trim_start_matches("/dev/");
        std::fs::read_to_string(format!("/sys/block/{name}/loop/dio"))
            .map(|s| s.trim() == "1")
            .unwrap_or(false)
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        for _ in 0..50 {
            let out = output("losetup", &["-d", &self.dev]);
            if out.status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("warning: could not detach {}", self.dev);
    }
}

/// A mounted block device, unmounted on drop.
pub struct FsMount {
    pub dir: PathBuf,
}

impl FsMount {
    pub fn mount(dev: &str, dir: &Path, options: &str) -> FsMount {
        std::fs::create_dir_all(dir).unwrap();
        let d = dir.to_str().unwrap();
        if options.is_empty() {
            run("mount", &[dev, d]);
        } else {
            run("mount", &["-o", options, dev, d]);
        }
        FsMount {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for FsMount {
    fn drop(&mut self) {
        let d = self.dir.to_str().unwrap_or_default().to_string();
        for _ in 0..50 {
            if output("umount", &[&d]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("warning: lazily unmounting {d}");
        let _ = output("umount", &["-l", &d]);
    }
}

/// A deterministic pseudo-random byte stream (xorshift64*), so tests need no RNG crate.
pub struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Pattern(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}
