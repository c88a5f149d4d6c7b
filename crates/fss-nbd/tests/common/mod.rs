//! Test helpers: a server with a sparse file volume `default` on a unix socket in a temporary
//! directory, external NBD clients run with a timeout, and a raw protocol client.

#![allow(dead_code, missing_docs)]

pub mod client;
pub mod tls;

use fss_core::device::{FileDevice, OpenOptions};
use fss_core::export::Export;
use fss_core::store::DeviceStore;
use fss_core::{Snapshot, SnapshotOptions, Volume};
use fss_nbd::{ServeError, Server, ServerOptions, ShutdownHandle, StaticCatalog};
use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A running server over a catalog with the volume `default` (a sparse file) and any snapshots
/// the test takes.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub image: PathBuf,
    pub volume: Volume,
    pub catalog: Arc<StaticCatalog>,
    pub server: Server,
    stop: ShutdownHandle,
    thread: Option<JoinHandle<Result<(), ServeError>>>,
}

impl Harness {
    /// A fresh sparse volume of `size` bytes, served as `default`.
    pub fn new(size: u64) -> Self {
        Self::with_options(size, ServerOptions::default())
    }

    pub fn with_options(size: u64, options: ServerOptions) -> Self {
        Self::with_device(size, options, false)
    }

    /// As `with_options`, with the volume opened as `fss serve` opens one (`direct_large`:
    /// small reads through the ring go O_DIRECT, and complete after the submitting call).
    pub fn with_device(size: u64, options: ServerOptions, direct_large: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("fss-nbd-test-")
            .tempdir()
            .unwrap();
        let image = dir.path().join("default.img");
        let dev = FileDevice::open(
            &image,
            &OpenOptions {
                create_len: Some(size),
                exclusive: true,
                direct_large,
                ..OpenOptions::default()
            },
        )
        .unwrap();
        let volume = Volume::new("default", Arc::new(dev));
        let catalog = Arc::new(StaticCatalog::new());
        catalog.insert(Export::Volume(volume.clone()));
        let socket = dir.path().join("nbd.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let server = Server::new(catalog.clone(), options);
        let stop = server.shutdown_handle();
        let s = server.clone();
        let thread = Some(std::thread::spawn(move || s.serve_unix(listener)));
        Harness {
            dir,
            socket,
            image,
            volume,
            catalog,
            server,
            stop,
            thread,
        }
    }

    /// Take a (transient) snapshot and serve it.
    pub fn snapshot(&self, name: &str) -> Snapshot {
        let s = self
            .volume
            .create_snapshot(name, &SnapshotOptions::default(), DeviceStore::in_memory)
            .unwrap();
        self.catalog.insert(Export::Snapshot(s.clone()));
        s
    }

    /// Take a (transient) snapshot whose store is a file in the test's directory, opened as
    /// `fss serve` opens one (so reads of its preserved blocks can go through the ring), and
    /// serve it.
    pub fn snapshot_on_file(&self, name: &str) -> Snapshot {
        let path = self.dir.path().join(format!("{name}.store"));
        let s = self
            .volume
            .create_snapshot(name, &SnapshotOptions::default(), |p| {
                let opts = OpenOptions {
                    create_len: Some(0),
                    direct_large: true,
                    ..OpenOptions::default()
                };
                let dev = FileDevice::open(&path, &opts).unwrap();
                Ok(Box::new(DeviceStore::new(Arc::new(dev), p, false))
                    as Box<dyn fss_core::store::Store>)
            })
            .unwrap();
        self.catalog.insert(Export::Snapshot(s.clone()));
        s
    }

    /// The NBD URI of an export.
    pub fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    /// The volume's bytes, read through the engine.
    pub fn volume_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; self.volume.len() as usize];
        self.volume.read(&mut b, 0).unwrap();
        b
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.shutdown();
        if let Some(t) = self.thread.take() {
            let r = t.join();
            if !std::thread::panicking() {
                r.unwrap().unwrap();
            }
        }
        if !self.server.wait_idle(Duration::from_secs(10)) {
            self.stop.disconnect_all();
            let _ = self.server.wait_idle(Duration::from_secs(10));
        }
    }
}

/// Fail (never skip) when an external client is missing, saying what to install.
pub fn require(tool: &str, package: &str) {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "`{tool}` is needed by this test but is not installed; install it with \
         `apt-get install {package}`"
    );
}

/// Run a command with a time limit, returning its output (killed and failed if it hangs).
pub fn run(cmd: &mut Command, limit: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let e = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{desc} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    }
}

/// Run and require success; returns stdout as text.
pub fn run_ok(cmd: &mut Command) -> String {
    let desc = format!("{cmd:?}");
    let out = run(cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{desc} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A small deterministic PRNG (xorshift64*), so tests need no extra crates.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Whether the server closed the TCP connection `s` within `limit` (a read returns the end, or
/// fails otherwise than by timing out); whatever the server sends meanwhile is skipped.
pub fn tcp_closed_within(s: &mut std::net::TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut b = [0u8; 4096];
    let t = Instant::now();
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) if t.elapsed() < limit => {}
            Ok(_) => return false,
            Err(e) => return !matches!(e.kind(), std::io::ErrorKind::WouldBlock),
        }
    }
}

/// The stdout of a qemu tool (`desc` for the message), which must have succeeded without
/// "failed" in its output (qemu-io reports failed requests and still exits 0).
pub fn qemu_stdout_ok(desc: &str, out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success() && !stdout.contains("failed") && !stderr.contains("failed"),
        "{desc} failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout
}

pub fn file_bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}
