//! What a first overwrite costs and what the failure policy does, counted on the stores.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::{pattern, StoreFactory};
use fss_core::device::{BlockDevice, Fault, FaultDevice, MemDevice};
use fss_core::store::{DeviceStore, Store};
use fss_core::{ErrorKind, OnStoreError, SnapshotOptions, SnapshotState, Volume};
use std::sync::Arc;

const MIB: u64 = 1 << 20;

fn volume(len: u64) -> (Volume, Arc<MemDevice>) {
    let dev = Arc::new(MemDevice::new(len));
    let d: Arc<dyn BlockDevice> = dev.clone();
    (Volume::new("vol", d), dev)
}

#[test]
fn first_overwrite_stores_one_pre_image_whatever_the_number_of_snapshots() {
    for n in [1usize, 4, 16] {
        let (vol, _) = volume(8 * MIB);
        vol.write(&pattern(1, 0, (8 * MIB) as usize), 0).unwrap();
        let f = StoreFactory::default();
        for i in 0..n {
            vol.create_snapshot(&format!("s{i}"), &SnapshotOptions::default(), |p| f.make(p))
                .unwrap();
        }
        // 1 MiB, unaligned start: 257 blocks touched.
        vol.write(&pattern(2, 4096 * 10 + 100, MIB as usize), 4096 * 10 + 100)
            .unwrap();
        let newest = format!("s{}", n - 1);
        assert_eq!(f.bytes_written(&newest), 257 * 4096, "{n} snapshots");
        assert_eq!(
            f.total_bytes_written(),
            257 * 4096,
            "{n} snapshots: only the newest store"
        );
        let writes = f.device(&newest).counters().writes;
        assert!(
            writes <= 18,
            "{n} snapshots: {writes} store writes for 17 clusters"
        );
        // A second overwrite of the same range preserves nothing more.
        vol.write(&pattern(3, 4096 * 10, MIB as usize), 4096 * 10)
            .unwrap();
        assert_eq!(f.total_bytes_written(), 257 * 4096);
        // Every snapshot still reads the original bytes.
        for i in 0..n {
            let s = vol.snapshot(&format!("s{i}")).unwrap();
            let mut buf = vec![0u8; (2 * MIB) as usize];
            s.read(&mut buf, 0).unwrap();
            assert!(
                buf == pattern(1, 0, (2 * MIB) as usize),
                "snapshot s{i} of {n}"
            );
        }
        let st = vol.stats();
        assert_eq!((st.blocks_preserved, st.cow_calls), (257, 1));
    }
}

#[test]
fn four_kib_write_into_fresh_cluster_preserves_four_kib() {
    let (vol, _) = volume(4 * MIB);
    let f = StoreFactory::default();
    let snap = vol
        .create_snapshot("s", &SnapshotOptions::default(), |p| f.make(p))
        .unwrap();
    assert_eq!(vol.cluster_size(), Some(64 << 10));
    vol.write(&[0xAA; 4096], 64 * 1024 * 5 + 4096 * 3).unwrap();
    assert_eq!(f.bytes_written("s"), 4096);
    let st = snap.info().stats;
    assert_eq!(
        (st.blocks_preserved, st.clusters_preserved, st.cow_calls),
        (1, 1, 1)
    );
    // A second block of the same cluster joins the same slot.
    vol.write(&[0xBB; 4096], 64 * 1024 * 5).unwrap();
    let st = snap.info().stats;
    assert_eq!((st.blocks_preserved, st.clusters_preserved), (2, 1));
    assert_eq!(f.bytes_written("s"), 8192);
    assert_eq!(
        st.store_bytes_used,
        64 << 10,
        "space is allocated by cluster"
    );
    // An unaligned 10-byte write spanning two blocks preserves both.
    vol.write(&[0xCC; 10], 4096 * 40 - 5).unwrap();
    assert_eq!(snap.info().stats.blocks_preserved, 4);
}

#[test]
fn persistent_and_transient_chains_each_get_one_copy() {
    let (vol, _) = volume(4 * MIB);
    vol.write(&pattern(1, 0, (4 * MIB) as usize), 0).unwrap();
    let f = StoreFactory::default();
    let p = SnapshotOptions {
        persistent: true,
        ..Default::default()
    };
    let t = SnapshotOptions::default();
    vol.create_snapshot("p1", &p, |x| f.make(x)).unwrap();
    vol.create_snapshot("t1", &t, |x| f.make(x)).unwrap();
    vol.create_snapshot("p2", &p, |x| f.make(x)).unwrap();
    vol.create_snapshot("t2", &t, |x| f.make(x)).unwrap();
    vol.write(&[9; 8192], 0).unwrap();
    assert_eq!(f.bytes_written("p2"), 8192);
    assert_eq!(f.bytes_written("t2"), 8192);
    assert_eq!(f.total_bytes_written(), 16384);
    // Deleting the newest transient moves its entries to the older transient only.
    vol.delete_snapshot("t2").unwrap();
    assert_eq!(f.bytes_written("t1"), 8192);
    assert_eq!(f.bytes_written("p1"), 0);
    for name in ["p1", "t1", "p2"] {
        let mut buf = vec![0u8; 8192];
        vol.snapshot(name).unwrap().read(&mut buf, 0).unwrap();
        assert!(buf == pattern(1, 0, 8192), "{name}");
    }
}

#[test]
fn full_store_invalidates_the_snapshot_and_writes_go_on() {
    let (vol, dev) = volume(4 * MIB);
    vol.write(&pattern(1, 0, (4 * MIB) as usize), 0).unwrap();
    let opts = SnapshotOptions {
        max_store_bytes: Some(2 * 65536),
        ..Default::default()
    };
    let old = vol
        .create_snapshot("old", &SnapshotOptions::default(), DeviceStore::in_memory)
        .unwrap();
    let snap = vol
        .create_snapshot("small", &opts, DeviceStore::in_memory)
        .unwrap();
    vol.write(&[1; 65536], 0).unwrap();
    vol.write(&[1; 65536], 65536).unwrap();
    assert!(snap.is_valid());
    // The third cluster does not fit: the snapshot is invalid, the write still lands.
    vol.write(&[7; 100], 3 * 65536).unwrap();
    let mut b = [0u8; 100];
    dev.read_at(&mut b, 3 * 65536).unwrap();
    assert_eq!(b, [7; 100]);
    let e = snap.read(&mut [0u8; 10], 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidSnapshot);
    assert!(e.to_string().contains("store is full"), "{e}");
    assert!(matches!(snap.info().state, SnapshotState::Invalid(ref r) if r.contains("full")));
    // The older snapshot resolved that block through the full store: invalid too.
    assert!(!old.is_valid());
    // Later writes go on, preserving nothing more into invalid snapshots.
    vol.write(&[8; 65536], 10 * 65536).unwrap();
    assert_eq!(vol.stats().blocks_preserved, 32);
}

#[test]
fn older_snapshot_that_does_not_need_the_lost_block_stays_valid() {
    let (vol, _) = volume(4 * MIB);
    let old = vol
        .create_snapshot("old", &SnapshotOptions::default(), DeviceStore::in_memory)
        .unwrap();
    vol.write(&[1; 4096], 0).unwrap(); // preserved in old
    let opts = SnapshotOptions {
        max_store_bytes: Some(0),
        ..Default::default()
    };
    let new = vol
        .create_snapshot("new", &opts, DeviceStore::in_memory)
        .unwrap();
    vol.write(&[2; 4096], 0).unwrap(); // new cannot hold it; old already has its own copy
    assert!(!new.is_valid());
    assert!(old.is_valid());
    let mut buf = [9u8; 4096];
    old.read(&mut buf, 0).unwrap();
    assert_eq!(buf, [0; 4096]);
    // With the newest invalid, the older valid one becomes the target again.
    vol.write(&[3; 4096], 8192).unwrap();
    assert!(old.is_valid());
    old.read(&mut buf, 8192).unwrap();
    assert_eq!(buf, [0; 4096]);
}

#[test]
fn fail_write_refuses_the_write_and_keeps_snapshot_and_volume() {
    let (vol, dev) = volume(4 * MIB);
    vol.write(&[5; 8192], 0).unwrap();
    let opts = SnapshotOptions {
        max_store_bytes: Some(65536),
        on_store_error: OnStoreError::FailWrite,
        ..Default::default()
    };
    let snap = vol
        .create_snapshot("s", &opts, DeviceStore::in_memory)
        .unwrap();
    vol.write(&[6; 4096], 0).unwrap();
    let e = vol.write(&[6; 4096], 65536).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoSpace);
    assert!(e.to_string().contains("the volume is unchanged"), "{e}");
    let mut b = [0u8; 4096];
    dev.read_at(&mut b, 65536).unwrap();
    assert_eq!(b, [0; 4096]);
    assert!(snap.is_valid());
    // Raising the limit while live lets writes through, still exact.
    snap.set_max_store_bytes(Some(4 * 65536)).unwrap();
    vol.write(&[6; 4096], 65536).unwrap();
    snap.read(&mut b, 0).unwrap();
    assert_eq!(b, [5; 4096]);
    snap.read(&mut b, 65536).unwrap();
    assert_eq!(b, [0; 4096]);
    let e = snap.set_max_store_bytes(Some(1)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn failing_store_device_invalidates_with_io_cause() {
    let (vol, _) = volume(MIB);
    let fault = Arc::new(FaultDevice::new(MemDevice::growable(u64::MAX)));
    let f2 = Arc::clone(&fault);
    let snap = vol
        .create_snapshot("s", &SnapshotOptions::default(), move |p| {
            let d: Arc<dyn BlockDevice> = f2;
            Ok(Box::new(DeviceStore::new(d, p, false)) as Box<dyn Store>)
        })
        .unwrap();
    vol.write(&[1; 4096], 0).unwrap();
    fault.arm(0, Fault::Io);
    vol.write(&[1; 4096], 65536).unwrap();
    let e = snap.read(&mut [0u8; 1], 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidSnapshot);
    assert!(e.to_string().contains("I/O error"), "{e}");
}

#[test]
fn failing_volume_write_reports_its_error() {
    let fault = Arc::new(FaultDevice::new(MemDevice::new(MIB)));
    let d: Arc<dyn BlockDevice> = fault.clone();
    let vol = Volume::new("vol", d);
    let snap = vol
        .create_snapshot("s", &SnapshotOptions::default(), DeviceStore::in_memory)
        .unwrap();
    fault.arm(0, Fault::NoSpace);
    let e = vol.write(&[1; 4096], 0).unwrap_err();
    assert_eq!((e.kind(), e.errno()), (ErrorKind::NoSpace, 28));
    assert!(e.to_string().contains("volume 'vol'"), "{e}");
    fault.heal();
    // The snapshot stayed exact: its pre-image is the unchanged content.
    let mut b = [1u8; 4096];
    snap.read(&mut b, 0).unwrap();
    assert_eq!(b, [0; 4096]);
}

#[test]
fn out_of_range_and_bad_arguments_are_typed_errors() {
    let (vol, _) = volume(MIB + 10);
    assert_eq!(
        vol.write(&[0; 11], MIB).unwrap_err().kind(),
        ErrorKind::OutOfRange
    );
    assert_eq!(
        vol.read(&mut [0; 1], u64::MAX).unwrap_err().kind(),
        ErrorKind::OutOfRange
    );
    assert_eq!(
        vol.discard(u64::MAX, 2).unwrap_err().kind(),
        ErrorKind::OutOfRange
    );
    let o = |c| SnapshotOptions {
        cluster_size: Some(c),
        ..Default::default()
    };
    let e = vol
        .create_snapshot("a", &o(3000), DeviceStore::in_memory)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    let s = vol
        .create_snapshot("a", &o(16384), DeviceStore::in_memory)
        .unwrap();
    let e = vol
        .create_snapshot("b", &o(65536), DeviceStore::in_memory)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("16384"), "{e}");
    let e = vol
        .create_snapshot("a", &o(16384), DeviceStore::in_memory)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Exists);
    assert_eq!(
        s.read(&mut [0; 2], MIB + 9).unwrap_err().kind(),
        ErrorKind::OutOfRange
    );
    // The last partial block reads and preserves exactly.
    vol.write(&[3; 10], MIB).unwrap();
    let mut b = [9u8; 10];
    s.read(&mut b, MIB).unwrap();
    assert_eq!(b, [0; 10]);
    assert_eq!(
        vol.delete_snapshot("zz").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    vol.delete_snapshot("a").unwrap();
    assert_eq!(s.read(&mut b, 0).unwrap_err().kind(), ErrorKind::NotFound);
    // With no snapshot left, the next first snapshot may choose again.
    vol.create_snapshot("b", &o(65536), DeviceStore::in_memory)
        .unwrap();
}

#[test]
fn huge_sparse_volume_grows_its_cluster_size() {
    let (vol, _) = volume(2 << 40);
    let t = std::time::Instant::now();
    let s = vol
        .create_snapshot("s", &SnapshotOptions::default(), DeviceStore::in_memory)
        .unwrap();
    let took = t.elapsed();
    assert_eq!(vol.cluster_size(), Some(128 << 10));
    assert_eq!(s.info().cluster_size, 128 << 10);
    vol.write(&[1; 4096], (2 << 40) - 4096).unwrap();
    let mut b = [1u8; 4096];
    s.read(&mut b, (2 << 40) - 4096).unwrap();
    assert_eq!(b, [0; 4096]);
    // Not a timing assertion: a sanity bound far above the 10 ms goal, against O(size) work.
    assert!(took.as_secs() < 2, "creation took {took:?}");
}

#[test]
fn racing_first_overwrites_of_the_same_blocks_preserve_the_true_pre_image_once() {
    for round in 0..50u64 {
        let (vol, _) = volume(MIB);
        let original = pattern(round, 0, MIB as usize);
        vol.write(&original, 0).unwrap();
        let f = StoreFactory::default();
        let snap = vol
            .create_snapshot("s", &SnapshotOptions::default(), |p| f.make(p))
            .unwrap();
        let barrier = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            for t in 0..8u64 {
                let (vol, barrier) = (&vol, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    // Overlapping ranges: every thread writes blocks 0..=8, some unaligned.
                    let off = (t % 3) * 1000;
                    vol.write(&pattern(100 + t, off, 9 * 4096), off).unwrap();
                    vol.write(&pattern(200 + t, 0, 4096), 0).unwrap();
                });
            }
        });
        let mut buf = vec![0u8; 16 * 4096];
        snap.read(&mut buf, 0).unwrap();
        assert!(
            buf == original[..16 * 4096],
            "round {round}: a later version leaked into the snapshot"
        );
        // Each block of the range was preserved exactly once.
        assert_eq!(f.bytes_written("s"), 10 * 4096, "round {round}");
        assert_eq!(snap.info().stats.blocks_preserved, 10);
    }
}

#[test]
fn a_huge_discard_is_preserved_in_bounded_pieces() {
    let (vol, _) = volume(200 * MIB);
    vol.write(&pattern(5, 0, (100 * MIB) as usize), 0).unwrap();
    let f = StoreFactory::default();
    let snap = vol
        .create_snapshot("s", &SnapshotOptions::default(), |p| f.make(p))
        .unwrap();
    vol.discard(4096, 150 * MIB).unwrap();
    // One store write per cluster run at most 32 MiB apart: no single write can exceed it.
    let c = f.device("s").counters();
    assert_eq!(c.bytes_written, 150 * MIB);
    assert!(c.writes >= 5, "{c:?}");
    let mut buf = vec![0u8; (100 * MIB) as usize];
    snap.read(&mut buf, 0).unwrap();
    assert!(buf == pattern(5, 0, (100 * MIB) as usize));
}

#[test]
fn a_group_snapshot_is_one_instant_across_volumes() {
    let (a, _) = volume(MIB);
    let (b, _) = volume(MIB);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let read_counter = |s: &fss_core::Snapshot| {
        let mut buf = [0u8; 8];
        s.read(&mut buf, 0).unwrap();
        u64::from_le_bytes(buf)
    };
    std::thread::scope(|sc| {
        sc.spawn(|| {
            // Updates both volumes in step: a first, then b.
            let mut i = 1u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                a.write(&i.to_le_bytes(), 0).unwrap();
                b.write(&i.to_le_bytes(), 0).unwrap();
                i += 1;
            }
        });
        for round in 0..30 {
            std::thread::sleep(std::time::Duration::from_millis(2));
            let o = SnapshotOptions::default();
            let (na, nb) = (format!("a{round}"), format!("b{round}"));
            let group = [(&a, na.as_str(), &o), (&b, nb.as_str(), &o)];
            // A slow store factory widens any gap between the two snapshots.
            let snaps = Volume::create_snapshot_group(&group, |p| {
                std::thread::sleep(std::time::Duration::from_millis(3));
                DeviceStore::in_memory(p)
            })
            .unwrap();
            let (ca, cb) = (read_counter(&snaps[0]), read_counter(&snaps[1]));
            // At one instant, b is at a's value or one behind (the write in between).
            assert!(ca == cb || ca == cb + 1, "round {round}: a={ca} b={cb}");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let o = SnapshotOptions::default();
    let e = Volume::create_snapshot_group(&[(&a, "x", &o), (&a, "y", &o)], DeviceStore::in_memory)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    // All or none: a name taken on one volume makes nothing on the other.
    let e =
        Volume::create_snapshot_group(&[(&a, "fresh", &o), (&b, "b0", &o)], DeviceStore::in_memory)
            .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Exists);
    assert!(a.snapshot("fresh").is_none());
}
