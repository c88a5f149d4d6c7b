//! Concurrency: writers, snapshot readers, and snapshot creation and deletion all at once, with
//! every read checked against what the model allows (DESIGN decisions 1, 3 and 5).
//!
//! The model. Every 4 KiB block of the volume has exactly one writer thread, which writes it in
//! whole aligned blocks with strictly increasing version numbers; the content of version `v` of
//! block `b` is a pure function of `(b, v)` (a header of block number, version and checksum, then
//! a keyed pseudo-random body), and some versions are "zero versions", written by discard,
//! write-zeroes or zero blocks inside a multi-block write. Version 0 is the initial, all-zero
//! content. Per block the writer publishes `issued[b]` (stored before the write call starts) and
//! `acked[b]` (stored after it returns).
//!
//! A snapshot's allowed range for block `b` is `[acked[b] read just before create_snapshot,
//! issued[b] read just after it returned]`: a write acknowledged before creation must be visible
//! or superseded, one issued after creation must be absent. Every snapshot read, by any thread at
//! any later time, while writers go on and other snapshots come and go, must show for each block
//! it covers (even partly) exactly the bytes of one allowed version (never torn, never a mix),
//! and the same version every time (the first one seen is recorded per snapshot and block). A
//! read of a snapshot deleted meanwhile must fail with `NotFound`; any other error fails the
//! test. Volume reads are checked the same way against `[acked before, issued after]`.
//!
//! It runs twice: on memory devices, and on files (the volume and every store), where large
//! snapshot reads put their pieces in flight together through io_uring, some with O_DIRECT.
//!
//! The duration can be raised for a soak run with `FSS_CONCURRENCY_SECS`; `FSS_TEST_SEED`
//! replays a seed (thread interleavings still differ from run to run).

use fss_core::device::{AlignedBuf, BlockDevice, FileDevice, MemDevice, OpenOptions};
use fss_core::store::{DeviceStore, Store, StoreParams};
use fss_core::{ErrorKind, Snapshot, SnapshotOptions, Volume};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Block size in bytes.
const BS: usize = 4096;
/// Blocks in the volume (8 MiB).
const BLOCKS: usize = 2048;
/// Blocks below this are owned one by one (`b % WRITERS`); above, in stripes of 8 blocks that
/// straddle cluster boundaries, so that multi-block writes span several clusters.
const HALF: usize = BLOCKS / 2;
/// The stripes of the upper half: stripe `k` is `stripe_range(k)`.
const STRIPES: usize = (BLOCKS - HALF + 2).div_ceil(8);
/// A hot region (in the interleaved half) where most writes and reads go.
const HOT: usize = 128;
/// 16 KiB clusters: four blocks, owned by different writers in the lower half.
const CLUSTER: u64 = 16 << 10;
const WRITERS: usize = 4;
/// The most blocks of one large request (from 64 on: 256 KiB, where `direct_large` starts).
const LARGE: usize = 96;
const READERS: usize = 3;
/// The most snapshots alive at once.
const MAX_LIVE: usize = 6;
/// Deleted snapshots kept around for readers to check that reads of them fail.
const GONE_KEPT: usize = 8;
/// The class of all-zero content (all zero versions look alike).
const ZERO: u64 = u64::MAX - 1;
/// No class observed yet.
const NONE: u64 = u64::MAX;

// ---------------------------------------------------------------------------------------------
// Pseudo-random numbers and block contents.

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A tiny xorshift64* generator, one per thread.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(splitmix(seed) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap_or(0)
    }
}

fn key(b: usize, v: u64) -> u64 {
    splitmix(((b as u64) << 40) ^ v)
}

/// Whether version `v` of block `b` is all zeroes (version 0, the initial content, always is).
fn is_zero_version(b: usize, v: u64) -> bool {
    v == 0 || splitmix(key(b, v) ^ 0x5A5A_5A5A) % 4 == 0
}

fn checksum(b: usize, v: u64) -> u64 {
    splitmix(key(b, v) ^ 0xC0FF_EE00_C0FF_EE00)
}

/// The content of version `v` of block `b`: words 0..3 are the block number, the version and a
/// checksum of both; every later word is a keyed hash of `(b, v, word index)`.
fn fill_block(b: usize, v: u64, out: &mut [u8]) {
    if is_zero_version(b, v) {
        out.fill(0);
        return;
    }
    let k = key(b, v);
    for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
        let w = match i {
            0 => b as u64,
            1 => v,
            2 => checksum(b, v),
            _ => splitmix(k ^ (i as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)),
        };
        chunk.copy_from_slice(&w.to_le_bytes());
    }
}

/// The first version after `cur` that is (or is not) a zero version.
fn next_version(b: usize, cur: u64, zero: bool) -> u64 {
    let mut v = cur + 1;
    while is_zero_version(b, v) != zero {
        v += 1;
    }
    v
}

fn word(bytes: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
    u64::from_le_bytes(a)
}

/// The classes (a version, or `ZERO`) among versions `lo..=hi` of block `b` whose bytes at
/// `off..off + vis.len()` are exactly `vis`.
fn matching_classes(b: usize, vis: &[u8], off: usize, lo: u64, hi: u64) -> Vec<u64> {
    let all_zero = vis.iter().all(|&x| x == 0);
    let mut out = Vec::new();
    let mut expect = [0u8; BS];
    for v in lo..=hi {
        if is_zero_version(b, v) {
            if all_zero && !out.contains(&ZERO) {
                out.push(ZERO);
            }
            continue;
        }
        fill_block(b, v, &mut expect);
        if expect[off..off + vis.len()] == *vis {
            out.push(v);
        }
    }
    out
}

fn class_name(c: u64) -> String {
    match c {
        ZERO => "zeroes".to_string(),
        NONE => "nothing".to_string(),
        v => format!("version {v}"),
    }
}

/// What the bytes `vis` at `off` in block `b` are, for a failure message.
fn describe(b: usize, vis: &[u8], off: usize, max_version: u64) -> String {
    let mut s = String::new();
    if vis.iter().all(|&x| x == 0) {
        s.push_str("the bytes are all zero; ");
    } else if off == 0 && vis.len() >= 24 {
        let (hb, hv, hc) = (word(vis, 0), word(vis, 1), word(vis, 2));
        s.push_str(&format!("header says block {hb} version {hv}"));
        match usize::try_from(hb) {
            Ok(hb) if hb < BLOCKS && hc == checksum(hb, hv) && !is_zero_version(hb, hv) => {
                let mut expect = [0u8; BS];
                fill_block(hb, hv, &mut expect);
                match expect[..vis.len()]
                    .iter()
                    .zip(vis)
                    .position(|(a, b)| a != b)
                {
                    None => s.push_str(" (checksum good, body intact); "),
                    Some(i) => s.push_str(&format!(
                        " (checksum good, but TORN: bytes from {i} differ from that version); "
                    )),
                }
            }
            _ => s.push_str(" (bad checksum: not a header); "),
        }
    } else {
        s.push_str("a partial view without header; ");
    }
    let hits = matching_classes(b, vis, off, 0, max_version);
    if hits.is_empty() {
        s.push_str(&format!(
            "it matches no version of block {b} ever issued (0..={max_version})"
        ));
    } else {
        let names: Vec<String> = hits.iter().take(6).map(|&c| class_name(c)).collect();
        s.push_str(&format!("it matches {} of block {b}", names.join(", ")));
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Shared state.

/// A snapshot as the model sees it.
struct SnapRec {
    name: String,
    snap: Snapshot,
    /// Allowed versions per block: `lo[b]..=hi[b]`.
    lo: Vec<u64>,
    hi: Vec<u64>,
    /// The class first read per block (`NONE` until then).
    observed: Vec<AtomicU64>,
    /// Set before `delete_snapshot` is called.
    deleting: AtomicBool,
    /// Set after `delete_snapshot` returned.
    deleted: AtomicBool,
}

struct Shared {
    seed: u64,
    vol: Volume,
    issued: Vec<AtomicU64>,
    acked: Vec<AtomicU64>,
    /// Live snapshots, oldest first.
    live: Mutex<Vec<Arc<SnapRec>>>,
    /// Recently deleted snapshots.
    gone: Mutex<Vec<Arc<SnapRec>>>,
    stop: AtomicBool,
    failed: AtomicBool,
    /// Sum of `blocks_preserved` of snapshots, taken just before each was deleted.
    preserved_at_delete: AtomicU64,
    /// Where the volume and the stores are files, in the file-backed run.
    dir: Option<tempfile::TempDir>,
    /// Store files made so far (for their names).
    stores: AtomicU64,
}

/// A file device at `path`, made empty with `len` bytes, reading large pieces with O_DIRECT.
fn file_device(path: &std::path::Path, len: u64) -> Arc<dyn BlockDevice> {
    let f = std::fs::File::create(path).unwrap_or_else(|e| panic!("create {path:?}: {e}"));
    f.set_len(len)
        .unwrap_or_else(|e| panic!("size {path:?}: {e}"));
    // The daemon's default volume I/O mode (`--volume-io direct-large`).
    let opts = OpenOptions {
        direct_large: true,
        ..OpenOptions::default()
    };
    Arc::new(FileDevice::open(path, &opts).unwrap_or_else(|e| panic!("open {path:?}: {e}")))
}

/// A store for a new snapshot: in memory, or on a new file in the file-backed run.
fn make_store(sh: &Shared, p: &StoreParams) -> fss_core::Result<Box<dyn Store>> {
    match &sh.dir {
        None => DeviceStore::in_memory(p),
        Some(dir) => {
            let n = sh.stores.fetch_add(1, SeqCst);
            let dev = file_device(&dir.path().join(format!("store{n}")), 0);
            Ok(Box::new(DeviceStore::new(dev, p, false)))
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Stops every thread when the thread holding it panics.
struct StopOnPanic<'a>(&'a Shared);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.failed.store(true, SeqCst);
            self.0.stop.store(true, SeqCst);
        }
    }
}

/// What a thread did.
#[derive(Debug, Default, Clone)]
struct Counts {
    writes: u64,
    multi_block_writes: u64,
    discards: u64,
    zeroes: u64,
    snapshot_reads: u64,
    snapshot_reads_not_found: u64,
    deleted_reads: u64,
    volume_reads: u64,
    blocks_checked: u64,
    created: u64,
    /// Deletions of the oldest, the newest, the middle and a random snapshot.
    deleted: [u64; 4],
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.writes += o.writes;
        self.multi_block_writes += o.multi_block_writes;
        self.discards += o.discards;
        self.zeroes += o.zeroes;
        self.snapshot_reads += o.snapshot_reads;
        self.snapshot_reads_not_found += o.snapshot_reads_not_found;
        self.deleted_reads += o.deleted_reads;
        self.volume_reads += o.volume_reads;
        self.blocks_checked += o.blocks_checked;
        self.created += o.created;
        for (a, b) in self.deleted.iter_mut().zip(o.deleted) {
            *a += b;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checking reads.

/// Check one block of a read: the bytes `vis` at `off` inside block `b` must be one version in
/// `lo..=hi`, and the one first observed (when `observed` is given).
#[allow(clippy::too_many_arguments)]
fn check_block(
    sh: &Shared,
    ctx: &dyn Fn() -> String,
    b: usize,
    vis: &[u8],
    off: usize,
    lo: u64,
    hi: u64,
    observed: Option<&AtomicU64>,
) {
    let classes = matching_classes(b, vis, off, lo, hi);
    if classes.is_empty() {
        let max = sh.issued[b].load(SeqCst);
        panic!(
            "seed {}: {}: block {b} (bytes {off}..{} of it) is none of the allowed versions \
             {lo}..={hi}: {}",
            sh.seed,
            ctx(),
            off + vis.len(),
            describe(b, vis, off, max)
        );
    }
    let Some(obs) = observed else { return };
    let unstable = |prev: u64| -> ! {
        let seen: Vec<String> = classes.iter().map(|&c| class_name(c)).collect();
        panic!(
            "seed {}: {}: block {b} (bytes {off}..{} of it) is UNSTABLE: first read as {}, now \
             as {} (allowed {lo}..={hi})",
            sh.seed,
            ctx(),
            off + vis.len(),
            class_name(prev),
            seen.join(" or ")
        )
    };
    if let [only] = classes[..] {
        if let Err(prev) = obs.compare_exchange(NONE, only, SeqCst, SeqCst) {
            if prev != only {
                unstable(prev);
            }
        }
    } else {
        // A tiny partial view can match several versions; the first one seen must be among them.
        let prev = obs.load(SeqCst);
        if prev != NONE && !classes.contains(&prev) {
            unstable(prev);
        }
    }
}

/// Check every block a read of `buf` at byte `offset` covers; `lo`, `hi` and `observed` are
/// indexed from the first block covered. Returns the number of blocks checked.
fn check_read(
    sh: &Shared,
    ctx: &dyn Fn() -> String,
    buf: &[u8],
    offset: usize,
    lo: &[u64],
    hi: &[u64],
    observed: Option<&[AtomicU64]>,
) -> u64 {
    let end = offset + buf.len();
    let (b0, b1) = (offset / BS, end.div_ceil(BS));
    for b in b0..b1 {
        let start = (b * BS).max(offset);
        let stop = ((b + 1) * BS).min(end);
        let vis = &buf[start - offset..stop - offset];
        let i = b - b0;
        check_block(
            sh,
            ctx,
            b,
            vis,
            start - b * BS,
            lo[i],
            hi[i],
            observed.map(|o| &o[i]),
        );
    }
    (b1 - b0) as u64
}

/// Read all of `rec` and check it, block by block and in one piece.
fn verify_whole_snapshot(sh: &Shared, rec: &SnapRec, when: &str) -> u64 {
    let mut all = vec![0u8; BLOCKS * BS];
    if let Err(e) = rec.snap.read(&mut all, 0) {
        panic!(
            "seed {}: {when}: reading all of snapshot {}: {e}",
            sh.seed, rec.name
        );
    }
    let ctx = || format!("{when}: read of all of snapshot {}", rec.name);
    let mut n = check_read(sh, &ctx, &all, 0, &rec.lo, &rec.hi, Some(&rec.observed));
    let mut one = vec![0u8; BS];
    for b in 0..BLOCKS {
        if let Err(e) = rec.snap.read(&mut one, (b * BS) as u64) {
            panic!(
                "seed {}: {when}: reading block {b} of snapshot {}: {e}",
                sh.seed, rec.name
            );
        }
        let ctx = || format!("{when}: read of block {b} of snapshot {}", rec.name);
        let (lo, hi, observed) = (&rec.lo[b..=b], &rec.hi[b..=b], &rec.observed[b..=b]);
        n += check_read(sh, &ctx, &one, b * BS, lo, hi, Some(observed));
    }
    n
}

// ---------------------------------------------------------------------------------------------
// Ownership.

/// The writer that owns block `b`.
fn owner(b: usize) -> usize {
    if b < HALF {
        b % WRITERS
    } else {
        ((b - HALF + 2) / 8) % WRITERS
    }
}

/// The blocks of stripe `k` of the upper half: 8 blocks starting 2 before a cluster boundary
/// (clipped at both ends), so that a stripe spans three clusters.
fn stripe_range(k: usize) -> (usize, usize) {
    (
        HALF + (8 * k).saturating_sub(2),
        (HALF + 8 * k + 6).min(BLOCKS),
    )
}

// ---------------------------------------------------------------------------------------------
// Threads.

#[derive(Clone, Copy)]
enum Kind {
    Write,
    Discard,
    Zeroes,
}

fn writer(sh: &Shared, w: usize, seed: u64) -> Counts {
    let _guard = StopOnPanic(sh);
    let mut rng = Rng::new(seed);
    let mut c = Counts::default();
    let mut buf = vec![0u8; 8 * BS];
    let mut versions = [0u64; 8];
    let my_stripes = (STRIPES - w).div_ceil(WRITERS);
    while !sh.stop.load(SeqCst) {
        let (b0, n) = match rng.below(10) {
            0..=3 => (WRITERS * rng.below(HOT / WRITERS) + w, 1),
            4..=6 => (WRITERS * rng.below(HALF / WRITERS) + w, 1),
            _ => {
                let (s, e) = stripe_range(w + WRITERS * rng.below(my_stripes));
                let start = s + rng.below(e - s);
                (start, 1 + rng.below(e - start))
            }
        };
        let kind = match rng.below(8) {
            0 => Kind::Discard,
            1 => Kind::Zeroes,
            _ => Kind::Write,
        };
        for (i, v) in versions[..n].iter_mut().enumerate() {
            let b = b0 + i;
            debug_assert_eq!(owner(b), w);
            let zero = match kind {
                Kind::Write => n > 1 && rng.below(6) == 0,
                Kind::Discard | Kind::Zeroes => true,
            };
            *v = next_version(b, sh.issued[b].load(SeqCst), zero);
        }
        for (i, &v) in versions[..n].iter().enumerate() {
            sh.issued[b0 + i].store(v, SeqCst);
        }
        let (off, len) = ((b0 * BS) as u64, (n * BS) as u64);
        let r = match kind {
            Kind::Write => {
                for (i, &v) in versions[..n].iter().enumerate() {
                    fill_block(b0 + i, v, &mut buf[i * BS..(i + 1) * BS]);
                }
                c.writes += 1;
                c.multi_block_writes += u64::from(n > 1);
                sh.vol.write(&buf[..n * BS], off)
            }
            Kind::Discard => {
                c.discards += 1;
                sh.vol.discard(off, len)
            }
            Kind::Zeroes => {
                c.zeroes += 1;
                sh.vol.write_zeroes(off, len)
            }
        };
        if let Err(e) = r {
            panic!("seed {}: writer {w}: blocks {b0}..{}: {e}", sh.seed, b0 + n);
        }
        for (i, &v) in versions[..n].iter().enumerate() {
            sh.acked[b0 + i].store(v, SeqCst);
        }
    }
    c
}

/// A random range of the volume: single blocks and unaligned multi-block ranges, mostly in
/// the hot region.
fn random_range(rng: &mut Rng) -> (usize, usize) {
    let (off, len) = match rng.below(6) {
        0 => (BS * rng.below(HOT), BS),
        1 => (BS * rng.below(BLOCKS), BS),
        2 => (rng.below(HOT * BS), 1 + rng.below(5 * BS)),
        3 => (rng.below(BLOCKS * BS), 1 + rng.below(9 * BS)),
        // Large and aligned: on files, first overwrites of these go O_DIRECT end to end
        // (pre-image reads, volume writes, held writes applied).
        4 => (BS * rng.below(BLOCKS), BS * (64 + rng.below(LARGE - 63))),
        // Aligned, several blocks: the pieces of a batched read can go O_DIRECT.
        _ => (BS * rng.below(BLOCKS), BS * (1 + rng.below(9))),
    };
    (off, len.min(BLOCKS * BS - off))
}

fn reader(sh: &Shared, r: usize, seed: u64) -> Counts {
    let _guard = StopOnPanic(sh);
    let mut rng = Rng::new(seed);
    let mut c = Counts::default();
    // Aligned, so that batched reads of aligned ranges may go O_DIRECT into it.
    let mut buf = AlignedBuf::new(LARGE * BS);
    while !sh.stop.load(SeqCst) {
        let pick = rng.below(100);
        if pick < 5 {
            // The volume itself: each block between what was acknowledged before the read and
            // what was issued after it.
            let (off, len) = random_range(&mut rng);
            let (b0, b1) = (off / BS, (off + len).div_ceil(BS));
            let lo: Vec<u64> = sh.acked[b0..b1].iter().map(|a| a.load(SeqCst)).collect();
            if let Err(e) = sh.vol.read(&mut buf[..len], off as u64) {
                panic!(
                    "seed {}: reader {r}: volume read at {off}+{len}: {e}",
                    sh.seed
                );
            }
            let hi: Vec<u64> = sh.issued[b0..b1].iter().map(|a| a.load(SeqCst)).collect();
            let ctx = || format!("reader {r}: volume read at byte {off}, {len} bytes");
            c.blocks_checked += check_read(sh, &ctx, &buf[..len], off, &lo, &hi, None);
            c.volume_reads += 1;
            continue;
        }
        if pick < 8 {
            // A snapshot whose deletion has returned must not be readable.
            let rec = {
                let gone = lock(&sh.gone);
                if gone.is_empty() {
                    continue;
                }
                Arc::clone(&gone[rng.below(gone.len())])
            };
            let (off, len) = random_range(&mut rng);
            match rec.snap.read(&mut buf[..len], off as u64) {
                Err(e) if e.kind() == ErrorKind::NotFound => c.deleted_reads += 1,
                Err(e) => panic!(
                    "seed {}: reader {r}: read of deleted snapshot {} failed with {:?}, not \
                     NotFound: {e}",
                    sh.seed,
                    rec.name,
                    e.kind()
                ),
                Ok(()) => panic!(
                    "seed {}: reader {r}: read of deleted snapshot {} at {off}+{len} succeeded",
                    sh.seed, rec.name
                ),
            }
            continue;
        }
        let rec = {
            let live = lock(&sh.live);
            if live.is_empty() {
                drop(live);
                std::thread::yield_now();
                continue;
            }
            Arc::clone(&live[rng.below(live.len())])
        };
        let (off, len) = random_range(&mut rng);
        match rec.snap.read(&mut buf[..len], off as u64) {
            Ok(()) => {
                let (b0, b1) = (off / BS, (off + len).div_ceil(BS));
                let ctx = || {
                    format!(
                        "reader {r}: read of snapshot {} at byte {off}, {len} bytes",
                        rec.name
                    )
                };
                c.blocks_checked += check_read(
                    sh,
                    &ctx,
                    &buf[..len],
                    off,
                    &rec.lo[b0..b1],
                    &rec.hi[b0..b1],
                    Some(&rec.observed[b0..b1]),
                );
                c.snapshot_reads += 1;
            }
            Err(e) if e.kind() == ErrorKind::NotFound && rec.deleting.load(SeqCst) => {
                c.snapshot_reads_not_found += 1;
            }
            Err(e) => panic!(
                "seed {}: reader {r}: read of snapshot {} at {off}+{len} failed (deleting: {}): \
                 {:?}: {e}",
                sh.seed,
                rec.name,
                rec.deleting.load(SeqCst),
                e.kind()
            ),
        }
    }
    c
}

fn create(sh: &Shared, name: &str) -> Arc<SnapRec> {
    let opts = SnapshotOptions {
        cluster_size: Some(CLUSTER),
        ..SnapshotOptions::default()
    };
    let lo: Vec<u64> = sh.acked.iter().map(|a| a.load(SeqCst)).collect();
    let snap = match sh.vol.create_snapshot(name, &opts, |p| make_store(sh, p)) {
        Ok(s) => s,
        Err(e) => panic!("seed {}: create snapshot {name}: {e}", sh.seed),
    };
    let hi: Vec<u64> = sh.issued.iter().map(|a| a.load(SeqCst)).collect();
    for (b, (l, h)) in lo.iter().zip(&hi).enumerate() {
        assert!(l <= h, "model broken: block {b} acked {l} > issued {h}");
    }
    Arc::new(SnapRec {
        name: name.to_string(),
        snap,
        lo,
        hi,
        observed: (0..BLOCKS).map(|_| AtomicU64::new(NONE)).collect(),
        deleting: AtomicBool::new(false),
        deleted: AtomicBool::new(false),
    })
}

fn delete(sh: &Shared, rec: &Arc<SnapRec>) {
    rec.deleting.store(true, SeqCst);
    let preserved = rec.snap.info().stats.blocks_preserved;
    sh.preserved_at_delete.fetch_add(preserved, SeqCst);
    if let Err(e) = sh.vol.delete_snapshot(&rec.name) {
        panic!("seed {}: delete snapshot {}: {e}", sh.seed, rec.name);
    }
    rec.deleted.store(true, SeqCst);
    let mut gone = lock(&sh.gone);
    if gone.len() == GONE_KEPT {
        gone.remove(0);
    }
    gone.push(Arc::clone(rec));
}

fn control(sh: &Shared, seed: u64, deadline: Instant) -> Counts {
    let _guard = StopOnPanic(sh);
    let mut rng = Rng::new(seed);
    let mut c = Counts::default();
    let mut next = 0u64;
    while Instant::now() < deadline && !sh.stop.load(SeqCst) {
        let n = lock(&sh.live).len();
        if n == 0 || (n < MAX_LIVE && rng.below(100) < 55) {
            let rec = create(sh, &format!("s{next}"));
            next += 1;
            lock(&sh.live).push(rec);
            c.created += 1;
        } else {
            let how = rng.below(4);
            let rec = {
                let mut live = lock(&sh.live);
                let i = match how {
                    0 => 0,
                    1 => live.len() - 1,
                    2 => live.len() / 2,
                    _ => rng.below(live.len()),
                };
                live.remove(i)
            };
            delete(sh, &rec);
            c.deleted[how] += 1;
        }
        std::thread::sleep(Duration::from_millis(2 + rng.below(25) as u64));
    }
    c
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_string()))
        .unwrap_or_else(|| "(no message)".to_string())
}

// ---------------------------------------------------------------------------------------------
// The test.

#[test]
fn writers_readers_and_snapshot_churn_agree_with_the_model() {
    run(false);
}

#[test]
fn on_files_batched_snapshot_reads_agree_with_the_model() {
    run(true);
}

fn run(file_backed: bool) {
    let seed = std::env::var("FSS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            t.map_or(1, |d| {
                d.as_secs().wrapping_mul(1_000_000_007) ^ u64::from(d.subsec_nanos())
            })
        });
    let secs: f64 = std::env::var("FSS_CONCURRENCY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) { 2.0 } else { 3.0 });
    eprintln!("concurrency: seed {seed} (FSS_TEST_SEED replays it), {secs} s");

    for b in 0..BLOCKS {
        if b >= HALF {
            let k = (b - HALF + 2) / 8;
            let (s, e) = stripe_range(k);
            assert!(k < STRIPES && s <= b && b < e && owner(b) == k % WRITERS);
        }
    }

    let len = (BLOCKS * BS) as u64;
    let dir = file_backed.then(|| tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}")));
    let dev: Arc<dyn BlockDevice> = match &dir {
        None => Arc::new(MemDevice::new(len)),
        Some(d) => file_device(&d.path().join("volume"), len),
    };
    let sh = Arc::new(Shared {
        seed,
        vol: Volume::new("vol", dev),
        issued: (0..BLOCKS).map(|_| AtomicU64::new(0)).collect(),
        acked: (0..BLOCKS).map(|_| AtomicU64::new(0)).collect(),
        live: Mutex::new(Vec::new()),
        gone: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        failed: AtomicBool::new(false),
        preserved_at_delete: AtomicU64::new(0),
        dir,
        stores: AtomicU64::new(0),
    });

    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut threads: Vec<(String, JoinHandle<Counts>)> = Vec::new();
    for w in 0..WRITERS {
        let (sh, s) = (Arc::clone(&sh), splitmix(seed ^ (0x100 + w as u64)));
        threads.push((
            format!("writer {w}"),
            std::thread::spawn(move || writer(&sh, w, s)),
        ));
    }
    for r in 0..READERS {
        let (sh, s) = (Arc::clone(&sh), splitmix(seed ^ (0x200 + r as u64)));
        threads.push((
            format!("reader {r}"),
            std::thread::spawn(move || reader(&sh, r, s)),
        ));
    }
    {
        let (sh, s) = (Arc::clone(&sh), splitmix(seed ^ 0x300));
        let t = std::thread::spawn(move || control(&sh, s, deadline));
        threads.push(("control".to_string(), t));
    }

    while Instant::now() < deadline && !sh.failed.load(SeqCst) {
        std::thread::sleep(Duration::from_millis(10));
    }
    sh.stop.store(true, SeqCst);
    // A thread that does not stop is stuck in the engine: report it rather than hang.
    let grace = Duration::from_secs(if cfg!(debug_assertions) { 30 } else { 10 });
    let stopped = Instant::now();
    loop {
        let running: Vec<&str> = threads
            .iter()
            .filter(|(_, h)| !h.is_finished())
            .map(|(n, _)| n.as_str())
            .collect();
        if running.is_empty() {
            break;
        }
        assert!(
            stopped.elapsed() < grace,
            "seed {seed}: DEADLOCK suspected: still running {grace:?} after stop: {running:?}; \
             volume stats {:?}",
            sh.vol.stats()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut total = Counts::default();
    let mut panics = Vec::new();
    for (name, h) in threads {
        match h.join() {
            Ok(c) => total.add(&c),
            Err(p) => panics.push(format!("{name}: {}", panic_message(&*p))),
        }
    }
    assert!(
        panics.is_empty(),
        "seed {seed}: thread(s) panicked:\n{}",
        panics.join("\n")
    );
    let ran = start.elapsed();

    // Quiescent: every write is acknowledged; every live snapshot still reads exactly what it
    // did, and the volume reads the last version of each block.
    for b in 0..BLOCKS {
        assert_eq!(
            sh.issued[b].load(SeqCst),
            sh.acked[b].load(SeqCst),
            "block {b}"
        );
    }
    let live: Vec<Arc<SnapRec>> = lock(&sh.live).clone();
    for rec in &live {
        assert!(rec.snap.is_valid(), "snapshot {} became invalid", rec.name);
        total.blocks_checked += verify_whole_snapshot(&sh, rec, "after the run");
    }
    let mut all = vec![0u8; BLOCKS * BS];
    if let Err(e) = sh.vol.read(&mut all, 0) {
        panic!("seed {seed}: final volume read: {e}");
    }
    let last: Vec<u64> = sh.acked.iter().map(|a| a.load(SeqCst)).collect();
    let ctx = || "final read of the volume".to_string();
    total.blocks_checked += check_read(&sh, &ctx, &all, 0, &last, &last, None);

    let names: Vec<String> = sh
        .vol
        .snapshots()
        .iter()
        .map(|s| s.name().to_string())
        .collect();
    let expected: Vec<String> = live.iter().map(|r| r.name.clone()).collect();
    assert_eq!(names, expected, "the volume's snapshots, oldest first");
    let stats = sh.vol.stats();
    assert_eq!(stats.snapshots, live.len() as u64);
    let preserved_live: u64 = live
        .iter()
        .map(|r| r.snap.info().stats.blocks_preserved)
        .sum();
    let preserved = preserved_live + sh.preserved_at_delete.load(SeqCst);
    eprintln!("concurrency: ran {ran:?}; {total:?}");
    eprintln!(
        "concurrency: volume {stats:?}; blocks preserved per snapshot, summed: {preserved}; \
         live at the end: {}",
        live.len()
    );
    assert!(
        stats.blocks_preserved > 0 && preserved > 0,
        "no copy-on-write happened"
    );
    assert!(stats.cow_calls > 0);
    assert!(total.writes > 0 && total.discards > 0 && total.zeroes > 0);
    assert!(total.multi_block_writes > 0);
    assert!(
        total.created >= 3,
        "too few snapshots created: {}",
        total.created
    );
    assert!(
        total.deleted.iter().sum::<u64>() >= 1,
        "no snapshot deleted"
    );
    assert!(total.snapshot_reads > 0 && total.volume_reads > 0);

    // Delete the rest in random order; after each deletion the others must still read exactly
    // as before (entries moved into the next older snapshot), and the deleted one not at all.
    let mut rng = Rng::new(splitmix(seed ^ 0x400));
    let mut rest = live;
    while !rest.is_empty() {
        let rec = rest.remove(rng.below(rest.len()));
        delete(&sh, &rec);
        let Err(e) = rec.snap.read(&mut all[..BS], 0) else {
            panic!("seed {seed}: deleted snapshot {} still reads", rec.name);
        };
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        for other in &rest {
            let when = format!("after deleting {} at the end", rec.name);
            verify_whole_snapshot(&sh, other, &when);
        }
    }
    assert_eq!(sh.vol.stats().snapshots, 0);
    assert_eq!(sh.vol.cluster_size(), None);
}
