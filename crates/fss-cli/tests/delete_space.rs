//! Deleting a snapshot moves the entries the next older one lacks into its store. When they
//! cannot all fit (its maximum size, or its file system), the delete is refused before
//! anything changes, naming the store and what it lacks; every snapshot stays valid and exact.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::loopdev::{run, s};
use common::Daemon;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Write `len` bytes of `byte` through the FUSE file of volume `v`, durably.
fn write(d: &Daemon, offset: u64, len: usize, byte: u8) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(d.dir.join("dev/v"))
        .unwrap();
    f.write_all_at(&vec![byte; len], offset).unwrap();
    f.sync_all().unwrap();
}

fn states(d: &Daemon) -> Vec<(String, String)> {
    d.json(&["snapshot", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().into(),
                s["state"].as_str().unwrap().into(),
            )
        })
        .collect()
}

fn sums(d: &Daemon) -> Vec<String> {
    ["a", "b", "c"]
        .iter()
        .map(|n| d.ok(&["checksum", n]))
        .collect()
}

/// a, b (with `b_store` options), c on volume v, then 4 MiB written (preserved in c only).
fn setup(tmp: &Path, b_store: &[&str]) -> Daemon {
    let d = Daemon::start(&tmp.join("state"));
    d.ok(&["volume", "create", "v", "--size", "16M"]);
    write(&d, 0, 8 << 20, 0x11);
    d.ok(&["snapshot", "create", "v", "a"]);
    let mut args = vec!["snapshot", "create", "v", "b"];
    args.extend_from_slice(b_store);
    d.ok(&args);
    d.ok(&["snapshot", "create", "v", "c"]);
    write(&d, 0, 4 << 20, 0x22);
    d
}

/// Deleting c is refused, naming b's store, and changes nothing, across a restart too.
fn refused_and_unchanged(mut d: Daemon, what: &str) {
    let before = sums(&d);
    let r = d.fss(&["snapshot", "delete", "c"]);
    assert_eq!(
        r.status, 1,
        "{what}: delete accepted: {}{}",
        r.stdout, r.stderr
    );
    assert!(r.stderr.contains("lacks"), "{what}: {}", r.stderr);
    assert!(
        r.stderr.contains("older snapshot 'b'"),
        "{what}: {}",
        r.stderr
    );
    for (name, st) in states(&d) {
        assert_eq!(st, "valid", "{what}: {name} after a refused delete");
    }
    assert_eq!(
        sums(&d),
        before,
        "{what}: a refused delete changed a snapshot"
    );
    assert_eq!(d.stop(), 0);
    d.restart();
    assert_eq!(
        states(&d).len(),
        3,
        "{what}: a refused delete came back finished"
    );
    assert_eq!(sums(&d), before, "{what}: after a restart");
    // The way out the message names: make room in b by deleting it first (into a, which has
    // room); then c's entries fit into a as well.
    d.ok(&["snapshot", "delete", "b"]);
    d.ok(&["snapshot", "delete", "c"]);
    assert_eq!(
        d.ok(&["checksum", "a"]),
        before[0],
        "{what}: a after the deletes"
    );
    assert_eq!(d.stop(), 0);
}

#[test]
fn a_delete_that_passes_the_older_stores_maximum_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = setup(tmp.path(), &["--max-store-size", "1M"]);
    refused_and_unchanged(d, "maximum");
}

#[test]
fn a_delete_that_fills_the_older_stores_file_system_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let small = tmp.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    run(
        "mount",
        &["-t", "tmpfs", "-o", "size=1M", "fss-test-small", s(&small)],
    );
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(&small);
    let d = setup(tmp.path(), &["--store", &format!("{}/", small.display())]);
    refused_and_unchanged(d, "file system");
}

#[test]
fn raising_the_older_maximum_lets_the_refused_delete_through() {
    let tmp = tempfile::tempdir().unwrap();
    let d = setup(tmp.path(), &["--max-store-size", "1M"]);
    let before = sums(&d);
    assert_eq!(d.fss(&["snapshot", "delete", "c"]).status, 1);
    d.ok(&["snapshot", "set", "b", "--max-store-size", "none"]);
    d.ok(&["snapshot", "delete", "c"]);
    assert_eq!(
        states(&d),
        vec![("a".into(), "valid".into()), ("b".into(), "valid".into())]
    );
    assert_eq!(d.ok(&["checksum", "a"]), before[0]);
    assert_eq!(d.ok(&["checksum", "b"]), before[1]);
}
