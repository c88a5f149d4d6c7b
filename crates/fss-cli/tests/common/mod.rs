//! A real daemon on a temporary state directory, driven through the `fss` and `fssconfig`
//! binaries.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod loopdev;
pub mod rgw;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const FSS: &str = env!("CARGO_BIN_EXE_fss");
pub const FSSCONFIG: &str = env!("CARGO_BIN_EXE_fssconfig");

/// Pseudo-random bytes from `seed` (xorshift): incompressible, distinct per seed.
pub fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A running daemon; killed (SIGKILL) on drop if still running.
pub struct Daemon {
    pub dir: PathBuf,
    pub child: Option<Child>,
    pub log: Arc<Mutex<String>>,
    pub extra: Vec<String>,
    /// Environment for the first start only: a restart runs without it.
    pub env: Vec<(String, String)>,
    /// The `fss` binary `fss serve` runs from.
    pub binary: PathBuf,
    /// A command that runs it (for example `setpriv` to another user), which must exec it.
    pub wrapper: Vec<String>,
}

/// The outcome of a command.
pub struct Run {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            status: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Daemon {
    /// Start `fss serve` on `dir` and wait for `ready`.
    pub fn start(dir: &Path) -> Daemon {
        Self::start_with(dir, &[])
    }

    pub fn start_with(dir: &Path, extra: &[&str]) -> Daemon {
        Self::start_full(dir, extra, &[])
    }

    /// Start with extra environment variables (test hooks); a restart runs without them.
    pub fn start_with_env(dir: &Path, env: &[(&str, &str)]) -> Daemon {
        Self::start_full(dir, &[], env)
    }

    /// Start `fss serve` from a copy of the binary (to replace it under a running daemon).
    pub fn start_from(dir: &Path, binary: &Path) -> Daemon {
        let mut d = Self::unstarted(dir, &[], &[]);
        d.binary = binary.to_path_buf();
        d.spawn();
        d
    }

    /// Start `fss serve` from `binary` through `wrapper` (a command that execs it, such as
    /// `setpriv`).
    pub fn start_through(dir: &Path, binary: &Path, wrapper: &[&str], extra: &[&str]) -> Daemon {
        let mut d = Self::unstarted(dir, extra, &[]);
        d.binary = binary.to_path_buf();
        d.wrapper = wrapper.iter().map(ToString::to_string).collect();
        d.spawn();
        d
    }

    fn start_full(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut d = Self::unstarted(dir, extra, env);
        d.spawn();
        d
    }

    fn unstarted(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon {
            dir: dir.to_path_buf(),
            child: None,
            log: Arc::default(),
            extra: extra.iter().map(ToString::to_string).collect(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
            binary: PathBuf::from(FSS),
            wrapper: Vec::new(),
        }
    }

    fn spawn(&mut self) {
        let mut command = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        let mut child = command
            .arg("serve")
            .args(&self.extra)
            .env("FSS_STATE_DIR", &self.dir)
            // The journals of held writes, kept with the test's files.
            .env("FSS_RUN_DIR", self.dir.join("run"))
            .env("FSS_LOG", "info")
            .envs(std::mem::take(&mut self.env))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start fss serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::clone(&self.log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(l)) = lines.next() {
                let _ = tx.send(l);
            }
            for _ in lines {}
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) if l == "ready" => {}
            other => {
                let _ = child.kill();
                panic!(
                    "daemon did not get ready ({other:?}); log:\n{}",
                    self.log.lock().unwrap()
                );
            }
        }
        self.child = Some(child);
    }

    /// Run `fss ARGS` against this daemon.
    pub fn fss(&self, args: &[&str]) -> Run {
        Command::new(FSS)
            .args(args)
            .env("FSS_STATE_DIR", &self.dir)
            .output()
            .expect("run fss")
            .into()
    }

    /// Run `fss ARGS`, expecting success; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let r = self.fss(args);
        assert_eq!(r.status, 0, "fss {args:?} failed: {}{}", r.stdout, r.stderr);
        r.stdout
    }

    /// Run `fssconfig ARGS`.
    pub fn fssconfig(&self, args: &[&str]) -> Run {
        Command::new(FSSCONFIG)
            .args(args)
            .env("FSS_STATE_DIR", &self.dir)
            .output()
            .expect("run fssconfig")
            .into()
    }

    /// Run `fss ARGS --json` and parse it.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).expect("valid JSON")
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            // A killed daemon leaves its FUSE directory mounted but dead: detach it.
            let _ = Command::new("umount")
                .args(["-l"])
                .arg(self.dir.join("dev"))
                .stderr(Stdio::null())
                .status();
        }
    }

    /// SIGTERM and wait; the exit status.
    pub fn stop(&mut self) -> i32 {
        let Some(mut c) = self.child.take() else {
            return -1;
        };
        let pid = rustix::process::Pid::from_child(&c);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let t = Instant::now();
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            if t.elapsed() > Duration::from_secs(40) {
                let _ = c.kill();
                panic!("daemon did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Start again after a stop, on the same state directory.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the daemon still runs");
        self.spawn();
    }

    /// SIGTERM, then start again on the same state directory.
    pub fn stop_and_start(&mut self) {
        assert_eq!(self.stop(), 0, "daemon exit status; log:\n{}", self.log());
        self.spawn();
    }

    /// Write `len` bytes of `byte` at `offset` through the FUSE file of volume `volume`, and
    /// make them durable (fsync).
    pub fn write_volume(&self, volume: &str, offset: u64, len: usize, byte: u8) {
        self.write_volume_bytes(volume, offset, &vec![byte; len]);
    }

    /// Write `bytes` at `offset` through the FUSE file of volume `volume`, durably.
    pub fn write_volume_bytes(&self, volume: &str, offset: u64, bytes: &[u8]) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.dir.join("dev").join(volume))
            .unwrap_or_else(|e| panic!("open the FUSE file of {volume}: {e}"));
        f.write_all_at(bytes, offset).unwrap();
        f.sync_all().unwrap();
    }

    /// The pid of the process serving I/O (`status` field `pid`).
    pub fn serving_pid(&self) -> u32 {
        u32::try_from(self.json(&["status"])["pid"].as_u64().unwrap()).unwrap()
    }

    /// kill -9 the serving process (not the supervisor this helper started); its pid.
    pub fn kill9_serving(&self) -> u32 {
        let pid = self.serving_pid();
        signal(pid, rustix::process::Signal::KILL);
        pid
    }

    /// Wait until a process other than `old` answers `status`: its pid, and how long it took.
    pub fn wait_for_successor(&self, old: u32) -> (u32, Duration) {
        let t = Instant::now();
        loop {
            let r = self.fss(&["status", "--json"]);
            if r.status == 0 {
                let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
                let pid = u32::try_from(v["pid"].as_u64().unwrap()).unwrap();
                if pid != old {
                    return (pid, t.elapsed());
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "no new serving process; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

/// Fail (never skip) when a tool is missing, saying what to install.
pub fn require(tool: &str, package: &str) {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        ok,
        "`{tool}` is needed by this test: apt-get install {package}"
    );
}

/// Wait until `cond` holds, at most `limit` (then fail, saying `what`).
/// Fail (never skip) when a tool is missing, saying which package to install.
pub fn require_tool(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    assert!(
        found,
        "`{tool}` is needed by this test but is not installed: `apt-get install {package}`"
    );
}

/// Fail (never skip) unless this test runs as root (CI does).
pub fn require_root(why: &str) {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test must run as root: {why}"
    );
}

pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < limit, "{what} (waited {limit:?})");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The names in `fss snapshot list`, oldest first.
pub fn snapshot_names(d: &Daemon) -> Vec<String> {
    d.json(&["snapshot", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

/// Send `sig` to `pid`.
pub fn signal(pid: u32, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
    let _ = rustix::process::kill_process(pid, sig);
}

/// Whether `pid` runs (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        let state = s.rsplit(')').next().unwrap_or("").trim_start();
        !state.starts_with('Z') && !state.starts_with('X')
    })
}

/// The NBD URL of an export of `d`.
pub fn nbd(d: &Daemon, name: &str) -> String {
    format!(
        "nbd+unix:///{name}?socket={}",
        d.dir.join("nbd.sock").display()
    )
}

/// Run qemu-io commands against an export; panics with its output on failure.
pub fn qemu_io(d: &Daemon, name: &str, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    let o = c
        .arg(nbd(d, name))
        .output()
        .expect("qemu-io (apt-get install qemu-utils)");
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && !text.contains("failed"),
        "qemu-io {cmds:?} on {name}: {text}"
    );
}

/// `fss checksum NAME`.
pub fn checksum(d: &Daemon, name: &str) -> String {
    d.ok(&["checksum", name]).trim().to_string()
}

/// SHA-256 (hex) of a file's or device's contents.
pub fn sha256(path: &Path) -> String {
    let o = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(o.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// `fss ARGS`, expecting failure with status 1; its stderr.
pub fn fails(d: &Daemon, args: &[&str]) -> String {
    let r: Run = d.fss(args);
    assert_eq!(
        r.status, 1,
        "fss {args:?} should fail with 1: {}{}",
        r.stdout, r.stderr
    );
    r.stderr
}

/// `dir/data.img`: an 8 MiB image with recognisable bytes.
pub fn pattern_image(dir: &Path) -> PathBuf {
    let image = dir.join("data.img");
    let data: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&image, &data).unwrap();
    image
}

/// A snapshot's `state` and `reason` in `fss snapshot list --json`.
pub fn snapshot_state(d: &Daemon, name: &str) -> (String, Option<String>) {
    let list = d.json(&["snapshot", "list"]);
    let s = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no snapshot {name} in {list}"));
    (
        s["state"].as_str().unwrap().to_string(),
        s["reason"].as_str().map(ToString::to_string),
    )
}

/// A volume's entry in `fss volume list --json`.
pub fn volume(d: &Daemon, name: &str) -> serde_json::Value {
    d.json(&["volume", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .cloned()
        .unwrap()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}
