//! NBD over TLS with real clients on 127.0.0.1: nbdinfo, qemu-io, qemu-img and nbdcopy with
//! certificates made by openssl, and the refusals (plaintext, another CA, no certificate, a
//! subject not allowed), each followed by a client that is served. Each test fails, never
//! skips, when a client is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::tls::{Certs, TlsHarness};
use common::{require, run, run_ok, Rng};
use fss_nbd::{Tls, TlsMode};
use serde_json::Value;
use std::process::{Command, Output};
use std::time::Duration;

const MIB: u64 = 1 << 20;

fn nbdinfo(uri: &str) -> Output {
    require("nbdinfo", "libnbd-bin");
    run(
        Command::new("nbdinfo").args(["--json", "--no-content", uri]),
        Duration::from_secs(60),
    )
}

/// nbdinfo succeeds over TLS and says so.
fn nbdinfo_ok(uri: &str) -> Value {
    let out = nbdinfo(uri);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nbdinfo {uri} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["TLS"], true, "{v}");
    v
}

/// nbdinfo fails, and the message says something of why.
fn nbdinfo_refused(uri: &str, why: &[&str]) {
    let out = nbdinfo(uri);
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(!out.status.success(), "nbdinfo {uri} was served");
    assert!(
        why.iter().any(|w| err.contains(w)),
        "nbdinfo {uri}: expected one of {why:?} in:\n{err}"
    );
}

fn qemu(tool: &str, t: &TlsHarness, client: &str, args: &[&str]) -> Output {
    require(tool, "qemu-utils");
    let mut c = Command::new(tool);
    // qemu-img takes its options after the subcommand.
    let (sub, rest) = match tool {
        "qemu-img" => args.split_at(1),
        _ => (&[][..], args),
    };
    c.args(sub)
        .args(["--object", &t.qemu_object(client)])
        .args(rest);
    run(&mut c, Duration::from_secs(120))
}

fn qemu_ok(tool: &str, t: &TlsHarness, client: &str, args: &[&str]) -> String {
    let out = qemu(tool, t, client, args);
    common::qemu_stdout_ok(&format!("{tool} {args:?}"), &out)
}

#[test]
fn nbdinfo_reports_tls_and_the_plaintext_port_refuses_plaintext() {
    let t = TlsHarness::new(4 * MIB, TlsMode::Require, false, &[]);
    let v = nbdinfo_ok(&t.uri("default", "anon"));
    assert_eq!(v["exports"][0]["export-size"], 4 * MIB);
    // A plaintext client learns nothing about the exports (libnbd reports NBD_REP_ERR_TLS_REQD
    // as "not supported", as it does for nbdkit --tls=require).
    nbdinfo_refused(&t.plain_uri("default"), &["tls", "not supported"]);
    // The unix socket stays plaintext.
    let out = run_ok(Command::new("nbdinfo").args(["--json", "--no-content", &t.h.uri("default")]));
    assert!(out.contains("\"TLS\": false"), "{out}");
    nbdinfo_ok(&t.uri("default", "alice"));
}

#[test]
fn tls_on_lets_a_client_choose() {
    let t = TlsHarness::new(MIB, TlsMode::On, false, &[]);
    nbdinfo_ok(&t.uri("default", "anon"));
    let out = run_ok(Command::new("nbdinfo").args(["--json", "--no-content", &t.plain_uri("")]));
    assert!(out.contains("\"TLS\": false"), "{out}");
}

#[test]
fn qemu_io_writes_and_reads_over_tls() {
    let t = TlsHarness::new(16 * MIB, TlsMode::Require, true, &[]);
    let image = t.qemu_image("default");
    qemu_ok(
        "qemu-io",
        &t,
        "alice",
        &[
            "-c",
            "write -P 0x5a 0 3M",
            "-c",
            "write -P 0xa5 5M 64k",
            "-c",
            "write -z 8M 1M",
            "-c",
            "flush",
            "--image-opts",
            &image,
        ],
    );
    let out = qemu_ok(
        "qemu-io",
        &t,
        "alice",
        &[
            "-r",
            "-c",
            "read -P 0x5a 0 3M",
            "-c",
            "read -P 0xa5 5M 64k",
            "-c",
            "read -P 0 8M 1M",
            "--image-opts",
            &image,
        ],
    );
    assert!(out.contains("read 65536/65536"), "{out}");
    let mut b = vec![0u8; 3 << 20];
    t.h.volume.read(&mut b, 0).unwrap();
    assert!(b.iter().all(|&x| x == 0x5a));
}

#[test]
fn qemu_img_convert_and_nbdcopy_over_tls_copy_exactly() {
    require("nbdcopy", "libnbd-bin");
    let t = TlsHarness::new(32 * MIB, TlsMode::Require, true, &["alice"]);
    let mut rng = Rng::new(16);
    let mut data = vec![0u8; 32 << 20];
    for _ in 0..40 {
        let off = rng.below(32 * 256) as usize * 4096;
        let len = ((1 + rng.below(64)) as usize * 4096).min(data.len() - off);
        rng.fill(&mut data[off..off + len]);
    }
    t.h.volume.write(&data, 0).unwrap();
    let snap = t.h.snapshot("snap");
    t.h.volume.write(&[0xee; 1 << 20], 0).unwrap();

    let img = t.h.path("convert.raw");
    qemu_ok(
        "qemu-img",
        &t,
        "alice",
        &[
            "convert",
            "-O",
            "raw",
            "--image-opts",
            &t.qemu_image("snap"),
            img.to_str().unwrap(),
        ],
    );
    assert!(
        std::fs::read(&img).unwrap() == data,
        "qemu-img convert differs"
    );

    let copy = t.h.path("nbdcopy.raw");
    run_ok(Command::new("nbdcopy").args([&t.uri("snap", "alice"), copy.to_str().unwrap()]));
    assert!(
        std::fs::read(&copy).unwrap() == data,
        "nbdcopy from the snapshot differs"
    );
    // And back onto the volume, over TLS, several connections at once.
    run_ok(Command::new("nbdcopy").args([copy.to_str().unwrap(), &t.uri("default", "alice")]));
    let mut now = vec![0u8; data.len()];
    t.h.volume.read(&mut now, 0).unwrap();
    assert!(now == data, "nbdcopy onto the volume differs");
    drop(snap);
}

#[test]
fn refused_clients_fail_and_the_server_keeps_serving() {
    let t = TlsHarness::new(MIB, TlsMode::Require, true, &["alice"]);
    let good = t.uri("default", "alice");
    nbdinfo_ok(&good);
    let cases = [
        (t.plain_uri("default"), vec!["tls", "not supported"]),
        // A certificate from another CA.
        (
            t.uri("default", "other"),
            vec!["tls", "certificate", "alert"],
        ),
        // No certificate under --tls-verify-peer.
        (
            t.uri("default", "anon"),
            vec!["tls", "certificate", "alert"],
        ),
        // Signed by the CA, but not among --tls-authz.
        (t.uri("default", "bob"), vec!["tls", "denied", "alert"]),
    ];
    for (uri, why) in &cases {
        nbdinfo_refused(uri, why);
        nbdinfo_ok(&good);
    }
    // qemu with a refused certificate fails too.
    let out = qemu(
        "qemu-io",
        &t,
        "bob",
        &[
            "-r",
            "-c",
            "read 0 4k",
            "--image-opts",
            &t.qemu_image("default"),
        ],
    );
    assert!(
        !out.status.success() || String::from_utf8_lossy(&out.stderr).contains("failed"),
        "qemu-io with bob's certificate was served"
    );
    qemu_ok(
        "qemu-io",
        &t,
        "alice",
        &[
            "-r",
            "-c",
            "read 0 4k",
            "--image-opts",
            &t.qemu_image("default"),
        ],
    );
}

#[test]
fn certificates_reload_for_new_connections() {
    let certs = Certs::new();
    // A server directory of its own, whose CA the test replaces.
    let dir = certs.path("reloaded");
    std::fs::create_dir(&dir).unwrap();
    for f in ["ca-cert.pem", "server-cert.pem", "server-key.pem"] {
        std::fs::copy(certs.path("server").join(f), dir.join(f)).unwrap();
    }
    let mut settings = certs.settings(TlsMode::Require, true, &[]);
    settings.dir = dir.clone();
    let tls = Tls::load(settings).unwrap();
    let h = common::Harness::with_options(
        MIB,
        fss_nbd::ServerOptions {
            tls: Some(tls.clone()),
            ..Default::default()
        },
    );
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let s = h.server.clone();
    std::thread::spawn(move || s.serve_tcp(l));
    let uri = |client: &str| {
        format!(
            "nbds://127.0.0.1:{port}/default?tls-certificates={}",
            certs.path(client).display()
        )
    };
    nbdinfo_ok(&uri("alice"));
    nbdinfo_refused(&uri("other"), &["tls", "certificate", "alert"]);
    // Trust the other CA instead.
    let other_ca = certs.dir.path().join("work/other-ca-cert.pem");
    std::fs::copy(&other_ca, dir.join("ca-cert.pem")).unwrap();
    tls.reload().unwrap();
    nbdinfo_ok(&uri("other"));
    nbdinfo_refused(&uri("alice"), &["tls", "certificate", "alert"]);
    // A reload that fails keeps what is in use.
    std::fs::remove_file(dir.join("server-key.pem")).unwrap();
    let e = tls.reload().unwrap_err().to_string();
    assert!(
        e.contains("server-key.pem") && e.contains("cannot read"),
        "{e}"
    );
    nbdinfo_ok(&uri("other"));
}

#[test]
fn configuration_errors_say_what_to_do() {
    let certs = Certs::new();
    let mut s = certs.settings(TlsMode::Require, false, &[]);
    s.dir = certs.path("v1");
    let e = Tls::load(s).unwrap_err().to_string();
    assert!(
        e.contains("server-cert.pem") && e.contains("version 1") && e.contains("-extfile"),
        "{e}"
    );
    let e = Tls::load(certs.settings(TlsMode::Require, false, &["alice"]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--tls-authz needs --tls-verify-peer"), "{e}");
    let mut s = certs.settings(TlsMode::Require, true, &[]);
    s.dir = certs.path("alice");
    let e = Tls::load(s).unwrap_err().to_string();
    assert!(
        e.contains("server-cert.pem") && e.contains("qemu and nbdkit"),
        "{e}"
    );
    let mut s = certs.settings(TlsMode::Require, false, &[]);
    s.dir = certs.path("mixed");
    std::fs::create_dir(&s.dir).unwrap();
    std::fs::copy(
        certs.path("server/server-cert.pem"),
        s.dir.join("server-cert.pem"),
    )
    .unwrap();
    std::fs::copy(
        certs.path("bob/client-key.pem"),
        s.dir.join("server-key.pem"),
    )
    .unwrap();
    let e = Tls::load(s).unwrap_err().to_string();
    assert!(
        e.contains("server-key.pem") && e.contains("does not go with"),
        "{e}"
    );
}
