//! `fss mount` and `fss umount`: consistent snapshots of a mounted ext4, xfs and btrfs (whose
//! clone gets a temporary fsid from the kernel while the original is mounted) mounted on a
//! read-only loop device with the options each needs, their contents as they were at the
//! snapshot, writes refused, and the loop device gone after `fss umount`; clear errors for an
//! unknown name, a busy directory and an unsupported file system.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::loopdev::{ext4_on, run, s, sums, Cleanup};
use common::{require_root, require_tool, Daemon};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Loop devices and mounts: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// What `fss mount` made, undone whatever happens (`fss umount` disarms it).
struct Mounted {
    dir: PathBuf,
    dev: String,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if mount_options(&self.dir).is_some() {
            let _ = Command::new("umount").arg(&self.dir).status();
        }
        if !self.dev.is_empty() {
            let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        }
    }
}

/// The options of what is mounted on `dir` (from mountinfo), if anything.
fn mount_options(dir: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.display().to_string();
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let (_, right) = l.split_once(" - ")?;
        (f.get(4) == Some(&dir.as_str())).then(|| {
            let fstype = right.split(' ').next().unwrap_or("").to_string();
            (f[5].to_string(), fstype)
        })
    })
}

fn fss_mount(d: &Daemon, name: &str, dir: &Path) -> Mounted {
    std::fs::create_dir_all(dir).unwrap();
    let dev = d.ok(&["mount", name, s(dir)]).trim().to_string();
    assert!(dev.starts_with("/dev/loop"), "{dev}");
    Mounted {
        dir: dir.to_path_buf(),
        dev,
    }
}

/// Mount snapshot `snap` of the file system, check it against `expected` and read-only-ness,
/// then `fss umount` it and check the loop device is gone.
fn check_snapshot_mount(
    d: &Daemon,
    snap: &str,
    dir: &Path,
    fstype: &str,
    expected: &std::collections::BTreeMap<String, String>,
) {
    let mut m = fss_mount(d, snap, dir);
    let (opts, seen) = mount_options(dir).expect("mounted");
    assert_eq!(seen, fstype);
    assert!(opts.split(',').any(|o| o == "ro"), "{opts}");
    let loop_name = m.dev.trim_start_matches("/dev/");
    let ro = std::fs::read_to_string(format!("/sys/block/{loop_name}/ro")).unwrap();
    assert_eq!(ro.trim(), "1", "the loop device is read-only");
    let dio = std::fs::read_to_string(format!("/sys/block/{loop_name}/loop/dio")).unwrap();
    assert_eq!(dio.trim(), "1", "the loop device does direct I/O");
    assert_eq!(&sums(dir), expected, "the snapshot's files as they were");
    let e = std::fs::write(dir.join("new"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(30), "EROFS: {e}");
    // A second mount on the same directory is refused as busy.
    let r = d.fss(&["mount", snap, s(dir)]);
    assert_eq!(r.status, 1);
    assert!(r.stderr.contains("is busy"), "{}", r.stderr);
    let out = d.ok(&["umount", s(dir)]);
    assert!(out.contains(&m.dev), "{out}");
    assert!(mount_options(dir).is_none(), "unmounted");
    let file = d.dir.join("dev").join(snap);
    assert_eq!(
        run("losetup", &["-j", s(&file)]),
        "",
        "loop device detached"
    );
    m.dev.clear();
}

fn require_tools() {
    require_root("it attaches loop devices and mounts");
    for (tool, package) in [
        ("losetup", "util-linux"),
        ("blkid", "util-linux"),
        ("mkfs.ext4", "e2fsprogs"),
        ("mkfs.xfs", "xfsprogs"),
        ("mkfs.btrfs", "btrfs-progs"),
        ("fsfreeze", "util-linux"),
    ] {
        require_tool(tool, package);
    }
}

#[test]
fn ext4_xfs_and_btrfs_snapshots_mount_read_only_as_they_were() {
    require_tools();
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let mut c = Cleanup::default();
    for (fstype, size) in [("ext4", "128M"), ("xfs", "320M"), ("btrfs", "320M")] {
        let vol = format!("v{fstype}");
        d.ok(&["volume", "create", &vol, "--size", size]);
        let mnt = tmp.path().join(format!("m-{fstype}"));
        let file = tmp.path().join("dev").join(&vol);
        if fstype == "ext4" {
            ext4_on(&mut c, &file, &mnt);
        } else {
            let dev = c.attach(&file, false);
            run(&format!("mkfs.{fstype}"), &["-q", &dev]);
            c.mount(&dev, &mnt, "rw");
        }
        std::fs::write(mnt.join("a"), vec![1u8; 300_000]).unwrap();
        std::fs::create_dir(mnt.join("sub")).unwrap();
        std::fs::write(mnt.join("sub/b"), b"before").unwrap();
        let before = sums(&mnt);
        let snap = format!("s-{fstype}");
        // By mount point for all three: btrfs too, whose st_dev is not its device's.
        d.ok(&["snapshot", "create", s(&mnt), &snap]);
        std::fs::write(mnt.join("sub/b"), b"after the snapshot").unwrap();
        std::fs::write(mnt.join("c"), b"new").unwrap();
        run("sync", &[]);
        check_snapshot_mount(
            &d,
            &snap,
            &tmp.path().join(format!("snap-{fstype}")),
            fstype,
            &before,
        );
    }
}

#[test]
fn unknown_names_and_unsupported_file_systems_are_refused() {
    require_tools();
    require_tool("mkswap", "util-linux");
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let dir = tmp.path().join("mnt");
    std::fs::create_dir(&dir).unwrap();
    let r = d.fss(&["mount", "nosuch", s(&dir)]);
    assert_eq!(r.status, 1);
    assert!(
        r.stderr.contains("no volume or snapshot named 'nosuch'"),
        "{}",
        r.stderr
    );
    // A swap signature: detected, not mountable, and the loop device is detached again.
    d.ok(&["volume", "create", "sw", "--size", "16M"]);
    let file = tmp.path().join("dev/sw");
    run("mkswap", &[s(&file)]);
    d.ok(&["snapshot", "create", "sw", "sw1"]);
    let r = d.fss(&["mount", "sw1", s(&dir)]);
    assert_eq!(r.status, 1);
    assert!(r.stderr.contains("holds swap"), "{}", r.stderr);
    assert_eq!(run("losetup", &["-j", s(&tmp.path().join("dev/sw1"))]), "");
    // No file system at all.
    d.ok(&["volume", "create", "empty", "--size", "16M"]);
    let r = d.fss(&["mount", "empty", s(&dir)]);
    assert_eq!(r.status, 1);
    assert!(r.stderr.contains("no file system found"), "{}", r.stderr);
    assert!(mount_options(&dir).is_none());
    // Not an fss mount.
    let r = d.fss(&["umount", "/proc"]);
    assert_eq!(r.status, 1);
    assert!(r.stderr.contains("not an fss mount"), "{}", r.stderr);
    let r = d.fss(&["umount", s(&dir)]);
    assert!(r.stderr.contains("nothing is mounted"), "{}", r.stderr);
}
