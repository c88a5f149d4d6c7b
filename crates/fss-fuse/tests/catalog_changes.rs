//! Files appear and disappear as soon as the catalog changes while mounted: no entry or
//! attribute caching hides a new export or keeps a removed one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{disk_tempdir, serial, TestCatalog};
use fss_core::device::MemDevice;
use fss_core::export::Export;
use fss_core::store::DeviceStore;
use fss_core::{SnapshotOptions, Volume};
use fss_fuse::{FuseFrontEnd, Hooks};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Arc;

const ENOENT: i32 = 2;

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn exports_appear_and_disappear_at_once() {
    let _g = serial();
    let tmp = disk_tempdir();
    let dir = tmp.path().join("dev");
    let catalog = Arc::new(TestCatalog::default());
    let vol = Volume::new("vol0", Arc::new(MemDevice::new(1 << 20)));
    catalog.add(Export::Volume(vol.clone()));
    let fuse = FuseFrontEnd::mount(&dir, catalog.clone(), Hooks::default()).unwrap();

    // Looked up once while absent: the negative answer must not be cached.
    let snap_path = dir.join("s1");
    assert_eq!(
        std::fs::metadata(&snap_path).unwrap_err().raw_os_error(),
        Some(ENOENT)
    );
    let ino_vol = std::fs::metadata(dir.join("vol0")).unwrap().ino();

    vol.write(&[1; 4096], 0).unwrap();
    let snap = vol
        .create_snapshot("s1", &SnapshotOptions::default(), DeviceStore::in_memory)
        .unwrap();
    catalog.add(Export::Snapshot(snap));
    // Visible immediately, with its attributes.
    let m = std::fs::metadata(&snap_path).unwrap();
    assert_eq!(m.len(), 1 << 20);
    assert_eq!(m.mode() & 0o777, 0o400);
    assert_eq!(names(&dir), ["s1", "vol0"]);
    let ino_snap = m.ino();
    assert_ne!(ino_snap, ino_vol);
    assert_eq!(std::fs::metadata(&snap_path).unwrap().ino(), ino_snap);
    let mut b = [0u8; 4096];
    std::fs::File::open(&snap_path)
        .unwrap()
        .read_exact_at(&mut b, 0)
        .unwrap();
    assert_eq!(b, [1; 4096]);

    // Removed: gone at once, from stat and from the listing.
    catalog.remove("s1");
    assert_eq!(
        std::fs::metadata(&snap_path).unwrap_err().raw_os_error(),
        Some(ENOENT)
    );
    assert_eq!(
        std::fs::File::open(&snap_path).unwrap_err().raw_os_error(),
        Some(ENOENT)
    );
    assert_eq!(names(&dir), ["vol0"]);

    // A new export under an old name: its own size, and a new inode number.
    catalog.add(Export::Volume(Volume::new(
        "s1",
        Arc::new(MemDevice::new(3 << 20)),
    )));
    let m = std::fs::metadata(&snap_path).unwrap();
    assert_eq!(m.len(), 3 << 20);
    assert_eq!(m.mode() & 0o777, 0o600);
    assert_ne!(m.ino(), ino_snap);

    // Many at once, then none.
    for i in 0..50 {
        catalog.add(Export::Volume(Volume::new(
            format!("v{i:02}"),
            Arc::new(MemDevice::new(4096 * (i + 1))),
        )));
    }
    assert_eq!(names(&dir).len(), 52);
    for i in 0..50u64 {
        let m = std::fs::metadata(dir.join(format!("v{i:02}"))).unwrap();
        assert_eq!(m.len(), 4096 * (i + 1));
    }
    // A name that stayed through all this kept its inode number.
    assert_eq!(std::fs::metadata(dir.join("vol0")).unwrap().ino(), ino_vol);
    for i in 0..50 {
        catalog.remove(&format!("v{i:02}"));
    }
    catalog.remove("s1");
    catalog.remove("vol0");
    assert!(names(&dir).is_empty());
    assert_eq!(
        std::fs::metadata(dir.join("vol0"))
            .unwrap_err()
            .raw_os_error(),
        Some(ENOENT)
    );
    fuse.unmount().unwrap();
}
