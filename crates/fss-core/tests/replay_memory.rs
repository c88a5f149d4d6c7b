//! The memory that opening a store takes, read from the kernel (peak RSS, `VmHWM`, reset
//! before the open through `/proc/self/clear_refs`): a store with a million records must not
//! need a copy of every record while its map is built. Replay keeps only the last batch's
//! records; the map itself takes under 8 bytes per cluster (`map_memory.rs`). One test in
//! this binary, so nothing else allocates beside it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use fss_core::device::{BlockDevice, FileDevice, OpenOptions};
use fss_core::format::layout::Layout;
use fss_core::format::record::{Body, LogWriter};
use fss_core::format::superblock::Superblock;
use fss_core::store::{FileStore, Store, StoreIdentity, StoreParams};
use std::sync::Arc;
use std::time::SystemTime;

const CLUSTER: u64 = 64 << 10;
const VOLUME_LEN: u64 = 1 << 40;
const N: u32 = 1_000_000;

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A store whose log holds `N` preserve records, one block each, in clusters four writers
/// interleave (as the bench's fill); the data is a hole (records below the durable horizon
/// are trusted without reading it).
fn million_record_store(path: &std::path::Path) -> StoreIdentity {
    let opts = OpenOptions {
        create_len: Some(0),
        ..OpenOptions::default()
    };
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(path, &opts).unwrap());
    let params = StoreParams {
        snapshot: "s".into(),
        volume: "v".into(),
        volume_len: VOLUME_LEN,
        cluster_size: CLUSTER,
        persistent: true,
        max_bytes: None,
        created: SystemTime::now(),
        volume_id: [3; 16],
        snapshot_id: 1,
    };
    drop(FileStore::create(Arc::clone(&dev), &params, false, None).unwrap());
    let mut block = vec![0u8; 4096];
    dev.read_at(&mut block, 0).unwrap();
    let sb = Superblock::decode(&block).unwrap();
    let layout = Layout::new(CLUSTER);
    let mut w = LogWriter::new(sb.nonce, 0, vec![0; 4096], 0, 0);
    for i in 0..N {
        let cluster = (i % 4) * (N / 4) + i / 4;
        // Each group commit of 1000 records carries the previous one's end as its horizon.
        let horizon = u64::from(i / 1000 * 1000);
        let body = Body::Preserve {
            cluster,
            slot: i,
            first_block: 0,
            crcs: vec![0],
        };
        w.append(body, horizon);
        if (i + 1) % 1000 == 0 {
            for (index, bytes) in w.take_dirty() {
                dev.write_at(&bytes, layout.log_block_offset(index))
                    .unwrap();
            }
        }
    }
    // The data of every slot within the medium (a hole).
    let end = layout.bytes_for_slots(u64::from(N));
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(end).unwrap();
    StoreIdentity {
        volume_id: [3; 16],
        volume_len: VOLUME_LEN,
        snapshot_id: 1,
    }
}

#[test]
fn opening_a_million_records_peaks_under_32_bytes_each() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let expect = million_record_store(&path);
    let dev: Arc<dyn BlockDevice> =
        Arc::new(FileDevice::open(&path, &OpenOptions::default()).unwrap());
    let before = rss_kib();
    // Reset the peak to what is resident now.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let (store, rec) = FileStore::open(dev, &expect, false, None, None).unwrap();
    let peak = peak_rss_kib().saturating_sub(before) * 1024;
    // The last batch (1000 records past the horizon) has no data: they are dropped.
    assert_eq!(rec.map.clusters(), u64::from(N - 1000));
    assert!(store.used_bytes() > 0);
    let per = peak as f64 / f64::from(N);
    assert!(
        per < 32.0,
        "opening peaked at {per:.1} B per record ({peak} B)"
    );
    eprintln!("opening a store of {N} records: peak {per:.1} B per record");
}
