//! File-level behaviour of the FUSE directory: names, sizes, modes, reads and writes at any
//! offset, EROFS on snapshots, fsync, fallocate, refused namespace changes, parallel serving,
//! open tracking and unmounting.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    disk_tempdir, file_volume, is_mount_point, mountinfo_line, recording_hooks, require_commands,
    run, serial, wait_until, HookedDevice, Pattern, TestCatalog,
};
use fss_core::device::{AlignedBuf, MemDevice};
use fss_core::export::Export;
use fss_core::store::DeviceStore;
use fss_core::{SnapshotOptions, Volume};
use fss_fuse::{FuseError, FuseFrontEnd, FuseOptions, Hooks};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

const MIB: u64 = 1 << 20;
const EROFS: i32 = 30;
const ENOSPC: i32 = 28;
const EPERM: i32 = 1;
const ENOENT: i32 = 2;

fn errno(r: io::Result<impl Sized>) -> i32 {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.raw_os_error().expect("an OS error"),
    }
}

/// A volume on a sparse file, a snapshot of it, and an odd-sized volume.
struct Setup {
    _tmp: tempfile::TempDir,
    catalog: Arc<TestCatalog>,
    vol: Volume,
    odd: Volume,
    dir: std::path::PathBuf,
}

const VOL_LEN: u64 = 64 * MIB;
const ODD_LEN: u64 = 10_000_000 + 123;

fn setup() -> Setup {
    let tmp = disk_tempdir();
    let vol = file_volume("vol", &tmp.path().join("vol.img"), VOL_LEN);
    vol.write(&[0xAA; 8192], 0).unwrap();
    let snap = vol
        .create_snapshot("snap", &SnapshotOptions::default(), DeviceStore::in_memory)
        .unwrap();
    let odd = Volume::new("odd", Arc::new(MemDevice::new(ODD_LEN)));
    let catalog = Arc::new(TestCatalog::default());
    catalog.add(Export::Volume(vol.clone()));
    catalog.add(Export::Snapshot(snap));
    catalog.add(Export::Volume(odd.clone()));
    let dir = tmp.path().join("dev");
    Setup {
        _tmp: tmp,
        catalog,
        vol,
        odd,
        dir,
    }
}

#[test]
fn names_sizes_modes_and_mount_options() {
    let _g = serial();
    let s = setup();
    let fuse = FuseFrontEnd::mount(&s.dir, s.catalog.clone(), Hooks::default()).unwrap();
    assert!(is_mount_point(&s.dir));
    let info = mountinfo_line(&s.dir).expect("the directory is in mountinfo");
    assert!(info.contains(" - fuse.fss fss "), "mountinfo: {info}");

    let mut names: Vec<String> = std::fs::read_dir(&s.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["odd", "snap", "vol"]);

    let vol = std::fs::metadata(s.dir.join("vol")).unwrap();
    let snap = std::fs::metadata(s.dir.join("snap")).unwrap();
    let odd = std::fs::metadata(s.dir.join("odd")).unwrap();
    assert!(vol.is_file() && snap.is_file() && odd.is_file());
    assert_eq!(vol.len(), VOL_LEN);
    assert_eq!(snap.len(), VOL_LEN);
    assert_eq!(odd.len(), ODD_LEN);
    assert_eq!(vol.mode(), 0o100_600);
    assert_eq!(snap.mode(), 0o100_400);
    assert_eq!(odd.blocks(), ODD_LEN.div_ceil(512));
    assert_eq!(vol.blksize(), 4096);
    assert_eq!(vol.nlink(), 1);
    assert_eq!(vol.uid(), 0);
    let inos = [vol.ino(), snap.ino(), odd.ino()];
    assert!(inos[0] != inos[1] && inos[1] != inos[2] && inos[0] != inos[2]);
    // Stable while the name exists.
    assert_eq!(std::fs::metadata(s.dir.join("vol")).unwrap().ino(), inos[0]);
    assert_eq!(
        errno(std::fs::metadata(s.dir.join("vol.img"))),
        ENOENT,
        "no other names"
    );
    let root = std::fs::metadata(&s.dir).unwrap();
    assert!(root.is_dir());
    fuse.unmount().unwrap();
    assert!(!is_mount_point(&s.dir));
}

#[test]
fn reads_and_writes_at_any_offset_and_size() {
    let _g = serial();
    let s = setup();
    let _fuse = FuseFrontEnd::mount(&s.dir, s.catalog.clone(), Hooks::default()).unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(s.dir.join("vol"))
        .unwrap();
    let mut p = Pattern::new(1);
    // (offset, length): unaligned, tiny, crossing 4 KiB and 64 KiB boundaries, large.
    let cases = [
        (0u64, 1usize),
        (4095, 2),
        (12_345, 5000),
        (65_530, 70_000),
        (MIB + 7, 3 * MIB as usize + 11),
        (VOL_LEN - 100, 100),
    ];
    let mut written = Vec::new();
    for &(off, len) in &cases {
        let data = p.bytes(len);
        f.write_all_at(&data, off).unwrap();
        written.push((off, data));
    }
    for (off, data) in &written {
        // Through the file, then straight from the engine.
        let mut back = vec![0u8; data.len()];
        f.read_exact_at(&mut back, *off).unwrap();
        assert!(back == *data, "file read at {off}");
        let mut eng = vec![0u8; data.len()];
        s.vol.read(&mut eng, *off).unwrap();
        assert!(eng == *data, "engine read at {off}");
    }
    // The snapshot still shows the volume as it was.
    let snap = File::open(s.dir.join("snap")).unwrap();
    let mut buf = vec![0u8; 8192 + 10];
    snap.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf[..8192].iter().all(|&b| b == 0xAA));
    assert!(buf[8192..].iter().all(|&b| b == 0));
    let mut tail = vec![1u8; 100];
    snap.read_exact_at(&mut tail, VOL_LEN - 100).unwrap();
    assert!(tail.iter().all(|&b| b == 0));
    // Writes done through the engine are seen through the file (no stale cache).
    s.vol.write(&[0x5A; 4096], 40 * MIB).unwrap();
    let mut b = [0u8; 4096];
    f.read_exact_at(&mut b, 40 * MIB).unwrap();
    assert_eq!(b, [0x5A; 4096]);
    direct_writes_of_a_mebibyte_and_more(&s);
}

/// O_DIRECT writes as a loop device sends them: 1 MiB requests, which the volume writes with
/// O_DIRECT, one of them over the blocks the snapshot preserves.
fn direct_writes_of_a_mebibyte_and_more(s: &Setup) {
    let d = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(s.dir.join("vol"))
        .unwrap();
    let mut p = Pattern::new(2);
    for (off, len) in [
        (0u64, MIB as usize),
        (8 * MIB, 3 * MIB as usize),
        (20 * MIB + 4096, 2 * MIB as usize),
    ] {
        let mut buf = AlignedBuf::new(len);
        buf.copy_from_slice(&p.bytes(len));
        d.write_all_at(&buf, off).unwrap();
        let mut eng = vec![0u8; len];
        s.vol.read(&mut eng, off).unwrap();
        assert!(eng == buf[..], "engine read after a direct write at {off}");
        let mut back = AlignedBuf::new(len);
        d.read_exact_at(&mut back, off).unwrap();
        assert!(back[..] == buf[..], "direct read at {off}");
    }
    let snap = File::open(s.dir.join("snap")).unwrap();
    let mut head = vec![0u8; 8192 + 10];
    snap.read_exact_at(&mut head, 0).unwrap();
    assert!(
        head[..8192].iter().all(|&b| b == 0xAA),
        "the snapshot kept its blocks"
    );
    assert!(head[8192..].iter().all(|&b| b == 0));
}

#[test]
fn the_end_of_a_device_is_fixed() {
    let _g = serial();
    let s = setup();
    let _fuse = FuseFrontEnd::mount(&s.dir, s.catalog.clone(), Hooks::default()).unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(s.dir.join("odd"))
        .unwrap();
    s.odd.write(&[9; 10], ODD_LEN - 10).unwrap();
    let mut buf = [0u8; 100];
    assert_eq!(f.read_at(&mut buf, ODD_LEN - 10).unwrap(), 10);
    assert_eq!(buf[..10], [9; 10]);
    assert_eq!(f.read_at(&mut buf, ODD_LEN).unwrap(), 0);
    assert_eq!(f.read_at(&mut buf, ODD_LEN + 12_345).unwrap(), 0);
    // A write crossing the end is short, one at or past it fails: a block device cannot grow.
    assert_eq!(f.write_at(&[7; 10], ODD_LEN - 3).unwrap(), 3);
    assert_eq!(errno(f.write_at(&[7; 10], ODD_LEN)), ENOSPC);
    assert_eq!(errno(f.write_at(&[7; 1], ODD_LEN + 4096)), ENOSPC);
    assert_eq!(std::fs::metadata(s.dir.join("odd")).unwrap().len(), ODD_LEN);
    // Resizing is refused, keeping the size is not.
    assert_eq!(errno(f.set_len(ODD_LEN + 1)), EPERM);
    assert_eq!(errno(f.set_len(4096)), EPERM);
    f.set_len(ODD_LEN).unwrap();
    assert_eq!(errno(File::create(s.dir.join("odd"))), EPERM, "O_TRUNC");
}

#[test]
fn snapshots_are_read_only() {
    let _g = serial();
    let s = setup();
    let _fuse = FuseFrontEnd::mount(&s.dir, s.catalog.clone(), Hooks::default()).unwrap();
    let path = s.dir.join("snap");
    assert_eq!(errno(OpenOptions::new().write(true).open(&path)), EROFS);
    assert_eq!(
        errno(OpenOptions::new().read(true).write(true).open(&path)),
        EROFS
    );
    assert_eq!(errno(OpenOptions::new().append(true).open(&path)), EROFS);
    let f = File::open(&path).unwrap();
    let mut b = [0u8; 4096];
    f.read_exact_at(&mut b, 0).unwrap();
    assert_eq!(b, [0xAA; 4096]);
    // A read-only descriptor cannot write (the kernel says EBADF before asking us).
    assert!(f.write_at(&[1], 0).is_err());
    f.sync_all().unwrap();
    require_commands(&["fallocate"]);
    let p = path.to_str().unwrap();
    let out = common::output("fallocate", &["-p", "-o", "0", "-l", "4096", p]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn fsync_and_fallocate() {
    let _g = serial();
    require_commands(&["fallocate"]);
    let s = setup();
    let _fuse = FuseFrontEnd::mount(&s.dir, s.catalog.clone(), Hooks::default()).unwrap();
    let path = s.dir.join("vol");
    let p = path.to_str().unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    f.write_all_at(&vec![0x77; 4 * MIB as usize], 8 * MIB)
        .unwrap();
    f.sync_all().unwrap();
    f.sync_data().unwrap();
    // Punch a hole (unaligned) and zero a range: both read as zeroes, the rest is untouched.
    run(
        "fallocate",
        &["-p", "-o", &(8 * MIB + 1000).to_string(), "-l", "70000", p],
    );
    run(
        "fallocate",
        &["-z", "-o", &(10 * MIB).to_string(), "-l", "1048576", p],
    );
    let mut got = vec![0u8; 4 * MIB as usize];
    s.vol.read(&mut got, 8 * MIB).unwrap();
    let zero = |r: std::ops::Range<usize>| got[r].iter().all(|&b| b == 0);
    let full = |r: std::ops::Range<usize>| got[r].iter().all(|&b| b == 0x77);
    assert!(full(0..1000));
    assert!(zero(1000..71_000));
    assert!(full(71_000..2 * MIB as usize));
    assert!(zero(2 * MIB as usize..3 * MIB as usize));
    assert!(full(3 * MIB as usize..4 * MIB as usize));
    // The snapshot keeps what was there before (zeroes there, 0xAA at the start).
    let mut snap = vec![1u8; 8192];
    File::open(s.dir.join("snap"))
        .unwrap()
        .read_exact_at(&mut snap, 0)
        .unwrap();
    assert!(snap.iter().all(|&b| b == 0xAA));
    // Plain allocation inside the size succeeds; past it (growing) and other modes fail.
    run("fallocate", &["-o", "0", "-l", "4096", p]);
    run(
        "fallocate",
        &["-n", "-o", "0", "-l", &(2 * VOL_LEN).to_string(), p],
    );
    let grow = common::output(
        "fallocate",
        &["-o", "0", "-l", &(2 * VOL_LEN).to_string(), p],
    );
    assert!(!grow.status.success());
    let collapse = common::output("fallocate", &["-c", "-o", "0", "-l", "65536", p]);
    assert!(!collapse.status.success());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), VOL_LEN);
    // SEEK_DATA / SEEK_HOLE come from the image file's allocation.
    use rustix::fs::SeekFrom;
    assert_eq!(rustix::fs::seek(&f, SeekFrom::Data(0)).unwrap(), 0);
    let hole = rustix::fs::seek(&f, SeekFrom::Hole(0)).unwrap();
    assert!((8192..=8 * MIB).contains(&hole), "first hole at {hole}");
    assert_eq!(
        rustix::fs::seek(&f, SeekFrom::Data(13 * MIB)),
        Err(rustix::io::Errno::NXIO)
    );
    assert_eq!(
        rustix::fs::seek(&f, SeekFrom::Hole(13 * MIB)).unwrap(),
        13 * MIB
    );
}

#[test]
fn the_namespace_is_the_catalogs() {
    let _g = serial();
    let s = setup();
    let _fuse = FuseFrontEnd::mount(&s.dir, s.catalog.clone(), Hooks::default()).unwrap();
    assert_eq!(errno(File::create(s.dir.join("new"))), EPERM);
    assert_eq!(errno(std::fs::remove_file(s.dir.join("snap"))), EPERM);
    assert_eq!(errno(std::fs::create_dir(s.dir.join("d"))), EPERM);
    assert_eq!(
        errno(std::fs::rename(s.dir.join("vol"), s.dir.join("v2"))),
        EPERM
    );
    assert_eq!(
        errno(std::os::unix::fs::symlink("vol", s.dir.join("l"))),
        EPERM
    );
    assert_eq!(
        errno(std::fs::hard_link(s.dir.join("vol"), s.dir.join("h"))),
        EPERM
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        errno(std::fs::set_permissions(
            s.dir.join("vol"),
            std::fs::Permissions::from_mode(0o666)
        )),
        EPERM
    );
    // Not even root may make a snapshot writable.
    std::fs::set_permissions(s.dir.join("snap"), std::fs::Permissions::from_mode(0o400)).unwrap();
    assert!(s.dir.join("vol").exists());
}

/// Reads at this offset wait until two of them are being served at once.
const GATE: u64 = 1 << 20;

/// Holds reads at [`GATE`] until two of them are being served at once.
fn gate() -> HookedDevice<MemDevice> {
    let arrived = Arc::new((Mutex::new(0u32), Condvar::new()));
    HookedDevice {
        inner: MemDevice::new(4 * MIB),
        before_read: Box::new(move |offset, _| {
            if offset != GATE {
                return Ok(());
            }
            let (lock, cv) = &*arrived;
            let mut n = lock.lock().unwrap();
            *n += 1;
            cv.notify_all();
            let (_n, t) = cv
                .wait_timeout_while(n, Duration::from_secs(10), |n| *n < 2)
                .unwrap();
            if t.timed_out() {
                return Err(io::Error::other("the second read never came in parallel"));
            }
            Ok(())
        }),
    }
}

#[test]
fn requests_are_served_in_parallel() {
    let _g = serial();
    let tmp = disk_tempdir();
    let gate = Arc::new(gate());
    let catalog = Arc::new(TestCatalog::default());
    catalog.add(Export::Volume(Volume::new("gate", gate)));
    let dir = tmp.path().join("dev");
    let opts = FuseOptions {
        threads: 4,
        ..FuseOptions::default()
    };
    let _fuse = FuseFrontEnd::mount_with(&dir, catalog, Hooks::default(), &opts).unwrap();
    let path = dir.join("gate");
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                let f = File::open(path).unwrap();
                let mut b = vec![0u8; 4096];
                f.read_exact_at(&mut b, GATE)
            })
        })
        .collect();
    for r in readers {
        r.join()
            .unwrap()
            .expect("two reads must be served at the same time");
    }
}

#[test]
fn parallel_writers_and_readers() {
    let _g = serial();
    let s = setup();
    let _fuse = FuseFrontEnd::mount(&s.dir, s.catalog.clone(), Hooks::default()).unwrap();
    let path = s.dir.join("vol");
    let region = 4 * MIB;
    let writers: Vec<_> = (0..8u64)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .unwrap();
                let mut p = Pattern::new(100 + t);
                let base = 16 * MIB + t * region;
                let mut off = base + t; // unaligned on purpose
                let mut written = Vec::new();
                while off + 70_000 < base + region {
                    let len = 1 + (p.next_u64() % 70_000) as usize;
                    let data = p.bytes(len);
                    f.write_all_at(&data, off).unwrap();
                    written.push((off, data));
                    off += len as u64 + (p.next_u64() % 5000);
                }
                for (off, data) in written {
                    let mut b = vec![0u8; data.len()];
                    f.read_exact_at(&mut b, off).unwrap();
                    assert!(b == data, "thread {t} at {off}");
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
}

#[test]
fn opens_are_reported_and_stop_waits_for_them() {
    let _g = serial();
    let s = setup();
    let (hooks, events) = recording_hooks();
    let mut fuse = FuseFrontEnd::mount(&s.dir, s.catalog.clone(), hooks).unwrap();
    let a = File::open(s.dir.join("snap")).unwrap();
    let b = File::open(s.dir.join("snap")).unwrap();
    let v = OpenOptions::new()
        .write(true)
        .open(s.dir.join("vol"))
        .unwrap();
    assert_eq!(
        fuse.open_files(),
        vec![("snap".to_string(), 2), ("vol".to_string(), 1)]
    );
    assert!(fuse.is_open("snap") && fuse.is_open("vol") && !fuse.is_open("odd"));
    match fuse.stop() {
        Err(FuseError::Busy { open, .. }) => assert_eq!(open, ["snap", "vol"]),
        other => panic!("stop with open files: {other:?}"),
    }
    // Still served after a refused stop.
    assert!(fuse.is_serving());
    let mut buf = [0u8; 16];
    a.read_exact_at(&mut buf, 0).unwrap();
    drop(a);
    drop(v);
    // Releases reach the daemon shortly after close(2) returns.
    assert!(wait_until(Duration::from_secs(5), || fuse.open_files()
        == vec![("snap".to_string(), 1)]));
    drop(b);
    assert!(wait_until(Duration::from_secs(5), || fuse
        .open_files()
        .is_empty()));
    fuse.stop().unwrap();
    assert!(!fuse.is_serving());
    assert!(!is_mount_point(&s.dir));
    fuse.stop().unwrap(); // stopping twice is fine
    let ev = events.lock().unwrap().clone();
    let snap: Vec<bool> = ev.iter().filter(|e| e.0 == "snap").map(|e| e.1).collect();
    let vol: Vec<bool> = ev.iter().filter(|e| e.0 == "vol").map(|e| e.1).collect();
    assert_eq!(snap, [true, false], "{ev:?}");
    assert_eq!(vol, [true, false], "{ev:?}");
    // The same directory can be mounted again.
    let again = FuseFrontEnd::mount(&s.dir, s.catalog.clone(), Hooks::default()).unwrap();
    assert!(s.dir.join("vol").exists());
    again.unmount().unwrap();
}

#[test]
fn an_unmount_by_someone_else_is_noticed() {
    let _g = serial();
    let s = setup();
    let mut fuse = FuseFrontEnd::mount(&s.dir, s.catalog.clone(), Hooks::default()).unwrap();
    assert!(fuse.is_serving());
    run("umount", &[s.dir.to_str().unwrap()]);
    assert!(wait_until(Duration::from_secs(5), || !fuse.is_serving()));
    fuse.stop().unwrap();
    assert!(!is_mount_point(&s.dir));
}

#[test]
fn dropping_with_open_files_detaches_without_breaking_them() {
    let _g = serial();
    let s = setup();
    let fuse = FuseFrontEnd::mount(&s.dir, s.catalog.clone(), Hooks::default()).unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(s.dir.join("vol"))
        .unwrap();
    drop(fuse);
    // Gone from the namespace at once: no stale mount.
    assert!(!is_mount_point(&s.dir));
    assert!(mountinfo_line(&s.dir).is_none());
    // The open file is still served until closed.
    f.write_all_at(&[3; 4096], 4096).unwrap();
    let mut b = [0u8; 4096];
    f.read_exact_at(&mut b, 4096).unwrap();
    assert_eq!(b, [3; 4096]);
    f.sync_all().unwrap();
    drop(f);
}

/// Not a test of its own: run as a child process by `a_dead_mount_left_by_a_crash_is_replaced`,
/// it mounts the directory named in the environment and waits to be killed.
#[test]
fn crash_helper_child() {
    let Some(dir) = std::env::var_os("FSS_FUSE_CRASH_HELPER_DIR") else {
        return;
    };
    let catalog = Arc::new(TestCatalog::default());
    catalog.add(Export::Volume(Volume::new(
        "vol",
        Arc::new(MemDevice::new(MIB)),
    )));
    let fuse = FuseFrontEnd::mount(Path::new(&dir), catalog, Hooks::default()).unwrap();
    println!("\nFSS-FUSE-CHILD-READY");
    std::thread::sleep(Duration::from_secs(120));
    drop(fuse);
}

/// Lazily unmounts a directory on drop (whatever a test left there).
struct Detach<'a>(&'a Path);

impl Drop for Detach<'_> {
    fn drop(&mut self) {
        if is_mount_point(self.0) {
            let _ = common::output("umount", &["-l", self.0.to_str().unwrap_or_default()]);
        }
    }
}

#[test]
fn a_dead_mount_left_by_a_crash_is_replaced() {
    use std::io::BufRead;
    let _g = serial();
    let s = setup();
    std::fs::create_dir_all(&s.dir).unwrap();
    let _detach = Detach(&s.dir);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_helper_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FSS_FUSE_CRASH_HELPER_DIR", &s.dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("FSS-FUSE-CHILD-READY"));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(ready, "the child never mounted");
    // The server died: the mount is dead.
    let e = std::fs::metadata(s.dir.join("vol")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(107), "ENOTCONN after the crash: {e}");
    let again = FuseFrontEnd::mount(&s.dir, s.catalog.clone(), Hooks::default()).unwrap();
    assert_eq!(std::fs::metadata(s.dir.join("vol")).unwrap().len(), VOL_LEN);
    again.unmount().unwrap();
    assert!(
        !is_mount_point(&s.dir),
        "both the dead and the new mount are gone"
    );
}
