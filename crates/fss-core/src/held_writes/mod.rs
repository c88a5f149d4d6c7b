//! Origin writes acknowledged before they reach the volume device.
//!
//! A first overwrite that put pre-images into a persistent store must not reach the volume
//! before those pre-images and their records are durable: a crash could otherwise leave the
//! volume changed and the snapshot without the old data. Flushing the store inside every write
//! costs one disk flush per request. Instead the write is acknowledged once its pre-images are
//! in the store (as a disk acknowledges into its volatile cache), and a committer thread makes
//! the stores durable (one group commit for everything held meanwhile), then applies the held
//! writes to the volume in order. Reads and writes of a held range wait until it is applied,
//! and a volume flush waits for every held write, so FLUSH keeps its meaning: data and the
//! records that find the pre-images are durable when it returns.
//!
//! With a journal (`held_journal`), a held write is also written there before it is
//! acknowledged, so that a death of the process does not lose it.

mod apply;

use crate::chain::SnapState;
use crate::device::BlockDevice;
use crate::error::{Error, Result};
use crate::held_journal::{self, HeldJournal, Kind};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The most bytes held per volume; a writer past it waits for the committer. Room for about
/// two batches: while the committer flushes one (at queue depth 16 a store flush waits behind
/// the disk's queue, 15 to 20 ms for 15 MiB), writers fill the next instead of waiting. With
/// 16 MiB, 1 MiB writers at depth 16 spent half their time here (docs/PERFORMANCE.md).
const MAX_HELD_BYTES: u64 = 32 << 20;

/// How long the committer lets held writes gather before one store flush covers them all,
/// unless someone waits for them (a flush, a read or write of a held range, a barrier). At
/// queue depth 1 every store flush competes with the next pre-image read for the disk: 8 ms
/// gave about 10% more 4 KiB first overwrites than 2 ms, and made no difference at depth 16
/// (docs/PERFORMANCE.md).
const GATHER: Duration = Duration::from_millis(8);

/// Held bytes past which the committer starts at once.
const GATHER_BYTES: u64 = 4 << 20;

/// The longest single held change: the write path (`volume/write.rs`) splits larger ones.
pub(crate) const MAX_HELD_LEN: u64 = 32 << 20;

/// What a held write does to the volume when it is applied.
pub(crate) enum HeldChange {
    /// The bytes of `buf` from `data_at` on. When the volume has a journal, `buf` holds the
    /// write's journal record from `rec_at` on (header, then the bytes): one copy of the data
    /// serves both.
    Write {
        buf: Vec<u8>,
        rec_at: usize,
        data_at: usize,
    },
    Discard,
    Zeroes,
}

impl HeldChange {
    /// A held write of `data` to `offset`, with its journal record made already when
    /// `journaled` (outside the held writes' lock).
    pub fn write(data: &[u8], offset: u64, journaled: bool) -> Self {
        if journaled {
            // A large write is applied with O_DIRECT: its data then starts on a boundary.
            let direct = !crate::volume::cached_transfer(data.len() as u64);
            let (buf, rec_at) =
                held_journal::record_at(Kind::Write, offset, data.len() as u64, data, direct);
            return HeldChange::Write {
                buf,
                rec_at,
                data_at: rec_at + held_journal::RECORD_LEN,
            };
        }
        let (mut buf, at) = if crate::volume::cached_transfer(data.len() as u64) {
            (Vec::with_capacity(data.len()), 0)
        } else {
            held_journal::aligned_vec(0, data.len())
        };
        buf.extend_from_slice(data);
        HeldChange::Write {
            buf,
            rec_at: at,
            data_at: at,
        }
    }

    /// Whether this is a write whose journal record is made already.
    fn has_record(&self) -> bool {
        matches!(self, HeldChange::Write { rec_at, data_at, .. }
            if *data_at == *rec_at + held_journal::RECORD_LEN)
    }
}

/// A persistent snapshot whose store must be durable before a held write is applied, and the
/// snapshots to invalidate if it cannot be (it and the older ones whose chain resolves the
/// preserved blocks to it).
pub(crate) struct StoreSync {
    pub snap: Arc<SnapState>,
    pub affected: Vec<Arc<SnapState>>,
}

/// One held change.
pub(crate) struct Held {
    pub offset: u64,
    pub len: u64,
    pub change: HeldChange,
    pub syncs: Vec<StoreSync>,
}

struct State {
    /// Waiting for the committer, with their arrival numbers.
    queue: Vec<(u64, Held)>,
    /// Every held change not yet applied, by (offset, arrival number) → end.
    ranges: BTreeMap<(u64, u64), u64>,
    next: u64,
    bytes: u64,
    /// The first change that could not be applied, reported by the next flush.
    error: Option<Error>,
    stop: bool,
    /// Someone waits for held changes: commit without gathering more.
    urgent: bool,
    /// Where held changes are kept outside the process, and where the next record goes.
    journal: Option<(Arc<HeldJournal>, u64)>,
    /// Test hook: how long the committer waits before each commit.
    pause: Duration,
}

struct Inner {
    dev: Arc<dyn BlockDevice>,
    object: String,
    state: Mutex<State>,
    /// The committer waits here for work.
    work: Condvar,
    /// Writers, readers and flushes wait here for changes to be applied.
    applied: Condvar,
    /// Held changes not yet applied: lets I/O skip the lock when nothing is held.
    count: AtomicUsize,
    /// A journal is in use (set once, before the first write): writers make their records
    /// before taking the lock.
    journaled: AtomicBool,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update of the state is completed under the lock before anything can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The held writes of one volume, and their committer thread (started on first use).
pub(crate) struct HeldWrites {
    inner: Arc<Inner>,
    committer: Mutex<Option<JoinHandle<()>>>,
}

fn overlaps(s: &State, offset: u64, len: u64) -> bool {
    let end = offset + len;
    let from = offset.saturating_sub(MAX_HELD_LEN);
    s.ranges
        .range((from, 0)..(end, 0))
        .any(|(&(start, _), &e)| start < end && e > offset)
}

impl HeldWrites {
    /// Held writes for the volume on `dev`, named `object` in messages.
    pub fn new(dev: Arc<dyn BlockDevice>, object: String) -> Self {
        HeldWrites {
            inner: Arc::new(Inner {
                dev,
                object,
                state: Mutex::new(State {
                    queue: Vec::new(),
                    ranges: BTreeMap::new(),
                    next: 0,
                    bytes: 0,
                    error: None,
                    stop: false,
                    urgent: false,
                    journal: None,
                    pause: Duration::ZERO,
                }),
                work: Condvar::new(),
                applied: Condvar::new(),
                count: AtomicUsize::new(0),
                journaled: AtomicBool::new(false),
            }),
            committer: Mutex::new(None),
        }
    }

    /// Hold `h` until its stores are durable; returns at once unless too much is held.
    ///
    /// # Errors
    /// The journal could not take it: the write is not acknowledged (nothing of it reached
    /// the volume; its pre-images are made durable, as they are mapped already).
    pub fn hold(&self, mut h: Held) -> Result<()> {
        let inner = &self.inner;
        if inner.journaled.load(Ordering::Acquire) {
            // A write made before the journal was in use: make its record now, unlocked.
            if let HeldChange::Write { buf, data_at, .. } = &h.change {
                if !h.change.has_record() {
                    let made = HeldChange::write(&buf[*data_at..], h.offset, true);
                    h.change = made;
                }
            }
        }
        let mut s = inner.lock();
        while s.bytes > 0 && s.bytes + h.len > MAX_HELD_BYTES {
            s = hurry(inner, s);
            s = inner
                .applied
                .wait(s)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if s.journal.is_some() {
            s = match journal_append(inner, s, &mut h) {
                Ok(s) => s,
                Err(e) => {
                    make_durable(&h.syncs.iter().collect::<Vec<_>>());
                    return Err(e);
                }
            };
        }
        let key = (h.offset, s.next);
        s.next += 1;
        s.ranges.insert(key, h.offset + h.len);
        s.bytes += h.len;
        // The committer sleeps until a first change arrives, then gathers on a timer: wake it
        // only for the first, or when enough is held to start at once.
        let wake = s.queue.is_empty() || s.bytes >= GATHER_BYTES;
        s.queue.push((key.1, h));
        inner.count.fetch_add(1, Ordering::AcqRel);
        drop(s);
        self.start_committer();
        if wake {
            inner.work.notify_one();
        }
        Ok(())
    }

    /// Bytes acknowledged but not applied to the volume yet.
    pub fn bytes(&self) -> u64 {
        self.inner.lock().bytes
    }

    /// Keep held changes in `journal` from now on; records are numbered from the next
    /// arrival on, and everything before counts as retired.
    pub fn use_journal(&self, journal: Arc<HeldJournal>) -> Result<()> {
        let mut s = self.inner.lock();
        journal
            .retire(s.next)
            .map_err(|e| Error::io("start the journal of", self.inner.object.clone(), e))?;
        s.journal = Some((journal, held_journal::START));
        self.inner.journaled.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether held changes are kept in a journal.
    pub fn journaled(&self) -> bool {
        self.inner.journaled.load(Ordering::Acquire)
    }

    /// Test hook: the committer waits `pause` before each commit, so held writes stay held.
    pub fn set_pause(&self, pause: Duration) {
        self.inner.lock().pause = pause;
    }

    fn start_committer(&self) {
        let mut c = self
            .committer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if c.is_none() {
            let inner = Arc::clone(&self.inner);
            // Named, or it inherits the name of the front-end thread that made the first held
            // write and cannot be told apart from it in a profile.
            let t = std::thread::Builder::new()
                .name("fss-committer".into())
                .spawn(move || commit_loop(&inner));
            // As `std::thread::spawn` would: without the thread, held writes could never
            // apply, and the request that held this one fails instead (EIO at the front-end).
            match t {
                Ok(h) => *c = Some(h),
                Err(e) => panic!("cannot start the held-writes committer thread: {e}"),
            }
        }
    }

    /// Wait until no held change overlaps `[offset, offset + len)`.
    pub fn wait_clear(&self, offset: u64, len: u64) {
        let inner = &self.inner;
        if inner.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut s = inner.lock();
        while overlaps(&s, offset, len) {
            s = hurry(inner, s);
            s = inner
                .applied
                .wait(s)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Whether no held change overlaps `[offset, offset + len)` now.
    pub fn is_clear(&self, offset: u64, len: u64) -> bool {
        let inner = &self.inner;
        inner.count.load(Ordering::Acquire) == 0 || !overlaps(&inner.lock(), offset, len)
    }

    /// Wait until every held change is applied.
    pub fn wait_all(&self) {
        let inner = &self.inner;
        if inner.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut s = inner.lock();
        while !s.ranges.is_empty() {
            s = hurry(inner, s);
            s = inner
                .applied
                .wait(s)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The first held change that could not be applied since the last call, if any.
    pub fn take_error(&self) -> Option<Error> {
        self.inner.lock().error.take()
    }
}

impl Drop for HeldWrites {
    fn drop(&mut self) {
        // Apply what is held, then let the committer end.
        self.inner.lock().stop = true;
        self.inner.work.notify_all();
        let handle = self
            .committer
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
        if let Some(e) = self.inner.lock().error.take() {
            tracing::error!(error = %e, "a write acknowledged earlier was not applied");
        }
    }
}

/// Append `h` to the journal as the next arrival; when the record area is full, first wait
/// until everything held is applied and reuse it from the start. A write's record is made
/// already (`HeldChange::write`); only its number is filled in here, under the lock.
fn journal_append<'a>(
    inner: &'a Inner,
    mut s: MutexGuard<'a, State>,
    h: &mut Held,
) -> Result<MutexGuard<'a, State>> {
    let mut small;
    let rec: &mut [u8] = match &mut h.change {
        HeldChange::Write {
            buf,
            rec_at,
            data_at,
        } if *data_at == *rec_at + held_journal::RECORD_LEN => &mut buf[*rec_at..],
        HeldChange::Write { buf, data_at, .. } => {
            small = held_journal::record(Kind::Write, h.offset, h.len, &buf[*data_at..]);
            &mut small
        }
        HeldChange::Discard => {
            small = held_journal::record(Kind::Discard, h.offset, h.len, &[]);
            &mut small
        }
        HeldChange::Zeroes => {
            small = held_journal::record(Kind::Zeroes, h.offset, h.len, &[]);
            &mut small
        }
    };
    let rec_len = rec.len() as u64;
    while s
        .journal
        .as_ref()
        .is_some_and(|(_, at)| *at > held_journal::START && *at + rec_len > held_journal::LIMIT)
    {
        s = hurry(inner, s);
        s = inner
            .applied
            .wait(s)
            .unwrap_or_else(PoisonError::into_inner);
    }
    let seq = s.next + 1;
    if let Some((j, at)) = s.journal.as_mut() {
        *at = j
            .append_record(*at, seq, rec)
            .map_err(|e| Error::io("journal a write to", inner.object.clone(), e).at(h.offset))?;
    }
    Ok(s)
}

/// Ask the committer not to gather more before its next commit (a waiter is about to sleep).
fn hurry<'a>(inner: &'a Inner, mut s: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
    if !s.urgent {
        s.urgent = true;
        inner.work.notify_one();
    }
    s
}

fn commit_loop(inner: &Inner) {
    loop {
        let batch = {
            let mut s = inner.lock();
            while s.queue.is_empty() && !s.stop {
                s = inner.work.wait(s).unwrap_or_else(PoisonError::into_inner);
            }
            if s.queue.is_empty() {
                return;
            }
            // Let more writes gather, so that one store flush covers them (group commit
            // across requests, not only across concurrent ones).
            let deadline = Instant::now() + GATHER;
            while !s.urgent && !s.stop && s.bytes < GATHER_BYTES {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                s = inner
                    .work
                    .wait_timeout(s, deadline - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            s.urgent = false;
            if !s.pause.is_zero() {
                let pause = s.pause;
                drop(s);
                std::thread::sleep(pause);
                s = inner.lock();
            }
            std::mem::take(&mut s.queue)
        };
        let syncs: Vec<&StoreSync> = batch.iter().flat_map(|(_, h)| &h.syncs).collect();
        make_durable(&syncs);
        let mut failed = apply::apply_batch(inner.dev.as_ref(), &inner.object, &batch);
        // Retired before a later write of these blocks may be applied, so that a replay
        // never puts older bytes over newer ones.
        let journal = inner.lock().journal.as_ref().map(|(j, _)| Arc::clone(j));
        if let (Some(j), Some((last, _))) = (journal, batch.last()) {
            if let Err(e) = j.retire(last + 1) {
                tracing::error!(volume = %inner.object, error = %e,
                    "could not retire applied writes in the journal; a replay would apply them again");
                failed.get_or_insert_with(|| {
                    Error::io(
                        "retire applied writes in the journal of",
                        inner.object.clone(),
                        e,
                    )
                });
            }
        }
        let mut s = inner.lock();
        if s.error.is_none() {
            s.error = failed;
        }
        for (n, h) in &batch {
            s.ranges.remove(&(h.offset, *n));
            s.bytes -= h.len;
        }
        // Everything applied and retired: reuse the record area from the start.
        if s.ranges.is_empty() && s.queue.is_empty() {
            if let Some((j, at)) = s.journal.as_mut() {
                j.reused(*at);
                *at = held_journal::START;
            }
        }
        inner.count.fetch_sub(batch.len(), Ordering::AcqRel);
        drop(s);
        inner.applied.notify_all();
    }
}

/// Flush every store of `syncs` once (group commit); invalidate the snapshots a failed flush
/// leaves without their pre-images, before any write that relies on them reaches the volume.
pub(crate) fn make_durable(syncs: &[&StoreSync]) {
    let mut done: Vec<&Arc<SnapState>> = Vec::new();
    for s in syncs {
        if done.iter().any(|d| Arc::ptr_eq(d, &s.snap)) {
            continue;
        }
        done.push(&s.snap);
        if let Err(e) = s.snap.store.sync() {
            let reason = format!("its store could not be made durable: {e}");
            for s2 in syncs.iter().filter(|x| Arc::ptr_eq(&x.snap, &s.snap)) {
                for a in &s2.affected {
                    a.invalidate(&reason);
                }
            }
            s.snap.invalidate(&reason);
        }
    }
}
