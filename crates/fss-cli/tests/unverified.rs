//! The volume fingerprint: a volume image changed while the daemon was stopped makes its
//! snapshots "unverified" (and the log says so loudly); a clean restart of an untouched image,
//! and crash recovery after kill -9, keep them valid.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::Daemon;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An 8 MiB image with recognisable bytes.
fn image(dir: &Path) -> PathBuf {
    let image = dir.join("data.img");
    let data: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&image, &data).unwrap();
    image
}

/// A daemon on `dir/state` with volume `v` from `image` and a persistent snapshot `p1`.
fn setup(dir: &Path, image: &Path) -> Daemon {
    let d = Daemon::start(&dir.join("state"));
    d.ok(&["volume", "add", "v", "--device", image.to_str().unwrap()]);
    d.ok(&["snapshot", "create", "v", "p1"]);
    assert_eq!(state(&d, "p1"), ("valid".to_string(), None));
    d
}

/// A snapshot's state and reason from `fss snapshot list --json`.
fn state(d: &Daemon, name: &str) -> (String, Option<String>) {
    let list = d.json(&["snapshot", "list"]);
    let s = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no snapshot {name} in {list}"));
    (
        s["state"].as_str().unwrap().to_string(),
        s["reason"].as_str().map(ToString::to_string),
    )
}

fn checksum(d: &Daemon, name: &str) -> String {
    d.ok(&["checksum", name]).trim().to_string()
}

#[test]
fn an_image_modified_while_stopped_makes_its_snapshots_unverified() {
    let tmp = tempfile::tempdir().unwrap();
    let image = image(tmp.path());
    let mut d = setup(tmp.path(), &image);
    assert_eq!(d.stop(), 0, "clean stop; log:\n{}", d.log());

    // Behind fss's back: a few bytes in the middle of the image. (A short pause first, so the
    // modification time cannot fall in the same timestamp tick as the daemon's last write.)
    std::thread::sleep(Duration::from_millis(50));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    f.write_all_at(b"changed behind fss's back", 3 << 20)
        .unwrap();
    f.sync_all().unwrap();
    drop(f);

    d.restart();
    let (st, reason) = state(&d, "p1");
    assert_eq!(st, "unverified", "log:\n{}", d.log());
    let reason = reason.expect("an unverified snapshot has a reason");
    assert!(
        reason.contains("changed while fss was not running"),
        "reason: {reason}"
    );
    assert!(
        d.log().contains("UNVERIFIED"),
        "the log says UNVERIFIED loudly:\n{}",
        d.log()
    );
    // A clean stop and restart does not launder it: it stays unverified.
    assert_eq!(d.stop(), 0);
    d.restart();
    assert_eq!(state(&d, "p1").0, "unverified", "log:\n{}", d.log());
    // Once its snapshots are gone, new ones are valid.
    d.ok(&["snapshot", "delete", "p1"]);
    d.ok(&["snapshot", "create", "v", "p2"]);
    assert_eq!(state(&d, "p2").0, "valid");
    assert_eq!(d.stop(), 0);
    d.restart();
    assert_eq!(state(&d, "p2").0, "valid", "log:\n{}", d.log());
}

#[test]
fn a_clean_restart_of_an_untouched_image_keeps_snapshots_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let image = image(tmp.path());
    let mut d = setup(tmp.path(), &image);
    let before = checksum(&d, "p1");
    assert_eq!(d.stop(), 0, "clean stop; log:\n{}", d.log());
    std::thread::sleep(Duration::from_millis(50));
    d.restart();
    assert_eq!(
        state(&d, "p1"),
        ("valid".to_string(), None),
        "log:\n{}",
        d.log()
    );
    assert!(!d.log().contains("UNVERIFIED"), "log:\n{}", d.log());
    assert_eq!(checksum(&d, "p1"), before);
    // And once more: a second clean cycle changes nothing.
    assert_eq!(d.stop(), 0);
    d.restart();
    assert_eq!(state(&d, "p1"), ("valid".to_string(), None));
}

#[test]
fn crash_recovery_after_kill_9_keeps_snapshots_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let image = image(tmp.path());
    let mut d = setup(tmp.path(), &image);
    let before = checksum(&d, "p1");
    // A clean stop first, so a fingerprint (with the image's modification time) is on record;
    // then writes through fss change the image while the daemon runs, and it is killed.
    assert_eq!(d.stop(), 0, "clean stop; log:\n{}", d.log());
    d.restart();
    let fuse_file = d.dir.join("dev").join("v");
    std::thread::sleep(Duration::from_millis(50));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&fuse_file)
        .unwrap_or_else(|e| panic!("open {} to write: {e}", fuse_file.display()));
    f.write_all_at(&[0xa5; 65536], 2 << 20).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_ne!(checksum(&d, "v"), before, "the volume changed through fss");
    assert_eq!(checksum(&d, "p1"), before, "the snapshot did not");

    d.kill9();
    d.restart();
    assert_eq!(
        state(&d, "p1"),
        ("valid".to_string(), None),
        "crash recovery must not flag snapshots; log:\n{}",
        d.log()
    );
    assert!(!d.log().contains("UNVERIFIED"), "log:\n{}", d.log());
    assert_eq!(checksum(&d, "p1"), before);

    // A plain kill -9 and restart without any write in between: still valid.
    d.kill9();
    d.restart();
    assert_eq!(state(&d, "p1"), ("valid".to_string(), None));
}
