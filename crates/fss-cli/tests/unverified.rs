//! The volume fingerprint: a volume image changed while the daemon was stopped (after a clean
//! stop or a kill -9, its mtime put back or not, or only its mode changed) makes its snapshots
//! "unverified" (and the log says so loudly); a clean restart of an untouched image, and crash
//! recovery after kill -9 (even with writes right up to the kill), keep them valid.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::{pattern_image as image, snapshot_state as state, Daemon};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

/// A daemon on `dir/state` with volume `v` from `image` and a persistent snapshot `p1`.
fn setup(dir: &Path, image: &Path) -> Daemon {
    let d = Daemon::start(&dir.join("state"));
    d.ok(&["volume", "add", "v", "--device", image.to_str().unwrap()]);
    d.ok(&["snapshot", "create", "v", "p1"]);
    assert_eq!(state(&d, "p1"), ("valid".to_string(), None));
    d
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

/// Longer than what the daemon allows for its own last writes before a crash (the heartbeat
/// period plus its margin): an edit this long after a kill -9 is caught.
fn past_the_allowance() -> Duration {
    fssd::heartbeat::PERIOD + fssd::heartbeat::MARGIN + Duration::from_millis(500)
}

/// The image's status change time (ctime), in nanoseconds.
fn ctime_ns(path: &Path) -> i128 {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec())
}

/// Write into the image behind fss's back, once what fss allows for its own last writes is
/// past; `keep_mtime` puts its modification time back, as `touch -r` would.
fn edit_behind_fss(image: &Path, keep_mtime: bool) {
    let before = std::fs::metadata(image).unwrap().modified().unwrap();
    std::thread::sleep(past_the_allowance());
    let f = std::fs::OpenOptions::new().write(true).open(image).unwrap();
    f.write_all_at(b"changed behind fss's back", 5 << 20)
        .unwrap();
    f.sync_all().unwrap();
    if keep_mtime {
        f.set_modified(before).unwrap();
        assert_eq!(
            std::fs::metadata(image).unwrap().modified().unwrap(),
            before
        );
    }
}

/// `p1` is unverified, with the reason the CLI shows, and the log says so loudly.
fn assert_unverified(d: &Daemon, case: &str) {
    let (st, reason) = state(d, "p1");
    assert_eq!(st, "unverified", "{case}; log:\n{}", d.log());
    let reason = reason.expect("an unverified snapshot has a reason");
    assert!(
        reason.contains("changed while fss was not running"),
        "{case}; reason: {reason}"
    );
    assert!(d.log().contains("UNVERIFIED"), "{case}; log:\n{}", d.log());
}

/// `p1` is valid, nothing in the log says otherwise, and it still reads as `before`.
fn assert_valid(d: &Daemon, before: &str, case: &str) {
    assert_eq!(
        state(d, "p1"),
        ("valid".to_string(), None),
        "{case}; log:\n{}",
        d.log()
    );
    assert!(!d.log().contains("UNVERIFIED"), "{case}; log:\n{}", d.log());
    assert_eq!(checksum(d, "p1"), before, "{case}");
}

/// A daemon with snapshot `p1` of image volume `v` is stopped (killed with `crash`, after a
/// write through fss with `write_first`), the image is changed by `change`, and the daemon
/// started again: `p1` is unverified.
fn a_change_while_stopped_is_caught(crash: bool, write_first: bool, change: impl Fn(&Path)) {
    let tmp = tempfile::tempdir().unwrap();
    let image = image(tmp.path());
    let mut d = setup(tmp.path(), &image);
    if write_first {
        // Writes through fss, so the last run's image was busy until the stop.
        d.write_volume("v", 2 << 20, 65536, 0xa5);
    }
    if crash {
        d.kill9();
    } else {
        assert_eq!(d.stop(), 0, "clean stop; log:\n{}", d.log());
    }
    change(&image);
    d.restart();
    assert_unverified(&d, &format!("crash {crash}, write_first {write_first}"));
}

#[test]
fn an_image_edited_after_a_kill_9_makes_its_snapshots_unverified() {
    for write_first in [true, false] {
        a_change_while_stopped_is_caught(true, write_first, |image| {
            edit_behind_fss(image, false);
        });
    }
}

#[test]
fn an_edit_with_its_mtime_restored_is_still_caught() {
    for crash in [false, true] {
        a_change_while_stopped_is_caught(crash, false, |image| edit_behind_fss(image, true));
    }
}

#[test]
fn a_chmod_while_stopped_makes_snapshots_unverified() {
    // The ctime moves on a change of mode, owner or links too: fss cannot tell those from a
    // write, and errs on the safe side (docs/CLI.md, "Unverified snapshots").
    use std::os::unix::fs::PermissionsExt;
    for crash in [false, true] {
        a_change_while_stopped_is_caught(crash, false, |image| {
            std::thread::sleep(past_the_allowance());
            let mode = std::fs::metadata(image).unwrap().permissions().mode();
            std::fs::set_permissions(image, std::fs::Permissions::from_mode(0o644)).unwrap();
            std::fs::set_permissions(image, std::fs::Permissions::from_mode(mode)).unwrap();
        });
    }
}

#[test]
fn writes_right_up_to_a_kill_9_keep_snapshots_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let image = image(tmp.path());
    let mut d = setup(tmp.path(), &image);
    let before = checksum(&d, "p1");
    let fuse_file = d.dir.join("dev").join("v");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&fuse_file)
        .unwrap();
    // Writes until the daemon is gone (its FUSE file then fails).
    let writer = std::thread::spawn(move || {
        let mut writes = 0u64;
        let block = [0x5a_u8; 65536];
        while f.write_all_at(&block, (writes % 64) * 65536).is_ok() {
            writes += 1;
        }
        writes
    });
    std::thread::sleep(Duration::from_secs(2));
    let kill_at = now_ns();
    d.kill9();
    let writes = writer.join().unwrap();
    assert!(writes > 10, "only {writes} writes before the kill");
    // The image was written right up to the kill: its ctime is within a heartbeat of it.
    let last_write = ctime_ns(&image);
    assert!(
        kill_at - last_write < 500_000_000,
        "the last write landed {} ms before the kill",
        (kill_at - last_write) / 1_000_000
    );
    d.restart();
    assert_valid(&d, &before, "writes right up to the kill");
}

/// Now, in nanoseconds since the epoch.
fn now_ns() -> i128 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i128::try_from(t.as_nanos()).unwrap()
}

#[test]
fn a_kill_9_after_an_idle_spell_keeps_snapshots_valid() {
    // Idle for longer than the allowance, then (or not) one write, the kill at once, and a
    // restart once the allowance is past: the write's ctime is far from any earlier one, and
    // only the daemon's last sign of life accounts for it.
    for write in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let image = image(tmp.path());
        let mut d = setup(tmp.path(), &image);
        let before = checksum(&d, "p1");
        std::thread::sleep(past_the_allowance());
        if write {
            d.write_volume("v", 1 << 20, 4096, 0x3c);
        }
        d.kill9();
        std::thread::sleep(past_the_allowance());
        d.restart();
        assert_valid(&d, &before, &format!("write {write}"));
        // And a second crash cycle right away changes nothing.
        d.kill9();
        d.restart();
        assert_valid(&d, &before, &format!("write {write}, second kill"));
    }
}
