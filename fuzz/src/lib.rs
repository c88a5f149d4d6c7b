//! The fuzz targets' bodies, and the seeds they start from (`examples/make_seeds.rs`).
//!
//! Both targets also try a *repaired* copy of their input, with every checksum recomputed (and,
//! for a store, the superblock's identity and geometry set to the expected ones): random
//! mutations almost never keep a CRC-32C right, so without this the fuzzer would only ever see
//! the first invalid record end the log.
//!
//! Beyond "never panic", an opened store is checked for consistency: its snapshot reads the same
//! bytes before and after first overwrites (which append to its log), and after it is reopened.
//! That reopen is where a bug once showed (a torn batch's stale records in the next log block
//! came back after the next append, see `tests/corrupt_store.rs`); it is fixed (open clears
//! them), and those checks are on unless `FSS_FUZZ_STRICT=0`.

pub mod control;
pub mod nbd;

use fss_core::device::{BlockDevice, MemDevice};
use fss_core::format::layout::Layout;
use fss_core::format::record::{decode, Body, Bounds, Decoded, LogWriter, Replay, HEADER};
use fss_core::format::superblock::{MAGIC, VERSION};
use fss_core::format::BLOCK;
use fss_core::store::{FileStore, Store, StoreIdentity, StoreParams};
use fss_core::{ErrorKind, Snapshot, SnapshotOptions, Volume};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

/// The identity every fuzzed store is opened with (and the seeds are made with).
pub const VOLUME_ID: [u8; 16] = *b"fss-fuzz-volume1";
/// The volume's length: 64 clusters of 4 KiB.
pub const VOLUME_LEN: u64 = 256 << 10;
/// The seeds' cluster size.
pub const CLUSTER: u64 = 4096;
/// The snapshot's position in the chain.
pub const SNAPSHOT_ID: u64 = 1;
/// Larger inputs are not tried (each run stays fast).
const MAX_INPUT: usize = 2 << 20;
/// How the snapshot is read and compared.
const CHUNK: usize = 16 << 10;

/// The identity a store must have.
#[must_use]
pub fn identity() -> StoreIdentity {
    StoreIdentity {
        volume_id: VOLUME_ID,
        volume_len: VOLUME_LEN,
        snapshot_id: SNAPSHOT_ID,
    }
}

fn strict() -> bool {
    static S: OnceLock<bool> = OnceLock::new();
    *S.get_or_init(|| std::env::var_os("FSS_FUZZ_STRICT").is_none_or(|v| v != "0"))
}

/// The volume's contents: deterministic, never a zero block.
#[must_use]
pub fn volume_bytes() -> Vec<u8> {
    (0..VOLUME_LEN)
        .map(|i| ((i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as u8) | 1)
        .collect()
}

fn volume_device() -> Arc<MemDevice> {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    let d = MemDevice::new(VOLUME_LEN);
    d.write_at(BYTES.get_or_init(volume_bytes), 0)
        .expect("write the volume");
    Arc::new(d)
}

/// A store device holding `bytes`, growable (as a store file) so that appends fit.
fn store_device(bytes: &[u8]) -> Arc<MemDevice> {
    let d = MemDevice::growable(4 << 30);
    if !bytes.is_empty() {
        d.write_at(bytes, 0).expect("write the input");
    }
    Arc::new(d)
}

fn persistent() -> SnapshotOptions {
    SnapshotOptions {
        persistent: true,
        ..Default::default()
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Recompute the checksum of every record in one log block, in the order replay reads them.
pub fn fix_log_block(nonce: &[u8; 16], block: &mut [u8]) {
    let mut pos = 0;
    while pos + HEADER <= block.len() {
        if block[pos..pos + HEADER].iter().all(|&x| x == 0) {
            return;
        }
        let len = usize::from(u16_at(block, pos + 2));
        if HEADER + len > block.len() - pos {
            return;
        }
        let c = crc32c::crc32c(nonce);
        let c = crc32c::crc32c_append(c, &block[pos..pos + 36]);
        let c = crc32c::crc32c_append(c, &block[pos + HEADER..pos + HEADER + len]);
        block[pos + 36..pos + 40].copy_from_slice(&c.to_le_bytes());
        pos += (HEADER + len).div_ceil(4) * 4;
    }
}

/// The input with the expected identity, a consistent geometry, and every checksum right.
#[must_use]
pub fn repair(data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < BLOCK {
        return None;
    }
    let mut b = data.to_vec();
    b[0..8].copy_from_slice(&MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[32..48].copy_from_slice(&VOLUME_ID);
    b[48..56].copy_from_slice(&SNAPSHOT_ID.to_le_bytes());
    b[56..64].copy_from_slice(&VOLUME_LEN.to_le_bytes());
    let cluster = u32_at(&b, 64);
    let layout = (cluster.is_power_of_two() && (4096..=16 << 20).contains(&cluster))
        .then(|| Layout::new(u64::from(cluster)));
    if let Some(l) = layout {
        b[68..72].copy_from_slice(&(l.slots_per_group() as u32).to_le_bytes());
        b[72..76].copy_from_slice(&(l.log_blocks_per_group() as u32).to_le_bytes());
    }
    let crc = crc32c::crc32c(&b[..BLOCK - 4]);
    b[BLOCK - 4..BLOCK].copy_from_slice(&crc.to_le_bytes());
    if let Some(l) = layout {
        let mut nonce = [0u8; 16];
        nonce.copy_from_slice(&b[16..32]);
        for j in 0..l.log_blocks_per_group() {
            let off = l.log_block_offset(j) as usize;
            if off + BLOCK > b.len() {
                break;
            }
            fix_log_block(&nonce, &mut b[off..off + BLOCK]);
        }
    }
    Some(b)
}

/// Fuzz target `store_open`: the input as a store's bytes, then its repaired copy.
pub fn store_open(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    check_store(data);
    if let Some(fixed) = repair(data) {
        if fixed != data {
            check_store(&fixed);
        }
    }
}

/// The snapshot, chunk by chunk (a chunk that fails to read is `None`).
fn read_all(snap: &Snapshot) -> Vec<Option<Vec<u8>>> {
    (0..VOLUME_LEN as usize / CHUNK)
        .map(|i| {
            let mut buf = vec![0u8; CHUNK];
            snap.read(&mut buf, (i * CHUNK) as u64).ok().map(|()| buf)
        })
        .collect()
}

fn assert_same(a: &[Option<Vec<u8>>], b: &[Option<Vec<u8>>], when: &str) {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if let (Some(x), Some(y)) = (x, y) {
            assert!(x == y, "snapshot chunk {i} changed {when}");
        }
    }
}

fn check_store(bytes: &[u8]) {
    let dev = store_device(bytes);
    let (store, rec) = match FileStore::open(dev.clone(), &identity(), false, None, None) {
        Ok(x) => x,
        Err(e) => {
            assert!(
                matches!(
                    e.kind(),
                    ErrorKind::ForeignStore
                        | ErrorKind::UnsupportedFormat
                        | ErrorKind::CorruptStore
                ),
                "open refused with {:?}: {e}",
                e.kind()
            );
            assert!(e.to_string().contains("store"), "{e}");
            return;
        }
    };
    let _ = store.verify();
    let vol_dev = volume_device();
    let d: Arc<dyn BlockDevice> = vol_dev.clone();
    let vol = Volume::with_identity("fuzz", d, VOLUME_ID);
    let snap = match vol.attach_snapshot(&persistent(), Box::new(store), rec) {
        Ok(s) => s,
        Err(e) => {
            assert!(
                matches!(
                    e.kind(),
                    ErrorKind::CorruptStore | ErrorKind::InvalidArgument
                ),
                "attach refused with {:?}: {e}",
                e.kind()
            );
            return;
        }
    };
    let first = read_all(&snap);
    if !bytes.len().is_multiple_of(BLOCK) {
        // A store that ends inside a block: its partial log block reads as never written until
        // appends grow the store and expose its bytes (reported), so the checks below do not
        // hold for it.
        return;
    }
    // First overwrites append to the replayed log.
    for (off, len) in [
        (0, 4096),
        (VOLUME_LEN / 2 - 4096, 8192),
        (VOLUME_LEN - 4096, 4096),
    ] {
        let _ = vol.write(&vec![0xA5; len], off);
    }
    let _ = snap.verify();
    assert_same(&first, &read_all(&snap), "after first overwrites");
    drop(snap);
    drop(vol);
    // Reopen what was written.
    let (store, rec) = match FileStore::open(dev, &identity(), false, None, None) {
        Ok(x) => x,
        Err(e) if !strict() => {
            assert!(e.kind() == ErrorKind::CorruptStore, "reopen: {e}");
            return;
        }
        Err(e) => panic!("a store that opened and took appends no longer opens: {e}"),
    };
    let d: Arc<dyn BlockDevice> = vol_dev;
    let vol = Volume::with_identity("fuzz", d, VOLUME_ID);
    let snap = match vol.attach_snapshot(&persistent(), Box::new(store), rec) {
        Ok(s) => s,
        Err(e) if !strict() => {
            assert!(
                e.kind() == ErrorKind::CorruptStore,
                "attach after reopen: {e}"
            );
            return;
        }
        Err(e) => panic!("a store that attached no longer attaches after appends: {e}"),
    };
    let third = read_all(&snap);
    if strict() {
        assert_same(&first, &third, "after reopen");
    }
}

/// Fuzz target `log_replay`. Input: a flags byte (bit 0: recompute checksums), the bounds
/// (clusters: u16, log2 of blocks per cluster: u8), the nonce (16 bytes), then log blocks.
pub fn log_replay(data: &[u8]) {
    if data.len() < 20 || data.len() > MAX_INPUT {
        return;
    }
    let flags = data[0];
    let bounds = Bounds {
        clusters: u64::from(u16_at(data, 1)),
        blocks_per_cluster: 1 << (data[3] % 13),
    };
    let mut nonce = [0u8; 16];
    nonce.copy_from_slice(&data[4..20]);
    let mut log = data[20..].to_vec();
    log.resize(log.len().div_ceil(BLOCK).max(1) * BLOCK, 0);
    if flags & 1 != 0 {
        for b in log.chunks_mut(BLOCK) {
            fix_log_block(&nonce, b);
        }
    }
    let Some(r) = replay(&nonce, bounds, &log) else {
        return;
    };
    // What replay keeps is a dense log of in-range records, and ends right after the last.
    for (i, rec) in r.records.iter().enumerate() {
        assert_eq!(rec.seq, i as u64 + 1, "sequence numbers are dense from 1");
        assert!(rec.horizon <= r.horizon);
        if let Body::Preserve {
            cluster,
            slot,
            first_block,
            crcs,
        } = &rec.body
        {
            assert!(u64::from(*cluster) < bounds.clusters && u64::from(*slot) < bounds.clusters);
            assert!(!crcs.is_empty());
            assert!(usize::from(*first_block) + crcs.len() <= bounds.blocks_per_cluster as usize);
        }
    }
    let last = r.records.last().map_or(0, |x| x.seq);
    let (end_block, end_pos) = r.end;
    assert!(end_pos <= BLOCK);
    // Records after the end written after a later flush: the open refuses such a store.
    let later = log
        .chunks(BLOCK)
        .enumerate()
        .skip(end_block as usize)
        .any(|(j, b)| {
            let mut b = b.to_vec();
            if j == end_block as usize {
                b[..end_pos].fill(0);
            }
            r.finds_later_record(&b)
        });
    // Dropping a tail moves the end back to where that record started.
    if !r.records.is_empty() {
        let mut t = Replay::new(nonce, bounds);
        for b in log.chunks(BLOCK) {
            t.feed(b).expect("replays as before");
            if t.ended() {
                break;
            }
        }
        // The positions found while fed, not recomputed from the records: an invalidation
        // reason that is not UTF-8 decodes lossily, to another length, and a record may follow
        // padding although it would have fit before it.
        let positions = t.positions().to_vec();
        for (rec, &(b, p)) in t.records.iter().zip(&positions) {
            let at = b as usize * BLOCK;
            let found = decode(&nonce, &log[at + p..at + BLOCK]);
            assert!(
                matches!(found, Decoded::Record(ref x, _) if x == rec),
                "a record is where noted"
            );
        }
        let i = usize::from(flags >> 1) % t.records.len();
        let seq = t.records[i].seq;
        // Taking the settled records first does not change where a truncate of the rest ends.
        let taken = if i % 2 == 0 {
            t.take_settled().len()
        } else {
            0
        };
        assert!(t.records.iter().all(|x| x.seq > t.horizon) || taken == 0);
        if i >= taken {
            t.truncate(i - taken);
            assert_eq!(t.records.len(), i - taken);
            assert_eq!(t.end, positions[i]);
            assert_eq!(t.last_seq(), seq - 1);
        }
    }
    if later {
        return;
    }
    // The store clears a torn batch's blocks before it appends (`clear_torn_tail` in
    // store/replay.rs: the end block past the end, and the following blocks holding any record
    // of this store, up to 1024 of them); the writer below resumes on a log cleared the same way.
    for (j, b) in log
        .chunks_mut(BLOCK)
        .enumerate()
        .skip(end_block as usize)
        .take(1024)
    {
        if j == end_block as usize {
            b[end_pos..].fill(0);
        } else if b.len() == BLOCK && r.holds_any_record(b) {
            b.fill(0);
        }
    }
    // A writer resuming at the end: the next replay keeps the old records and the new one.
    let start = end_block as usize * BLOCK;
    let block = log
        .get(start..start + BLOCK)
        .map_or_else(|| vec![0; BLOCK], <[u8]>::to_vec);
    let mut w = LogWriter::new(nonce, end_block, block, end_pos, last);
    let body = Body::Invalidate {
        reason: "fuzz".into(),
    };
    assert_eq!(w.append(body.clone(), last), last + 1);
    for (j, bytes) in w.take_dirty() {
        let at = j as usize * BLOCK;
        if log.len() < at + BLOCK {
            log.resize(at + BLOCK, 0);
        }
        log[at..at + BLOCK].copy_from_slice(&bytes);
    }
    // Without the clearing above, records of a torn batch after the end would come back once
    // the end moves up to them (out of range, or more than the one appended).
    let Some(again) = replay(&nonce, bounds, &log) else {
        assert!(!strict(), "the appended log no longer replays");
        return;
    };
    assert!(
        again.records.len() > r.records.len(),
        "the appended record is lost"
    );
    assert_eq!(again.records[..r.records.len()], r.records[..]);
    assert_eq!(again.records[r.records.len()].body, body);
    if strict() {
        assert_eq!(
            again.records.len(),
            r.records.len() + 1,
            "stale records came back"
        );
    }
}

fn replay(nonce: &[u8; 16], bounds: Bounds, log: &[u8]) -> Option<Replay> {
    let mut r = Replay::new(*nonce, bounds);
    for b in log.chunks(BLOCK) {
        r.feed(b).ok()?;
        if r.ended() {
            break;
        }
    }
    Some(r)
}

/// Seeds for `store_open`: (name, store bytes). Stores of the fuzz identity, 4 KiB clusters.
#[must_use]
pub fn store_seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    // Two sessions: first overwrites of one block, of runs, across clusters (two records in a
    // batch), then a reopen and more, so the log holds several batches and a resumed tail.
    let vol_dev = volume_device();
    let store_dev = Arc::new(MemDevice::growable(1 << 30));
    {
        let vol = volume(&vol_dev);
        let sd = Arc::clone(&store_dev);
        vol.create_snapshot("seed", &with_cluster(), move |p| {
            let p = fixed_time(p);
            Ok(Box::new(FileStore::create(sd, &p, false, None)?) as Box<dyn Store>)
        })
        .expect("snapshot");
        for i in 0..12u64 {
            vol.write(&[i as u8 + 1; 4096], i * 3 * CLUSTER)
                .expect("write");
        }
        vol.write(&[0x55; 3 * 4096], 40 * CLUSTER).expect("write");
        vol.write(&[0x66; 2 * 4096], 45 * CLUSTER - 4096)
            .expect("write");
    }
    {
        let vol = volume(&vol_dev);
        let (store, rec) =
            FileStore::open(store_dev.clone(), &identity(), false, None, None).expect("reopen");
        vol.attach_snapshot(&persistent(), Box::new(store), rec)
            .expect("attach");
        for i in 0..4u64 {
            vol.write(&[0x77; 4096], (50 + i) * CLUSTER).expect("write");
        }
    }
    let full = all(&store_dev);
    let log_end = Layout::new(CLUSTER).log_block_offset(1) as usize;
    out.push(("seed-store-two-sessions".into(), full.clone()));
    out.push(("seed-store-log-only".into(), full[..log_end].to_vec()));
    // A snapshot that lost a pre-image (its store was full): an invalidate record.
    let vol_dev = volume_device();
    let store_dev = Arc::new(MemDevice::growable(1 << 30));
    {
        let vol = volume(&vol_dev);
        let sd = Arc::clone(&store_dev);
        let opts = SnapshotOptions {
            max_store_bytes: Some(Layout::new(CLUSTER).bytes_for_slots(2)),
            ..with_cluster()
        };
        vol.create_snapshot("full", &opts, move |p| {
            let p = fixed_time(p);
            Ok(Box::new(FileStore::create(sd, &p, false, None)?) as Box<dyn Store>)
        })
        .expect("snapshot");
        for i in 0..3u64 {
            vol.write(&[9; 4096], i * CLUSTER).expect("write");
        }
    }
    // Its log only: the data slots add nothing to what is tried here.
    out.push((
        "seed-store-invalidated".into(),
        all(&store_dev)[..log_end].to_vec(),
    ));
    out
}

/// Seeds for `log_replay`: the log blocks of each store seed, behind the header.
#[must_use]
pub fn log_seeds() -> Vec<(String, Vec<u8>)> {
    store_seeds()
        .into_iter()
        .map(|(name, store)| {
            let mut v = vec![0u8, (VOLUME_LEN / CLUSTER) as u8, 0, 0];
            v.extend_from_slice(&store[16..32]);
            let log = &store[BLOCK..(3 * BLOCK).min(store.len())];
            v.extend_from_slice(log);
            (name.replace("seed-store", "seed-log"), v)
        })
        .collect()
}

fn volume(dev: &Arc<MemDevice>) -> Volume {
    let d: Arc<dyn BlockDevice> = dev.clone();
    Volume::with_identity("fuzz", d, VOLUME_ID)
}

fn with_cluster() -> SnapshotOptions {
    SnapshotOptions {
        cluster_size: Some(CLUSTER),
        ..persistent()
    }
}

/// Seeds do not depend on the clock (the nonce is still random).
fn fixed_time(p: &StoreParams) -> StoreParams {
    let mut p = p.clone();
    p.created = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    p
}

fn all(d: &MemDevice) -> Vec<u8> {
    let mut v = vec![0u8; d.len() as usize];
    d.read_at(&mut v, 0).expect("read the store");
    v
}
