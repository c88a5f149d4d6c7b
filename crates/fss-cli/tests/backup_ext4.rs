//! Backups of a mounted ext4 end to end (issue 7, "What it must show"): ext4 on a volume (a
//! loop device with direct I/O over its FUSE file), five snapshots of the mount point with file
//! changes in between, a full backup of the first and incrementals of the others, all restored
//! into a new image: `e2fsck -fn` clean, every file's checksum equal to the fifth snapshot's,
//! and each incremental close in size to the data changed between its snapshots (`fss diff`).
//!
//! Needs root, /dev/fuse, loop devices, mkfs.ext4, e2fsck: CI has them; a missing one fails the
//! test with what to install.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::loopdev::{run, s, sums, Cleanup};
use common::{data, Daemon};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Loop devices and mounts are machine-wide: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const KIB: u64 = 1024;

fn put(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

/// The `k`th of the files made before the first snapshot (0..24).
fn file(mnt: &Path, k: u64) -> PathBuf {
    mnt.join(format!("d{}/f{k}", k % 4))
}

/// The changes made before snapshot `n` (1..=5): new files, rewrites in place, appends,
/// deletes, a rename, a truncate (each touching different files of the first 24 each time).
fn change(mnt: &Path, n: u64) {
    use std::os::unix::fs::FileExt;
    if n == 1 {
        for i in 0..24u64 {
            let len = (i * 97 * KIB % (900 * KIB) + 1) as usize;
            put(&file(mnt, i), &data(i, len));
        }
        put(&mnt.join("big"), &data(1000, 8 << 20));
        return;
    }
    // New files.
    for i in 0..4u64 {
        let k = n * 100 + i;
        put(
            &mnt.join(format!("d{}/new{n}-{i}", i % 4)),
            &data(k, (k * 31 * KIB % (600 * KIB) + 1) as usize),
        );
    }
    // A rewrite in place of 256 KiB of the big file, somewhere else each time.
    let big = std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("big"))
        .unwrap();
    big.write_all_at(&data(n * 7, 256 << 10), (n - 1) * (1 << 20))
        .unwrap();
    big.sync_all().unwrap();
    // An append.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(file(mnt, n))
        .unwrap();
    f.write_all(&data(n * 13, 100 << 10)).unwrap();
    f.sync_all().unwrap();
    // A delete and a rename.
    std::fs::remove_file(file(mnt, n + 6)).unwrap();
    std::fs::rename(file(mnt, n + 12), mnt.join(format!("renamed{n}"))).unwrap();
    // A truncate to a smaller size.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(file(mnt, n + 17))
        .unwrap();
    f.set_len(1000).unwrap();
    f.sync_all().unwrap();
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

#[test]
fn ext4_five_snapshots_full_and_incremental_backups_restore_to_the_fifth() {
    let _g = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let d = Daemon::start(&state);
    d.ok(&["volume", "create", "vol", "--size", "128M"]);
    let mut c = Cleanup::default();
    let dev = c.attach(&state.join("dev/vol"), false);
    run("mkfs.ext4", &["-q", &dev]);
    let mnt = tmp.path().join("mnt");
    c.mount(&dev, &mnt, "rw");

    let mut at_s5 = BTreeMap::new();
    for n in 1..=5u64 {
        change(&mnt, n);
        // Freezes the file system around the snapshot.
        d.ok(&["snapshot", "create", s(&mnt), &format!("s{n}")]);
        if n == 5 {
            at_s5 = sums(&mnt);
        }
    }
    // Changes after the last snapshot are not in the backups.
    change(&mnt, 6);
    run("sync", &[]);
    assert_ne!(sums(&mnt), at_s5);

    // Backups.
    let b = tmp.path().join("backups");
    std::fs::create_dir(&b).unwrap();
    let full = b.join("full.fssb");
    d.ok(&["backup", "s1", s(&full)]);
    let mut files = vec![full.clone()];
    let mut report = Vec::new();
    let mut bad = Vec::new();
    for n in 2..=5u64 {
        let inc = b.join(format!("inc{n}.fssb"));
        let older = format!("s{}", n - 1);
        d.ok(&["backup", &format!("s{n}"), s(&inc), "--since", &older]);
        let diff = d.json(&["diff", &older, &format!("s{n}")]);
        let changed: u64 = diff
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["length"].as_u64().unwrap())
            .sum();
        assert!(changed > 0, "nothing changed between {older} and s{n}");
        let got = size(&inc);
        #[allow(clippy::cast_precision_loss)]
        let ratio = got as f64 / changed as f64;
        report.push(format!(
            "inc{n} ({older} -> s{n}): {got} bytes for {changed} bytes changed \
             ({} extents), ratio {ratio:.3}",
            diff.as_array().unwrap().len()
        ));
        if got > changed + changed / 5 + 64 * KIB {
            bad.push(format!("inc{n}: {got} bytes for {changed} changed"));
        }
        files.push(inc);
    }
    eprintln!(
        "full backup of s1: {} bytes\n{}",
        size(&full),
        report.join("\n")
    );
    assert!(
        bad.is_empty(),
        "incrementals larger than 1.2 x the changed data + 64 KiB: {bad:?}"
    );

    // Restore all into a new image.
    let img = tmp.path().join("new.img");
    let mut args = vec!["restore"];
    args.extend(files.iter().map(|p| s(p)));
    args.push(s(&img));
    d.ok(&args);
    assert_eq!(size(&img), 128 << 20);
    // Byte for byte the fifth snapshot.
    let sha = |p: &Path| {
        run("sha256sum", &[s(p)])
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        sha(&img),
        sha(&state.join("dev/s5")),
        "the restored image differs from snapshot s5"
    );

    let rdev = c.attach(&img, true);
    let fsck = Command::new("e2fsck")
        .args(["-fn", &rdev])
        .output()
        .unwrap();
    assert_eq!(
        fsck.status.code(),
        Some(0),
        "e2fsck -fn on the restored image: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let rmnt = tmp.path().join("restored");
    c.mount(&rdev, &rmnt, "ro,noload");
    let restored = sums(&rmnt);
    c.umount(&rmnt);
    c.detach(&rdev);
    assert_eq!(restored.len(), at_s5.len(), "file lists differ");
    assert_eq!(restored, at_s5, "file checksums differ from snapshot s5's");

    // And s5 itself, through its FUSE file, holds the same files.
    let sdev = c.attach(&state.join("dev/s5"), true);
    let smnt = tmp.path().join("s5");
    c.mount(&sdev, &smnt, "ro,noload");
    assert_eq!(
        sums(&smnt),
        at_s5,
        "snapshot s5 differs from the mount at s5"
    );
    c.umount(&smnt);
    c.detach(&sdev);
    c.umount(&mnt);
    c.detach(&dev);
    c.release_all();
}
