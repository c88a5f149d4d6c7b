//! `contrib/systemd/fss.service`: `systemd-analyze verify` accepts it without a warning (with
//! its binary paths pointed at the built one and the man pages it names on MANPATH), and the
//! daemon does what the unit relies on: `Type=notify` (READY=1 on NOTIFY_SOCKET, once) and
//! `ExecReload=fss restart` keeping the main process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{require_tool, Daemon, FSS};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn source_tree() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    require_tool("systemd-analyze", "systemd");
    let tmp = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(source_tree().join("contrib/systemd/fss.service")).unwrap();
    for key in [
        "Type=notify",
        "KillMode=mixed",
        "ExecReload=/usr/local/bin/fss restart",
        "StateDirectory=fss",
    ] {
        assert!(unit.lines().any(|l| l == key), "the unit lacks {key}");
    }
    for namespaced in [
        "PrivateMounts=",
        "ProtectSystem=",
        "PrivateDevices=",
        "PrivateTmp=",
    ] {
        assert!(
            !unit.lines().any(|l| l.starts_with(namespaced)),
            "{namespaced} would hide the FUSE directory from the host"
        );
    }
    // verify checks that the binaries and the documentation exist.
    let path = tmp.path().join("fss.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/fss", FSS)).unwrap();
    let man8 = tmp.path().join("man/man8");
    std::fs::create_dir_all(&man8).unwrap();
    for page in ["fss.8", "fssconfig.8"] {
        std::fs::copy(source_tree().join("docs/man").join(page), man8.join(page)).unwrap();
    }
    let o = Command::new("systemd-analyze")
        .args(["verify"])
        .arg(&path)
        .env("MANPATH", tmp.path().join("man"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "systemd-analyze verify: {said}");
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify warns: {said}"
    );
}

#[test]
fn the_daemon_notifies_ready_once_and_reload_keeps_the_main_process() {
    let tmp = tempfile::tempdir().unwrap();
    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let state = tmp.path().join("state");
    let d = Daemon::start_with_env(&state, &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())]);
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    let supervisor = d.json(&["status"])["supervisor_pid"].as_u64().unwrap();
    assert_eq!(
        u64::from(d.child.as_ref().unwrap().id()),
        supervisor,
        "the main process"
    );
    // ExecReload: the serving process is replaced, the main process stays, and a serving
    // process's readiness is not sent to systemd again.
    let before = d.serving_pid();
    d.ok(&["restart"]);
    assert_ne!(d.serving_pid(), before);
    assert_eq!(
        d.json(&["status"])["supervisor_pid"].as_u64(),
        Some(supervisor)
    );
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(sock.recv(&mut buf).is_err(), "only one READY=1");
}
