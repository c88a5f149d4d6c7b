//! The supervisor (`fss serve`) and the serving process it starts: a kill -9 of the serving
//! process is repaired within a second on the same sockets, a crash loop stops, a kill -9 of
//! the supervisor takes the serving process with it (and the next `fss serve` recovers), a
//! client that connects while nothing serves waits in the backlog, and a freeze lease of a
//! dead serving process is still honoured.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::loopdev::{ext4_on, Cleanup};
use common::{alive, checksum, qemu_io, signal, snapshot_names, wait_until, Daemon, FSS};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Loop devices and mounts are machine-wide: one such test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn a_killed_serving_process_is_replaced_within_a_second() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("state"));
    let supervisor = d.child.as_ref().unwrap().id();
    let st = d.json(&["status"]);
    assert_eq!(st["supervisor_pid"], supervisor);
    assert_eq!(st["restarts"], 0);
    assert_eq!(st["last_restart"], serde_json::Value::Null);
    assert_ne!(st["pid"], supervisor, "pid is the serving process");
    d.ok(&["volume", "create", "v", "--size", "16M"]);
    qemu_io(&d, "v", &["write -P 0x41 0 4M"]);
    d.ok(&["snapshot", "create", "v", "p"]);
    d.ok(&["snapshot", "create", "v", "t", "--transient"]);
    qemu_io(&d, "v", &["write -P 0x42 0 1M"]);
    let (vsum, psum) = (checksum(&d, "v"), checksum(&d, "p"));

    let mut worst = Duration::ZERO;
    for round in 1..=3u64 {
        let old = d.kill9_serving();
        let (new, took) = d.wait_for_successor(old);
        assert_ne!(new, supervisor);
        worst = worst.max(took);
        let st = d.json(&["status"]);
        assert_eq!(st["restarts"], round);
        assert_eq!(st["supervisor_pid"], supervisor);
        let last = &st["last_restart"];
        assert_eq!(last["reason"], "signal", "{st}");
        assert_eq!(last["signal"], 9, "{st}");
        assert_eq!(last["exit_code"], serde_json::Value::Null, "{st}");
        assert!(last["time"].as_u64().unwrap() > 1_700_000_000, "{st}");
    }
    eprintln!("kill -9 to serving again: worst {worst:?} of 3");
    assert!(worst < Duration::from_secs(2), "took {worst:?}");
    // Same sockets, same data; the transient snapshot went with the first process, said once.
    assert_eq!(checksum(&d, "v"), vsum);
    assert_eq!(checksum(&d, "p"), psum);
    qemu_io(&d, "v", &["read -P 0x42 0 1M", "read -P 0x41 1M 3M"]);
    assert_eq!(snapshot_names(&d), ["p"]);
    let log = d.log();
    assert_eq!(
        log.matches("dropped transient snapshot t").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("was killed by signal 9 (SIGKILL); starting a new one")
            .count(),
        3,
        "{log}"
    );
    let text = d.ok(&["status"]);
    assert!(
        text.contains(&format!(
            "supervisor: pid {supervisor}, 3 restart(s), the last at "
        )),
        "{text}"
    );
    assert!(text.contains("killed by signal 9"), "{text}");
}

#[test]
fn a_crash_loop_stops_the_supervisor() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let t = Instant::now();
    let out = Command::new(FSS)
        .arg("serve")
        .env("FSS_STATE_DIR", &dir)
        .env("FSS_TEST_CHILD_CRASH_AT_START", "1000")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(t.elapsed() < Duration::from_secs(30));
    assert!(out.stdout.is_empty(), "never ready");
    assert!(
        log.contains("CRASH LOOP: 5 serving processes died before they were ready within 60 s"),
        "{log}"
    );
    assert_eq!(log.matches("serving process started").count(), 5, "{log}");
    assert!(!dir.join("control.sock").exists());
    assert!(!dir.join("nbd.sock").exists());
}

#[test]
fn deaths_before_ready_are_restarted_below_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_with_env(
        &tmp.path().join("state"),
        &[("FSS_TEST_CHILD_CRASH_AT_START", "4")],
    );
    let st = d.json(&["status"]);
    assert_eq!(st["restarts"], 4, "{st}");
    assert_eq!(st["last_restart"]["signal"], 9, "{st}");
    // Once one was ready, the count starts again: four more deaths are fine.
    for _ in 0..4 {
        let old = d.kill9_serving();
        d.wait_for_successor(old);
    }
    assert_eq!(d.json(&["status"])["restarts"], 8);
}

#[test]
fn killing_the_supervisor_ends_the_serving_process_and_the_next_serve_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(&tmp.path().join("state"));
    d.ok(&["volume", "create", "v", "--size", "16M"]);
    qemu_io(&d, "v", &["write -P 0x51 0 8M"]);
    d.ok(&["snapshot", "create", "v", "s"]);
    qemu_io(&d, "v", &["write -P 0x52 0 2M"]);
    let (vsum, ssum) = (checksum(&d, "v"), checksum(&d, "s"));
    let serving = d.serving_pid();
    // The helper kills the process it started: the supervisor.
    d.kill9();
    wait_until(
        Duration::from_secs(5),
        "the serving process outlived its supervisor",
        || !alive(serving),
    );
    // Right away, as after a crash of the whole daemon.
    d.restart();
    let st = d.json(&["status"]);
    assert_eq!(st["recovered_from_crash"], true);
    assert_eq!(st["restarts"], 0);
    assert_eq!(checksum(&d, "v"), vsum);
    assert_eq!(checksum(&d, "s"), ssum);
    assert_eq!(d.stop(), 0);
    assert!(!d.dir.join("control.sock").exists());
}

#[test]
fn a_client_connecting_while_nothing_serves_waits_in_the_backlog() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("state"));
    d.ok(&["volume", "create", "v", "--size", "8M"]);
    qemu_io(&d, "v", &["write -P 0x61 0 1M"]);
    let serving = d.serving_pid();
    // A stopped serving process accepts nothing: connections queue on the held listeners.
    signal(serving, rustix::process::Signal::STOP);
    let nbd = {
        let url = common::nbd(&d, "v");
        std::thread::spawn(move || {
            Command::new("qemu-io")
                .args(["-f", "raw", "-c", "read -P 0x61 0 1M", &url])
                .output()
                .unwrap()
        })
    };
    let control = {
        let dir = d.dir.clone();
        std::thread::spawn(move || {
            Command::new(FSS)
                .args(["status", "--json"])
                .env("FSS_STATE_DIR", dir)
                .output()
                .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    assert!(!nbd.is_finished() && !control.is_finished(), "both wait");
    signal(serving, rustix::process::Signal::KILL);
    let out = nbd.join().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !text.contains("failed"), "{text}");
    let out = control.join().unwrap();
    assert!(out.status.success());
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(st["pid"], serving, "answered by the next process");
}

#[test]
fn a_freeze_lease_of_a_killed_serving_process_is_still_honoured() {
    let _g = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let d = Daemon::start(&state);
    d.ok(&["volume", "create", "vol", "--size", "64M"]);
    let mut c = Cleanup::default();
    let mnt = tmp.path().join("mnt");
    ext4_on(&mut c, &state.join("dev/vol"), &mnt);
    let mut cli = Command::new(FSS)
        .args(["snapshot", "create", mnt.to_str().unwrap(), "held"])
        .env("FSS_STATE_DIR", &state)
        .env("FSS_TEST_FREEZE_HOLD_MS", "60000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let leases = state.join("leases.json");
    wait_until(Duration::from_secs(10), "no lease recorded", || {
        std::fs::read_to_string(&leases)
            .unwrap_or_default()
            .contains("\"mount_point\"")
    });
    let opened = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    // The serving process dies first, then the client, which would otherwise thaw on its
    // error path: only the next serving process can thaw now.
    let old = d.kill9_serving();
    cli.kill().unwrap();
    cli.wait().unwrap();
    d.wait_for_successor(old);
    assert!(
        d.log()
            .contains("watching a freeze lease of the previous serving process"),
        "{}",
        d.log()
    );
    let still_frozen = Command::new("fsfreeze")
        .args(["-f", mnt.to_str().unwrap()])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!still_frozen.success(), "frozen until the lease's deadline");
    wait_until(
        Duration::from_secs(13),
        "not thawed by the deadline",
        || {
            d.log()
                .contains("thawed the file system: the freeze lease was not closed within 10 s")
        },
    );
    assert!(
        opened.elapsed() >= Duration::from_millis(9500),
        "thawed at the deadline, not before"
    );
    let thaw = Command::new("fsfreeze")
        .args(["-u", mnt.to_str().unwrap()])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!thaw.success(), "already thawed (EINVAL)");
    c.release_all();
}

#[test]
fn a_ctrl_c_stops_cleanly_once() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::CommandExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    // Its own process group, as a shell's foreground job: a Ctrl-C signals all of it.
    let mut serve = Command::new(FSS)
        .arg("serve")
        .env("FSS_STATE_DIR", &dir)
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(serve.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    let group = rustix::process::Pid::from_child(&serve);
    rustix::process::kill_process_group(group, rustix::process::Signal::INT).unwrap();
    let out = serve.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("fss daemon stopped cleanly"), "{log}");
    assert!(!log.contains("forced"), "one signal, not two: {log}");
    assert!(!dir.join("control.sock").exists());
}

/// SIGHUP (an administrator's habit, or a TLS reload) kills neither process when no TLS is set
/// up: the supervisor passes it on, the serving process ignores it.
#[test]
fn sighup_without_tls_kills_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("state"));
    let st = d.json(&["status"]);
    let pid = u32::try_from(st["pid"].as_u64().unwrap()).unwrap();
    let supervisor = u32::try_from(st["supervisor_pid"].as_u64().unwrap()).unwrap();
    for target in [supervisor, pid, supervisor] {
        signal(target, rustix::process::Signal::HUP);
        std::thread::sleep(Duration::from_millis(200));
    }
    let passed_on = || d.log().matches("SIGHUP passed on").count() == 2;
    wait_until(
        Duration::from_secs(5),
        "the supervisor passes SIGHUP on",
        passed_on,
    );
    let st = d.json(&["status"]);
    assert_eq!(st["pid"], pid, "{st}");
    assert_eq!(st["restarts"], 0, "{st}");
    assert!(alive(supervisor) && alive(pid));
}
