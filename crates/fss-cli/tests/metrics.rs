//! `fss serve --metrics-listen`: `GET /metrics` checked by a real Prometheus parser
//! (`promtool check metrics`), its values against `fss snapshot info --json`, `fss stats
//! --json` and the bytes this test wrote; the port survives `fss restart`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{qemu_io, require_tool, wait_until, Daemon};
use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// `curl` the address's path: (HTTP status, body).
fn get(addr: &str, path: &str) -> (u32, String) {
    let o = Command::new("curl")
        .args([
            "-s",
            "-w",
            "\n%{http_code}",
            &format!("http://{addr}{path}"),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "curl {addr}{path}: {o:?}");
    let text = String::from_utf8(o.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

/// The scrape, checked by `promtool check metrics` (it fails on a malformed exposition and
/// on lint problems: missing HELP, counters without `_total`...), as sample -> value.
fn scrape(addr: &str) -> BTreeMap<String, u64> {
    let (code, body) = get(addr, "/metrics");
    assert_eq!(code, 200, "{body}");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool rejects the metrics: {}{}\n{body}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    for family in [
        "fss_snapshot_store_used_bytes",
        "fss_snapshot_store_max_bytes",
        "fss_snapshot_valid",
        "fss_snapshot_created_timestamp_seconds",
        "fss_volume_read_bytes_total",
        "fss_volume_written_bytes_total",
        "fss_preserved_blocks_total",
        "fss_held_writes_bytes",
        "fss_nbd_connections",
        "fss_fuse_open_files",
        "fss_daemon_restarts_total",
    ] {
        assert!(body.contains(&format!("# HELP {family} ")), "{family}");
        assert!(body.contains(&format!("# TYPE {family} ")), "{family}");
    }
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

fn snap_key(family: &str, snap: &str) -> String {
    format!("{family}{{volume=\"default\",snapshot=\"{snap}\"}}")
}

fn vol_key(family: &str) -> String {
    format!("{family}{{volume=\"default\"}}")
}

#[test]
fn metrics_match_what_was_written_and_what_info_says() {
    require_tool("promtool", "prometheus");
    require_tool("curl", "curl");
    require_tool("qemu-io", "qemu-utils");
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_with(tmp.path(), &["--metrics-listen", "127.0.0.1:0"]);
    let addr = d.json(&["status"])["frontends"]["metrics"]
        .as_str()
        .unwrap()
        .to_string();
    d.ok(&[
        "snapshot",
        "create",
        "default",
        "s1",
        "--max-store-size",
        "64M",
    ]);
    qemu_io(&d, "default", &["write -P 7 0 1M", "write -P 8 4M 64k"]);
    qemu_io(&d, "default", &["read 0 512k"]);
    let m = scrape(&addr);
    let info = d.json(&["snapshot", "info", "s1"]);
    let stats = d.json(&["stats"]);
    assert_eq!(
        m[&snap_key("fss_snapshot_store_used_bytes", "s1")],
        info["store_used"].as_u64().unwrap()
    );
    assert_eq!(m[&snap_key("fss_snapshot_store_max_bytes", "s1")], 64 * MIB);
    assert_eq!(info["store_max"].as_u64(), Some(64 * MIB));
    assert_eq!(m[&snap_key("fss_snapshot_valid", "s1")], 1);
    assert_eq!(info["state"], "valid");
    assert_eq!(
        m[&snap_key("fss_snapshot_created_timestamp_seconds", "s1")],
        info["created"].as_u64().unwrap()
    );
    // 1 MiB and 64 KiB written, each block first overwritten once: 272 pre-images.
    assert_eq!(
        m[&vol_key("fss_volume_written_bytes_total")],
        MIB + 64 * 1024
    );
    assert_eq!(m[&vol_key("fss_preserved_blocks_total")], 272);
    assert_eq!(info["blocks_preserved"].as_u64(), Some(272), "info: {info}");
    assert_eq!(m[&vol_key("fss_volume_read_bytes_total")], 512 * 1024);
    assert_eq!(m[&vol_key("fss_held_writes_bytes")], 0);
    assert_eq!(m["fss_nbd_connections"], 0);
    assert_eq!(m["fss_fuse_open_files"], 0);
    assert_eq!(m["fss_daemon_restarts_total"], 0);
    // `fss stats --json` has the same figures.
    assert_eq!(stats["volumes"][0]["written_bytes"], MIB + 64 * 1024);
    assert_eq!(stats["volumes"][0]["preserved_blocks"], 272);
    assert_eq!(
        stats["snapshots"][0]["store_used_bytes"],
        info["store_used"]
    );
    assert_eq!(stats["snapshots"][0]["valid"], true);

    // Users open now are counted: a FUSE file held open, an NBD client connected.
    let file = std::fs::File::open(tmp.path().join("dev/s1")).unwrap();
    let mut client = Command::new("qemu-io")
        .args(["-r", "-f", "raw", &common::nbd(&d, "s1")])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), "the NBD client counted", || {
        scrape(&addr)["fss_nbd_connections"] == 1
    });
    assert_eq!(scrape(&addr)["fss_fuse_open_files"], 1);
    drop(client.stdin.take());
    client.wait().unwrap();
    drop(file);

    let (code, _) = get(&addr, "/other");
    assert_eq!(code, 404);

    // The supervisor holds the port: after a restart the same address answers, counting it.
    d.ok(&["restart"]);
    let m = scrape(&addr);
    assert_eq!(m["fss_daemon_restarts_total"], 1);
    assert_eq!(m[&snap_key("fss_snapshot_valid", "s1")], 1);
    assert_eq!(d.stop(), 0);
}
