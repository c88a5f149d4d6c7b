//! A device that simulates power cuts, for crash tests.
//!
//! A [`CrashDevice`] keeps two images: the *durable* one (the bytes as of the last completed
//! flush) and the *current* one (what reads see), plus the list of writes since that flush, in
//! order (discards and write-zeroes are recorded as writes of zeroes). A flush folds the writes
//! that completed before it into the durable image.
//!
//! At any instant, [`CrashDevice::freeze`] captures a [`CrashPoint`], from which
//! [`CrashPoint::image`] builds what a power cut then could leave on the medium: the durable
//! image plus a random subset of the pending writes, applied in their original order. Each write
//! is first torn into pieces at the device's tear unit (4 KiB by default, in absolute device
//! offsets), and each piece survives or not on its own: the harsher model of `docs/FORMAT.md`
//! section 6. A write that was not torn at all survives entirely or not at all.
//!
//! A crash image is itself a `CrashDevice` (with everything on it durable), so a test can reopen
//! it, write more, and crash it again. A hook ([`CrashDevice::set_hook`]) is called before every
//! write and flush takes effect, so a test can freeze all its devices at every point in the
//! middle of an operation, not only between operations.

use super::{BlockDevice, Extent};
use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Page size of the sparse images. Pages are shared between images and copied on write, so
/// freezing a device and building crash images cost little.
const PAGE: u64 = 4096;
/// The default tear unit: a block.
const DEFAULT_TEAR: u64 = 4096;

type Page = [u8; PAGE as usize];

/// A sparse image: pages present where written, zeroes elsewhere.
#[derive(Debug, Clone, Default)]
struct Image {
    len: u64,
    pages: BTreeMap<u64, Arc<Page>>,
}

impl Image {
    /// Write `len` bytes at `offset`: `data` (of that length), or zeroes if `None`.
    /// Extends the length to the end of the write.
    fn write(&mut self, offset: u64, len: u64, data: Option<&[u8]>) {
        let end = offset + len;
        self.len = self.len.max(end);
        let mut pos = offset;
        while pos < end {
            let page = pos / PAGE;
            let in_page = (pos % PAGE) as usize;
            let n = (PAGE - pos % PAGE).min(end - pos) as usize;
            match data {
                Some(d) => {
                    let at = (pos - offset) as usize;
                    let p = self
                        .pages
                        .entry(page)
                        .or_insert_with(|| Arc::new([0u8; PAGE as usize]));
                    Arc::make_mut(p)[in_page..in_page + n].copy_from_slice(&d[at..at + n]);
                }
                None if n as u64 == PAGE => {
                    self.pages.remove(&page);
                }
                None => {
                    if let Some(p) = self.pages.get_mut(&page) {
                        Arc::make_mut(p)[in_page..in_page + n].fill(0);
                    }
                }
            }
            pos += n as u64;
        }
    }

    fn read(&self, buf: &mut [u8], offset: u64) {
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let page = pos / PAGE;
            let in_page = (pos % PAGE) as usize;
            let n = (PAGE - pos % PAGE).min(end - pos) as usize;
            let at = (pos - offset) as usize;
            match self.pages.get(&page) {
                Some(p) => buf[at..at + n].copy_from_slice(&p[in_page..in_page + n]),
                None => buf[at..at + n].fill(0),
            }
            pos += n as u64;
        }
    }

    fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; usize::try_from(self.len).unwrap_or(usize::MAX)];
        self.read(&mut v, 0);
        v
    }

    fn apply(&mut self, w: &Pending) {
        self.write(w.offset, w.len, w.data.as_deref());
    }
}

/// A write since the last flush.
#[derive(Debug, Clone)]
struct Pending {
    /// Order of arrival, over the device's whole life.
    seq: u64,
    offset: u64,
    len: u64,
    /// `None`: zeroes (a discard or write-zeroes).
    data: Option<Arc<[u8]>>,
}

#[derive(Debug, Default)]
struct State {
    durable: Image,
    current: Image,
    pending: Vec<Pending>,
    next_seq: u64,
    flushes: u64,
    writes: u64,
}

/// What a [`CrashDevice`] is about to do, as told to its hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashOp {
    /// A write of `len` bytes at `offset`.
    Write {
        /// Start, in bytes.
        offset: u64,
        /// Length, in bytes.
        len: u64,
    },
    /// A discard or write-zeroes of `len` bytes at `offset` (recorded as a write of zeroes).
    Zeroes {
        /// Start, in bytes.
        offset: u64,
        /// Length, in bytes.
        len: u64,
    },
    /// A flush.
    Flush,
}

/// A function called before each write and flush of a [`CrashDevice`] takes effect.
pub type CrashHook = Arc<dyn Fn(CrashOp) + Send + Sync>;

/// A sparse in-memory device that remembers which writes are durable, so that tests can build
/// the image a power cut would leave at any instant (see the module documentation).
pub struct CrashDevice {
    growable: bool,
    max_len: u64,
    tear_unit: u64,
    state: Mutex<State>,
    hook: Mutex<Option<CrashHook>>,
    flush_latency_ns: AtomicU64,
}

impl std::fmt::Debug for CrashDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("CrashDevice")
            .field("len", &s.current.len)
            .field("growable", &self.growable)
            .field("tear_unit", &self.tear_unit)
            .field("pending", &s.pending.len())
            .field("flushes", &s.flushes)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change under these locks is a whole-method update; a panic elsewhere leaves bytes,
    // not broken invariants, behind.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn no_space() -> io::Error {
    io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error())
}

impl CrashDevice {
    /// A fixed-size device of `len` bytes, all zero and durable (for a volume).
    #[must_use]
    pub fn new(len: u64) -> Self {
        Self::with_image(
            Image {
                len,
                pages: BTreeMap::new(),
            },
            false,
            len,
            DEFAULT_TEAR,
        )
    }

    /// An empty device that grows on writes past its end, up to `max_len` bytes (for a store on
    /// a sparse file).
    #[must_use]
    pub fn growable(max_len: u64) -> Self {
        Self::with_image(Image::default(), true, max_len, DEFAULT_TEAR)
    }

    /// A fixed-size device holding `bytes`, all durable.
    #[must_use]
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut image = Image::default();
        image.write(0, bytes.len() as u64, Some(bytes));
        let len = image.len;
        Self::with_image(image, false, len, DEFAULT_TEAR)
    }

    fn with_image(image: Image, growable: bool, max_len: u64, tear_unit: u64) -> Self {
        CrashDevice {
            growable,
            max_len,
            tear_unit,
            state: Mutex::new(State {
                durable: image.clone(),
                current: image,
                ..State::default()
            }),
            hook: Mutex::new(None),
            flush_latency_ns: AtomicU64::new(0),
        }
    }

    /// Tear writes at multiples of `unit` bytes (device offsets) in crash images; `0` never
    /// tears a write (each survives entirely or not at all). The default is 4096.
    #[must_use]
    pub fn with_tear_unit(mut self, unit: u64) -> Self {
        self.tear_unit = unit;
        self
    }

    /// The tear unit in bytes (`0`: writes are never torn).
    #[must_use]
    pub fn tear_unit(&self) -> u64 {
        self.tear_unit
    }

    /// Whether the device grows on writes past its end.
    #[must_use]
    pub fn is_growable(&self) -> bool {
        self.growable
    }

    /// Call `hook` before each later write, discard, write-zeroes and flush takes effect
    /// (`None` removes it). The hook runs on the calling thread with no lock of this device
    /// held, so it may [`freeze`](Self::freeze) this device and others.
    pub fn set_hook(&self, hook: Option<CrashHook>) {
        *lock(&self.hook) = hook;
    }

    /// Make each later flush take `latency` (as `fdatasync` does), so that concurrent writers
    /// pile up behind it. A flush makes durable only the writes that completed before it began.
    pub fn set_flush_latency(&self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.flush_latency_ns.store(ns, Ordering::Relaxed);
    }

    /// Writes (including discards and write-zeroes) since the last completed flush.
    #[must_use]
    pub fn pending_writes(&self) -> usize {
        self.lock().pending.len()
    }

    /// Completed flushes.
    #[must_use]
    pub fn flushes(&self) -> u64 {
        self.lock().flushes
    }

    /// Writes (including discards and write-zeroes) served, over the device's whole life.
    #[must_use]
    pub fn writes(&self) -> u64 {
        self.lock().writes
    }

    /// The current contents, as reads see them.
    #[must_use]
    pub fn contents(&self) -> Vec<u8> {
        self.lock().current.to_vec()
    }

    /// The durable contents: as of the last completed flush.
    #[must_use]
    pub fn durable_contents(&self) -> Vec<u8> {
        self.lock().durable.to_vec()
    }

    /// Capture the device's state now: the durable image and the pending writes. Cheap (pages
    /// are shared, not copied).
    #[must_use]
    pub fn freeze(&self) -> CrashPoint {
        let s = self.lock();
        CrashPoint {
            durable: s.durable.clone(),
            pending: s.pending.clone(),
            growable: self.growable,
            max_len: self.max_len,
            tear_unit: self.tear_unit,
        }
    }

    /// What a power cut now could leave: the durable image plus a random subset (chosen by
    /// `rng_seed`) of the pieces of the pending writes, in order. See [`CrashPoint::image`].
    #[must_use]
    pub fn crash_image(&self, rng_seed: u64) -> CrashDevice {
        self.freeze().image(rng_seed)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn call_hook(&self, op: CrashOp) {
        let hook = lock(&self.hook).clone();
        if let Some(h) = hook {
            h(op);
        }
    }

    fn check_range(len: u64, offset: u64, n: u64) -> io::Result<()> {
        match offset.checked_add(n) {
            Some(end) if end <= len => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "range past the end of the crash device",
            )),
        }
    }

    /// Record a write of `len` bytes (data, or zeroes if `None`) at `offset`.
    fn record(&self, offset: u64, len: u64, data: Option<&[u8]>) {
        let data: Option<Arc<[u8]>> = data.map(Arc::from);
        let mut s = self.lock();
        let seq = s.next_seq;
        s.next_seq += 1;
        s.writes += 1;
        s.current.write(offset, len, data.as_deref());
        if !self.growable {
            s.current.len = self.max_len;
        }
        s.pending.push(Pending {
            seq,
            offset,
            len,
            data,
        });
    }

    fn zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.call_hook(CrashOp::Zeroes { offset, len });
        Self::check_range(self.lock().current.len, offset, len)?;
        if len > 0 {
            self.record(offset, len, None);
        }
        Ok(())
    }
}

impl BlockDevice for CrashDevice {
    fn len(&self) -> u64 {
        self.lock().current.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let s = self.lock();
        Self::check_range(s.current.len, offset, buf.len() as u64)?;
        s.current.read(buf, offset);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let len = buf.len() as u64;
        self.call_hook(CrashOp::Write { offset, len });
        match offset.checked_add(len) {
            Some(end) if end <= self.max_len => {}
            _ => return Err(no_space()),
        }
        if len > 0 {
            self.record(offset, len, Some(buf));
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        // Only writes that completed before the flush began are covered by it.
        let upto = self.lock().next_seq;
        self.call_hook(CrashOp::Flush);
        let ns = self.flush_latency_ns.load(Ordering::Relaxed);
        if ns > 0 {
            std::thread::sleep(Duration::from_nanos(ns));
        }
        let mut s = self.lock();
        let n = s.pending.iter().take_while(|w| w.seq < upto).count();
        let done: Vec<Pending> = s.pending.drain(..n).collect();
        for w in &done {
            s.durable.apply(w);
        }
        if !self.growable {
            s.durable.len = self.max_len;
        }
        s.flushes += 1;
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.zeroes(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.zeroes(offset, len)
    }

    fn describe(&self) -> String {
        "crash-simulating memory device".to_string()
    }

    fn allocation(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let s = self.lock();
        Self::check_range(s.current.len, offset, len)?;
        let mut out = Vec::new();
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let n = (PAGE - pos % PAGE).min(end - pos);
            let data = s.current.pages.contains_key(&(pos / PAGE));
            super::push_extent(
                &mut out,
                Extent {
                    offset: pos,
                    len: n,
                    data,
                },
            );
            pos += n;
        }
        Ok(out)
    }
}

/// One piece of a pending write in a crash image: it survives a power cut entirely or not at
/// all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Which pending write it belongs to (0 is the oldest since the last flush).
    pub write: usize,
    /// Start, in bytes of the device.
    pub offset: u64,
    /// Length, in bytes.
    pub len: u64,
    /// Whether the write was a discard or write-zeroes.
    pub zeroes: bool,
}

/// The state of a [`CrashDevice`] at one instant: its durable image and its pending writes.
/// Build crash images from it with [`CrashPoint::image`] or [`CrashPoint::image_with`].
#[derive(Debug, Clone)]
pub struct CrashPoint {
    durable: Image,
    pending: Vec<Pending>,
    growable: bool,
    max_len: u64,
    tear_unit: u64,
}

/// A small deterministic generator (SplitMix64) for choosing subsets.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

impl CrashPoint {
    /// Writes (including discards and write-zeroes) not yet durable at this instant.
    #[must_use]
    pub fn pending_writes(&self) -> usize {
        self.pending.len()
    }

    /// The pieces a power cut chooses among, in order: each pending write split at multiples
    /// of the tear unit.
    #[must_use]
    pub fn pieces(&self) -> Vec<Piece> {
        let mut out = Vec::new();
        for (i, w) in self.pending.iter().enumerate() {
            let end = w.offset + w.len;
            let mut pos = w.offset;
            while pos < end {
                let next = match pos.checked_div(self.tear_unit) {
                    Some(unit) => ((unit + 1) * self.tear_unit).min(end),
                    None => end,
                };
                out.push(Piece {
                    write: i,
                    offset: pos,
                    len: next - pos,
                    zeroes: w.data.is_none(),
                });
                pos = next;
            }
        }
        out
    }

    /// The image a power cut would leave if exactly the pieces for which `keep` returns true
    /// survived (applied in their original order over the durable image). A growable device's
    /// length is the durable length, extended by the surviving pieces. Everything on the new
    /// device is durable; it keeps the tear unit and size limits, but no hook.
    #[must_use]
    pub fn image_with(&self, mut keep: impl FnMut(&Piece) -> bool) -> CrashDevice {
        let mut image = self.durable.clone();
        for p in self.pieces() {
            if keep(&p) {
                let w = &self.pending[p.write];
                let data = w.data.as_ref().map(|d| {
                    let at = (p.offset - w.offset) as usize;
                    &d[at..at + p.len as usize]
                });
                image.write(p.offset, p.len, data);
            }
        }
        if !self.growable {
            image.len = self.max_len;
        }
        CrashDevice::with_image(image, self.growable, self.max_len, self.tear_unit)
    }

    /// A random crash image chosen by `rng_seed`. The survival pattern varies with the seed so
    /// that many trials cover the extremes as well as the middle: nothing survives, everything
    /// survives, an in-order prefix survives, all but one piece survives, or each piece
    /// survives with a random probability.
    #[must_use]
    pub fn image(&self, rng_seed: u64) -> CrashDevice {
        let mut rng = SplitMix(rng_seed ^ 0x6A09_E667_F3BC_C908);
        let n = self.pieces().len() as u64;
        let mode = rng.below(8);
        let cut = rng.below(n + 1);
        let lost = rng.below(n);
        // Survival probability, in 1/1024ths.
        let p = rng.below(1025);
        let mut i = 0u64;
        self.image_with(|_| {
            let k = i;
            i += 1;
            match mode {
                0 => false,
                1 => true,
                2 => k < cut,
                3 => k != lost,
                _ => rng.below(1024) < p,
            }
        })
    }

    /// The image if none of the pending writes survived.
    #[must_use]
    pub fn durable_image(&self) -> CrashDevice {
        self.image_with(|_| false)
    }
}

#[cfg(test)]
mod tests;
