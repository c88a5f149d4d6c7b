//! A persistent snapshot whose store is missing or unreadable at start must never come back
//! `valid` serving bytes written while it was away: a write that could not be preserved for it
//! marks it (and every older snapshot that depended on it) invalid for good, recorded in
//! state.json. Without such a write, it comes back valid and exact.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::{pattern_image, snapshot_state as state, Daemon};
use std::path::{Path, PathBuf};

/// A daemon on `tmp/state` serving volume `v` from a fresh 8 MiB image, with snapshots
/// `names` taken in order, each followed by a 64 KiB write at 1 MiB, 3 MiB, ...
fn setup(tmp: &Path, names: &[&str]) -> Daemon {
    let img = pattern_image(tmp);
    let d = Daemon::start(&tmp.join("state"));
    d.ok(&["volume", "add", "v", "--device", img.to_str().unwrap()]);
    for (i, n) in names.iter().enumerate() {
        d.ok(&["snapshot", "create", "v", n]);
        write(&d, (2 * i as u64 + 1) << 20, 0x11 * (i as u8 + 1));
    }
    d
}

fn store(d: &Daemon, name: &str) -> PathBuf {
    d.json(&["snapshot", "info", name])["store"]
        .as_str()
        .unwrap()
        .into()
}

/// Write 64 KiB of `byte` through fss's FUSE file of volume `v`, durably.
fn write(d: &Daemon, offset: u64, byte: u8) {
    d.write_volume("v", offset, 64 << 10, byte);
}

/// How the store is made unusable while the daemon is down, and undone after.
#[derive(Clone, Copy, Debug)]
enum Away {
    Moved,
    Garbage,
}

fn take_away(path: &Path, how: Away) {
    let aside = path.with_extension("aside");
    std::fs::rename(path, &aside).unwrap();
    if let Away::Garbage = how {
        std::fs::write(path, vec![0x5a; 1 << 20]).unwrap();
    }
}

fn put_back(path: &Path) {
    let _ = std::fs::remove_file(path);
    std::fs::rename(path.with_extension("aside"), path).unwrap();
}

/// p0 (older) and p1 (newer) of volume v; p1's store goes away while the daemon is down.
fn run(how: Away, write_while_away: bool) {
    let tmp = tempfile::tempdir().unwrap();
    // A block preserved for p0 only (1 MiB), then one in p1's store that p0 also needs (3 MiB):
    // p0 resolves it through p1.
    let mut d = setup(tmp.path(), &["p0", "p1"]);
    let sum0 = d.ok(&["checksum", "p0"]);
    let sum1 = d.ok(&["checksum", "p1"]);
    let s1 = store(&d, "p1");
    assert_eq!(d.stop(), 0);

    take_away(&s1, how);
    d.restart();
    assert_eq!(
        state(&d, "p1").0,
        "unavailable",
        "{how:?}; log:\n{}",
        d.log()
    );
    // p0 depends on p1's store: it must not be read now either.
    assert_ne!(
        state(&d, "p0").0,
        "valid",
        "{how:?}: p0 readable without p1's map"
    );
    assert_eq!(
        d.fss(&["checksum", "p0"]).status,
        1,
        "{how:?}: p0 served without p1"
    );
    if write_while_away {
        // Blocks p1 (and p0 through it) needed: 3 MiB was preserved in p1, 5 MiB nowhere yet.
        write(&d, 3 << 20, 0x33);
        write(&d, 5 << 20, 0x44);
    }
    assert_eq!(d.stop(), 0);
    put_back(&s1);
    for round in 0..2 {
        d.restart();
        if write_while_away {
            for snap in ["p0", "p1"] {
                let (st, reason) = state(&d, snap);
                assert_eq!(
                    st,
                    "invalid",
                    "{how:?} round {round}: {snap}; log:\n{}",
                    d.log()
                );
                assert!(reason.is_some(), "{snap}: an invalid snapshot says why");
                let r = d.fss(&["checksum", snap]);
                assert_eq!(r.status, 1, "{how:?}: {snap} served after invalidation");
                let r = d.fss(&["snapshot", "verify", snap]);
                assert_eq!(
                    r.status, 1,
                    "{how:?}: verify of invalid {snap}: {}",
                    r.stdout
                );
            }
        } else {
            assert_eq!(state(&d, "p0").0, "valid", "{how:?}; log:\n{}", d.log());
            assert_eq!(state(&d, "p1").0, "valid", "{how:?}; log:\n{}", d.log());
            assert_eq!(d.ok(&["checksum", "p0"]), sum0);
            assert_eq!(d.ok(&["checksum", "p1"]), sum1);
        }
        assert_eq!(d.stop(), 0);
    }
}

#[test]
fn a_write_while_the_store_was_moved_away_invalidates_for_good() {
    run(Away::Moved, true);
}

#[test]
fn a_write_while_the_store_was_unreadable_invalidates_for_good() {
    run(Away::Garbage, true);
}

#[test]
fn without_a_write_a_returned_store_is_valid_and_exact() {
    run(Away::Moved, false);
    run(Away::Garbage, false);
}

/// The invalidation is recorded before the write is acknowledged: a kill -9 right after it
/// does not lose it.
#[test]
fn the_invalidation_survives_a_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = setup(tmp.path(), &["p0"]);
    let s0 = store(&d, "p0");
    assert_eq!(d.stop(), 0);
    take_away(&s0, Away::Moved);
    d.restart();
    write(&d, 2 << 20, 0x55);
    assert_eq!(state(&d, "p0").0, "invalid", "log:\n{}", d.log());
    d.kill9();
    put_back(&s0);
    d.restart();
    let (st, reason) = state(&d, "p0");
    assert_eq!(st, "invalid", "log:\n{}", d.log());
    assert!(reason.unwrap().contains("could not be opened"));
}

/// p0, p1, p2 with p1's store away: writes are preserved in p2 (the newest), so nothing is
/// lost; p0 is withheld (it may resolve through p1); deleting p2 would move entries into p1's
/// missing store and is refused; deleting p1 itself invalidates p0, which needed its map.
#[test]
fn a_store_missing_in_the_middle_of_the_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = setup(tmp.path(), &["p0", "p1", "p2"]);
    let sums: Vec<String> = ["p0", "p1", "p2"]
        .iter()
        .map(|n| d.ok(&["checksum", n]))
        .collect();
    let s1 = store(&d, "p1");
    assert_eq!(d.stop(), 0);
    take_away(&s1, Away::Moved);
    d.restart();
    assert_eq!(state(&d, "p2").0, "valid");
    assert_eq!(state(&d, "p1").0, "unavailable");
    assert_eq!(state(&d, "p0").0, "unavailable");
    write(&d, 3 << 20, 0x33);
    write(&d, 5 << 20, 0x44);
    let r = d.fss(&["snapshot", "delete", "p2"]);
    assert_eq!(r.status, 1, "delete of p2 into a missing store accepted");
    assert!(r.stderr.contains(s1.to_str().unwrap()), "{}", r.stderr);
    assert_eq!(d.ok(&["checksum", "p2"]), sums[2]);
    assert_eq!(d.stop(), 0);
    put_back(&s1);
    d.restart();
    for (i, n) in ["p0", "p1", "p2"].iter().enumerate() {
        assert_eq!(state(&d, n).0, "valid", "{n}; log:\n{}", d.log());
        assert_eq!(d.ok(&["checksum", n]), sums[i], "{n}");
    }
    // Away again, and this time p1 is given up for lost.
    assert_eq!(d.stop(), 0);
    take_away(&s1, Away::Moved);
    d.restart();
    d.ok(&["snapshot", "delete", "p1"]);
    let (st, reason) = state(&d, "p0");
    assert_eq!(st, "invalid", "log:\n{}", d.log());
    assert!(reason.unwrap().contains("'p1'"));
    assert_eq!(d.ok(&["checksum", "p2"]), sums[2]);
    assert_eq!(d.stop(), 0);
    d.restart();
    assert_eq!(state(&d, "p0").0, "invalid");
    assert_eq!(d.ok(&["checksum", "p2"]), sums[2]);
    assert_eq!(d.stop(), 0);
}
