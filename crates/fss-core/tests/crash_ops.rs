//! Crash tests of the two long operations of issue 7 that rewrite stores or the volume:
//!
//! - a snapshot delete that moves entries: S1 < S2 < S3 persistent, S2 holds blocks S1 lacks;
//!   deleting S2 moves them into S1's store, syncs it, then destroys S2's store;
//! - a rollback, done exactly as the daemon does it (`fssd::registry::rollback_pass`): the
//!   snapshot's bytes over every extent of `Snapshot::changed(0, len)`, written through
//!   `Volume::write` in chunks, then `Volume::flush`.
//!
//! The volume and every store live on [`CrashDevice`]s. A hook on every device captures all of
//! them before each write and flush takes effect, so at every flush point and every point
//! between. For each captured instant, crash images are built (the durable image, everything
//! surviving, and `FSS_CRASH_TRIALS` random subsets, default 2, torn at 4 KiB), reopened as the
//! daemon does (`FileStore::open`, `Volume::attach_snapshot` oldest first), the operation is
//! redone as the daemon redoes it after a restart (a delete whose store still opens is done
//! again; a rollback is run again from the start), and every surviving snapshot must read its
//! model exactly. The redo is then itself cut at its durable state, reopened, and checked again.
//!
//! `FSS_CRASH_WORKLOADS` scales the number of workload seeds (default: two for the delete, one
//! per rollback test).
//!
//! The stores here are on devices (no owned file), so destroying S2's store zeroes its header,
//! discards the rest and flushes: a crash in the middle of that is covered too.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use fss_core::device::{BlockDevice, CrashDevice, CrashHook, CrashPoint};
use fss_core::store::{FileStore, Store, StoreIdentity};
use fss_core::{Snapshot, SnapshotOptions, Volume};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

const KIB: u64 = 1024;
/// The volume: 512 KiB, 32 clusters of 16 KiB.
const VOL_LEN: u64 = 512 * KIB;
const CLUSTER: u64 = 16 * KIB;
const BS: u64 = 4096;
const VOL_ID: [u8; 16] = *b"fss crash ops!!!";
/// The daemon's rollback chunk (`ROLLBACK_CHUNK` in `crates/fssd/src/registry/rollback.rs`).
const DAEMON_CHUNK: u64 = 4 << 20;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(splitmix(seed))
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        splitmix(self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

fn trials() -> u64 {
    std::env::var("FSS_CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

/// Workload seeds per test (`FSS_CRASH_WORKLOADS`, default 1).
fn workloads() -> u64 {
    std::env::var("FSS_CRASH_WORKLOADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

fn persistent() -> SnapshotOptions {
    SnapshotOptions {
        cluster_size: Some(CLUSTER),
        persistent: true,
        ..SnapshotOptions::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Capturing every device at every write and flush.

/// One captured instant: the volume's device, then every store's, in snapshot order.
struct Capture {
    label: String,
    vol: CrashPoint,
    stores: Vec<CrashPoint>,
}

#[derive(Default)]
struct Recorder {
    vol: Option<Arc<CrashDevice>>,
    stores: Vec<Arc<CrashDevice>>,
    capturing: bool,
    captures: Vec<Capture>,
}

impl Recorder {
    fn capture(&mut self, label: String) {
        if !self.capturing {
            return;
        }
        let vol = self.vol.as_ref().unwrap().freeze();
        let stores = self.stores.iter().map(|d| d.freeze()).collect();
        self.captures.push(Capture { label, vol, stores });
    }
}

type Shared = Arc<Mutex<Recorder>>;

fn hook(rec: &Shared, dev: String) -> CrashHook {
    let w = Arc::downgrade(rec);
    Arc::new(move |op| {
        if let Some(r) = w.upgrade() {
            lock(&r).capture(format!("before {dev}: {op:?}"));
        }
    })
}

/// A snapshot's name, id, and exact contents.
#[derive(Clone)]
struct Model {
    name: String,
    id: u64,
    bytes: Arc<Vec<u8>>,
}

/// The volume with three persistent snapshots, its models, and the recorder.
struct Setup {
    rec: Shared,
    vol: Volume,
    /// Models of s1, s2, s3.
    snaps: Vec<Model>,
    /// The volume now (everything flushed).
    now: Vec<u8>,
}

fn write(vol: &Volume, now: &mut [u8], off: u64, data: &[u8]) {
    vol.write(data, off).unwrap();
    now[off as usize..off as usize + data.len()].copy_from_slice(data);
}

/// Random writes of 1 byte to 24 KiB (half block-aligned) inside `[from, to)`.
fn writes(vol: &Volume, now: &mut [u8], rng: &mut Rng, from: u64, to: u64, n: usize) {
    for _ in 0..n {
        let aligned = rng.below(2) == 0;
        let len = if aligned {
            (1 + rng.below(6)) * BS
        } else {
            1 + rng.below(24 * KIB)
        };
        let len = len.min(to - from);
        let mut off = from + rng.below(to - from - len + 1);
        if aligned {
            off -= (off - from) % BS;
        }
        let data = rng.bytes(len as usize);
        write(vol, now, off, &data);
    }
}

fn create(rec: &Shared, vol: &Volume, now: &[u8], name: &str) -> Model {
    vol.flush().unwrap();
    let snap = vol
        .create_snapshot(name, &persistent(), |p| {
            let dev = Arc::new(CrashDevice::growable(u64::MAX));
            dev.set_hook(Some(hook(rec, format!("store of {name}"))));
            lock(rec).stores.push(Arc::clone(&dev));
            Ok(Box::new(FileStore::create(dev, p, false, None)?) as Box<dyn Store>)
        })
        .unwrap();
    Model {
        name: name.to_string(),
        id: snap.info().id,
        bytes: Arc::new(now.to_vec()),
    }
}

/// S1, writes, S2, writes (partly where nothing was written since S1, so that S2 holds blocks
/// S1 lacks), S3, writes, all flushed.
fn setup(seed: u64) -> Setup {
    let mut rng = Rng::new(seed);
    let rec: Shared = Arc::new(Mutex::new(Recorder::default()));
    let dev = Arc::new(CrashDevice::new(VOL_LEN));
    dev.set_hook(Some(hook(&rec, "volume".into())));
    lock(&rec).vol = Some(Arc::clone(&dev));
    let d: Arc<dyn BlockDevice> = dev;
    let vol = Volume::with_identity("vol", d, VOL_ID);
    let mut now = vec![0u8; VOL_LEN as usize];
    let half = VOL_LEN / 2;
    writes(&vol, &mut now, &mut rng, 0, VOL_LEN, 24);
    let s1 = create(&rec, &vol, &now, "s1");
    // Between S1 and S2: the first half only.
    writes(&vol, &mut now, &mut rng, 0, half, 10);
    let s2 = create(&rec, &vol, &now, "s2");
    // Between S2 and S3: mostly the second half (S1 lacks those blocks: they move), some of
    // the first (S1 has those already: they do not).
    writes(&vol, &mut now, &mut rng, half, VOL_LEN, 10);
    writes(&vol, &mut now, &mut rng, 0, half, 3);
    let s3 = create(&rec, &vol, &now, "s3");
    writes(&vol, &mut now, &mut rng, 0, VOL_LEN, 10);
    vol.flush().unwrap();
    for m in [&s1, &s2, &s3] {
        check(&vol.snapshot(&m.name).unwrap(), m).unwrap();
    }
    Setup {
        rec,
        vol,
        snaps: vec![s1, s2, s3],
        now,
    }
}

fn check(s: &Snapshot, m: &Model) -> Result<(), String> {
    if !s.is_valid() {
        return Err(format!("{} is invalid: {:?}", m.name, s.info().state));
    }
    let mut buf = vec![0u8; VOL_LEN as usize];
    s.read(&mut buf, 0)
        .map_err(|e| format!("{} cannot be read: {e}", m.name))?;
    same(&buf, &m.bytes).map_err(|e| format!("snapshot {} differs from its model: {e}", m.name))
}

fn same(got: &[u8], want: &[u8]) -> Result<(), String> {
    if got == want {
        return Ok(());
    }
    let bad: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
    let mut blocks: Vec<u64> = bad.iter().map(|&b| b as u64 / BS * BS).collect();
    blocks.dedup();
    Err(format!(
        "{} bytes differ, the first at {} (got {:#04x}, expected {:#04x}); blocks {:?}{}",
        bad.len(),
        bad[0],
        got[bad[0]],
        want[bad[0]],
        &blocks[..blocks.len().min(8)],
        if blocks.len() > 8 { ", ..." } else { "" }
    ))
}

fn check_volume(vol: &Volume, want: &[u8]) -> Result<(), String> {
    let mut buf = vec![0u8; VOL_LEN as usize];
    vol.read(&mut buf, 0)
        .map_err(|e| format!("the volume cannot be read: {e}"))?;
    same(&buf, want).map_err(|e| format!("the volume differs from its model: {e}"))
}

/// Crash images of one instant: nothing pending survives, everything survives, then random
/// subsets. Each is (volume device, store devices).
fn images(cap: &Capture) -> Vec<(Arc<CrashDevice>, Vec<Arc<CrashDevice>>)> {
    let mut out = Vec::new();
    let build = |f: &dyn Fn(&CrashPoint, u64) -> CrashDevice| {
        (
            Arc::new(f(&cap.vol, 0)),
            cap.stores
                .iter()
                .enumerate()
                .map(|(i, p)| Arc::new(f(p, i as u64 + 1)))
                .collect::<Vec<_>>(),
        )
    };
    out.push(build(&|p, _| p.durable_image()));
    out.push(build(&|p, _| p.image_with(|_| true)));
    for t in 0..trials() {
        out.push(build(&|p, i| p.image(splitmix(t * 7919 + i))));
    }
    out
}

/// Open `dev` as the store of `m` (as the daemon does after a restart).
fn open_store(
    dev: &Arc<CrashDevice>,
    m: &Model,
) -> fss_core::Result<(FileStore, fss_core::store::Recovered)> {
    let expect = StoreIdentity {
        volume_id: VOL_ID,
        volume_len: VOL_LEN,
        snapshot_id: m.id,
    };
    let d: Arc<dyn BlockDevice> = dev.clone();
    FileStore::open(d, &expect, false, None, None)
}

/// Reopen the volume and attach, oldest first, the snapshot of every store that must open
/// (`required`) and of the others if they open. Returns the volume and which were attached.
fn reopen(
    vol_dev: &Arc<CrashDevice>,
    stores: &[Arc<CrashDevice>],
    models: &[Model],
    required: &[bool],
) -> Result<(Volume, Vec<bool>), String> {
    let d: Arc<dyn BlockDevice> = vol_dev.clone();
    let vol = Volume::with_identity("vol", d, VOL_ID);
    let mut attached = Vec::new();
    for ((dev, m), &req) in stores.iter().zip(models).zip(required) {
        match open_store(dev, m) {
            Ok((store, rec)) => {
                if req {
                    if let Some(r) = &rec.invalid {
                        return Err(format!("{} came back invalid: {r}", m.name));
                    }
                }
                vol.attach_snapshot(&persistent(), Box::new(store), rec)
                    .map_err(|e| format!("{} could not be attached: {e}", m.name))?;
                attached.push(true);
            }
            Err(e) if req => return Err(format!("the store of {} was refused: {e}", m.name)),
            Err(_) => attached.push(false),
        }
    }
    Ok((vol, attached))
}

/// The durable state of reopened devices (a power cut right after the redo), reopened.
fn durable(dev: &Arc<CrashDevice>) -> Arc<CrashDevice> {
    Arc::new(dev.freeze().durable_image())
}

fn run_captures(
    captures: &[Capture],
    mut one: impl FnMut(&Arc<CrashDevice>, &[Arc<CrashDevice>]) -> Result<(), String>,
) -> u64 {
    let mut n = 0;
    let mut failures = Vec::new();
    for (ci, cap) in captures.iter().enumerate() {
        for (ti, (vol_dev, stores)) in images(cap).into_iter().enumerate() {
            n += 1;
            if let Err(e) = one(&vol_dev, &stores) {
                failures.push(format!("instant {ci} ({}), image {ti}: {e}", cap.label));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {n} crash images failed; first ones:\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n")
    );
    n
}

// ---------------------------------------------------------------------------------------------
// Delete.

/// After a crash during the delete of S2: reopen S1, S2 if its store still opens, S3; redo the
/// delete if S2 came back; S1 and S3 (and the volume) must be exact.
fn delete_recovers(
    vol_dev: &Arc<CrashDevice>,
    stores: &[Arc<CrashDevice>],
    s: &Setup,
) -> Result<(), String> {
    let (vol, attached) = reopen(vol_dev, stores, &s.snaps, &[true, false, true])?;
    if attached[1] {
        vol.delete_snapshot("s2")
            .map_err(|e| format!("the redone delete failed: {e}"))?;
    }
    let check_all = |vol: &Volume, when: &str| -> Result<(), String> {
        let names: Vec<String> = vol
            .snapshots()
            .iter()
            .map(|x| x.name().to_string())
            .collect();
        if names != ["s1", "s3"] {
            return Err(format!("{when}: snapshots are {names:?}"));
        }
        for m in [&s.snaps[0], &s.snaps[2]] {
            check(&vol.snapshot(&m.name).unwrap(), m).map_err(|e| format!("{when}: {e}"))?;
        }
        check_volume(vol, &s.now).map_err(|e| format!("{when}: {e}"))
    };
    check_all(&vol, "after the recovery")?;
    // A power cut right after the redo: S2's store must be gone for good, S1 and S3 exact.
    drop(vol);
    let vol_dev = durable(vol_dev);
    let stores: Vec<_> = stores.iter().map(durable).collect();
    let (vol, attached) = reopen(&vol_dev, &stores, &s.snaps, &[true, false, true])?;
    if attached[1] {
        return Err("after the redo and a power cut, the store of s2 opens again".into());
    }
    check_all(&vol, "after the redo and a power cut")
}

#[test]
fn crash_during_delete_that_moves_entries() {
    let mut total = 0;
    for seed in 0..workloads() + 1 {
        let s = setup(seed);
        let s1_store = Arc::clone(&lock(&s.rec).stores[0]);
        let before = s1_store.writes();
        lock(&s.rec).capturing = true;
        s.vol.delete_snapshot("s2").unwrap();
        lock(&s.rec).capturing = false;
        assert!(
            s1_store.writes() > before,
            "seed {seed}: the delete moved no entries into s1's store; the test is void"
        );
        check(&s.vol.snapshot("s1").unwrap(), &s.snaps[0]).unwrap();
        check(&s.vol.snapshot("s3").unwrap(), &s.snaps[2]).unwrap();
        // The instant after the delete, too.
        lock(&s.rec).capturing = true;
        lock(&s.rec).capture("after the delete".into());
        let captures = std::mem::take(&mut lock(&s.rec).captures);
        assert!(captures.len() > 3, "seed {seed}: too few instants");
        let n = run_captures(&captures, |v, st| delete_recovers(v, st, &s));
        eprintln!(
            "delete, seed {seed}: {} instants, {n} crash images checked",
            captures.len()
        );
        total += n;
    }
    assert!(total > 0);
}

// ---------------------------------------------------------------------------------------------
// Rollback.

/// The daemon's rollback (`rollback_pass` in `crates/fssd/src/registry/rollback.rs`): the snapshot's
/// bytes over every changed extent, through the engine, in chunks, then a flush. Idempotent.
fn rollback(vol: &Volume, snap: &Snapshot, chunk: u64) -> fss_core::Result<u64> {
    let extents: Vec<_> = snap
        .changed(0, vol.len())?
        .into_iter()
        .filter(|e| e.data)
        .collect();
    let total: u64 = extents.iter().map(|e| e.len).sum();
    let mut buf = vec![0u8; chunk.min(total.max(1)) as usize];
    for e in &extents {
        let (mut off, end) = (e.offset, e.offset + e.len);
        while off < end {
            let n = (end - off).min(buf.len() as u64) as usize;
            snap.read(&mut buf[..n], off)?;
            vol.write(&buf[..n], off)?;
            off += n as u64;
        }
    }
    vol.flush()?;
    Ok(total)
}

/// After a crash during a rollback to `target`: reopen every snapshot (all must be exact even
/// before the redo), redo the rollback from the start, then the volume must equal the target
/// and every snapshot still be exact.
fn rollback_recovers(
    vol_dev: &Arc<CrashDevice>,
    stores: &[Arc<CrashDevice>],
    s: &Setup,
    target: usize,
    chunk: u64,
) -> Result<(), String> {
    let (vol, _) = reopen(vol_dev, stores, &s.snaps, &[true, true, true])?;
    let check_snaps = |vol: &Volume, when: &str| -> Result<(), String> {
        for m in &s.snaps {
            let snap = vol
                .snapshot(&m.name)
                .ok_or_else(|| format!("{when}: {} is missing", m.name))?;
            check(&snap, m).map_err(|e| format!("{when}: {e}"))?;
        }
        Ok(())
    };
    check_snaps(&vol, "after the power cut")?;
    let snap = vol.snapshot(&s.snaps[target].name).unwrap();
    rollback(&vol, &snap, chunk).map_err(|e| format!("the redone rollback failed: {e}"))?;
    check_volume(&vol, &s.snaps[target].bytes).map_err(|e| format!("after the redo: {e}"))?;
    check_snaps(&vol, "after the redo")?;
    drop((snap, vol));
    let vol_dev = durable(vol_dev);
    let stores: Vec<_> = stores.iter().map(durable).collect();
    let (vol, _) = reopen(&vol_dev, &stores, &s.snaps, &[true, true, true])?;
    check_volume(&vol, &s.snaps[target].bytes)
        .map_err(|e| format!("after the redo and a power cut: {e}"))?;
    check_snaps(&vol, "after the redo and a power cut")
}

fn crash_during_rollback(target: usize, chunk: u64) {
    for seed in 10..10 + workloads() {
        let s = setup(seed);
        let snap = s.vol.snapshot(&s.snaps[target].name).unwrap();
        lock(&s.rec).capturing = true;
        let total = rollback(&s.vol, &snap, chunk).unwrap();
        lock(&s.rec).capture("after the rollback".into());
        lock(&s.rec).capturing = false;
        assert!(total > 0, "seed {seed}: nothing to roll back");
        check_volume(&s.vol, &s.snaps[target].bytes).unwrap();
        for m in &s.snaps {
            check(&s.vol.snapshot(&m.name).unwrap(), m).unwrap();
        }
        // Rolling back again changes nothing.
        rollback(&s.vol, &snap, chunk).unwrap();
        check_volume(&s.vol, &s.snaps[target].bytes).unwrap();
        let captures = std::mem::take(&mut lock(&s.rec).captures);
        assert!(captures.len() > 3, "seed {seed}: too few instants");
        let n = run_captures(&captures, |v, st| {
            rollback_recovers(v, st, &s, target, chunk)
        });
        eprintln!(
            "rollback to {}, chunk {chunk}, seed {seed}: {total} bytes, {} instants, {n} crash \
             images checked",
            s.snaps[target].name,
            captures.len()
        );
    }
}

/// To the middle snapshot, with the daemon's 4 MiB chunks: S1 older, S3 newer must stay exact.
#[test]
fn crash_during_rollback_to_middle_snapshot() {
    crash_during_rollback(1, DAEMON_CHUNK);
}

/// To the oldest snapshot, in 16 KiB chunks (more instants between volume writes).
#[test]
fn crash_during_rollback_to_oldest_snapshot_small_chunks() {
    crash_during_rollback(0, 16 * KIB);
}
