//! One test per user error: the message and the exit status (1 failed, 2 usage).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::Daemon;
use std::process::Command;

fn daemon() -> (tempfile::TempDir, Daemon) {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s"));
    (tmp, d)
}

fn fails(d: &Daemon, args: &[&str], status: i32, text: &str) {
    let r = d.fss(args);
    assert_eq!(r.status, status, "fss {args:?}: {}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(text),
        "fss {args:?}: expected '{text}' in: {}",
        r.stderr
    );
}

#[test]
fn unknown_names() {
    let (_t, d) = daemon();
    fails(
        &d,
        &["snapshot", "create", "nosuch", "s"],
        1,
        "no volume named 'nosuch'",
    );
    fails(
        &d,
        &["snapshot", "delete", "nosuch"],
        1,
        "no snapshot named 'nosuch'",
    );
    fails(
        &d,
        &["snapshot", "info", "nosuch"],
        1,
        "no snapshot named 'nosuch'",
    );
    fails(
        &d,
        &["volume", "remove", "nosuch"],
        1,
        "no volume named 'nosuch'",
    );
    fails(
        &d,
        &["checksum", "nosuch"],
        1,
        "no volume or snapshot named 'nosuch'",
    );
}

#[test]
fn names_taken_and_invalid() {
    let (_t, d) = daemon();
    d.ok(&["snapshot", "create", "default", "s1"]);
    fails(
        &d,
        &["snapshot", "create", "default", "s1"],
        1,
        "the name 's1' is taken",
    );
    fails(
        &d,
        &["volume", "create", "s1", "--size", "1M"],
        1,
        "the name 's1' is taken",
    );
    fails(
        &d,
        &["volume", "create", "default", "--size", "1M"],
        1,
        "the name 'default' is taken",
    );
    fails(&d, &["volume", "create", "-bad", "--size", "1M"], 2, "");
    fails(
        &d,
        &["volume", "create", "a/b", "--size", "1M"],
        1,
        "invalid name 'a/b'",
    );
    fails(
        &d,
        &["snapshot", "create", "default", ".x"],
        1,
        "invalid name '.x'",
    );
}

#[test]
fn a_failed_volume_create_leaves_no_image() {
    let (_t, d) = daemon();
    // Past every file system's limit: the image is made, then sizing it fails.
    for size in ["9000000T", "17T"] {
        let r = d.fss(&["volume", "create", "big", "--size", size]);
        if r.status == 0 {
            // 17 TiB fits on a file system with larger files (xfs, btrfs): nothing to show.
            d.ok(&["volume", "remove", "big"]);
            std::fs::remove_file(d.dir.join("volumes/big.img")).unwrap();
            continue;
        }
        assert_eq!(r.status, 1, "{size}: {}{}", r.stdout, r.stderr);
        assert!(
            !d.dir.join("volumes/big.img").exists(),
            "{size}: a failed create left its image behind"
        );
    }
    d.ok(&["volume", "create", "big", "--size", "4M"]);
}

#[test]
fn a_store_maximum_below_one_cluster_is_refused_naming_the_minimum() {
    let (_t, d) = daemon();
    for (extra, kind) in [
        (&[][..], "persistent"),
        (&["--transient"][..], "transient"),
        (&["--cluster-size", "1M"][..], "persistent"),
    ] {
        let mut args = vec![
            "snapshot",
            "create",
            "default",
            "s",
            "--max-store-size",
            "1",
        ];
        args.extend_from_slice(extra);
        let r = d.fss(&args);
        assert_eq!(r.status, 1, "{extra:?}: {}{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains(kind) && r.stderr.contains("too small"),
            "{}",
            r.stderr
        );
        // The minimum it names is accepted, and one byte less is not.
        let min: u64 = r
            .stderr
            .split("--max-store-size ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let below = (min - 1).to_string();
        args[5] = &below;
        assert_eq!(d.fss(&args).status, 1, "{extra:?}: {below} accepted");
        let exact = min.to_string();
        args[5] = &exact;
        d.ok(&args);
        d.ok(&["snapshot", "delete", "s"]);
    }
    assert_eq!(d.json(&["snapshot", "list"]).as_array().unwrap().len(), 0);
}

#[test]
fn sizes() {
    let (_t, d) = daemon();
    fails(&d, &["volume", "create", "v"], 2, "--size");
    fails(
        &d,
        &["volume", "create", "v", "--size", "12Q"],
        2,
        "invalid size '12Q'",
    );
    fails(
        &d,
        &["volume", "create", "v", "--size", "99999999T"],
        2,
        "size '99999999T' is too large",
    );
    for big in ["257T", "16777215T"] {
        fails(
            &d,
            &["volume", "create", "v", "--size", big],
            1,
            "too large",
        );
    }
    fails(
        &d,
        &["volume", "create", "v", "--size", "0"],
        1,
        "size above 0",
    );
    fails(
        &d,
        &[
            "snapshot",
            "create",
            "default",
            "s",
            "--cluster-size",
            "3000",
        ],
        1,
        "power of two",
    );
}

#[test]
fn stores_that_cannot_be() {
    let (t, d) = daemon();
    let missing = t.path().join("nope/deeper/s.fss");
    fails(
        &d,
        &[
            "snapshot",
            "create",
            "default",
            "s",
            "--store",
            missing.to_str().unwrap(),
        ],
        1,
        "does not exist",
    );
    let full = t.path().join("full");
    std::fs::write(&full, b"something").unwrap();
    fails(
        &d,
        &[
            "snapshot",
            "create",
            "default",
            "s",
            "--store",
            full.to_str().unwrap(),
        ],
        1,
        "not empty",
    );
}

#[test]
fn store_on_a_full_file_system() {
    let (t, d) = daemon();
    let mnt = t.path().join("tiny");
    std::fs::create_dir(&mnt).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(ok.success(), "mount tmpfs (tests run as root)");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(mnt.clone());
    // Fill it.
    let _ = std::fs::write(mnt.join("fill"), vec![1u8; 64 << 10]);
    let r = d.fss(&[
        "snapshot",
        "create",
        "default",
        "s",
        "--store",
        mnt.to_str().unwrap(),
    ]);
    assert_eq!(r.status, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("No space left") || r.stderr.contains("no space"),
        "{}",
        r.stderr
    );
    assert!(
        !d.ok(&["snapshot", "list"]).contains("s "),
        "nothing half-made"
    );
    assert_eq!(
        std::fs::read_dir(&mnt).unwrap().count(),
        1,
        "the failed store file was removed"
    );
}

#[test]
fn volume_with_snapshots_cannot_be_removed() {
    let (_t, d) = daemon();
    d.ok(&["snapshot", "create", "default", "s1"]);
    fails(
        &d,
        &["volume", "remove", "default"],
        1,
        "has snapshots (s1)",
    );
}

#[test]
fn cluster_size_that_disagrees() {
    let (_t, d) = daemon();
    d.ok(&[
        "snapshot",
        "create",
        "default",
        "s1",
        "--cluster-size",
        "16K",
    ]);
    fails(
        &d,
        &[
            "snapshot",
            "create",
            "default",
            "s2",
            "--cluster-size",
            "64K",
        ],
        1,
        "16384 byte clusters",
    );
}

#[test]
fn second_daemon_on_the_same_state_dir() {
    let (_t, d) = daemon();
    let r = Command::new(common::FSS)
        .args(["serve"])
        .env("FSS_STATE_DIR", &d.dir)
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("another fss daemon"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
}

#[test]
fn socket_path_too_long() {
    let t = tempfile::tempdir().unwrap();
    let long = t.path().join("x".repeat(120));
    let r = Command::new(common::FSS)
        .args(["serve"])
        .env("FSS_STATE_DIR", &long)
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("more than the 107 a unix socket allows"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
}

#[test]
fn no_daemon_is_said_plainly() {
    let t = tempfile::tempdir().unwrap();
    let r = Command::new(common::FSS)
        .args(["snapshot", "list"])
        .env("FSS_STATE_DIR", t.path())
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("cannot reach the fss daemon"));
}

#[test]
fn fssconfig_usage_and_errors_exit_1() {
    let (_t, d) = daemon();
    let r = d.fssconfig(&["-c", "fss0"]);
    assert_eq!(r.status, 1);
    assert!(r.stderr.contains("usage: fssconfig"), "{}", r.stderr);
    let r = d.fssconfig(&["-u", "fss9"]);
    assert_eq!(r.status, 1);
    assert!(
        r.stderr
            .contains("fssconfig: fss9: no snapshot named 'fss9'"),
        "{}",
        r.stderr
    );
    let r = d.fssconfig(&["-c", "fss0", "/", "/tmp"]);
    assert_eq!(r.status, 1);
    assert!(r.stderr.contains("not on an fss volume"), "{}", r.stderr);
}

#[test]
fn nbd_over_tcp_on_every_address_is_logged_as_exposed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_with(
        &tmp.path().join("s"),
        &["--nbd-listen", "0.0.0.0:0", "--tls", "off"],
    );
    // The log is read by another thread: give it a moment.
    let t = std::time::Instant::now();
    while !d.log().contains("unencrypted") && t.elapsed().as_secs() < 5 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        d.log().contains("unencrypted and without authentication"),
        "no warning in:\n{}",
        d.log()
    );
    assert_eq!(d.stop(), 0);
    let mut quiet = Daemon::start_with(
        &tmp.path().join("q"),
        &["--nbd-listen", "127.0.0.1:0", "--tls", "off"],
    );
    assert!(!quiet.log().contains("unencrypted"), "{}", quiet.log());
    assert_eq!(quiet.stop(), 0);
}

#[test]
fn verify_of_an_invalid_snapshot_fails_and_says_why() {
    let (_t, d) = daemon();
    d.ok(&[
        "snapshot",
        "create",
        "default",
        "small",
        "--max-store-size",
        "512K",
    ]);
    d.write_volume("default", 0, 4 << 20, 0x5a);
    let list = d.json(&["snapshot", "list"]);
    assert_eq!(list[0]["state"], "invalid", "{list}");
    for json in [false, true] {
        let mut args = vec!["snapshot", "verify", "small"];
        if json {
            args.push("--json");
        }
        let r = d.fss(&args);
        assert_eq!(
            r.status, 1,
            "verify --json={json}: {}{}",
            r.stdout, r.stderr
        );
        assert!(r.stderr.contains("is invalid"), "{}", r.stderr);
        assert!(!r.stdout.contains("intact") || json, "{}", r.stdout);
    }
}

#[test]
fn a_cluster_size_too_small_for_a_large_volume_is_refused_naming_the_minimum() {
    let (t, d) = daemon();
    // 15 TiB, sparse: at 4K it would need 2^32 clusters; the engine allows 2^24.
    let image = t.path().join("big.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(15 << 40)
        .unwrap();
    d.ok(&["volume", "add", "big", "--device", image.to_str().unwrap()]);
    fails(
        &d,
        &[
            "snapshot",
            "create",
            "big",
            "s",
            "--cluster-size",
            "4K",
            "--transient",
        ],
        1,
        "the smallest cluster size for it is 1M",
    );
    d.ok(&[
        "snapshot",
        "create",
        "big",
        "s",
        "--cluster-size",
        "1M",
        "--transient",
    ]);
    assert_eq!(d.json(&["snapshot", "info", "s"])["cluster_size"], 1 << 20);
}

#[test]
fn a_group_sharing_one_store_file_is_refused_and_leaves_nothing() {
    let (t, d) = daemon();
    d.ok(&["volume", "create", "w", "--size", "4M"]);
    let store = t.path().join("shared.fss");
    let args = [
        "snapshot",
        "create-group",
        "default:a",
        "w:b",
        "--store",
        store.to_str().unwrap(),
    ];
    fails(&d, &args, 1, "would share the store");
    assert!(!store.exists(), "a refused group left {}", store.display());
    assert_eq!(d.json(&["snapshot", "list"]).as_array().unwrap().len(), 0);
    // A directory gives each its own.
    d.ok(&[
        "snapshot",
        "create-group",
        "default:a",
        "w:b",
        "--store",
        t.path().to_str().unwrap(),
    ]);
    assert_eq!(d.json(&["snapshot", "list"]).as_array().unwrap().len(), 2);
}

#[test]
fn snapshot_set_raises_a_live_store_maximum_before_it_fills() {
    let (_t, mut d) = daemon();
    d.ok(&[
        "snapshot",
        "create",
        "default",
        "small",
        "--max-store-size",
        "512K",
    ]);
    let before = d.ok(&["checksum", "small"]);
    d.write_volume("default", 0, 128 << 10, 0x77);
    // Below what the store uses: refused, and nothing changes.
    fails(
        &d,
        &["snapshot", "set", "small", "--max-store-size", "64K"],
        1,
        "below",
    );
    fails(
        &d,
        &["snapshot", "set", "nosuch", "--max-store-size", "1M"],
        1,
        "no snapshot named",
    );
    fails(
        &d,
        &["snapshot", "set", "small", "--max-store-size", "lots"],
        2,
        "invalid size",
    );
    d.ok(&["snapshot", "set", "small", "--max-store-size", "none"]);
    assert!(d.json(&["snapshot", "info", "small"])["store_max"].is_null());
    // What would have invalidated it now fits.
    d.write_volume("default", 1 << 20, 4 << 20, 0x77);
    let info = d.json(&["snapshot", "info", "small"]);
    assert_eq!(info["state"], "valid", "{info}");
    assert_eq!(d.ok(&["checksum", "small"]), before);
    // Kept across a restart; and a limit can be set again.
    d.stop_and_start();
    assert!(d.json(&["snapshot", "info", "small"])["store_max"].is_null());
    d.ok(&["snapshot", "set", "small", "--max-store-size", "64M"]);
    d.stop_and_start();
    assert_eq!(
        d.json(&["snapshot", "info", "small"])["store_max"],
        64 << 20
    );
    assert_eq!(d.ok(&["checksum", "small"]), before);
}
