//! NBD end to end against a real daemon (`fss serve`), judged by real clients: fio writing and
//! verifying on four connections; fleecing (copy the volume, snapshot, write again: the
//! snapshot export is the copy and `fss:preserved` is exactly what was written since);
//! libnbd's errors for wrong requests and a raw client dropping connections mid-request, the
//! server serving on; and a differential run of one random command sequence against
//! `nbdkit memory` and an fss volume.
//!
//! Every peer runs on unix sockets in the test's temporary directory. A missing tool fails the
//! test with the package to install; nothing is skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::Daemon;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// The granularity of `fss:preserved`.
const BLOCK: u64 = 4 * KIB;

// ---------------------------------------------------------------------------------------------
// Helpers: tools, commands with a time limit, a daemon in a temporary directory.

/// Fail (never skip) when a tool is missing, saying what to install.
fn require(tool: &str, package: &str) {
    let ok = tool_command(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "`{tool}` is needed by this test but does not run here: install {package} \
         (`apt-get install {package}`)"
    );
}

/// A command for a tool; nbdsh runs with Debian's python first on PATH (the one with the
/// libnbd module).
fn tool_command(tool: &str) -> Command {
    let mut c = Command::new(tool);
    if tool == "nbdsh" {
        let path = std::env::var("PATH").unwrap_or_default();
        c.env("PATH", format!("/usr/bin:{path}"));
    }
    c
}

/// Run a command with a time limit (killed and failed if it hangs).
fn run(cmd: &mut Command, limit: Duration) -> Output {
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

/// Stdout and stderr of an output, for messages.
fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Run with a time limit and require exit status 0; stdout as text.
fn run_ok(cmd: &mut Command, limit: Duration) -> String {
    let desc = format!("{cmd:?}");
    let o = run(cmd, limit);
    assert!(o.status.success(), "{desc} failed: {}", text(&o));
    String::from_utf8(o.stdout).unwrap()
}

/// A daemon on its own temporary state directory. The daemon is declared first so it is
/// killed before the directory goes.
struct Fixture {
    d: Daemon,
    tmp: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::Builder::new()
            .prefix("fss-nbd-e2e-")
            .tempdir()
            .unwrap();
        let d = Daemon::start(&tmp.path().join("state"));
        Fixture { d, tmp }
    }

    fn socket(&self) -> PathBuf {
        self.d.dir.join("nbd.sock")
    }

    fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket().display())
    }

    /// A path in the temporary directory (outside the state directory).
    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

/// A child process (nbdkit) killed by its PID when the test ends, however it ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run `nbdsh -c SCRIPT` with `env`, with a time limit; the output whatever the status.
fn nbdsh(script: &str, env: &[(&str, &str)], limit: Duration) -> Output {
    let mut c = tool_command("nbdsh");
    c.arg("-c").arg(script);
    for (k, v) in env {
        c.env(k, v);
    }
    run(&mut c, limit)
}

// ---------------------------------------------------------------------------------------------
// 1. fio on four connections.

/// fio's options for four jobs (one NBD connection each) writing disjoint 40 MiB regions of
/// `vol` at random with mixed block sizes (some below 4 KiB and not 4 KiB aligned), then
/// reading everything back against crc32c.
fn fio_verify_args(uri: &str) -> Vec<String> {
    [
        "--name=fss-e2e",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--rw=randwrite",
        "--bssplit=512/10:1536/10:4k/40:12k/20:64k/20",
        "--iodepth=16",
        "--numjobs=4",
        "--size=40M",
        "--offset_increment=64M",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--verify_state_save=0",
        "--output-format=json",
        "--output=fio.json",
    ]
    .iter()
    .map(ToString::to_string)
    .collect()
}

/// Run fio in `cwd` (it writes state files there); check the exit status, the absence of
/// verify complaints and each job's JSON: no error, `write` and `read` bytes as expected.
/// `during` runs while fio does.
fn run_fio_verify(cwd: &Path, args: &[String], write: u64, read: u64, during: impl FnOnce()) {
    let o = std::thread::scope(|s| {
        let fio = s.spawn(|| {
            run(
                Command::new("fio").current_dir(cwd).args(args),
                Duration::from_secs(60),
            )
        });
        during();
        fio.join().unwrap()
    });
    let all = text(&o);
    assert!(o.status.success(), "fio failed: {all}");
    assert!(
        !all.contains("verify:"),
        "fio reported verify failures: {all}"
    );
    let json = std::fs::read_to_string(cwd.join("fio.json")).unwrap();
    // fio may print notices before the JSON document.
    let doc: serde_json::Value = serde_json::from_str(&json[json.find('{').unwrap()..])
        .unwrap_or_else(|e| panic!("fio JSON: {e}\n{json}"));
    let jobs = doc["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 4, "{json}");
    for j in jobs {
        assert_eq!(j["error"], 0, "{j}");
        assert_eq!(j["write"]["io_bytes"], write, "{j}");
        assert_eq!(j["read"]["io_bytes"], read, "{j}");
    }
}

/// Wait (up to 5 s) until the daemon's log holds `n` NBD connections to `export`; their count.
fn nbd_connections(d: &Daemon, export: &str, n: usize) -> usize {
    let needle = format!("export={export} ");
    let count = || {
        d.log()
            .lines()
            .filter(|l| l.contains("NBD client connected") && l.contains(&needle))
            .count()
    };
    let t = Instant::now();
    while count() < n && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    count()
}

#[test]
fn fio_four_connections_write_and_verify() {
    require("fio", "fio");
    let mut f = Fixture::new();
    f.d.ok(&["volume", "create", "vol", "--size", "256M"]);
    let cwd = f.path("fio");
    std::fs::create_dir(&cwd).unwrap();
    let args = fio_verify_args(&f.uri("vol"));
    let size = 40 * MIB;
    // A snapshot taken while the four jobs write, once their I/O connections are up (fio's
    // engine, 3.33 here, first opens one connection per job to learn the size and closes it,
    // then one per job for the I/O: 8 in all); the writes go on through copy-on-write and
    // must still verify.
    run_fio_verify(&cwd, &args, size, size, || {
        let n = nbd_connections(&f.d, "vol", 8);
        assert!(n >= 4, "one connection per job, {n} seen: {}", f.d.log());
        f.d.ok(&["snapshot", "create", "vol", "mid"]);
    });
    let verify = |d: &Daemon| {
        let v = d.json(&["snapshot", "verify", "mid"]);
        assert_eq!(v["damaged"].as_array().unwrap().len(), 0, "{v}");
        let info = d.json(&["snapshot", "info", "mid"]);
        assert_eq!(info["state"], "valid", "{info}");
        // How much fio wrote after the snapshot depends on timing; for the record.
        eprintln!(
            "snapshot mid: {} blocks preserved",
            info["blocks_preserved"]
        );
    };
    verify(&f.d);

    // What fio wrote outlives the daemon: stop it cleanly, start it again and let fio verify
    // only (it replays the same seeded sequence; it counts the writes it replays without
    // sending them).
    assert_eq!(f.d.stop(), 0, "{}", f.d.log());
    f.d = Daemon::start(&f.d.dir.clone());
    let mut again = args.clone();
    again.push("--verify_only".into());
    run_fio_verify(&cwd, &again, size, size, || {});
    verify(&f.d);
}

// ---------------------------------------------------------------------------------------------
// 2. Fleecing.

/// fio writing every 4 KiB block of `[start, start + len)` exactly once (random order, the
/// random map on), with fresh random data for each write.
fn fio_fill(cwd: &Path, uri: &str, start: u64, len: u64, seed: u64) {
    let o = run_ok(
        Command::new("fio").current_dir(cwd).args([
            "--name=fill",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=4k",
            "--norandommap=0",
            "--refill_buffers=1",
            &format!("--randseed={seed}"),
            "--iodepth=16",
            &format!("--offset={start}"),
            &format!("--size={len}"),
            "--output-format=json",
        ]),
        Duration::from_secs(60),
    );
    let doc: serde_json::Value = serde_json::from_str(&o[o.find('{').unwrap()..]).unwrap();
    assert_eq!(doc["jobs"][0]["error"], 0, "{o}");
    assert_eq!(doc["jobs"][0]["write"]["io_bytes"], len, "{o}");
}

/// Merge sorted `(start, end)` ranges that touch.
fn merge(ranges: impl IntoIterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in ranges {
        match out.last_mut() {
            Some(last) if last.1 == s => last.1 = e,
            _ => out.push((s, e)),
        }
    }
    out
}

/// The 4 KiB blocks in which two equally long files differ, as merged byte ranges.
fn differing_blocks(a: &Path, b: &Path) -> Vec<(u64, u64)> {
    let (mut fa, mut fb) = (File::open(a).unwrap(), File::open(b).unwrap());
    let len = fa.metadata().unwrap().len();
    assert_eq!(
        len,
        fb.metadata().unwrap().len(),
        "{a:?} and {b:?} differ in size"
    );
    let chunk = 4 * MIB as usize;
    let (mut ba, mut bb) = (vec![0u8; chunk], vec![0u8; chunk]);
    let mut ranges = Vec::new();
    let mut at = 0u64;
    while at < len {
        let n = chunk.min((len - at) as usize);
        fa.read_exact(&mut ba[..n]).unwrap();
        fb.read_exact(&mut bb[..n]).unwrap();
        for (i, (x, y)) in ba[..n]
            .chunks(BLOCK as usize)
            .zip(bb[..n].chunks(BLOCK as usize))
            .enumerate()
        {
            if x != y {
                let s = at + i as u64 * BLOCK;
                ranges.push((s, s + x.len() as u64));
            }
        }
        at += n as u64;
    }
    merge(ranges)
}

#[test]
fn fleecing_snapshot_is_the_copy_and_preserved_is_exact() {
    for (tool, package) in [
        ("fio", "fio"),
        ("nbdcopy", "libnbd-bin"),
        ("nbdinfo", "libnbd-bin"),
        ("qemu-img", "qemu-utils"),
    ] {
        require(tool, package);
    }
    let f = Fixture::new();
    let size = 128 * MIB;
    f.d.ok(&["volume", "create", "vol", "--size", "128M"]);
    let cwd = f.path("fio");
    std::fs::create_dir(&cwd).unwrap();
    let vol = f.uri("vol");
    let limit = Duration::from_secs(60);

    // Random data on the first half, then copy A of the volume.
    fio_fill(&cwd, &vol, 0, 64 * MIB, 1);
    let copy_a = f.path("a.raw");
    run_ok(Command::new("nbdcopy").arg(&vol).arg(&copy_a), limit);

    // The snapshot, then fio again on a region that overlaps the written half and the
    // untouched one, 4 KiB aligned but not on the 64 KiB cluster size: every block of it
    // changes, nothing else does.
    f.d.ok(&["snapshot", "create", "vol", "fleece"]);
    let region = (40 * MIB + 12 * KIB, 88 * MIB + 32 * KIB);
    fio_fill(&cwd, &vol, region.0, region.1 - region.0, 2);
    let copy_b = f.path("b.raw");
    run_ok(Command::new("nbdcopy").arg(&vol).arg(&copy_b), limit);

    // The snapshot export reads as copy A; copy B is the volume now.
    let fleece = f.uri("fleece");
    let cmp = |file: &Path, uri: &str| {
        run_ok(
            Command::new("qemu-img")
                .args(["compare", "-f", "raw", "-F", "raw"])
                .arg(file)
                .arg(uri),
            limit,
        )
    };
    let out = cmp(&copy_a, &fleece);
    assert!(out.contains("Images are identical"), "{out}");
    let out = cmp(&copy_b, &vol);
    assert!(out.contains("Images are identical"), "{out}");

    // What changed, computed from the two copies: exactly the region fio wrote.
    assert_eq!(differing_blocks(&copy_a, &copy_b), vec![region]);

    // fss:preserved on the snapshot says the same.
    let map = run_ok(
        Command::new("nbdinfo")
            .args(["--map=fss:preserved", "--json"])
            .arg(&fleece),
        limit,
    );
    let extents: serde_json::Value =
        serde_json::from_str(&map).unwrap_or_else(|e| panic!("nbdinfo JSON: {e}\n{map}"));
    let mut next = 0u64;
    let mut preserved = Vec::new();
    for e in extents.as_array().unwrap() {
        let (off, len, kind) = (
            e["offset"].as_u64().unwrap(),
            e["length"].as_u64().unwrap(),
            e["type"].as_u64().unwrap(),
        );
        assert_eq!(off, next, "extents are contiguous: {map}");
        assert!(len > 0, "{map}");
        next = off + len;
        if kind & 1 != 0 {
            preserved.push((off, off + len));
        }
    }
    assert_eq!(next, size, "the map covers the export: {map}");
    assert_eq!(merge(preserved), vec![region], "{map}");

    let info = f.d.json(&["snapshot", "info", "fleece"]);
    assert_eq!(
        info["blocks_preserved"],
        (region.1 - region.0) / BLOCK,
        "{info}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Wrong requests through libnbd (strict mode off) and a raw client dropping connections.

/// Every case runs one wrong (or boundary) request on some connection and prints
/// `case NAME ok` or `case NAME ERRNO ERRNUM MESSAGE`; then `after NAME same=.. other=..`: a
/// read of the first 64 KiB on the same connection and on another one, against what they
/// must hold. libnbd cannot send an unknown command (it has no call for arbitrary command
/// numbers), so that case is in the raw-client test below (and in fss-nbd's protocol_abuse).
const NEGATIVE_PY: &str = r#"
import os, sys
import nbd

SOCK = os.environ["FSS_NBD_SOCKET"]
MIB = 1 << 20

def connect(name, structured=True):
    c = nbd.NBD()
    c.set_strict_mode(0)  # send what libnbd would otherwise refuse itself
    if not structured:
        c.set_request_structured_replies(False)
    c.connect_uri("nbd+unix:///%s?socket=%s" % (name, SOCK))
    return c

vol = connect("vol")
other = connect("vol")
simple = connect("vol", structured=False)
snap = connect("snap")
assert vol.get_structured_replies_negotiated()
assert not simple.get_structured_replies_negotiated()
size = vol.get_size()
print("size", size)
pattern = bytes((i * 7 + 3) % 251 for i in range(65536))
vol.pwrite(pattern, 0)
vol.flush()
zeroes = bytes(65536)

def case(name, conn, fn, expect=pattern):
    try:
        fn()
        res = "ok"
    except nbd.Error as e:
        res = "%s %s %s" % (e.errno, e.errnum, e.string.replace("\n", " "))
    print("case", name, res, flush=True)
    same = "ok" if conn.pread(65536, 0) == expect else "bad"
    oth = "ok" if other.pread(65536, 0) == pattern else "bad"
    print("after", name, "same=" + same, "other=" + oth, flush=True)

def write_largest():
    big = b"\x5a" * (32 * MIB)
    vol.pwrite(big, 64 * MIB)
    assert other.pread(32 * MIB, 64 * MIB) == big

def read_largest():
    d = vol.pread(32 * MIB, 0)
    assert len(d) == 32 * MIB and d[:65536] == pattern

# Out of range.
case("read_past_end", vol, lambda: vol.pread(4096, size - 1024))
case("read_at_end", vol, lambda: vol.pread(1, size))
case("read_offset_wraps", vol, lambda: vol.pread(512, 2**64 - 256))
case("write_past_end", vol, lambda: vol.pwrite(b"\xaa" * 4096, size - 1024))
case("trim_past_end", vol, lambda: vol.trim(8192, size - 4096))
case("zero_past_end", vol, lambda: vol.zero(8192, size - 4096))
case("cache_past_end", vol, lambda: vol.cache(4096, size))
# Too large (libnbd itself refuses over 64 MiB, so 32 MiB + 4 KiB).
case("read_too_large", vol, lambda: vol.pread(32 * MIB + 4096, 0))
case("read_too_large_simple", simple, lambda: simple.pread(32 * MIB + 4096, 0))
case("write_too_large", vol, lambda: vol.pwrite(b"\xaa" * (32 * MIB + 4096), 0))
case("write_too_large_simple", simple, lambda: simple.pwrite(b"\xaa" * (32 * MIB + 4096), 0))
# The largest requests allowed.
case("read_largest", vol, read_largest)
case("write_largest", vol, write_largest)
# A snapshot export is read-only; it still reads its zeroes.
case("snapshot_write", snap, lambda: snap.pwrite(b"\xaa" * 4096, 0), zeroes)
case("snapshot_trim", snap, lambda: snap.trim(4096, 0), zeroes)
case("snapshot_zero", snap, lambda: snap.zero(4096, 0), zeroes)
# Flags a command does not take, and one no command takes.
case("read_flag_req_one", vol, lambda: vol.pread(512, 0, flags=nbd.CMD_FLAG_REQ_ONE))
case("read_unknown_flag", vol, lambda: vol.pread(512, 0, flags=1 << 9))
case("read_df_simple", simple, lambda: simple.pread(512, 0, flags=nbd.CMD_FLAG_DF))
case("write_flag_df", vol, lambda: vol.pwrite(b"\xaa" * 512, 0, flags=nbd.CMD_FLAG_DF))
case("trim_flag_no_hole", vol, lambda: vol.trim(4096, 0, flags=nbd.CMD_FLAG_NO_HOLE))
case("flush_flag_df", vol, lambda: vol.flush(flags=nbd.CMD_FLAG_DF))
case("zero_fast", vol, lambda: vol.zero(4096, 0, flags=nbd.CMD_FLAG_FAST_ZERO))
# Block status without a metadata context selected.
case("block_status_without_context", vol, lambda: vol.block_status(4096, 0, lambda *a: 0))

fresh = connect("vol")
print("fresh", "ok" if fresh.pread(65536, 0) == pattern else "bad")
for c in (vol, other, simple, snap, fresh):
    c.shutdown()
print("done")
"#;

/// What each case must get: an errno name (with its Linux number) or `ok`.
const NEGATIVE_EXPECTED: &[(&str, &str)] = &[
    ("read_past_end", "EINVAL 22"),
    ("read_at_end", "EINVAL 22"),
    ("read_offset_wraps", "EINVAL 22"),
    // DESIGN: out of range is EINVAL. (fss-nbd's README says ENOSPC for writes; the server
    // and DESIGN say EINVAL.)
    ("write_past_end", "EINVAL 22"),
    ("trim_past_end", "EINVAL 22"),
    ("zero_past_end", "EINVAL 22"),
    ("cache_past_end", "EINVAL 22"),
    ("read_too_large", "EOVERFLOW 75"),
    ("read_too_large_simple", "EINVAL 22"),
    ("write_too_large", "EINVAL 22"),
    ("write_too_large_simple", "EINVAL 22"),
    ("read_largest", "ok"),
    ("write_largest", "ok"),
    ("snapshot_write", "EPERM 1"),
    ("snapshot_trim", "EPERM 1"),
    ("snapshot_zero", "EPERM 1"),
    ("read_flag_req_one", "EINVAL 22"),
    ("read_unknown_flag", "EINVAL 22"),
    ("read_df_simple", "EINVAL 22"),
    ("write_flag_df", "EINVAL 22"),
    ("trim_flag_no_hole", "EINVAL 22"),
    ("flush_flag_df", "EINVAL 22"),
    ("zero_fast", "ENOTSUP 95"),
    ("block_status_without_context", "EINVAL 22"),
];

#[test]
fn libnbd_wrong_requests_get_their_errno_and_the_server_serves_on() {
    require("nbdsh", "python3-libnbd");
    let mut f = Fixture::new();
    f.d.ok(&["volume", "create", "vol", "--size", "256M"]);
    f.d.ok(&["snapshot", "create", "vol", "snap"]);
    let socket = f.socket();
    let o = nbdsh(
        NEGATIVE_PY,
        &[("FSS_NBD_SOCKET", socket.to_str().unwrap())],
        Duration::from_secs(60),
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success() && out.lines().last() == Some("done"),
        "the script failed: {}",
        text(&o)
    );
    assert!(out.contains(&format!("size {}\n", 256 * MIB)), "{out}");
    let mut seen = Vec::new();
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("case ") {
            let (name, result) = rest.split_once(' ').unwrap();
            let want = NEGATIVE_EXPECTED
                .iter()
                .find(|(n, _)| *n == name)
                .unwrap_or_else(|| panic!("no expectation for case {name}"))
                .1;
            if want == "ok" {
                assert_eq!(result, "ok", "case {name}: {line}");
            } else {
                assert!(
                    result.starts_with(&format!("{want} ")),
                    "case {name}: want {want}, got: {line}"
                );
                // Sent by the server, not refused by libnbd before sending.
                assert!(
                    result.contains("command failed"),
                    "case {name} did not reach the server: {line}"
                );
            }
            seen.push(name.to_string());
        } else if let Some(rest) = line.strip_prefix("after ") {
            assert!(
                rest.ends_with(" same=ok other=ok"),
                "after a wrong request, both connections must read correctly: {line}\n{out}"
            );
        }
    }
    let want: Vec<&str> = NEGATIVE_EXPECTED.iter().map(|(n, _)| *n).collect();
    assert_eq!(seen, want, "{out}");
    assert_eq!(
        out.matches("\nafter ").count(),
        want.len(),
        "every case checked: {out}"
    );
    assert!(out.contains("\nfresh ok\n"), "{out}");
    // All connections closed: the daemon stops at once and cleanly.
    let t = Instant::now();
    assert_eq!(f.d.stop(), 0, "{}", f.d.log());
    assert!(t.elapsed() < Duration::from_secs(10), "{}", f.d.log());
}

// A raw client, from the protocol document: fixed newstyle, NBD_OPT_GO, simple replies.

const IHAVEOPT: &[u8; 8] = b"IHAVEOPT";
const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const NBD_EINVAL: u32 = 22;

/// A socket after the greeting, with the client flags sent.
fn raw_greet(socket: &Path) -> UnixStream {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    assert_eq!(&g[..8], b"NBDMAGIC");
    assert_eq!(&g[8..16], IHAVEOPT);
    // Fixed newstyle and no zeroes.
    s.write_all(&3u32.to_be_bytes()).unwrap();
    s
}

/// A connection in transmission on `export`, with simple replies; and the export's size.
fn raw_open(socket: &Path, export: &str) -> (UnixStream, u64) {
    let mut s = raw_greet(socket);
    let mut data = (export.len() as u32).to_be_bytes().to_vec();
    data.extend_from_slice(export.as_bytes());
    data.extend_from_slice(&0u16.to_be_bytes());
    let mut m = IHAVEOPT.to_vec();
    m.extend_from_slice(&OPT_GO.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(&data);
    s.write_all(&m).unwrap();
    let mut size = None;
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).unwrap();
        assert_eq!(
            u64::from_be_bytes(h[..8].try_into().unwrap()),
            OPTION_REPLY_MAGIC
        );
        let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let mut d = vec![0u8; u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize];
        s.read_exact(&mut d).unwrap();
        match kind {
            REP_INFO if d[..2] == [0, 0] => {
                size = Some(u64::from_be_bytes(d[2..10].try_into().unwrap()));
            }
            REP_INFO => {}
            REP_ACK => break,
            other => panic!("NBD_OPT_GO {export}: reply type {other:#x} {d:?}"),
        }
    }
    (s, size.expect("NBD_INFO_EXPORT"))
}

fn raw_header(flags: u16, cmd: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut b = REQUEST_MAGIC.to_be_bytes().to_vec();
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&cmd.to_be_bytes());
    b.extend_from_slice(&cookie.to_be_bytes());
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b
}

/// Read one simple reply: its error and, for a successful read, `len` bytes of data.
fn raw_reply(s: &mut UnixStream, cookie: u64, len: usize) -> (u32, Vec<u8>) {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    assert_eq!(
        u32::from_be_bytes(h[..4].try_into().unwrap()),
        SIMPLE_REPLY_MAGIC
    );
    let error = u32::from_be_bytes(h[4..8].try_into().unwrap());
    assert_eq!(u64::from_be_bytes(h[8..16].try_into().unwrap()), cookie);
    let mut data = vec![0u8; if error == 0 { len } else { 0 }];
    s.read_exact(&mut data).unwrap();
    (error, data)
}

fn raw_read(s: &mut UnixStream, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    s.write_all(&raw_header(0, CMD_READ, cookie, offset, len))
        .unwrap();
    let (error, data) = raw_reply(s, cookie, len as usize);
    assert_eq!(error, 0, "read of {len} at {offset}");
    data
}

fn raw_write(s: &mut UnixStream, cookie: u64, offset: u64, data: &[u8]) {
    let mut b = raw_header(0, CMD_WRITE, cookie, offset, data.len() as u32);
    b.extend_from_slice(data);
    s.write_all(&b).unwrap();
    assert_eq!(raw_reply(s, cookie, 0).0, 0, "write at {offset}");
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// First overwrites into a persistent snapshot are acknowledged before the store's flush and
/// held back from the volume until it: a read right after sees them, and a clean stop (no
/// FLUSH from the client) still puts them on the volume, with the snapshot intact.
#[test]
fn held_writes_are_read_back_and_survive_a_clean_stop() {
    let mut f = Fixture::new();
    f.d.ok(&["volume", "create", "hv", "--size", "64M"]);
    let socket = f.socket();
    let before = pattern(8 * MIB as usize, 3);
    let (mut c, _) = raw_open(&socket, "hv");
    raw_write(&mut c, 1, 0, &before);
    drop(c);
    f.d.ok(&["snapshot", "create", "hv", "p"]);
    let (mut c, _) = raw_open(&socket, "hv");
    let mut after = before.clone();
    let mut cookie = 100u64;
    for k in 0..128u64 {
        // One 4 KiB write into each of 128 clusters, each read back at once.
        let at = k * 65536 + 4096;
        let data = pattern(4096, k as u8);
        cookie += 2;
        raw_write(&mut c, cookie, at, &data);
        assert_eq!(
            raw_read(&mut c, cookie + 1, at, 4096),
            data,
            "read after write at {at}"
        );
        after[at as usize..at as usize + 4096].copy_from_slice(&data);
    }
    drop(c);
    f.d.stop_and_start();
    let (mut c, _) = raw_open(&f.socket(), "hv");
    let got = raw_read(&mut c, 1, 0, 8 * MIB as u32);
    assert!(
        got == after,
        "the volume after a clean stop lacks held writes"
    );
    let (mut s, _) = raw_open(&f.socket(), "p");
    let snap = raw_read(&mut s, 1, 0, 8 * MIB as u32);
    assert!(snap == before, "the snapshot changed");
    let v = f.d.json(&["snapshot", "verify", "p"]);
    assert_eq!(v["damaged"].as_array().unwrap().len(), 0, "{v}");
}

#[test]
fn raw_unknown_command_and_dropped_connections_leave_the_server_serving() {
    let mut f = Fixture::new();
    f.d.ok(&["volume", "create", "vol", "--size", "256M"]);
    f.d.ok(&["volume", "create", "drop", "--size", "64M"]);
    let socket = f.socket();
    let known = pattern(64 * KIB as usize, 7);

    // One connection stays open throughout and must keep working.
    let (mut keep, size) = raw_open(&socket, "vol");
    assert_eq!(size, 256 * MIB);
    raw_write(&mut keep, 1, 0, &known);
    let (mut d0, dsize) = raw_open(&socket, "drop");
    assert_eq!(dsize, 64 * MIB);
    raw_write(&mut d0, 1, 0, &known);
    drop(d0);
    let mut cookie = 10u64;
    let mut check = |what: &str| {
        cookie += 1;
        assert_eq!(
            raw_read(&mut keep, cookie, 0, known.len() as u32),
            known,
            "the open connection after {what}"
        );
        let (mut c, _) = raw_open(&socket, "drop");
        assert_eq!(
            raw_read(&mut c, 1, 0, known.len() as u32),
            known,
            "a new connection after {what}"
        );
        // The torn write of 1 MiB at 4 MiB was never applied.
        assert!(
            raw_read(&mut c, 2, 4 * MIB, MIB as u32)
                .iter()
                .all(|&b| b == 0),
            "the region of the truncated write after {what}"
        );
        c.write_all(&raw_header(0, CMD_DISC, 3, 0, 0)).unwrap();
    };

    // An unknown command (libnbd cannot send one): EINVAL, and the same connection goes on.
    {
        let (mut c, _) = raw_open(&socket, "drop");
        c.write_all(&raw_header(0, 0x42, 7, 0, 512)).unwrap();
        assert_eq!(raw_reply(&mut c, 7, 0).0, NBD_EINVAL, "unknown command");
        assert_eq!(raw_read(&mut c, 8, 0, known.len() as u32), known);
    }
    check("an unknown command");

    // A write header claiming 1 MiB, half the payload, then the connection closes.
    {
        let (mut c, _) = raw_open(&socket, "drop");
        c.write_all(&raw_header(0, CMD_WRITE, 1, 4 * MIB, MIB as u32))
            .unwrap();
        c.write_all(&vec![0xee; (MIB / 2) as usize]).unwrap();
    }
    check("a write cut off mid-payload");

    // Half a request header, then close.
    {
        let (mut c, _) = raw_open(&socket, "drop");
        c.write_all(&raw_header(0, CMD_READ, 1, 0, 4096)[..14])
            .unwrap();
    }
    check("half a request header");

    // A large read whose reply is never read: the connection closes under the server.
    {
        let (mut c, _) = raw_open(&socket, "drop");
        c.write_all(&raw_header(0, CMD_READ, 1, 0, 32 * MIB as u32))
            .unwrap();
        c.write_all(&raw_header(0, CMD_READ, 2, 0, 32 * MIB as u32))
            .unwrap();
    }
    check("reads abandoned by their client");

    // Half an option in the handshake, then close.
    {
        let mut c = raw_greet(&socket);
        let mut m = IHAVEOPT.to_vec();
        m.extend_from_slice(&OPT_GO.to_be_bytes());
        m.extend_from_slice(&100u32.to_be_bytes());
        m.extend_from_slice(b"dr");
        c.write_all(&m).unwrap();
    }
    check("half an option");

    // The server let go of every dropped connection: the volume can be removed (refused while
    // it is open), soon.
    let t = Instant::now();
    loop {
        let r = f.d.fss(&["volume", "remove", "drop"]);
        if r.status == 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "`fss volume remove drop` still refused after 10 s: {}{}\n{}",
            r.stdout,
            r.stderr,
            f.d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    cookie += 1;
    assert_eq!(raw_read(&mut keep, cookie, 0, known.len() as u32), known);
    keep.write_all(&raw_header(0, CMD_DISC, 99, 0, 0)).unwrap();
    drop(keep);
    let t = Instant::now();
    assert_eq!(f.d.stop(), 0, "{}", f.d.log());
    assert!(t.elapsed() < Duration::from_secs(10), "{}", f.d.log());
    assert!(!f.d.log().contains("panicked"), "{}", f.d.log());
}

// ---------------------------------------------------------------------------------------------
// 4. Differential: nbdkit memory and an fss volume get the same commands.

/// One seeded sequence of valid commands (pwrite, pread, trim, zero, flush; offsets and
/// lengths aligned or not, many on a hot first MiB so they overlap) run on both exports, every
/// read compared; then both devices read whole and compared.
const DIFFERENTIAL_PY: &str = r#"
import hashlib, os, random, sys
import nbd

MIB = 1 << 20

def connect(uri):
    c = nbd.NBD()
    c.connect_uri(uri)
    return c

ref = connect(os.environ["URI_REF"])
fss = connect(os.environ["URI_FSS"])
size = ref.get_size()
assert size == fss.get_size(), (size, fss.get_size())
for side, h in (("ref", ref), ("fss", fss)):
    if not (h.can_trim() and h.can_zero() and h.can_fua() and h.can_flush()):
        print("missing capability on", side)
        sys.exit(1)
rng = random.Random(int(os.environ["SEED"]))
ops = int(os.environ["OPS"])

def extent():
    r = rng.random()
    if r < 0.4:
        off = rng.randrange(0, MIB)
        n = rng.randint(1, 16384)
    elif r < 0.7:
        off = rng.randrange(0, size // 4096) * 4096
        n = rng.randint(1, 64) * 4096
    else:
        off = rng.randrange(0, size)
        n = rng.randint(1, MIB)
    return off, max(1, min(n, size - off))

def first_diff(x, y):
    return next((i for i in range(min(len(x), len(y))) if x[i] != y[i]), min(len(x), len(y)))

counts = {}
mismatches = 0
for i in range(ops):
    kind = rng.choices(["write", "read", "trim", "zero", "flush"], [40, 30, 10, 15, 5])[0]
    counts[kind] = counts.get(kind, 0) + 1
    off, n = extent()
    fua = nbd.CMD_FLAG_FUA if rng.random() < 0.1 else 0
    try:
        if kind == "write":
            data = rng.randbytes(n)
            ref.pwrite(data, off, fua)
            fss.pwrite(data, off, fua)
        elif kind == "read":
            x = ref.pread(n, off)
            y = fss.pread(n, off)
            if x != y:
                mismatches += 1
                d = first_diff(x, y)
                print("mismatch op %d read %d at %d: first difference at %d (ref %d fss %d)"
                      % (i, n, off, off + d, x[d], y[d]))
        elif kind == "trim":
            ref.trim(n, off, fua)
            fss.trim(n, off, fua)
        elif kind == "zero":
            flags = fua | (nbd.CMD_FLAG_NO_HOLE if rng.random() < 0.5 else 0)
            ref.zero(n, off, flags)
            fss.zero(n, off, flags)
        else:
            ref.flush()
            fss.flush()
    except nbd.Error as e:
        print("error op %d %s %d at %d: %s" % (i, kind, n, off, e))
        sys.exit(1)

# The whole devices.
hr, hf = hashlib.sha256(), hashlib.sha256()
bad = []
step = 4 * MIB
for off in range(0, size, step):
    x = ref.pread(step, off)
    y = fss.pread(step, off)
    hr.update(x)
    hf.update(y)
    if x != y:
        bad.append(off + first_diff(x, y))
print("counts", " ".join("%s=%d" % kv for kv in sorted(counts.items())))
print("mismatches", mismatches)
print("differing 4MiB pieces (first byte)", bad)
print("final ref=%s fss=%s" % (hr.hexdigest(), hf.hexdigest()))
ref.shutdown()
fss.shutdown()
print("done")
"#;

#[test]
fn differential_against_nbdkit_memory() {
    require("nbdsh", "python3-libnbd");
    require("nbdkit", "nbdkit");
    let f = Fixture::new();
    f.d.ok(&["volume", "create", "dvol", "--size", "64M"]);
    let kit_socket = f.path("nbdkit.sock");
    let kit_pid = f.path("nbdkit.pid");
    let mut kit = ChildGuard(
        Command::new("nbdkit")
            .arg("-U")
            .arg(&kit_socket)
            .arg("-P")
            .arg(&kit_pid)
            .args(["-f", "--exit-with-parent", "memory", "64M"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run nbdkit (install nbdkit)"),
    );
    // nbdkit writes its PID file once it listens.
    let t = Instant::now();
    while !kit_pid.exists() {
        if let Some(s) = kit.0.try_wait().unwrap() {
            panic!("nbdkit exited: {s}");
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "nbdkit did not listen on {kit_socket:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let uri_ref = format!("nbd+unix:///?socket={}", kit_socket.display());
    let uri_fss = f.uri("dvol");
    let o = nbdsh(
        DIFFERENTIAL_PY,
        &[
            ("URI_REF", &uri_ref),
            ("URI_FSS", &uri_fss),
            ("SEED", "20240601"),
            ("OPS", "2000"),
        ],
        Duration::from_secs(120),
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success() && out.lines().last() == Some("done"),
        "the differential script failed: {}",
        text(&o)
    );
    assert!(out.contains("\nmismatches 0\n"), "{out}");
    assert!(out.contains("(first byte) []\n"), "{out}");
    let fin = out.lines().find(|l| l.starts_with("final ")).unwrap();
    let (a, b) = fin["final ref=".len()..].split_once(" fss=").unwrap();
    assert_eq!(a, b, "{out}");
    // The sequence did what it claims: all kinds of commands, in numbers.
    let counts = out.lines().find(|l| l.starts_with("counts ")).unwrap();
    for kind in ["flush", "read", "trim", "write", "zero"] {
        let n: u32 = counts
            .split(' ')
            .find_map(|kv| kv.strip_prefix(&format!("{kind}=")))
            .unwrap_or_else(|| panic!("{kind} missing: {counts}"))
            .parse()
            .unwrap();
        assert!(n >= 50, "{counts}");
    }
    drop(kit);
}

// ---------------------------------------------------------------------------------------------
// Memory under clients that pipeline large reads and never read the replies.

/// A line of `/proc/PID/status` (`VmRSS`, `VmHWM`), in bytes.
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {line:?}"));
    kib * KIB
}

/// 16 clients each pipeline 32 MiB reads and never read a reply: the daemon's shared budget
/// for request and reply buffers stops reading their sockets, so its peak RSS stays under
/// 512 MiB (before the budget it was about 65 MiB per connection), and a 17th client with
/// small reads is still served meanwhile.
#[test]
fn stalled_pipelining_clients_keep_the_daemon_under_512_mib() {
    const CLIENTS: usize = 16;
    const READ: u32 = 32 << 20;
    let mut f = Fixture::new();
    f.d.ok(&["volume", "create", "big", "--size", "64M"]);
    let socket = f.socket();
    let data = pattern(READ as usize, 7);
    let (mut w, _) = raw_open(&socket, "big");
    for (i, piece) in data.chunks(4 * MIB as usize).enumerate() {
        raw_write(&mut w, i as u64 + 1, i as u64 * 4 * MIB, piece);
    }
    drop(w);
    let pid = f.d.child.as_ref().unwrap().id();
    let before = proc_status_bytes(pid, "VmRSS");
    let mut stalled = Vec::new();
    for c in 0..CLIENTS {
        let (mut s, _) = raw_open(&socket, "big");
        s.set_nonblocking(true).unwrap();
        // As many requests as the socket takes without blocking (the server stops reading).
        let mut sent = 0u64;
        for k in 0..64u64 {
            let h = raw_header(0, CMD_READ, (c as u64) << 32 | k, 0, READ);
            match s.write(&h) {
                Ok(n) if n == h.len() => sent += 1,
                _ => break,
            }
        }
        assert!(sent > 2, "client {c} could pipeline only {sent} reads");
        stalled.push(s);
    }
    let mut peak_rss = 0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(8) {
        peak_rss = peak_rss.max(proc_status_bytes(pid, "VmRSS"));
        std::thread::sleep(Duration::from_millis(100));
    }
    // Meanwhile a well-behaved client is served.
    let (mut ok, _) = raw_open(&socket, "big");
    let t = Instant::now();
    assert_eq!(raw_read(&mut ok, 1, 4096, 4096), data[4096..8192]);
    let small_read = t.elapsed();
    let hwm = proc_status_bytes(pid, "VmHWM");
    eprintln!(
        "{CLIENTS} stalled clients pipelining {} MiB reads: daemon VmRSS {} MiB before, \
         {} MiB at most while stalled, VmHWM {} MiB; a 4 KiB read of another client took {small_read:?}",
        READ >> 20,
        before / MIB,
        peak_rss / MIB,
        hwm / MIB,
    );
    assert!(
        hwm < 512 * MIB,
        "the daemon's peak RSS reached {} MiB; log:\n{}",
        hwm / MIB,
        f.d.log()
    );
    assert!(small_read < Duration::from_secs(5), "{small_read:?}");
    drop(stalled);
    drop(ok);
    assert_eq!(f.d.stop(), 0, "{}", f.d.log());
}
