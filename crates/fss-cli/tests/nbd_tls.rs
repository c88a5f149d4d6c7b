//! NBD over TLS against a real daemon: `fss serve --nbd-listen` refuses plaintext by accident,
//! a snapshot is served to a "backup host" over TLS with client certificates (refusals
//! included, the daemon serving on), SIGHUP reloads the certificates, and QEMU-style dirty
//! bitmaps read by python libnbd over TLS equal `fss diff --json` over random write patterns.
//! Certificates are made by openssl (`crates/fss-nbd/tests/make-certs.sh`). Every client runs
//! on 127.0.0.1; a missing tool fails the test with the package to install.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::{checksum, require, sha256, Daemon, FSS};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// Certificates for a server and clients (`server/`, `alice/`, `bob/`, `anon/`, `other/`, `v1/`).
fn certs(dir: &Path) -> PathBuf {
    require("openssl", "openssl");
    let out = dir.join("certs");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fss-nbd/tests/make-certs.sh");
    let s = Command::new("sh").arg(script).arg(&out).status().unwrap();
    assert!(s.success(), "make-certs.sh failed");
    out
}

/// A TCP port free now on 127.0.0.1.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `fss serve ARGS` that must fail at start: its exit status and stderr.
fn serve_fails(state: &Path, args: &[&str]) -> (i32, String) {
    let mut child = Command::new(FSS)
        .arg("serve")
        .args(args)
        .env("FSS_STATE_DIR", state)
        .env("FSS_RUN_DIR", state.join("run"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("fss serve {args:?} did not fail");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.code().unwrap_or(-1), err)
}

fn nbdinfo(uri: &str) -> (bool, String) {
    require("nbdinfo", "libnbd-bin");
    let o = Command::new("nbdinfo")
        .args(["--json", "--no-content", uri])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    (
        o.status.success(),
        text + &String::from_utf8_lossy(&o.stderr),
    )
}

#[test]
fn tcp_without_certificates_refuses_to_start_and_says_both_ways_out() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("s");
    let certs = certs(tmp.path());
    let port = format!("127.0.0.1:{}", free_port());
    let (code, err) = serve_fails(&state, &["--nbd-listen", &port]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--tls-certificates DIR") && err.contains("--tls off") && err.contains(&port),
        "{err}"
    );
    let server = certs.join("server");
    let server = server.to_str().unwrap();
    let v1 = certs.join("v1");
    let v1 = v1.to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (
            &["--nbd-listen", &port, "--tls", "require"],
            "needs --tls-certificates",
        ),
        (
            &[
                "--nbd-listen",
                &port,
                "--tls-certificates",
                server,
                "--tls-authz",
                "CN=a",
            ],
            "--tls-authz needs --tls-verify-peer",
        ),
        (&["--tls-certificates", server], "add --nbd-listen"),
        (
            &[
                "--nbd-listen",
                &port,
                "--tls-certificates",
                server,
                "--tls",
                "off",
            ],
            "contradicts",
        ),
        (
            &["--nbd-listen", &port, "--tls-certificates", v1],
            "version 1",
        ),
    ];
    for (args, want) in cases {
        let (code, err) = serve_fails(&state, args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: expected {want:?} in {err}");
    }
    let (code, err) = serve_fails(&state, &["--tls-authz", "alice"]);
    assert_eq!(code, 2, "a usage error: {err}");
    assert!(err.contains("CN=NAME"), "{err}");
}

#[test]
fn a_snapshot_is_served_over_tls_to_a_backup_host() {
    require("nbdcopy", "libnbd-bin");
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs(tmp.path());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = certs.join("server");
    let mut d = Daemon::start_with(
        &tmp.path().join("s"),
        &[
            "--nbd-listen",
            &listen,
            "--tls-certificates",
            server.to_str().unwrap(),
            "--tls-verify-peer",
            "--tls-authz",
            "CN=alice",
        ],
    );
    d.ok(&["volume", "create", "v", "--size", "64M"]);
    d.write_volume("v", 0, 8 << 20, 0x11);
    d.ok(&["snapshot", "create", "v", "s1"]);
    d.write_volume("v", 4 << 20, 1 << 20, 0x22);
    let uri = |client: &str, export: &str| {
        format!(
            "nbds://127.0.0.1:{port}/{export}?tls-certificates={}",
            certs.join(client).display()
        )
    };
    let (ok, out) = nbdinfo(&uri("alice", "s1"));
    assert!(ok && out.contains("\"TLS\": true"), "{out}");
    for refused in [
        format!("nbd://127.0.0.1:{port}/s1"),
        uri("bob", "s1"),
        uri("other", "s1"),
        uri("anon", "s1"),
    ] {
        let (ok, out) = nbdinfo(&refused);
        assert!(!ok, "{refused} was served: {out}");
        assert!(nbdinfo(&uri("alice", "s1")).0, "the daemon stopped serving");
    }
    // The unix socket stays plaintext.
    let (ok, out) = nbdinfo(&common::nbd(&d, "s1"));
    assert!(ok && out.contains("\"TLS\": false"), "{out}");
    // The backup host copies the snapshot over TLS.
    let copy = tmp.path().join("s1.raw");
    let o = Command::new("nbdcopy")
        .args([&uri("alice", "s1"), copy.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(sha256(&copy), checksum(&d, "s1"));
    // SIGHUP reloads the certificates, sent to the supervisor (which passes it on) or to the
    // serving process; neither dies of it.
    let status = d.json(&["status"]);
    assert_eq!(status["frontends"]["nbd_tls"].as_str(), Some("require"));
    assert!(d.ok(&["status"]).contains("(TLS require)"));
    let pid = u32::try_from(status["pid"].as_u64().unwrap()).unwrap();
    let supervisor = u32::try_from(status["supervisor_pid"].as_u64().unwrap()).unwrap();
    for (n, target) in [(1, supervisor), (2, pid)] {
        common::signal(target, rustix::process::Signal::HUP);
        let reloaded = || d.log().matches("TLS certificates reloaded").count() >= n;
        common::wait_until(Duration::from_secs(10), "no reload after SIGHUP", reloaded);
    }
    assert_eq!(d.json(&["status"])["pid"].as_u64(), Some(u64::from(pid)));
    assert_eq!(d.json(&["status"])["restarts"].as_u64(), Some(0));
    assert!(nbdinfo(&uri("alice", "v")).0);
    assert_eq!(d.stop(), 0, "{}", d.log());
}

/// `tools/dirty_bitmaps.py`: python libnbd over TLS (no client certificate) reading the dirty
/// bitmaps of the (export, since) pairs in `pairs` (JSON).
fn dirty_bitmaps(port: u16, certs: &Path, pairs: &str) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/dirty_bitmaps.py");
    Command::new("/usr/bin/python3")
        .arg(script)
        .arg(port.to_string())
        .arg(certs.join("anon"))
        .arg(pairs)
        .output()
        .unwrap()
}

/// (offset, length) pairs of `fss diff A [B] --json`.
fn diff(d: &Daemon, a: &str, b: Option<&str>) -> Vec<[u64; 2]> {
    let mut args = vec!["diff", a];
    args.extend(b);
    let v = d.json(&args);
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| [e["offset"].as_u64().unwrap(), e["length"].as_u64().unwrap()])
        .collect()
}

#[test]
fn dirty_bitmaps_over_tls_equal_fss_diff_over_random_writes() {
    require("/usr/bin/python3", "python3-libnbd");
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs(tmp.path());
    let port = free_port();
    let server = certs.join("server");
    let d = Daemon::start_with(
        &tmp.path().join("s"),
        &[
            "--nbd-listen",
            &format!("127.0.0.1:{port}"),
            "--tls-certificates",
            server.to_str().unwrap(),
        ],
    );
    for (k, seed) in [0x5eed_u64, 0xdecaf, 0xfeed_f00d].into_iter().enumerate() {
        check_bitmaps(&d, port, &certs, &format!("v{k}"), seed);
    }
    // Across chains there is no bitmap: s4 does not offer s3 (transient).
    let o = dirty_bitmaps(port, &certs, r#"[["v0s4", "v0s3"]]"#);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not offered"));
}

/// Random writes to a new volume `vol` and five snapshots (the fourth transient), then every
/// dirty bitmap read over TLS against `fss diff`.
fn check_bitmaps(d: &Daemon, port: u16, certs: &Path, vol: &str, mut seed: u64) {
    // A size that is not a multiple of 4 KiB: the last extent is short.
    let size = 24 * MIB + 1536;
    d.ok(&["volume", "create", vol, "--size", &size.to_string()]);
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut snaps: Vec<String> = Vec::new();
    for round in 0..5 {
        for _ in 0..1 + next(12) {
            let big = next(4) == 0;
            let len = 1 + next(if big { 3 * MIB } else { 20_000 });
            let off = next(size - len);
            d.write_volume(vol, off, len as usize, round as u8 + 1);
        }
        let name = format!("{vol}s{round}");
        let mut args = vec!["snapshot", "create", vol, name.as_str()];
        if round == 3 {
            // A transient snapshot forms its own chain: no bitmap across chains.
            args.push("--transient");
        }
        d.ok(&args);
        snaps.push(name);
    }
    d.write_volume(vol, size - 100, 100, 0x77);
    let transient = format!("{vol}s3");
    let persistent: Vec<&String> = snaps.iter().filter(|s| **s != transient).collect();
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (i, b) in persistent.iter().enumerate() {
        for a in &persistent[..i] {
            pairs.push(((*b).clone(), (*a).clone()));
        }
    }
    for a in &snaps {
        pairs.push((vol.to_string(), a.clone()));
    }
    let o = dirty_bitmaps(port, certs, &serde_json::to_string(&pairs).unwrap());
    assert!(
        o.status.success(),
        "dirty_bitmaps.py failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let got: Value = serde_json::from_slice(&o.stdout).unwrap();
    for (export, since) in &pairs {
        let want = if export == vol {
            diff(d, since, None)
        } else {
            diff(d, since, Some(export))
        };
        let seen: Vec<[u64; 2]> =
            serde_json::from_value(got[format!("{export}:{since}")].clone()).unwrap();
        assert_eq!(seen, want, "qemu:dirty-bitmap:{since} on {export}");
    }
}
