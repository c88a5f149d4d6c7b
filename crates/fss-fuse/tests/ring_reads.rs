//! Small reads served together on the session's read ring (`fss_core::direct_read::ring`):
//! eight threads reading 4 KiB O_DIRECT blocks of a snapshot file at once, just ahead of a
//! writer that overwrites the volume's blocks under them, read the snapshot's bytes every time (the engine's second
//! look after each ring read; with the store on a file, reads of preserved blocks come from
//! that file on the ring). The ring thread must have done the work, or this would test the
//! serving threads instead: its context switches are counted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{disk_tempdir, file_volume, serial, Pattern, TestCatalog};
use fss_core::device::AlignedBuf;
use fss_core::device::{FileDevice, OpenOptions as DevOptions};
use fss_core::export::Export;
use fss_core::store::{DeviceStore, Store};
use fss_core::SnapshotOptions;
use fss_fuse::{FuseFrontEnd, Hooks};
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MIB: u64 = 1 << 20;
const LEN: u64 = 16 * MIB;
const BS: usize = 4096;

/// Voluntary context switches of this process's threads named `fss-fuse-ring`, summed.
fn ring_switches() -> u64 {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| {
            let dir = t.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            if !comm.starts_with("fss-fuse-ring") {
                return None;
            }
            let status = std::fs::read_to_string(dir.join("status")).ok()?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

#[test]
fn ring_reads_of_a_snapshot_under_overwrites_read_the_snapshot() {
    snapshot_reads_under_overwrites(false);
}

/// As above with the snapshot's store on a file, and reads from a few blocks behind the writer
/// to a few ahead: the preserved blocks are read from the store's file on the ring too.
#[test]
fn ring_reads_of_a_snapshot_on_a_file_store_read_preserved_blocks_from_it() {
    snapshot_reads_under_overwrites(true);
}

fn snapshot_reads_under_overwrites(store_on_file: bool) {
    let _g = serial();
    let tmp = disk_tempdir();
    let vol = file_volume("vol", &tmp.path().join("vol.img"), LEN);
    let model = Pattern::new(5).bytes(LEN as usize);
    vol.write(&model, 0).unwrap();
    let store_path = tmp.path().join("snap.store");
    let snap = vol
        .create_snapshot("snap", &SnapshotOptions::default(), |p| {
            if !store_on_file {
                return DeviceStore::in_memory(p);
            }
            let opts = DevOptions {
                create_len: Some(0),
                direct_large: true,
                ..DevOptions::default()
            };
            let dev = FileDevice::open(&store_path, &opts).unwrap();
            Ok(Box::new(DeviceStore::new(Arc::new(dev), p, false)) as Box<dyn Store>)
        })
        .unwrap();
    // How far behind the writer reads start (its blocks there are preserved).
    let behind = if store_on_file { 4 } else { 0 };
    let catalog = Arc::new(TestCatalog::default());
    catalog.add(Export::Volume(vol.clone()));
    catalog.add(Export::Snapshot(snap));
    let dir = tmp.path().join("dev");
    let fuse = FuseFrontEnd::mount(&dir, catalog.clone(), Hooks::default()).unwrap();
    let before = ring_switches();
    // The writer goes through the blocks in order, each overwritten once (a first overwrite:
    // it preserves), at a pace; the readers read just ahead of it, so that writes land between
    // a read's plan and its completion.
    let done = Arc::new(AtomicBool::new(false));
    let pos = Arc::new(AtomicU64::new(0));
    let (v, d2, p2) = (vol.clone(), Arc::clone(&done), Arc::clone(&pos));
    let writer = std::thread::spawn(move || {
        let mut p = Pattern::new(6);
        for b in 0..LEN / BS as u64 {
            p2.store(b, Ordering::Relaxed);
            v.write(&p.bytes(BS), b * BS as u64).unwrap();
            std::thread::sleep(Duration::from_micros(30));
        }
        d2.store(true, Ordering::Relaxed);
    });
    let model = Arc::new(model);
    let readers: Vec<_> = (0..8u64)
        .map(|t| {
            let (path, model) = (dir.join("snap"), Arc::clone(&model));
            let (done, pos) = (Arc::clone(&done), Arc::clone(&pos));
            std::thread::spawn(move || {
                let f = OpenOptions::new()
                    .read(true)
                    .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
                    .open(path)
                    .unwrap();
                let mut p = Pattern::new(10 + t);
                let mut buf = AlignedBuf::new(BS);
                let mut reads = 0u32;
                while !done.load(Ordering::Relaxed) {
                    let b = (pos.load(Ordering::Relaxed) + p.next_u64() % (4 + behind))
                        .saturating_sub(behind);
                    let at = b.min(LEN / BS as u64 - 1) * BS as u64;
                    f.read_exact_at(&mut buf, at).unwrap();
                    let at = at as usize;
                    assert!(buf[..] == model[at..at + BS], "snapshot bytes at {at}");
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    writer.join().unwrap();
    let reads: u32 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(reads > 1000, "{reads} reads meanwhile");
    let switches = ring_switches() - before;
    assert!(
        switches > 100,
        "the ring thread switched {switches} times: it did not serve the reads"
    );
    drop(fuse);
}
