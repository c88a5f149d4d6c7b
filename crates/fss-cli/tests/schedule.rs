//! Snapshot schedules against a real daemon (issue 18, item 1): keep-last by volume name, by
//! mount point (ext4 under a writer, each snapshot checked with e2fsck), `--min-free` on a
//! small tmpfs store, and one missed run after the daemon was down. Second-scale intervals.
//! Needs root, /dev/fuse, loop devices, mkfs.ext4 and e2fsck (CI has them): a missing one
//! fails the test with what to install.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::loopdev::{ext4_on, run, s, Cleanup};
use common::{wait_until, Daemon};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Loop devices and mounts are machine-wide: one such test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The only schedule of `d`.
fn schedule(d: &Daemon) -> Value {
    let list = d.json(&["schedule", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    list[0].clone()
}

fn members(v: &Value) -> Vec<String> {
    v["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect()
}

/// Wait until the schedule has finished `runs` more runs; every member seen meanwhile.
fn wait_runs(d: &Daemon, runs: usize, limit: Duration) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut last = schedule(d)["last_run"].clone();
    let mut done = 0;
    let t = Instant::now();
    while done < runs {
        assert!(
            t.elapsed() < limit,
            "{done} of {runs} runs; log:\n{}",
            d.log()
        );
        let v = schedule(d);
        seen.extend(members(&v));
        if v["last_run"] != last {
            assert_eq!(v["last_run_ok"], true, "{v}");
            last = v["last_run"].clone();
            done += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    seen
}

/// The snapshots of volume `vol` now: name -> state.
fn snapshots_of(d: &Daemon, vol: &str) -> Vec<(String, String)> {
    d.json(&["snapshot", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["volume"] == vol)
        .map(|s| {
            let name = s["name"].as_str().unwrap().to_string();
            (name, s["state"].as_str().unwrap().to_string())
        })
        .collect()
}

#[test]
fn by_volume_name_keeps_exactly_n_and_only_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("state"));
    d.ok(&["volume", "create", "vol", "--size", "16M"]);
    d.ok(&["snapshot", "create", "vol", "manual"]);
    let added = d.ok(&["schedule", "add", "vol", "--every", "1s", "--keep", "3"]);
    assert!(added.contains("every 1s, keeping last 3"), "{added}");
    let refused = common::fails(&d, &["schedule", "add", "vol", "--every", "5m"]);
    assert!(refused.contains("has a schedule already"), "{refused}");
    let seen = wait_runs(&d, 6, Duration::from_secs(30));
    // `fss stats` (the metrics' figures) reports the schedule's last success.
    let stats = d.json(&["stats"]);
    let sched = &stats["schedules"][0];
    assert_eq!(sched["volume"], "vol", "{stats}");
    assert_eq!(sched["last_run_ok"], true, "{stats}");
    let since = sched["last_success"].as_u64().unwrap();
    assert!(
        since >= schedule(&d)["last_run"].as_u64().unwrap() - 2,
        "{stats}"
    );
    let removed: Value =
        serde_json::from_str(&d.ok(&["schedule", "remove", "vol", "--json"])).unwrap();
    let kept = members(&removed);
    // Exactly the three newest of all it took (names sort by time), each matching the
    // pattern; the manual snapshot untouched; the pruned ones gone with their stores.
    assert!(seen.len() >= 6, "{seen:?}");
    let newest: Vec<String> = seen.iter().rev().take(3).rev().cloned().collect();
    assert_eq!(kept, newest);
    for n in &kept {
        assert!(
            n.len() == "vol-20261204T203124Z".len() && n.starts_with("vol-") && n.ends_with('Z'),
            "{n}"
        );
    }
    let mut now: Vec<String> = snapshots_of(&d, "vol").into_iter().map(|s| s.0).collect();
    now.sort();
    let mut want = kept.clone();
    want.push("manual".into());
    want.sort();
    assert_eq!(now, want);
    let stores = std::fs::read_dir(tmp.path().join("state/stores"))
        .unwrap()
        .count();
    assert_eq!(stores, 4, "one store per remaining snapshot");
    let log = d.log();
    assert!(
        log.matches("pruned by the schedule's retention").count() >= 3,
        "{log}"
    );
    assert!(d.json(&["schedule", "list"]).as_array().unwrap().is_empty());
}

/// One test at a time: a daemon with a 128 MiB volume `vol`, and mounts cleaned up (dropped
/// first, before the daemon).
fn serial_setup() -> (
    std::sync::MutexGuard<'static, ()>,
    tempfile::TempDir,
    Daemon,
    Cleanup,
) {
    let g = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("state"));
    d.ok(&["volume", "create", "vol", "--size", "128M"]);
    (g, tmp, d, Cleanup::default())
}

#[test]
fn by_mount_point_under_a_writer_each_snapshot_is_consistent() {
    let (_g, tmp, d, mut c) = serial_setup();
    let mnt = tmp.path().join("mnt");
    ext4_on(&mut c, &tmp.path().join("state/dev/vol"), &mnt);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, mnt) = (Arc::clone(&stop), mnt.clone());
        std::thread::spawn(move || churn(&mnt, &stop))
    };
    d.ok(&["schedule", "add", s(&mnt), "--every", "2s", "--keep", "2"]);
    let v = schedule(&d);
    assert_eq!(v["mount_point"], s(&mnt), "{v}");
    let seen = wait_runs(&d, 4, Duration::from_secs(60));
    let removed: Value =
        serde_json::from_str(&d.ok(&["schedule", "remove", s(&mnt), "--json"])).unwrap();
    stop.store(true, Ordering::Release);
    let written = writer.join().unwrap();
    assert!(written > 20, "the writer wrote {written} files");
    let kept = members(&removed);
    assert_eq!(kept.len(), 2, "{removed}");
    assert!(seen.len() >= 4, "{seen:?}");
    for name in &kept {
        let snap = d.json(&["snapshot", "info", name]);
        assert_eq!(snap["mount_point"], s(&mnt), "{snap}");
        assert_eq!(snap["state"], "valid", "{snap}");
        // The file system in the snapshot is clean without its journal replayed: it was
        // frozen when the snapshot was taken.
        run(
            "e2fsck",
            &["-fn", s(&tmp.path().join("state/dev").join(name))],
        );
    }
    let mut now: Vec<String> = snapshots_of(&d, "vol").into_iter().map(|s| s.0).collect();
    now.sort();
    assert_eq!(now, kept);
    drop(c);
}

/// Create, write, fsync and remove files under `mnt` until `stop`; how many it wrote.
fn churn(mnt: &Path, stop: &AtomicBool) -> u64 {
    use std::io::Write;
    let mut n = 0u64;
    while !stop.load(Ordering::Acquire) {
        let p = mnt.join(format!("f{}", n % 16));
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(&vec![(n % 251) as u8; 256 << 10]).unwrap();
        if n % 4 == 0 {
            f.sync_all().unwrap();
        }
        n += 1;
    }
    n
}

#[test]
fn min_free_drops_old_scheduled_snapshots_instead_of_invalidating_the_newest() {
    let (_g, tmp, d, mut c) = serial_setup();
    let stores = tmp.path().join("stores");
    c.tmpfs(&stores, "24m");
    d.ok(&[
        "schedule",
        "add",
        "vol",
        "--every",
        "1s",
        "--store",
        s(&stores),
        "--min-free",
        "8M",
    ]);
    // About 4 MiB/s of first overwrites, 40 MiB in all: the tmpfs would fill without pruning.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(tmp.path().join("state/dev/vol"))
        .unwrap();
    let chunk = vec![0x5a_u8; 256 << 10];
    for i in 0..160u64 {
        std::os::unix::fs::FileExt::write_all_at(&f, &chunk, i * (256 << 10)).unwrap();
        f.sync_data().unwrap();
        std::thread::sleep(Duration::from_millis(60));
    }
    drop(f);
    let log = d.log();
    let dropped = log.matches("pruned for --min-free").count();
    assert!(
        dropped >= 2,
        "no snapshot was dropped for space; log:\n{log}"
    );
    let snaps = snapshots_of(&d, "vol");
    assert!(!snaps.is_empty());
    for (name, state) in &snaps {
        assert_eq!(state, "valid", "{name} is {state}; log:\n{log}");
    }
    let newest = &snaps.last().unwrap().0;
    d.ok(&["snapshot", "verify", newest]);
    let free = run("df", &["--output=avail", "-B1", s(&stores)]);
    let free: u64 = free.lines().last().unwrap().trim().parse().unwrap();
    assert!(free >= 4 << 20, "{free} bytes free on the store's tmpfs");
    eprintln!(
        "min-free: {dropped} snapshots dropped for space, {} left, {free} bytes free of 24 MiB",
        snaps.len()
    );
    // Deleted before the store is unmounted (a run may have ended after the listing).
    d.ok(&["schedule", "remove", "vol"]);
    for (name, _) in snapshots_of(&d, "vol") {
        d.ok(&["snapshot", "delete", &name]);
    }
    drop(c);
}

#[test]
fn a_daemon_down_across_several_intervals_runs_one_missed_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(&tmp.path().join("state"));
    d.ok(&["volume", "create", "vol", "--size", "16M"]);
    d.ok(&["schedule", "add", "vol", "--every", "4s"]);
    wait_runs(&d, 1, Duration::from_secs(10));
    assert_eq!(d.stop(), 0);
    let before = members(&schedule_in_state(&d.dir));
    assert_eq!(before.len(), 1);
    // Three intervals pass while it is down.
    std::thread::sleep(Duration::from_secs(13));
    d.start_again();
    wait_until(Duration::from_secs(5), "the missed run", || {
        members(&schedule(&d)).len() > 1
    });
    // Well within the next interval (at least 3 s away): the missed run alone.
    std::thread::sleep(Duration::from_secs(1));
    let v = schedule(&d);
    assert_eq!(members(&v).len(), 2, "{v}");
    assert_eq!(
        v["next_run"].as_u64().unwrap(),
        v["last_run"].as_u64().unwrap() + 4,
        "{v}"
    );
    assert!(d.log().contains("schedule run"));
}

/// The only schedule in the state file of the stopped daemon at `dir`.
fn schedule_in_state(dir: &Path) -> Value {
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    let mut v = state["schedules"][0].clone();
    v["snapshots"] = v["members"].clone();
    v
}
