//! Repository backups against a real Ceph RADOS Gateway on loopback (issue 15, "What it must
//! show"): ext4 under a writer with several snapshots, each backed up; restores of the first, a
//! middle and the last e2fsck-clean and equal; an identical second volume adds nothing; an
//! incremental stores at most 1.1x the chunks its changes overlap; kill -9 mid-backup then a
//! rerun; prune --keep-last 2 beside a running backup; a wrong key; no plaintext in the bucket;
//! a damaged object found by verify --read-data and refused by restore.
//!
//! One gateway for the whole binary (15 s to start), one bucket per part, stopped in every
//! outcome. Needs root, FUSE, loop devices and Ceph (CI installs them); a missing tool fails.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::loopdev::{run, s, Cleanup};
use common::rgw::Gateway;
use common::{data, Daemon, FSS};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn fss(d: &Daemon, args: &[&str]) -> common::Run {
    Command::new(FSS)
        .args(args)
        .env("FSS_STATE_DIR", &d.dir)
        .envs(Gateway::env())
        .output()
        .unwrap()
        .into()
}

fn ok(d: &Daemon, args: &[&str]) -> String {
    let r = fss(d, args);
    assert_eq!(r.status, 0, "fss {args:?} failed: {}{}", r.stdout, r.stderr);
    r.stdout
}

fn fails(d: &Daemon, args: &[&str]) -> String {
    let r = fss(d, args);
    assert_ne!(r.status, 0, "fss {args:?} should fail: {}", r.stdout);
    r.stderr
}

fn list(d: &Daemon, url: &str, key: &str) -> Vec<serde_json::Value> {
    let out = ok(d, &["repo", "list", url, "--json", "--key", key]);
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn id_of(backups: &[serde_json::Value], snapshot: &str) -> String {
    backups
        .iter()
        .rev()
        .find(|b| b["snapshot"] == snapshot)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn sha(p: &Path) -> String {
    run("sha256sum", &[s(p)])
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Distinct 1 MiB chunks that the extents of `fss diff A B` overlap.
fn overlapped_chunks(d: &Daemon, a: &str, b: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(&ok(d, &["diff", a, b, "--json"])).unwrap();
    let mut chunks = std::collections::BTreeSet::new();
    for e in v.as_array().unwrap() {
        let (off, len) = (e["offset"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        chunks.extend(off / MIB..=(off + len - 1) / MIB);
    }
    chunks.len() as u64
}

/// e2fsck -fn on an image, through a read-only loop device.
fn fsck_clean(c: &mut Cleanup, img: &Path) {
    let dev = c.attach(img, true);
    let out = Command::new("e2fsck").args(["-fn", &dev]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "e2fsck -fn {}: {}",
        img.display(),
        String::from_utf8_lossy(&out.stdout)
    );
    c.detach(&dev);
}

#[test]
fn repository_on_ceph_rgw() {
    let gw = Gateway::start();
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("state"));
    let key = tmp.path().join("key");
    let k = s(&key);
    let mut c = Cleanup::default();
    ext4_under_a_writer(&gw, &d, tmp.path(), k, &mut c);
    kill_prune_and_keys(&gw, &d, tmp.path(), k);
    c.release_all();
}

fn ext4_under_a_writer(gw: &Gateway, d: &Daemon, tmp: &Path, k: &str, c: &mut Cleanup) {
    gw.bucket("ext4");
    let url = "s3://ext4/fss";
    ok(d, &["repo", "init", url, "--encrypt", k]);
    ok(d, &["volume", "create", "vol", "--size", "128M"]);
    let dev = c.attach(&d.dir.join("dev/vol"), false);
    run("mkfs.ext4", &["-q", &dev]);
    let mnt = tmp.join("mnt");
    c.mount(&dev, &mnt, "rw");
    let stop = AtomicBool::new(false);
    std::thread::scope(|sc| {
        let writer = sc.spawn(|| {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // At most 24 files of up to 1 MiB: the writer churns, never fills.
                let path = mnt.join(format!("f{}", n % 24));
                let mut f = std::fs::File::create(&path).unwrap();
                f.write_all(&data(n, ((n * 37 % 1024) as usize + 1) << 10))
                    .unwrap();
                f.sync_all().unwrap();
                n += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        for n in 1..=4 {
            std::thread::sleep(Duration::from_millis(300));
            ok(d, &["snapshot", "create", s(&mnt), &format!("s{n}")]);
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
    });
    for n in 1..=4 {
        let out = ok(
            d,
            &[
                "backup",
                &format!("s{n}"),
                url,
                "--key",
                k,
                "--connections",
                "3",
            ],
        );
        eprintln!("{out}");
        if n > 1 {
            assert!(
                out.contains(&format!("incremental since 's{}'", n - 1)),
                "{out}"
            );
        }
    }
    let backups = list(d, url, k);
    assert_eq!(backups.len(), 4);
    for n in 2..=4 {
        let overlap = overlapped_chunks(d, &format!("s{}", n - 1), &format!("s{n}")) * MIB;
        let new = backups[n - 1]["new_bytes"].as_u64().unwrap();
        assert!(
            new > 0 && new * 10 <= overlap * 11,
            "s{n}: {new} new bytes for {overlap} bytes of overlapped chunks"
        );
    }
    for snap in ["s1", "s2", "s4"] {
        let img = tmp.join(format!("{snap}.img"));
        ok(
            d,
            &[
                "restore",
                url,
                "--backup",
                &id_of(&backups, snap),
                s(&img),
                "--key",
                k,
                "--connections",
                "4",
            ],
        );
        assert_eq!(sha(&img), sha(&d.dir.join("dev").join(snap)), "{snap}");
        fsck_clean(c, &img);
    }
    // An identical second volume: a copy of s4's image, backed up in full, adds nothing.
    let (bytes_before, _) = gw.stats("ext4");
    ok(
        d,
        &["volume", "add", "copy", "--device", s(&tmp.join("s4.img"))],
    );
    ok(d, &["snapshot", "create", "copy", "c1"]);
    let out = ok(d, &["backup", "c1", url, "--key", k]);
    assert!(out.contains(": full, 0 B new"), "{out}");
    let (bytes_after, _) = gw.stats("ext4");
    assert!(
        bytes_after - bytes_before < 256 << 10,
        "an identical volume added {} bytes",
        bytes_after - bytes_before
    );
    damaged_object(gw, d, tmp, url, k, &id_of(&backups, "s4"));
}

/// Flip a byte of the biggest pack through S3: verify --read-data finds it, restore refuses.
fn damaged_object(gw: &Gateway, d: &Daemon, tmp: &Path, url: &str, k: &str, id: &str) {
    ok(d, &["repo", "verify", url, "--read-data", "--key", k]);
    let pack = gw
        .objects("ext4")
        .into_iter()
        .filter(|o| o.starts_with("fss/packs/"))
        .max()
        .unwrap();
    let f = tmp.join("pack");
    Gateway::curl("GET", &format!("/ext4/{pack}"), None, Some(&f));
    let mut bytes = std::fs::read(&f).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&f, &bytes).unwrap();
    Gateway::curl("PUT", &format!("/ext4/{pack}"), Some(&f), None);
    let err = fails(d, &["repo", "verify", url, "--read-data", "--key", k]);
    assert!(err.contains(pack.trim_start_matches("fss/")), "{err}");
    let img = tmp.join("damaged.img");
    // The damaged pack may hold none of this backup's chunks: then restore each backup.
    let mut refused = false;
    for b in list(d, url, k) {
        let r = fss(
            d,
            &[
                "restore",
                url,
                "--backup",
                b["id"].as_str().unwrap(),
                s(&img),
                "--key",
                k,
            ],
        );
        if r.status != 0 {
            assert!(
                r.stderr.contains("packs/") && r.stderr.contains("at offset"),
                "{}",
                r.stderr
            );
            assert!(!img.exists(), "a failed restore left {}", img.display());
            refused = true;
        } else {
            std::fs::remove_file(&img).unwrap();
        }
    }
    assert!(refused, "no restore noticed the damaged pack (backup {id})");
}

/// `fss backup SNAPSHOT URL` in the background, on one connection (slow enough to catch).
fn spawn_backup(d: &Daemon, snapshot: &str, url: &str, k: &str) -> std::process::Child {
    Command::new(FSS)
        .args(["backup", snapshot, url, "--key", k, "--connections", "1"])
        .env("FSS_STATE_DIR", &d.dir)
        .envs(Gateway::env())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn kill_prune_and_keys(gw: &Gateway, d: &Daemon, tmp: &Path, k: &str) {
    gw.bucket("big");
    let url = "s3://big/r";
    ok(d, &["repo", "init", url, "--encrypt", k]);
    ok(d, &["volume", "create", "big", "--size", "256M"]);
    let known = data(4242, 4096);
    for i in 0..4u64 {
        let mut chunk = data(i + 7, 64 << 20);
        if i == 1 {
            chunk[..4096].copy_from_slice(&known);
        }
        d.write_volume_bytes("big", i * (64 << 20), &chunk);
    }
    ok(d, &["snapshot", "create", "big", "b1"]);
    // kill -9 once some packs are in the bucket.
    let mut child = spawn_backup(d, "b1", url, k);
    let t = Instant::now();
    while gw
        .objects("big")
        .iter()
        .filter(|o| o.starts_with("r/packs/"))
        .count()
        < 2
    {
        assert!(
            t.elapsed() < Duration::from_secs(60) && child.try_wait().unwrap().is_none(),
            "the backup ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(list(d, url, k).is_empty(), "a killed backup left a backup");
    let out = ok(d, &["backup", "b1", url, "--key", k]);
    let b1 = list(d, url, k);
    assert!(
        b1[0]["new_bytes"].as_u64().unwrap() <= 200 * MIB,
        "the rerun did not reuse the uploaded packs: {out}"
    );
    // Three more backups, then prune --keep-last 2 while a fourth runs.
    for n in 2..=4u64 {
        d.write_volume_bytes("big", n * 3 * MIB, &data(n + 100, 2 << 20));
        ok(d, &["snapshot", "create", "big", &format!("b{n}")]);
        if n < 4 {
            ok(d, &["backup", &format!("b{n}"), url, "--key", k]);
        }
    }
    let mut running = spawn_backup(d, "b4", url, k);
    let prune = || {
        ok(
            d,
            &[
                "repo",
                "prune",
                url,
                "--keep-last",
                "2",
                "--gc-grace",
                "0",
                "--key",
                k,
            ],
        )
    };
    prune();
    let status = running.wait().unwrap();
    assert!(status.success(), "the backup beside the prune failed");
    prune();
    let kept = list(d, url, k);
    assert_eq!(kept.len(), 2, "{kept:?}");
    for b in &kept {
        let snap = b["snapshot"].as_str().unwrap();
        let img = tmp.join(format!("{snap}.img"));
        ok(
            d,
            &[
                "restore",
                url,
                "--backup",
                b["id"].as_str().unwrap(),
                s(&img),
                "--key",
                k,
            ],
        );
        assert_eq!(sha(&img), sha(&d.dir.join("dev").join(snap)), "{snap}");
        std::fs::remove_file(&img).unwrap();
    }
    ok(d, &["repo", "verify", url, "--read-data", "--key", k]);
    // A wrong key, and no plaintext of the known block anywhere in the bucket.
    let other = tmp.join("other-key");
    ok(
        d,
        &["repo", "init", "s3://big/other", "--encrypt", s(&other)],
    );
    let err = fails(d, &["repo", "list", url, "--key", s(&other)]);
    assert!(
        err.contains("the key does not open this repository"),
        "{err}"
    );
    let f = tmp.join("object");
    for o in gw.objects("big") {
        Gateway::curl("GET", &format!("/big/{o}"), None, Some(&f));
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes.windows(64).any(|w| w == &known[..64]),
            "plaintext of a known block in object {o}"
        );
    }
    let (stored, objects) = gw.stats("big");
    eprintln!("bucket big: {stored} bytes in {objects} objects");
}
