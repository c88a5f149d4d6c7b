//! End to end: ext4 on a loop device over the FUSE file of a volume; a snapshot taken through
//! the engine is a clean ext4 (e2fsck -fn) whose files have the checksums they had then, while
//! the live file system moves on (modified, deleted, grown and new files, fstrim).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    disk_tempdir, file_volume, output, require_commands, run, serial, FsMount, LoopDev, Pattern,
    TestCatalog,
};
use fss_core::export::Export;
use fss_core::store::DeviceStore;
use fss_core::SnapshotOptions;
use fss_fuse::{FuseFrontEnd, Hooks};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MIB: u64 = 1 << 20;

/// Relative path -> sha256 of every regular file under `root` (lost+found excluded).
fn checksums(root: &Path) -> BTreeMap<PathBuf, [u8; 32]> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, [u8; 32]>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if rel == Path::new("lost+found") {
                continue;
            }
            let t = e.file_type().unwrap();
            if t.is_dir() {
                walk(root, &p, out);
            } else if t.is_file() {
                let data = std::fs::read(&p).unwrap();
                out.insert(rel, Sha256::digest(&data).into());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// A tree of about `total` bytes of pseudo-random files of many sizes in a few directories.
fn write_tree(root: &Path, total: usize, seed: u64) {
    let mut p = Pattern::new(seed);
    let mut written = 0;
    let mut i = 0;
    while written < total {
        let dir = root
            .join(format!("d{}", i % 5))
            .join(format!("sub{}", i % 3));
        std::fs::create_dir_all(&dir).unwrap();
        let len = match i % 4 {
            0 => (p.next_u64() % 4096) as usize,
            1 => (p.next_u64() % (64 << 10)) as usize,
            2 => (p.next_u64() % (1 << 20)) as usize,
            _ => (p.next_u64() % (3 << 20)) as usize,
        };
        std::fs::write(dir.join(format!("f{i:03}")), p.bytes(len)).unwrap();
        written += len;
        i += 1;
    }
}

/// The snapshot file `snap` of an ext4 taken without a freeze, once its journal is replayed
/// (on a copy: the snapshot is read-only), is clean and holds the files `before`.
fn check_crash_consistent(snap: &Path, tmp: &Path, before: &BTreeMap<PathBuf, [u8; 32]>) {
    let copy = tmp.join("raw-copy.img");
    std::fs::copy(snap, &copy).unwrap();
    let c = copy.to_str().unwrap();
    // Only the replay: a repair could hide a lost write.
    let replay = output("e2fsck", &["-E", "journal_only", "-y", c]);
    assert!(
        replay.status.code().is_some_and(|code| code <= 1),
        "journal replay on a copy of the snapshot: {}\n{}{}",
        replay.status,
        String::from_utf8_lossy(&replay.stdout),
        String::from_utf8_lossy(&replay.stderr)
    );
    let fsck = output("e2fsck", &["-fn", c]);
    assert!(
        fsck.status.success(),
        "e2fsck -fn on the replayed copy of the snapshot: {}\n{}",
        fsck.status,
        String::from_utf8_lossy(&fsck.stdout)
    );
    let copy_loop = LoopDev::attach(&copy, &["-r"]);
    let dir = tmp.join("raw-copy");
    let mount = FsMount::mount(&copy_loop.dev, &dir, "ro,noload");
    let seen = checksums(&dir);
    assert_eq!(
        seen.len(),
        before.len(),
        "same files in the unfrozen snapshot"
    );
    for (rel, sum) in before {
        assert_eq!(
            seen.get(rel),
            Some(sum),
            "{} differs (unfrozen)",
            rel.display()
        );
    }
    drop(mount);
    drop(copy_loop);
}

/// A mounted file system frozen (`fsfreeze -f`) until this is dropped, even on a panic.
struct Frozen(PathBuf);

impl Frozen {
    fn freeze(dir: &Path) -> Self {
        run("fsfreeze", &["-f", dir.to_str().unwrap()]);
        Frozen(dir.to_path_buf())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::process::Command::new("fsfreeze")
            .args(["-u", self.0.to_str().unwrap_or_default()])
            .status();
    }
}

#[test]
fn ext4_snapshot_through_fuse_and_loop_is_consistent() {
    let _g = serial();
    require_commands(&[
        "losetup",
        "mkfs.ext4",
        "e2fsck",
        "mount",
        "umount",
        "sync",
        "fstrim",
        "fsfreeze",
    ]);
    let tmp = disk_tempdir();
    let vol = file_volume("vol", &tmp.path().join("vol.img"), 256 * MIB);
    let catalog = Arc::new(TestCatalog::default());
    catalog.add(Export::Volume(vol.clone()));
    let dir = tmp.path().join("dev");
    // Guards drop in reverse order: file systems, then loop devices, then the FUSE mount.
    let fuse = FuseFrontEnd::mount(&dir, catalog.clone(), Hooks::default()).unwrap();

    let live_loop = LoopDev::attach(&dir.join("vol"), &["--direct-io=on"]);
    assert!(
        live_loop.direct_io(),
        "the loop device must do direct I/O on the FUSE file"
    );
    assert!(fuse.is_open("vol"));
    run("mkfs.ext4", &["-q", "-F", &live_loop.dev]);
    let live_dir = tmp.path().join("live");
    let live = FsMount::mount(&live_loop.dev, &live_dir, "");
    write_tree(&live_dir, 24 * MIB as usize, 7);
    run("sync", &[]);
    let before = checksums(&live_dir);
    assert!(before.len() > 20, "{} files", before.len());

    // Two snapshots of the same instant. `raw`, taken after `sync` alone, is what a crash
    // here would leave: `sync` commits ext4's journal but does not write home every committed
    // metadata block (one that a later transaction, e.g. the lazy inode-table init, touched
    // again stays in the journal), so it is crash-consistent, checked below after a journal
    // replay; `e2fsck -n` cannot replay, and once in ~350 runs saw a group descriptor older
    // than the directory block beside it. `snap` is taken frozen, as `fss snapshot create`
    // freezes a mounted file system: freezing writes the journal home, so it must be clean.
    let raw = vol
        .create_snapshot("raw", &SnapshotOptions::default(), DeviceStore::in_memory)
        .unwrap();
    catalog.add(Export::Snapshot(raw));
    let snap = {
        let _frozen = Frozen::freeze(&live_dir);
        vol.create_snapshot("snap", &SnapshotOptions::default(), DeviceStore::in_memory)
            .unwrap()
    };
    catalog.add(Export::Snapshot(snap));

    // The live file system moves on: modify, delete, grow, create, trim.
    let files: Vec<PathBuf> = before.keys().cloned().collect();
    let mut p = Pattern::new(99);
    for (i, rel) in files.iter().enumerate() {
        let path = live_dir.join(rel);
        match i % 4 {
            0 => std::fs::write(&path, p.bytes(50_000)).unwrap(),
            1 => std::fs::remove_file(&path).unwrap(),
            2 => {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .unwrap();
                f.write_all(&p.bytes(300_000)).unwrap();
            }
            _ => {}
        }
    }
    write_tree(&live_dir.join("new"), 8 * MIB as usize, 8);
    run("sync", &[]);
    run("fstrim", &[live_dir.to_str().unwrap()]);
    let after = checksums(&live_dir);
    assert_ne!(before, after);

    // The snapshot is the file system as it was.
    let snap_loop = LoopDev::attach(&dir.join("snap"), &["-r", "--direct-io=on"]);
    let fsck = output("e2fsck", &["-fn", &snap_loop.dev]);
    assert!(
        fsck.status.success(),
        "e2fsck -fn on the snapshot: {}\n{}{}",
        fsck.status,
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let snap_dir = tmp.path().join("snapshot");
    let snap_mount = FsMount::mount(&snap_loop.dev, &snap_dir, "ro,noload");
    let seen = checksums(&snap_dir);
    assert_eq!(seen.len(), before.len(), "same files in the snapshot");
    for (rel, sum) in &before {
        assert_eq!(seen.get(rel), Some(sum), "{} differs", rel.display());
    }

    drop(snap_mount);
    check_crash_consistent(&dir.join("raw"), tmp.path(), &before);

    // The live file system is still clean after all this.
    drop(snap_loop);
    drop(live);
    let fsck = output("e2fsck", &["-fn", &live_loop.dev]);
    assert!(
        fsck.status.success(),
        "e2fsck -fn on the volume: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    drop(live_loop);
    assert!(common::wait_until(
        std::time::Duration::from_secs(10),
        || fuse.open_files().is_empty()
    ));
    fuse.unmount().unwrap();
}
