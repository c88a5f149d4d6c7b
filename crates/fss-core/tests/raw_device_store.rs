//! A persistent store on a raw block device (a loop device over a 64 MiB file): writes through
//! a volume, reopen from the block device, the store filling up (fixed size), and O_EXCL
//! fencing. Needs root and `losetup` (CI runs as root): the test fails, not skips, without them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::pattern;
use fss_core::device::{BlockDevice, FileDevice, MemDevice, OpenOptions};
use fss_core::store::{FileStore, Store, StoreIdentity};
use fss_core::{ErrorKind, SnapshotOptions, SnapshotState, Volume};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, PoisonError};

const MIB: u64 = 1 << 20;
const CLUSTER: u64 = 64 << 10;
/// The block device (the store): 64 MiB.
const STORE_LEN: u64 = 64 * MIB;
/// The volume: larger than the store can preserve, so that overwriting all of it fills the
/// store.
const VOL_LEN: u64 = 128 * MIB;
const VOL_ID: [u8; 16] = [0x5e; 16];

/// Loop devices are a machine-wide resource: one test at a time.
static LOOP: Mutex<()> = Mutex::new(());

/// A loop device over a file, detached on drop whatever the outcome.
struct LoopDevice {
    dev: PathBuf,
}

impl LoopDevice {
    fn attach(file: &Path) -> LoopDevice {
        let out = match Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
        {
            Ok(o) => o,
            Err(e) => panic!(
                "cannot run losetup ({e}): the raw-device store test needs losetup (util-linux) \
                 and root"
            ),
        };
        assert!(
            out.status.success(),
            "losetup -f --show {} failed ({}): {}; the raw-device store test needs root and a \
             free loop device",
            file.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        assert!(
            dev.starts_with("/dev"),
            "losetup printed no device: {dev:?}"
        );
        LoopDevice { dev }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        match Command::new("losetup").arg("-d").arg(&self.dev).status() {
            Ok(s) if s.success() => {}
            other => eprintln!("could not detach {}: {other:?}", self.dev.display()),
        }
    }
}

fn persistent() -> SnapshotOptions {
    SnapshotOptions {
        cluster_size: Some(CLUSTER),
        persistent: true,
        ..SnapshotOptions::default()
    }
}

fn open_exclusive(dev: &Path) -> std::io::Result<FileDevice> {
    FileDevice::open(
        dev,
        &OpenOptions {
            exclusive: true,
            ..OpenOptions::default()
        },
    )
}

/// A volume on `vol_dev` with the store on the block device `dev` attached (reopened).
fn reopen(vol_dev: &Arc<MemDevice>, dev: &Path, snapshot_id: u64) -> Volume {
    let d: Arc<dyn BlockDevice> = vol_dev.clone();
    let vol = Volume::with_identity("vol", d, VOL_ID);
    let bdev = open_exclusive(dev).expect("reopen the block device exclusively");
    assert!(bdev.is_block_device());
    let expect = StoreIdentity {
        volume_id: VOL_ID,
        volume_len: vol.len(),
        snapshot_id,
    };
    let (store, rec) = FileStore::open(Arc::new(bdev), &expect, true, None, None)
        .expect("open the store on the block device");
    vol.attach_snapshot(&persistent(), Box::new(store), rec)
        .expect("attach the snapshot");
    vol
}

fn read_all(vol: &Volume) -> Vec<u8> {
    let mut buf = vec![0u8; VOL_LEN as usize];
    vol.read(&mut buf, 0).unwrap();
    buf
}

#[test]
fn persistent_store_on_a_raw_device_reopens_fills_up_and_is_fenced() {
    let _one = LOOP.lock().unwrap_or_else(PoisonError::into_inner);
    let dir = tempfile::Builder::new()
        .prefix("fss-rawdev-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let backing = dir.path().join("store.img");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(STORE_LEN)
        .unwrap();
    let lo = LoopDevice::attach(&backing);

    // Write through a volume with a persistent snapshot on the block device.
    let vol_dev = Arc::new(MemDevice::new(VOL_LEN));
    let d: Arc<dyn BlockDevice> = vol_dev.clone();
    let vol = Volume::with_identity("vol", d, VOL_ID);
    let v0 = pattern(1, 0, VOL_LEN as usize);
    vol.write(&v0, 0).unwrap();
    let bdev = open_exclusive(&lo.dev).expect("open the block device exclusively");
    assert!(
        bdev.is_block_device(),
        "{} is a block device",
        lo.dev.display()
    );
    assert_eq!(bdev.len(), STORE_LEN);
    let mut bdev = Some(bdev);
    let snap = vol
        .create_snapshot("a", &persistent(), |p| {
            let dev = bdev.take().expect("the factory runs once");
            Ok(Box::new(FileStore::create(Arc::new(dev), p, true, None)?) as Box<dyn Store>)
        })
        .unwrap();
    let snapshot_id = snap.info().id;
    vol.write(&pattern(2, MIB, (3 * MIB) as usize), MIB)
        .unwrap();
    vol.write(&[7; 4096], 20 * MIB + 8192).unwrap();
    vol.write_zeroes(40 * MIB, 2 * CLUSTER).unwrap();
    vol.write(&[9; 512], VOL_LEN - 512).unwrap();
    let v1 = read_all(&vol);
    assert!(v1 != v0);

    // While the store holds the device, a second exclusive open fails with EBUSY.
    let e = open_exclusive(&lo.dev).expect_err("a second exclusive open while the store holds it");
    assert_eq!(
        e.raw_os_error(),
        Some(rustix::io::Errno::BUSY.raw_os_error()),
        "second exclusive open: {e}"
    );

    // Drop everything; reopen from the block device: the snapshot reads exactly as before.
    drop(snap);
    drop(vol);
    let vol = reopen(&vol_dev, &lo.dev, snapshot_id);
    let snap = vol.snapshot("a").expect("the snapshot came back");
    assert_eq!(snap.info().state, SnapshotState::Valid);
    let mut buf = vec![0u8; VOL_LEN as usize];
    snap.read(&mut buf, 0).unwrap();
    assert!(
        buf == v0,
        "the snapshot reads exactly the same after reopen"
    );
    assert!(read_all(&vol) == v1, "the volume after reopen");
    let e = open_exclusive(&lo.dev).expect_err("a second exclusive open after reopen");
    assert_eq!(
        e.raw_os_error(),
        Some(rustix::io::Errno::BUSY.raw_os_error()),
        "second exclusive open after reopen: {e}"
    );

    // Fill it up: overwrite every cluster of the volume (more than the 64 MiB store can
    // preserve). The snapshot becomes invalid because the store is full; the volume writes all
    // succeed.
    let v2 = pattern(3, 0, VOL_LEN as usize);
    for at in (0..VOL_LEN).step_by(CLUSTER as usize) {
        let chunk = &v2[at as usize..(at + CLUSTER) as usize];
        vol.write(chunk, at)
            .unwrap_or_else(|e| panic!("volume write at {at} once the store is full: {e}"));
    }
    match snap.info().state {
        SnapshotState::Invalid(reason) => assert!(
            reason.to_lowercase().contains("full"),
            "the reason names a full store: {reason}"
        ),
        SnapshotState::Valid => panic!(
            "the snapshot is still valid after {} MiB of first overwrites into a {} MiB store",
            VOL_LEN / MIB,
            STORE_LEN / MIB
        ),
    }
    let e = snap
        .read(&mut buf[..4096], 0)
        .expect_err("read of a full snapshot");
    assert_eq!(e.kind(), ErrorKind::InvalidSnapshot, "{e}");
    assert!(read_all(&vol) == v2, "the volume holds every write");
    vol.write(&[1; 4096], 0).unwrap();
    vol.flush().unwrap();
    drop(snap);
    drop(vol);

    // The invalidation was recorded in the store: a reopen brings the snapshot back invalid.
    let vol = reopen(&vol_dev, &lo.dev, snapshot_id);
    match vol
        .snapshot("a")
        .expect("the snapshot came back")
        .info()
        .state
    {
        SnapshotState::Invalid(reason) => assert!(
            reason.to_lowercase().contains("full"),
            "the reason after reopen names a full store: {reason}"
        ),
        SnapshotState::Valid => panic!("a full snapshot came back valid after reopen"),
    }
    drop(vol);

    // Released: an exclusive open succeeds again.
    drop(open_exclusive(&lo.dev).expect("exclusive open once everything is dropped"));
}
