//! Corrupt, truncated and misplaced stores (format v1, `docs/FORMAT.md`).
//!
//! One real store is built (a 4 MiB volume, one persistent snapshot, 320 preserve records over
//! four log blocks, each its own flushed batch), then damaged in every way the issue lists. Every
//! outcome is either the typed error the format names, or (where the format reads the damage as
//! the torn tail of the last batch) a successful open with exactly the prefix of records the
//! format's replay rules keep. Never a panic, never wrong bytes for a block the snapshot maps.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::pattern;
use fss_core::cluster_map::{mask_set, mask_words};
use fss_core::device::{BlockDevice, MemDevice};
use fss_core::format::layout::Layout;
use fss_core::format::record::{record_positions, Body, Bounds, Record, Replay};
use fss_core::format::superblock::Superblock;
use fss_core::store::{FileStore, MapEntry, Recovered, Store, StoreIdentity};
use fss_core::{Error, ErrorKind, SnapshotOptions, Volume};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};

const MIB: u64 = 1 << 20;
const VOL_LEN: u64 = 4 * MIB;
const CLUSTER: u64 = 64 << 10;
const BLOCK: usize = 4096;
const BPC: u64 = CLUSTER / BLOCK as u64;
const CLUSTERS: u64 = VOL_LEN / CLUSTER;
const VOL_ID: [u8; 16] = *b"corrupt-store-v1";

fn persistent() -> SnapshotOptions {
    SnapshotOptions {
        persistent: true,
        cluster_size: Some(CLUSTER),
        ..Default::default()
    }
}

fn identity(volume_id: [u8; 16], volume_len: u64, snapshot_id: u64) -> StoreIdentity {
    StoreIdentity {
        volume_id,
        volume_len,
        snapshot_id,
    }
}

/// The identity of the fixture's store.
fn ours() -> StoreIdentity {
    identity(VOL_ID, VOL_LEN, 1)
}

/// A fixed-size memory device holding `bytes` (all-zero pages are left sparse).
fn device_with(bytes: &[u8]) -> Arc<MemDevice> {
    let d = MemDevice::new(bytes.len() as u64);
    for (i, chunk) in bytes.chunks(64 << 10).enumerate() {
        if chunk.iter().any(|&b| b != 0) {
            d.write_at(chunk, (i * (64 << 10)) as u64).unwrap();
        }
    }
    Arc::new(d)
}

fn all_bytes(d: &MemDevice) -> Vec<u8> {
    let mut v = vec![0u8; d.len() as usize];
    d.read_at(&mut v, 0).unwrap();
    v
}

/// Open, turning a panic into a test failure that names the case.
fn open_dev(
    dev: Arc<MemDevice>,
    expect: &StoreIdentity,
    case: &str,
) -> fss_core::Result<(FileStore, Recovered)> {
    let d: Arc<dyn BlockDevice> = dev;
    match catch_unwind(AssertUnwindSafe(|| {
        FileStore::open(d, expect, false, None, None)
    })) {
        Ok(r) => r,
        Err(_) => panic!("FileStore::open panicked: {case}"),
    }
}

/// A refusal: of one of the `kinds`, and its message says what failed (the store) and what to do.
fn assert_refusal(e: &Error, kinds: &[ErrorKind], case: &str) {
    assert!(
        kinds.contains(&e.kind()),
        "{case}: got {:?} ({e}), wanted one of {kinds:?}",
        e.kind()
    );
    let text = e.to_string();
    assert!(
        text.contains("store"),
        "{case}: says nothing of a store: {text}"
    );
    assert!(
        ["give ", "use ", "delete "]
            .iter()
            .any(|w| e.detail().contains(w)),
        "{case}: says nothing of what to do: {text}"
    );
}

/// The real store and what it must read back.
struct Fixture {
    /// The volume when the snapshot was taken: what the snapshot must read.
    before: Vec<u8>,
    /// The volume after the first overwrites (read only, shared by every attach).
    after: Arc<MemDevice>,
    after_bytes: Vec<u8>,
    /// The store's bytes.
    store: Vec<u8>,
    layout: Layout,
    /// Its records, in log order, and where each starts (log block, byte).
    records: Vec<Record>,
    positions: Vec<(u64, usize)>,
}

impl Fixture {
    /// Byte range of record `i` in the store.
    fn record_bytes(&self, i: usize) -> (u64, u64) {
        let (b, p) = self.positions[i];
        let start = self.layout.log_block_offset(b) + p as u64;
        (start, start + self.records[i].encoded_len() as u64)
    }

    /// Byte range of the data record `i` describes.
    fn data_bytes(&self, i: usize) -> (u64, u64) {
        match &self.records[i].body {
            Body::Preserve {
                slot,
                first_block,
                crcs,
                ..
            } => {
                let s = self.layout.slot_offset(*slot) + u64::from(*first_block) * BLOCK as u64;
                (s, s + (crcs.len() * BLOCK) as u64)
            }
            Body::Invalidate { .. } => unreachable!("the fixture invalidates nothing"),
        }
    }

    /// The map the first `n` records make, as the store recovers it.
    fn map_of_prefix(&self, n: usize) -> Vec<MapEntry> {
        let mut entries: Vec<MapEntry> = Vec::new();
        for r in &self.records[..n] {
            let Body::Preserve {
                cluster,
                slot,
                first_block,
                crcs,
            } = &r.body
            else {
                unreachable!()
            };
            let i = match entries.iter().position(|e| e.cluster == *cluster) {
                Some(i) => i,
                None => {
                    entries.push(MapEntry {
                        cluster: *cluster,
                        slot: *slot,
                        mask: vec![0; mask_words(BPC as u32)],
                    });
                    entries.len() - 1
                }
            };
            for b in 0..crcs.len() as u32 {
                mask_set(&mut entries[i].mask, u32::from(*first_block) + b);
            }
        }
        // As `Recovered::entries` lists them.
        entries.sort_by_key(|e| e.cluster);
        entries
    }

    /// Attach a store opened with the first `n` records to a volume over the written volume
    /// and read every block: a block the prefix maps reads its pre-image (or, when its data lies
    /// past `store_len`, fails with a typed error), any other block reads the volume. Returns
    /// how many unmapped blocks differ from the snapshot as taken (lost to the damage).
    fn check_reads(
        &self,
        store: FileStore,
        rec: Recovered,
        n: usize,
        store_len: u64,
        case: &str,
    ) -> usize {
        let dev: Arc<dyn BlockDevice> = self.after.clone();
        let vol = Volume::with_identity("vol", dev, VOL_ID);
        let snap = vol
            .attach_snapshot(&persistent(), Box::new(store), rec)
            .unwrap();
        // Which record maps each block.
        let mut mapped: Vec<Option<usize>> = vec![None; (VOL_LEN / BLOCK as u64) as usize];
        for (i, r) in self.records[..n].iter().enumerate() {
            if let Body::Preserve {
                cluster,
                first_block,
                crcs,
                ..
            } = &r.body
            {
                let first = u64::from(*cluster) * BPC + u64::from(*first_block);
                for b in first..first + crcs.len() as u64 {
                    mapped[b as usize] = Some(i);
                }
            }
        }
        let mut buf = vec![0u8; BLOCK];
        let mut lost = 0;
        for (b, m) in mapped.iter().enumerate() {
            let at = b * BLOCK;
            let r = catch_unwind(AssertUnwindSafe(|| snap.read(&mut buf, at as u64)))
                .unwrap_or_else(|_| panic!("{case}: snapshot read of block {b} panicked"));
            match m {
                Some(i) if self.data_bytes(*i).1 > store_len => {
                    let e = r.expect_err("a pre-image past the end of the store read as data");
                    assert!(
                        matches!(e.kind(), ErrorKind::OutOfRange | ErrorKind::Io),
                        "{case}: block {b}: {e}"
                    );
                }
                Some(_) => {
                    r.unwrap();
                    assert!(
                        buf == self.before[at..at + BLOCK],
                        "{case}: block {b} (mapped) reads wrong data"
                    );
                }
                None => {
                    r.unwrap();
                    assert!(
                        buf == self.after_bytes[at..at + BLOCK],
                        "{case}: block {b} (unmapped) does not read the volume"
                    );
                    if buf != self.before[at..at + BLOCK] {
                        lost += 1;
                    }
                }
            }
        }
        lost
    }
}

/// Where in each cluster the first overwrites go, round after round: (first block, blocks).
const ROUNDS: [(u64, u64); 5] = [(0, 1), (3, 2), (6, 1), (9, 2), (13, 1)];

fn build() -> Fixture {
    let vol_dev = Arc::new(MemDevice::new(VOL_LEN));
    let d: Arc<dyn BlockDevice> = vol_dev.clone();
    let vol = Volume::with_identity("vol", d, VOL_ID);
    let before = pattern(1, 0, VOL_LEN as usize);
    vol.write(&before, 0).unwrap();
    let store_dev = Arc::new(MemDevice::growable(u64::MAX));
    let sd = Arc::clone(&store_dev);
    vol.create_snapshot("snap", &persistent(), move |p| {
        Ok(Box::new(FileStore::create(sd, p, false, None)?) as Box<dyn Store>)
    })
    .unwrap();
    // Small first overwrites, one cluster each (so one record per flushed batch), visiting the
    // clusters in a scrambled order round after round: slots are not clusters, and most slots
    // get several records spread through the log.
    for (first, n) in ROUNDS {
        for k in 0..CLUSTERS {
            let cluster = (k * 37 + 11) % CLUSTERS;
            let at = (cluster * BPC + first) * BLOCK as u64;
            let len = (n * BLOCK as u64) as usize;
            vol.write(&pattern(2 + first, at, len), at).unwrap();
            vol.settle();
        }
    }
    // A second overwrite preserves nothing more.
    vol.write(&pattern(99, 0, BLOCK), 0).unwrap();
    vol.flush().unwrap();
    drop(vol);

    let store = all_bytes(&store_dev);
    let sb = Superblock::decode(&store).unwrap();
    let layout = sb.layout();
    let mut replay = Replay::new(
        sb.nonce,
        Bounds {
            clusters: CLUSTERS,
            blocks_per_cluster: BPC as u32,
        },
    );
    let mut j = 0;
    while !replay.ended() {
        let off = layout.log_block_offset(j) as usize;
        replay.feed(&store[off..off + BLOCK]).unwrap();
        j += 1;
    }
    let records = replay.records;
    assert_eq!(records.len(), ROUNDS.len() * CLUSTERS as usize);
    let positions = record_positions(&records);
    assert!(
        positions.last().unwrap().0 >= 3,
        "records span several log blocks"
    );
    let after_bytes = all_bytes(&vol_dev);
    Fixture {
        before,
        after: vol_dev,
        after_bytes,
        store,
        layout,
        records,
        positions,
    }
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(build)
}

/// A small deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn the_intact_store_opens_whole_and_reads_the_snapshot() {
    let f = fixture();
    let (store, rec) = open_dev(device_with(&f.store), &ours(), "intact").unwrap();
    let n = f.records.len();
    assert_eq!(rec.entries(), f.map_of_prefix(n));
    assert_eq!(
        f.check_reads(store, rec, n, f.store.len() as u64, "intact"),
        0
    );
}

#[test]
fn random_bytes_are_not_a_store() {
    let f = fixture();
    let mut rng = Rng(0x5EED);
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("empty".into(), Vec::new()),
        ("10 bytes".into(), rng.bytes(10)),
        ("10 zero bytes".into(), vec![0; 10]),
        ("4095 bytes".into(), rng.bytes(4095)),
        ("zero block".into(), vec![0; BLOCK]),
        ("zeros, store-sized".into(), vec![0; f.store.len()]),
    ];
    for len in [
        4096,
        4097,
        8192,
        65536,
        300_000,
        MIB as usize,
        f.store.len(),
    ] {
        cases.push((format!("{len} random bytes"), rng.bytes(len)));
    }
    for (case, bytes) in &cases {
        let e = open_dev(device_with(bytes), &ours(), case)
            .map(|_| ())
            .unwrap_err();
        assert_refusal(
            &e,
            &[ErrorKind::ForeignStore, ErrorKind::CorruptStore],
            case,
        );
        assert_eq!(e.kind(), ErrorKind::ForeignStore, "{case}: no magic");
    }
    // Random bytes behind the magic: an unknown version, or (version 1) a bad checksum.
    let mut b = rng.bytes(65536);
    b[..8].copy_from_slice(b"FSSSTOR\0");
    b[8..12].copy_from_slice(&7u32.to_le_bytes());
    let e = open_dev(device_with(&b), &ours(), "magic, version 7")
        .map(|_| ())
        .unwrap_err();
    assert_refusal(&e, &[ErrorKind::UnsupportedFormat], "magic, version 7");
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    let e = open_dev(device_with(&b), &ours(), "magic, version 1, random")
        .map(|_| ())
        .unwrap_err();
    assert_refusal(&e, &[ErrorKind::CorruptStore], "magic, version 1, random");
    // A valid superblock over a random log: no record checks out, so the log is empty (a torn
    // first batch); nothing may be mapped.
    for seed in 0..8 {
        let mut b = rng.bytes(f.store.len());
        b[..BLOCK].copy_from_slice(&f.store[..BLOCK]);
        let case = format!("superblock over random log {seed}");
        match open_dev(device_with(&b), &ours(), &case) {
            Ok((_, rec)) => assert!(rec.entries().is_empty(), "{case}"),
            Err(e) => assert_refusal(&e, &[ErrorKind::CorruptStore], &case),
        }
    }
}

/// What the format promises for a store cut to `len` bytes.
enum Expect {
    Refused(ErrorKind),
    /// Opens with the first `n` records. `may_refuse`: a trusted record's data lies past the
    /// end, which proves a truncation; refusing it as `CorruptStore` is also right.
    Prefix {
        n: usize,
        may_refuse: bool,
    },
}

fn expect_after_cut(f: &Fixture, len: u64) -> Expect {
    if len < BLOCK as u64 {
        return Expect::Refused(ErrorKind::ForeignStore);
    }
    // The records the medium holds whole (a log block it holds only in part reads as what is
    // there, then zeroes, as past the end of a sparse file).
    let mut n = (0..f.records.len())
        .take_while(|&i| f.record_bytes(i).1 <= len)
        .count();
    // Records above the largest durable horizon are kept only while their data checks out.
    let horizon = f.records[..n].iter().map(|r| r.horizon).max().unwrap_or(0);
    if let Some(i) = (0..n).find(|&i| f.records[i].seq > horizon && f.data_bytes(i).1 > len) {
        n = i;
    }
    let may_refuse = (0..n).any(|i| f.records[i].seq <= horizon && f.data_bytes(i).1 > len);
    Expect::Prefix { n, may_refuse }
}

#[test]
fn truncation_at_every_record_and_log_block_boundary() {
    let f = fixture();
    let full = f.store.len() as u64;
    let mut cuts: Vec<u64> = vec![0, 10, 4095, 4096, 4097, full - 1, full];
    for i in 0..f.records.len() {
        let (s, e) = f.record_bytes(i);
        let (ds, de) = f.data_bytes(i);
        cuts.extend([s, e, ds, de]);
    }
    let log_blocks = f.layout.log_blocks_per_group();
    cuts.extend((0..=log_blocks).map(|j| f.layout.log_block_offset(0) + j * BLOCK as u64));
    cuts.extend((0..CLUSTERS as u32).map(|s| f.layout.slot_offset(s)));
    cuts.sort_unstable();
    cuts.dedup();
    cuts.retain(|&c| c <= full);

    let (mut opened, mut refused, mut lost_records, mut lost_blocks) = (0, 0, 0usize, 0usize);
    let mut past_end = 0;
    for &len in &cuts {
        let case = format!("store cut to {len} bytes");
        let result = open_dev(device_with(&f.store[..len as usize]), &ours(), &case);
        match (expect_after_cut(f, len), result) {
            (Expect::Refused(kind), Err(e)) => {
                assert_refusal(&e, &[kind], &case);
                refused += 1;
            }
            (
                Expect::Prefix {
                    may_refuse: true, ..
                },
                Err(e),
            ) => {
                assert_refusal(&e, &[ErrorKind::CorruptStore], &case);
                refused += 1;
            }
            (Expect::Prefix { n, may_refuse }, Ok((store, rec))) => {
                past_end += usize::from(may_refuse);
                assert_eq!(
                    rec.entries(),
                    f.map_of_prefix(n),
                    "{case}: not the expected prefix"
                );
                lost_records += f.records.len() - n;
                lost_blocks += f.check_reads(store, rec, n, len, &case);
                opened += 1;
            }
            (Expect::Refused(kind), Ok(_)) => panic!("{case}: opened, wanted {kind:?}"),
            (Expect::Prefix { n, .. }, Err(e)) => {
                panic!("{case}: refused ({e}), wanted the first {n} records")
            }
        }
    }
    eprintln!(
        "truncation: {} cuts, {opened} opened ({past_end} with trusted records past the end, \
         {lost_records} records dropped in all, {lost_blocks} snapshot blocks then read the \
         volume's newer data), {refused} refused",
        cuts.len()
    );
}

#[test]
fn every_flipped_superblock_bit_is_refused_with_its_kind() {
    let f = fixture();
    let dev = device_with(&f.store);
    for bit in 0..BLOCK * 8 {
        let at = (bit / 8) as u64;
        let mut b = [0u8; 1];
        dev.read_at(&mut b, at).unwrap();
        dev.write_at(&[b[0] ^ (1 << (bit % 8))], at).unwrap();
        let case = format!("superblock bit {bit} flipped");
        let e = open_dev(dev.clone(), &ours(), &case)
            .map(|_| ())
            .unwrap_err();
        let kind = match bit / 8 {
            0..=7 => ErrorKind::ForeignStore,
            8..=11 => ErrorKind::UnsupportedFormat,
            _ => ErrorKind::CorruptStore,
        };
        assert_refusal(&e, &[kind], &case);
        dev.write_at(&b, at).unwrap();
    }
    open_dev(dev, &ours(), "restored").unwrap();
}

#[test]
fn a_flipped_bit_in_a_durable_log_is_refused_unless_it_is_in_the_last_record() {
    let f = fixture();
    let dev = device_with(&f.store);
    let last = f.records.len() - 1;
    let log_start = f.layout.log_block_offset(0);
    let log_end = f.layout.log_block_offset(f.positions[last].0) + BLOCK as u64;
    // Every bit of the records at the ends of the log and of each log block, and one bit of
    // every byte of the used log.
    let mut bits: Vec<u64> = Vec::new();
    let mut whole = vec![0, 1, last - 1, last];
    for w in f.positions.windows(2).enumerate() {
        if w.1[0].0 != w.1[1].0 {
            whole.extend([w.0, w.0 + 1]);
        }
    }
    for i in whole {
        let (s, e) = f.record_bytes(i);
        bits.extend(s * 8..e * 8);
    }
    bits.extend((log_start..log_end).map(|byte| byte * 8 + (byte * 5 + 3) % 8));
    bits.sort_unstable();
    bits.dedup();

    let (mut corrupt, mut silent) = (0, 0);
    for &bit in &bits {
        let at = bit / 8;
        let mut b = [0u8; 1];
        dev.read_at(&mut b, at).unwrap();
        dev.write_at(&[b[0] ^ (1 << (bit % 8))], at).unwrap();
        let case = format!("log bit {bit} (byte {at}) flipped");
        let in_record = (0..=last).find(|&i| {
            let (s, e) = f.record_bytes(i);
            (s..e).contains(&at)
        });
        let result = open_dev(dev.clone(), &ours(), &case);
        match (in_record, result) {
            // Damage in the middle of durable records: later records prove it.
            (Some(i), Err(e)) if i < last => {
                assert_refusal(&e, &[ErrorKind::CorruptStore], &case);
                corrupt += 1;
            }
            (Some(i), Ok(_)) if i < last => {
                panic!(
                    "{case}: record {i} of {} damaged, yet the store opened",
                    last + 1
                )
            }
            // The last record: indistinguishable from the torn tail of the last batch.
            (Some(_), Ok((_, rec))) => {
                assert_eq!(rec.entries(), f.map_of_prefix(last), "{case}");
                silent += 1;
            }
            (Some(_), Err(e)) => panic!("{case}: the last record damaged: refused ({e})"),
            // Not in a record: padding at the end of a log block, or bytes after the log.
            (None, Ok((_, rec))) => assert_eq!(rec.entries(), f.map_of_prefix(last + 1), "{case}"),
            (None, Err(e)) => {
                assert!(
                    at < f.record_bytes(last).1,
                    "{case}: after the log, yet {e}"
                );
                assert_refusal(&e, &[ErrorKind::CorruptStore], &case);
            }
        }
        // Opening clears a torn tail on the medium: put the whole log back, not just the byte.
        dev.write_at(&f.store[log_start as usize..log_end as usize], log_start)
            .unwrap();
    }
    eprintln!(
        "log flips: {} bits, {corrupt} refused as corrupt, {silent} in the last record opened \
         without it",
        bits.len()
    );
    // What the silent case means for the snapshot: its one block reads the volume's newer data.
    let (s, _) = f.record_bytes(last);
    dev.write_at(&[f.store[s as usize + 12] ^ 4], s + 12)
        .unwrap();
    let (store, rec) = open_dev(dev.clone(), &ours(), "last record damaged").unwrap();
    let lost = f.check_reads(
        store,
        rec,
        last,
        f.store.len() as u64,
        "last record damaged",
    );
    assert!(lost > 0);
}

#[test]
fn damaged_pre_image_data_is_found_by_verify() {
    let f = fixture();
    let dev = device_with(&f.store);
    // A record in the trusted prefix: opened as it is, read as it is (the format does not check
    // data on read), and reported by verify at its volume offset.
    let i = 100;
    let (ds, _) = f.data_bytes(i);
    let at = ds + 1234;
    dev.write_at(&[f.store[at as usize] ^ 0x20], at).unwrap();
    let (store, rec) = open_dev(dev.clone(), &ours(), "trusted data damaged").unwrap();
    assert_eq!(rec.entries(), f.map_of_prefix(f.records.len()));
    let report = store.verify().unwrap();
    let Body::Preserve {
        cluster,
        first_block,
        ..
    } = &f.records[i].body
    else {
        unreachable!()
    };
    let block = u64::from(*cluster) * BPC + u64::from(*first_block);
    assert_eq!(report.damaged, vec![block * BLOCK as u64]);
    dev.write_at(&f.store[at as usize..=at as usize], at)
        .unwrap();
    // The last record's data: the record is above every durable horizon, so the open drops it
    // as the torn tail of the last batch.
    let last = f.records.len() - 1;
    let (ds, _) = f.data_bytes(last);
    dev.write_at(&[f.store[ds as usize] ^ 1], ds).unwrap();
    let (store, rec) = open_dev(dev, &ours(), "last data damaged").unwrap();
    assert_eq!(rec.entries(), f.map_of_prefix(last));
    // verify() replays the log without that data check, so today it still reports the dropped
    // record's block, which the snapshot no longer maps (reported; either answer is accepted).
    let damaged = store.verify().unwrap().damaged;
    let Body::Preserve {
        cluster,
        first_block,
        ..
    } = &f.records[last].body
    else {
        unreachable!()
    };
    let block = u64::from(*cluster) * BPC + u64::from(*first_block);
    assert!(
        damaged.is_empty() || damaged == vec![block * BLOCK as u64],
        "{damaged:?}"
    );
}

/// A store made for `volume_id`/`volume_len`, with `snapshots` persistent snapshots; the
/// stores' bytes, oldest first.
fn stores_of(volume_id: [u8; 16], volume_len: u64, snapshots: usize) -> Vec<Vec<u8>> {
    let d: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(volume_len));
    let vol = Volume::with_identity("other", d, volume_id);
    let mut devs = Vec::new();
    for s in 0..snapshots {
        let dev = Arc::new(MemDevice::growable(u64::MAX));
        let sd = Arc::clone(&dev);
        vol.create_snapshot(&format!("s{s}"), &persistent(), move |p| {
            Ok(Box::new(FileStore::create(sd, p, false, None)?) as Box<dyn Store>)
        })
        .unwrap();
        vol.write(&[7; 8192], (s as u64) * CLUSTER).unwrap();
        devs.push(dev);
    }
    devs.iter().map(|d| all_bytes(d)).collect()
}

#[test]
fn a_store_of_another_volume_or_chain_position_is_foreign() {
    let f = fixture();
    let refuse = |bytes: &[u8], expect: StoreIdentity, case: &str| -> String {
        let e = open_dev(device_with(bytes), &expect, case)
            .map(|_| ())
            .unwrap_err();
        assert_refusal(&e, &[ErrorKind::ForeignStore], case);
        e.to_string()
    };
    // Another volume's store, same length.
    let other = stores_of(*b"another-volume!!", VOL_LEN, 1);
    let m = refuse(&other[0], ours(), "another volume's store");
    assert!(m.contains("another volume"), "{m}");
    // Our store, opened for another volume.
    let m = refuse(
        &f.store,
        identity([0; 16], VOL_LEN, 1),
        "opened for another volume",
    );
    assert!(m.contains("another volume"), "{m}");
    // The same identity, but the volume changed size (or the store is of a volume of that
    // identity and another length).
    let m = refuse(&f.store, identity(VOL_ID, VOL_LEN + 4096, 1), "volume grew");
    assert!(
        m.contains(&VOL_LEN.to_string()) && m.contains(&(VOL_LEN + 4096).to_string()),
        "{m}"
    );
    let shorter = stores_of(VOL_ID, 2 * MIB, 1);
    let m = refuse(&shorter[0], ours(), "store of a 2 MiB volume");
    assert!(m.contains(&(2 * MIB).to_string()), "{m}");
    // Another position in the chain.
    let m = refuse(
        &f.store,
        identity(VOL_ID, VOL_LEN, 2),
        "snapshot 1 opened as 2",
    );
    assert!(m.contains("snapshot #1") && m.contains("#2"), "{m}");
    let chain = stores_of(VOL_ID, VOL_LEN, 3);
    for (i, bytes) in chain.iter().enumerate() {
        let id = i as u64 + 1;
        for want in 1..=3u64 {
            let case = format!("snapshot {id} opened as {want}");
            if want == id {
                open_dev(device_with(bytes), &identity(VOL_ID, VOL_LEN, want), &case).unwrap();
            } else {
                let m = refuse(bytes, identity(VOL_ID, VOL_LEN, want), &case);
                assert!(m.contains(&format!("snapshot #{id}")), "{m}");
            }
        }
    }
}

/// A crash before a batch's flush, then a restart, then a write, then a restart: the store must
/// open. Reported bug: the open drops the torn batch (here: one record's data did not survive)
/// but leaves its other records in the next log block; the next append lands right before them,
/// with sequence numbers that line up, so the following replay takes a stale record back.
/// Here it names the cluster the new record names, with another slot: `CorruptStore`.
#[test]
fn a_torn_batch_is_not_revived_by_the_next_append() {
    let vol_dev = Arc::new(MemDevice::new(VOL_LEN));
    let d: Arc<dyn BlockDevice> = vol_dev.clone();
    let vol = Volume::with_identity("vol", d, VOL_ID);
    let before = pattern(1, 0, VOL_LEN as usize);
    vol.write(&before, 0).unwrap();
    let store_dev = Arc::new(MemDevice::growable(u64::MAX));
    let sd = Arc::clone(&store_dev);
    vol.create_snapshot("snap", &persistent(), move |p| {
        Ok(Box::new(FileStore::create(sd, p, false, None)?) as Box<dyn Store>)
    })
    .unwrap();
    // 92 one-block records (44 bytes each): 48 bytes of log block 0 are left.
    for i in 0..92u64 {
        vol.write(&[3; BLOCK], 2 * i * BLOCK as u64).unwrap();
        // One store batch per write, as the layout above counts.
        vol.settle();
    }
    let volume_then = all_bytes(&vol_dev);
    // One write across clusters 20 and 21: one batch, record 93 (cluster 20) ends log block 0,
    // record 94 (cluster 21, block 0) starts log block 1.
    let at = (20 * BPC + 15) * BLOCK as u64;
    vol.write(&[4; 2 * BLOCK], at).unwrap();
    drop(vol);
    let mut store = all_bytes(&store_dev);
    let sb = Superblock::decode(&store).unwrap();
    let layout = sb.layout();
    let mut replay = Replay::new(
        sb.nonce,
        Bounds {
            clusters: CLUSTERS,
            blocks_per_cluster: BPC as u32,
        },
    );
    for j in 0..3 {
        let off = layout.log_block_offset(j) as usize;
        replay.feed(&store[off..off + BLOCK]).unwrap();
    }
    let pos = record_positions(&replay.records);
    assert_eq!(replay.records.len(), 94);
    assert_eq!(
        (pos[92].0, pos[93]),
        (0, (1, 0)),
        "93 ends block 0, 94 starts block 1"
    );
    assert_eq!(
        (replay.records[92].horizon, replay.records[93].horizon),
        (92, 92)
    );
    // The crash: both log blocks reached the medium, record 93's data did not, and the volume
    // was never written (it is written only after the flush).
    let Body::Preserve { slot, .. } = replay.records[92].body else {
        unreachable!()
    };
    let d93 = (layout.slot_offset(slot) + 15 * BLOCK as u64) as usize;
    store[d93..d93 + BLOCK].fill(0);
    let vol_dev = device_with(&volume_then);
    let store_dev = device_with(&store);
    let session = |case: &str| {
        let d: Arc<dyn BlockDevice> = vol_dev.clone();
        let vol = Volume::with_identity("vol", d, VOL_ID);
        let (st, rec) =
            open_dev(store_dev.clone(), &ours(), case).unwrap_or_else(|e| panic!("{case}: {e}"));
        let snap = vol
            .attach_snapshot(&persistent(), Box::new(st), rec)
            .unwrap();
        let mut buf = vec![0u8; VOL_LEN as usize];
        snap.read(&mut buf, 0).unwrap();
        assert!(buf == before, "{case}: the snapshot reads wrong data");
        vol
    };
    // Restart: the torn batch (93, 94) is dropped. The first write is to cluster 21, block 0.
    let vol = session("after the crash");
    vol.write(&[5; BLOCK], 21 * CLUSTER).unwrap();
    drop(vol);
    // Restart again: a healthy store, which must open.
    session("after the next write");
}
