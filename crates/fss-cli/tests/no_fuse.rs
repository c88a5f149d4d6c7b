//! `fss serve` without FUSE: a user who cannot use `/dev/fuse` (mode 0600 on these machines)
//! gets one warning and an NBD-only daemon; `--fuse-dir none` asks for that on purpose.
//! `status --json` says which front-ends are up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{require_root, require_tool, Daemon};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// The NBD export's size as `nbdinfo` (a real NBD client) reads it from the unix socket.
fn nbd_size(socket: &Path, export: &str) -> u64 {
    let uri = format!("nbd+unix:///{export}?socket={}", socket.display());
    let o = Command::new("nbdinfo")
        .args(["--size", &uri])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "nbdinfo {uri}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

fn mounted_at(dir: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.display().to_string();
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m == dir))
}

#[test]
fn a_user_without_fuse_access_gets_nbd_and_one_warning() {
    require_root("it starts the daemon as the user nobody");
    require_tool("setpriv", "util-linux");
    require_tool("nbdinfo", "libnbd-bin");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    rustix::fs::chown(
        &state,
        Some(rustix::fs::Uid::from_raw(65534)),
        Some(rustix::fs::Gid::from_raw(65534)),
    )
    .unwrap();
    let nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    // A copy of the binary nobody can run, wherever the build tree is (CI's may be private).
    let binary = tmp.path().join("fss");
    std::fs::copy(common::FSS, &binary).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = Daemon::start_through(&state, &binary, &nobody, &[]);
    let status = d.json(&["status"]);
    let socket = state.join("nbd.sock");
    assert_eq!(status["frontends"]["fuse"], serde_json::Value::Null);
    assert_eq!(
        status["frontends"]["nbd_unix"],
        socket.display().to_string()
    );
    assert_eq!(status["frontends"]["nbd_tcp"], serde_json::Value::Null);
    assert_eq!(status["frontends"]["metrics"], serde_json::Value::Null);
    assert_eq!(nbd_size(&socket, "default"), 1 << 30);
    d.ok(&["snapshot", "create", "default", "s1"]);
    assert_eq!(nbd_size(&socket, "s1"), 1 << 30);
    assert!(!mounted_at(&state.join("dev")));
    let log = d.log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "one warning, not {warnings:?}");
    assert!(warnings[0].contains("serving NBD only"), "{}", warnings[0]);
    assert_eq!(
        warnings[0]
            .matches("cannot mount the FUSE directory")
            .count(),
        1,
        "the cause is said once: {}",
        warnings[0]
    );
    let text = d.ok(&["status"]);
    assert!(text.contains("FUSE directory: none (NBD only)"), "{text}");
}

#[test]
fn fuse_dir_none_serves_nbd_only_without_a_warning() {
    require_tool("nbdinfo", "libnbd-bin");
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(tmp.path(), &["--fuse-dir", "none"]);
    let status = d.json(&["status"]);
    assert_eq!(status["frontends"]["fuse"], serde_json::Value::Null);
    assert_eq!(status["fuse_dir"], serde_json::Value::Null);
    assert_eq!(nbd_size(&tmp.path().join("nbd.sock"), "default"), 1 << 30);
    assert!(!mounted_at(&tmp.path().join("dev")));
    assert!(!d.log().contains("WARN"), "{}", d.log());
    // A mount point cannot be on a volume of a daemon without FUSE: said, not guessed.
    let r = d.fss(&["snapshot", "create", "/mnt", "s1"]);
    assert_eq!(r.status, 1);
    assert!(r.stderr.contains("no FUSE directory"), "{}", r.stderr);
}
