//! `fss restart`: the serving process drains, saves and hands over to the binary on disk; NBD
//! clients with reconnect support see no failed request through restarts and kills; a FLUSH
//! on one connection covers writes acknowledged on another; a binary that does not run (or
//! does not start) leaves the old one serving; transient snapshots and long operations.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::{checksum, fails, qemu_io, snapshot_names, wait_until, Daemon, FSS};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn restart_hands_over_and_reports_both_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("state"));
    d.ok(&["volume", "create", "v", "--size", "16M"]);
    qemu_io(&d, "v", &["write -P 0x71 0 4M"]);
    d.ok(&["snapshot", "create", "v", "p"]);
    qemu_io(&d, "v", &["write -P 0x72 0 1M"]);
    let (vsum, psum) = (checksum(&d, "v"), checksum(&d, "p"));
    let supervisor = d.child.as_ref().unwrap().id();
    let before = d.serving_pid();
    let r = d.json(&["restart"]);
    assert_eq!(r["old_pid"], before, "{r}");
    assert_ne!(r["new_pid"], before, "{r}");
    assert_eq!(r["new_pid"], d.serving_pid(), "{r}");
    assert_eq!(r["old_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(r["new_version"], env!("CARGO_PKG_VERSION"));
    let ms = r["ms"].as_u64().unwrap();
    eprintln!("fss restart took {ms} ms");
    assert!(ms < 5000, "{r}");
    let st = d.json(&["status"]);
    assert_eq!(st["supervisor_pid"], supervisor);
    assert_eq!(st["restarts"], 1);
    assert_eq!(st["last_restart"]["reason"], "upgrade", "{st}");
    assert_eq!(st["last_restart"]["exit_code"], 75, "{st}");
    assert_eq!(
        st["recovered_from_crash"], false,
        "the old process saved a clean stop"
    );
    let text = d.ok(&["restart"]);
    assert!(text.starts_with("restarted: fss "), "{text}");
    assert!(
        text.contains(&format!("(pid {}) -> fss ", r["new_pid"])),
        "{text}"
    );
    assert_eq!(checksum(&d, "v"), vsum);
    assert_eq!(checksum(&d, "p"), psum);
    assert!(d
        .log()
        .contains("restart: state saved; handing over to the next process"));
}

#[test]
fn restart_refuses_transient_snapshots_unless_told_to_drop_them() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("state"));
    d.ok(&["snapshot", "create", "default", "t", "--transient"]);
    let before = d.serving_pid();
    let e = fails(&d, &["restart"]);
    assert!(
        e.contains("transient snapshots would be lost in the restart: t"),
        "{e}"
    );
    assert!(e.contains("--drop-transient"), "{e}");
    assert_eq!(d.serving_pid(), before, "still the same process");
    // Not left half-way: other requests are served as before.
    d.ok(&["snapshot", "create", "default", "p"]);
    let out = d.ok(&["restart", "--drop-transient"]);
    assert!(out.contains("dropped transient snapshots: t"), "{out}");
    assert_eq!(snapshot_names(&d), ["p"]);
}

/// Replace `path` (a running binary: written aside, then renamed over it).
fn replace(path: &Path, with: &[u8]) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, with).unwrap();
    std::fs::set_permissions(&aside, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

#[test]
fn a_broken_new_binary_leaves_the_old_one_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin/fss");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy(FSS, &bin).unwrap();
    let d = Daemon::start_from(&tmp.path().join("state"), &bin);
    d.ok(&["volume", "create", "v", "--size", "8M"]);
    qemu_io(&d, "v", &["write -P 0x73 0 2M"]);
    let vsum = checksum(&d, "v");
    let first = d.serving_pid();

    // A binary that does not run at all: refused before anything stops.
    replace(&bin, b"#!/bin/sh\necho 'no such luck' >&2\nexit 1\n");
    let e = fails(&d, &["restart"]);
    assert!(
        e.contains("restart refused, the daemon keeps serving"),
        "{e}"
    );
    assert!(
        e.contains("--version failed (exit status: 1): no such luck"),
        "{e}"
    );
    assert_eq!(d.serving_pid(), first);
    assert_eq!(d.json(&["status"])["restarts"], 0);

    // A binary that answers --version but cannot serve: the previous image serves again.
    replace(
        &bin,
        b"#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'fss 9.9.9'; exit 0; fi\nexit 3\n",
    );
    let e = fails(&d, &["restart"]);
    assert!(
        e.contains(&format!(
            "the new binary {} exited with status 3 before it was ready",
            bin.display()
        )),
        "{e}"
    );
    assert!(
        e.contains("the previous binary (fss 0.1.0) serves again as pid"),
        "{e}"
    );
    let st = d.json(&["status"]);
    assert_ne!(st["pid"], first);
    assert_eq!(st["restarts"], 2, "{st}");
    assert!(
        st["last_restart"]["upgrade_error"]
            .as_str()
            .unwrap()
            .contains("exited with status 3"),
        "{st}"
    );
    assert_eq!(checksum(&d, "v"), vsum);

    // The real one again: the restart goes through, and crash restarts run what serves.
    std::fs::copy(FSS, bin.with_extension("new")).unwrap();
    std::fs::rename(bin.with_extension("new"), &bin).unwrap();
    d.ok(&["restart"]);
    let old = d.kill9_serving();
    d.wait_for_successor(old);
    assert_eq!(checksum(&d, "v"), vsum);
}

/// qemu-io over NBD with reconnect support, as `--image-opts`.
fn qemu_io_reconnecting(d: &Daemon, export: &str, cmds: &[String]) -> Command {
    let mut c = Command::new("qemu-io");
    c.arg("--image-opts");
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c.arg(format!(
        "driver=nbd,server.type=unix,server.path={},export={export},reconnect-delay=10,open-timeout=10",
        d.dir.join("nbd.sock").display()
    ));
    c
}

#[test]
fn nbd_writes_go_through_restarts_and_kills() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("state"));
    d.ok(&["volume", "create", "v", "--size", "8M"]);
    const N: u64 = 60;
    let mut cmds = Vec::new();
    for i in 0..N {
        cmds.push(format!("write -P {} {} 64k", i + 1, i * 65536));
        cmds.push("sleep 100".to_string());
    }
    let writer = qemu_io_reconnecting(&d, "v", &cmds)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(600));
        d.ok(&["restart"]);
        std::thread::sleep(Duration::from_millis(600));
        let old = d.kill9_serving();
        d.wait_for_successor(old);
        eprintln!("round {round} done at {:?}", t.elapsed());
    }
    let out = writer.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("failed"), "{text}");
    assert_eq!(
        text.matches("wrote 65536/65536 bytes").count(),
        N as usize,
        "{text}"
    );
    let reads: Vec<String> = (0..N)
        .map(|i| format!("read -P {} {} 64k", i + 1, i * 65536))
        .collect();
    let refs: Vec<&str> = reads.iter().map(String::as_str).collect();
    qemu_io(&d, "v", &refs);
    assert_eq!(d.json(&["status"])["restarts"], 6);
}

/// Two libnbd connections: 32 writes on A, a FLUSH on B, then it says `flushed` and waits.
const MULTI_CONN: &str = r#"
import nbd, sys
a, b = nbd.NBD(), nbd.NBD()
for h in (a, b):
    h.set_export_name("v")
    h.connect_unix(sys.argv[1])
assert a.can_multi_conn() and b.can_multi_conn()
for i in range(32):
    a.pwrite(bytes([i + 1]) * 65536, i * 65536)
b.flush()
print("flushed", flush=True)
sys.stdin.read()
"#;

#[test]
fn a_flush_on_one_connection_covers_writes_acknowledged_on_another() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("state"));
    d.ok(&["volume", "create", "v", "--size", "8M"]);
    qemu_io(&d, "v", &["write -P 0x7f 0 8M"]);
    // A persistent snapshot: the first overwrites are held writes until the store flushes.
    d.ok(&["snapshot", "create", "v", "p"]);
    let psum = checksum(&d, "p");
    let mut py = Command::new("/usr/bin/python3")
        .args(["-c", MULTI_CONN])
        .arg(d.dir.join("nbd.sock"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with libnbd (apt-get install python3-libnbd)");
    let mut line = String::new();
    BufReader::new(py.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "flushed");
    let old = d.kill9_serving();
    let _ = py.stdin.take().unwrap().write_all(b"");
    let _ = py.wait();
    d.wait_for_successor(old);
    let reads: Vec<String> = (0..32)
        .map(|i| format!("read -P {} {} 64k", i + 1, i * 65536))
        .collect();
    let refs: Vec<&str> = reads.iter().map(String::as_str).collect();
    qemu_io(&d, "v", &refs);
    qemu_io(&d, "v", &["read -P 0x7f 2M 6M"]);
    assert_eq!(checksum(&d, "p"), psum, "the snapshot is exact");
}

#[test]
fn restart_waits_for_a_rollback_or_carries_it_over() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    // 300 ms between 4 MiB chunks: about 3 s for the 40 MiB changed below.
    let d = Daemon::start_with_env(&dir, &[("FSS_TEST_ROLLBACK_PAUSE_MS", "300")]);
    d.ok(&["volume", "create", "v", "--size", "64M"]);
    qemu_io(&d, "v", &["write -P 0x11 0 64M"]);
    d.ok(&["snapshot", "create", "v", "s1"]);
    let s1 = checksum(&d, "s1");
    let rollback_then_restart = |timeout: &str, started: usize| {
        qemu_io(&d, "v", &["write -P 0x22 0 40M"]);
        let rollback = Command::new(FSS)
            .args(["rollback", "v", "s1"])
            .env("FSS_STATE_DIR", &dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until(Duration::from_secs(10), "no rollback started", || {
            d.log().matches("rollback started").count() >= started
        });
        std::thread::sleep(Duration::from_millis(300));
        let out = d.ok(&["restart", "--timeout", timeout]);
        (out, rollback.wait_with_output().unwrap().status.code())
    };
    let (out, cli) = rollback_then_restart("30", 1);
    assert!(
        out.contains("waited for: s1 (a rollback of 'v' to 's1'), v (a rollback"),
        "{out}"
    );
    assert_eq!(cli, Some(0), "the rollback finished before the hand-over");
    assert_eq!(checksum(&d, "v"), s1);

    let (out, cli) = rollback_then_restart("0", 2);
    assert!(
        out.contains("carried over (resumed by the new process): s1 (a rollback"),
        "{out}"
    );
    assert_eq!(cli, Some(1), "the rollback's client saw its daemon go");
    wait_until(
        Duration::from_secs(20),
        "the rollback was not resumed",
        || {
            d.log()
                .contains("finished the interrupted rollback of volume v to snapshot s1")
        },
    );
    assert_eq!(checksum(&d, "v"), s1);
}

#[test]
fn a_client_connecting_during_a_restart_waits_in_the_backlog() {
    let tmp = tempfile::tempdir().unwrap();
    // The drained process waits a second before it exits: nothing accepts meanwhile.
    let d = Daemon::start_with_env(
        &tmp.path().join("state"),
        &[("FSS_TEST_RESTART_HOLD_MS", "1000")],
    );
    d.ok(&["volume", "create", "v", "--size", "8M"]);
    qemu_io(&d, "v", &["write -P 0x5c 0 1M"]);
    let restart = {
        let dir = d.dir.clone();
        std::thread::spawn(move || {
            Command::new(FSS)
                .args(["restart", "--json"])
                .env("FSS_STATE_DIR", dir)
                .output()
                .unwrap()
        })
    };
    wait_until(Duration::from_secs(10), "the restart did not drain", || {
        d.log().contains("test hook: holding the restart")
    });
    // A client without reconnect support: it waits in the backlog, then the new process
    // answers it.
    let t = Instant::now();
    qemu_io(&d, "v", &["read -P 0x5c 0 1M", "write -P 0x5d 1M 1M"]);
    assert!(t.elapsed() > Duration::from_millis(300), "it waited");
    let out = restart.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(r["new_pid"], r["old_pid"]);
    assert!(r["ms"].as_u64().unwrap() >= 1000, "{r}");
    qemu_io(&d, "v", &["read -P 0x5d 1M 1M"]);
}

#[test]
fn without_the_supervisor_there_is_no_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_with(&tmp.path().join("state"), &["--no-supervisor"]);
    let st = d.json(&["status"]);
    assert_eq!(st["supervisor_pid"], serde_json::Value::Null);
    assert_eq!(st["pid"], d.child.as_ref().unwrap().id(), "one process");
    let e = fails(&d, &["restart"]);
    assert!(
        e.contains("runs without its supervisor (fss serve --no-supervisor)"),
        "{e}"
    );
    assert_eq!(d.stop(), 0);
}
