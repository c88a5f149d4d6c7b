//! Snapshot reads gather the store reads of neighbouring clusters: counted on the store's
//! device, and checked byte for byte against a model when slots are scattered, partly filled,
//! spread over two snapshots and across the store's slot groups.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::{pattern, StoreFactory};
use fss_core::device::{BlockDevice, MemDevice};
use fss_core::store::{FileStore, Store};
use fss_core::{SnapshotOptions, Volume};
use proptest::prelude::*;
use std::sync::Arc;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// A volume of `len` bytes filled with pattern 1.
fn volume(len: u64) -> Volume {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(len));
    let vol = Volume::new("vol", dev);
    vol.write(&pattern(1, 0, len as usize), 0).unwrap();
    vol
}

fn options(cluster: u64, persistent: bool) -> SnapshotOptions {
    SnapshotOptions {
        cluster_size: Some(cluster),
        persistent,
        ..SnapshotOptions::default()
    }
}

#[test]
fn half_preserved_clusters_read_with_one_store_read_per_request() {
    let vol = volume(16 * MIB);
    let f = StoreFactory::default();
    vol.create_snapshot("s", &options(64 * KIB, false), |p| f.make(p))
        .unwrap();
    // The first 32 KiB of every cluster of the first 8 MiB, in volume order.
    for c in 0..128u64 {
        vol.write(&pattern(2, c * 64 * KIB, (32 * KIB) as usize), c * 64 * KIB)
            .unwrap();
    }
    let dev = f.device("s");
    let before = dev.counters().reads;
    let s = vol.snapshot("s").unwrap();
    let mut buf = vec![0u8; MIB as usize];
    s.read(&mut buf, MIB).unwrap();
    assert!(buf == pattern(1, MIB, MIB as usize), "the snapshot's bytes");
    let reads = dev.counters().reads - before;
    // 16 clusters of 32 KiB each: one merged read (was 16).
    assert_eq!(reads, 1, "store reads for one 1 MiB request");
}

/// A write of `len` bytes at `off` with fill `seed`.
#[derive(Debug, Clone)]
struct Write {
    off: u64,
    len: u64,
    seed: u64,
}

fn writes(max: u64) -> impl Strategy<Value = Vec<Write>> {
    let w = (0..max / 4096, 1..256u64, any::<u64>()).prop_map(move |(b, n, seed)| Write {
        off: b * 4096,
        len: (n * 4096).min(max - b * 4096),
        seed,
    });
    prop::collection::vec(w, 1..80)
}

fn apply(vol: &Volume, model: &mut [u8], ws: &[Write]) {
    for w in ws {
        let data = pattern(w.seed, w.off, w.len as usize);
        vol.write(&data, w.off).unwrap();
        model[w.off as usize..(w.off + w.len) as usize].copy_from_slice(&data);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Two persistent snapshots on file stores, written in random order: every read of a
    /// random range equals the model. With 512 KiB clusters a store's slot group holds 32
    /// slots (16 MiB), so merged reads cross groups; with 4 KiB clusters they have gaps.
    #[test]
    fn scattered_slots_read_back_exactly(
        big in any::<bool>(),
        first in writes(32 * MIB),
        second in writes(32 * MIB),
        reads in prop::collection::vec((0..32 * MIB, 1..12 * MIB), 1..12),
    ) {
        let (len, cluster) = if big { (32 * MIB, 512 * KIB) } else { (4 * MIB, 4 * KIB) };
        let clip = |ws: Vec<Write>| -> Vec<Write> {
            ws.into_iter()
                .map(|w| Write { off: w.off % len, len: w.len.min(len - w.off % len), ..w })
                .collect()
        };
        let (first, second) = (clip(first), clip(second));
        let vol = volume(len);
        let mut model = pattern(1, 0, len as usize);
        let make = |p: &fss_core::store::StoreParams| -> fss_core::Result<Box<dyn Store>> {
            let dev = Arc::new(MemDevice::growable(u64::MAX));
            Ok(Box::new(FileStore::create(dev, p, false, None)?))
        };
        vol.create_snapshot("a", &options(cluster, true), make).unwrap();
        let at_a = model.clone();
        apply(&vol, &mut model, &first);
        vol.create_snapshot("b", &options(cluster, true), make).unwrap();
        let at_b = model.clone();
        apply(&vol, &mut model, &second);
        for (off, n) in reads {
            let off = off % len;
            let n = n.min(len - off);
            for (name, want) in [("a", &at_a), ("b", &at_b)] {
                let mut buf = vec![0u8; n as usize];
                vol.snapshot(name).unwrap().read(&mut buf, off).unwrap();
                prop_assert!(
                    buf[..] == want[off as usize..(off + n) as usize],
                    "snapshot {} at {} for {}", name, off, n
                );
            }
        }
    }
}
