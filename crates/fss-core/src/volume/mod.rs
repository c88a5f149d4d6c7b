//! The volume: the origin device and its live snapshots.
//!
//! Snapshots form two chains (persistent and transient), each ordered by creation. A first
//! overwrite of a block after the newest valid snapshot of a chain stores its pre-image once,
//! in that snapshot's store (the chain rule, DESIGN decision 1), at 4 KiB granularity inside
//! cluster-sized slots (decision 2); see `write.rs`. Snapshots are created, attached and
//! deleted in `lifecycle.rs`; they are read through [`Snapshot`] (`crate::snapshot`). The
//! locking is described in [`crate::core`].

mod lifecycle;
mod pre_images;
mod write;
pub(crate) use write::cached_transfer;

use crate::core::VolumeCore;
use crate::device::{BlockDevice, Extent};
use crate::error::{Error, Result};
use crate::held_journal::{HeldJournal, Kind};
use crate::snapshot::Snapshot;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use write::Change;

/// Counters of one volume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeStats {
    /// Read requests.
    pub reads: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Write, discard and write-zeroes requests.
    pub writes: u64,
    /// Bytes written, discarded or zeroed.
    pub bytes_written: u64,
    /// Requests that had to preserve at least one block.
    pub cow_calls: u64,
    /// Pre-image blocks written to stores (one per chain that needed it).
    pub blocks_preserved: u64,
    /// Times a writer waited for a block someone else was preserving.
    pub busy_waits: u64,
    /// Live snapshots.
    pub snapshots: u64,
    /// Bytes of writes acknowledged but not applied to the volume yet (held until their
    /// pre-images are durable).
    pub held_bytes: u64,
}

/// An origin device served read-write, with its live snapshots.
#[derive(Clone)]
pub struct Volume {
    core: Arc<VolumeCore>,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("name", &self.core.name)
            .finish_non_exhaustive()
    }
}

impl Volume {
    /// Serve `dev` as the volume `name`, with no snapshots and a zero identity.
    pub fn new(name: impl Into<String>, dev: Arc<dyn BlockDevice>) -> Self {
        Self::with_identity(name, dev, [0; 16])
    }

    /// Serve `dev` as the volume `name` with identity `id`, which durable stores record and
    /// check when they are reopened.
    pub fn with_identity(name: impl Into<String>, dev: Arc<dyn BlockDevice>, id: [u8; 16]) -> Self {
        Volume {
            core: Arc::new(VolumeCore::new(name.into(), dev, id)),
        }
    }

    /// The volume's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// The volume's length in bytes.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.core.len
    }

    /// Whether the volume has no bytes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.core.len == 0
    }

    /// The cluster size fixed by the live snapshots, if there are any.
    #[must_use]
    pub fn cluster_size(&self) -> Option<u64> {
        self.core.chains().geometry.map(|g| g.cluster_size())
    }

    /// Read the volume's current contents.
    ///
    /// # Errors
    /// `OutOfRange`, `Io`.
    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let s = &self.core;
        s.check_range("read", &s.object(), offset, buf.len() as u64)?;
        s.counters.reads.fetch_add(1, Ordering::Relaxed);
        s.counters
            .bytes_read
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        s.held.wait_clear(offset, buf.len() as u64);
        s.dev
            .read_at(buf, offset)
            .map_err(|e| Error::io("read", s.object(), e).at(offset))
    }

    /// Where a direct read of `buf.len()` bytes at `offset` reads ([`crate::direct_read`]):
    /// `None` out of range, over a held write, or on a device with no file.
    pub(crate) fn direct_read(&self, offset: u64, buf: &[u8]) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        let s = &self.core;
        let len = buf.len() as u64;
        if len == 0 || offset.checked_add(len)? > s.len || !s.held.is_clear(offset, len) {
            return None;
        }
        Some(s.dev.read_source(offset, buf)?.as_raw_fd())
    }

    /// Its name in error messages.
    pub(crate) fn object(&self) -> String {
        self.core.object()
    }

    /// Count a direct read that completed whole (one that did not was redone by
    /// [`Volume::read`], which counts itself).
    pub(crate) fn count_direct_read(&self, len: usize) {
        let s = &self.core;
        s.counters.reads.fetch_add(1, Ordering::Relaxed);
        s.counters
            .bytes_read
            .fetch_add(len as u64, Ordering::Relaxed);
    }

    /// Write `buf` at `offset`, preserving pre-images first. Returns once the pre-images that
    /// protect the snapshots are in their stores. A write that put pre-images into a
    /// persistent store reaches the device only once they are durable (the store's next group
    /// commit, moments later); until then reads of its range wait for it, and
    /// [`Volume::flush`] waits for it, as a disk's volatile write cache behaves.
    ///
    /// # Errors
    /// `OutOfRange`, `Io`/`NoSpace` from the volume, or the store error when a snapshot with
    /// `fail-write` could not be protected (the volume is then unchanged).
    pub fn write(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.core
            .modify(offset, buf.len() as u64, Change::Write(buf))
    }

    /// Discard (TRIM) a range: it reads as zeroes afterwards on files and memory.
    ///
    /// # Errors
    /// As [`Volume::write`].
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.core.modify(offset, len, Change::Discard)
    }

    /// Make a range read as zeroes.
    ///
    /// # Errors
    /// As [`Volume::write`].
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.core.modify(offset, len, Change::Zeroes)
    }

    /// Make every completed write durable, with the pre-images and records that protect the
    /// snapshots from it.
    ///
    /// # Errors
    /// `Io` from the volume, or from applying a write acknowledged earlier.
    pub fn flush(&self) -> Result<()> {
        let s = &self.core;
        s.held.wait_all();
        if let Some(e) = s.held.take_error() {
            return Err(e);
        }
        s.dev.flush().map_err(|e| Error::io("flush", s.object(), e))
    }

    /// Keep acknowledged writes that have not reached the device yet in `journal` too (a file
    /// in memory that outlives the process, such as one on tmpfs), so that the death of the
    /// process loses none of them. First replays, through the write path, what a previous
    /// process left there on this boot (`boot_id`), and flushes the volume: call it once the
    /// volume's persistent snapshots are attached, before it serves I/O. Returns how many
    /// changes were replayed.
    ///
    /// # Errors
    /// `Io` reading or writing the journal, or from a replayed change; the journal is then
    /// left as it was, to be replayed again.
    pub fn attach_journal(&self, journal: Arc<dyn BlockDevice>, boot_id: [u8; 16]) -> Result<u64> {
        let s = &self.core;
        let j = Arc::new(HeldJournal::new(journal, s.id, boot_id));
        let (pending, _) = j
            .pending()
            .map_err(|e| Error::io("read the journal of", s.object(), e))?;
        let n = pending.len() as u64;
        for p in pending {
            match p.kind {
                Kind::Write => self.write(&p.data, p.offset)?,
                Kind::Discard => self.discard(p.offset, p.len)?,
                Kind::Zeroes => self.write_zeroes(p.offset, p.len)?,
            }
        }
        if n > 0 {
            // Applied and durable (pre-images first, as for any held write) before the journal
            // is started afresh.
            self.flush()?;
        }
        s.held.use_journal(j)?;
        Ok(n)
    }

    /// Whether [`Volume::attach_journal`] was called.
    #[must_use]
    pub fn has_journal(&self) -> bool {
        self.core.held.journaled()
    }

    /// Test hook: hold acknowledged writes back for `pause` before each commit, so that a test
    /// can kill the process while writes are held.
    #[doc(hidden)]
    pub fn pause_commits(&self, pause: std::time::Duration) {
        self.core.held.set_pause(pause);
    }

    /// Wait until every acknowledged write has reached the device (held writes applied),
    /// without flushing it.
    pub fn settle(&self) {
        self.core.settle();
    }

    /// Which parts of a range hold data on the volume's device (holes read as zeroes).
    ///
    /// # Errors
    /// `OutOfRange`, `Io`.
    pub fn allocation(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let s = &self.core;
        s.check_range("map", &s.object(), offset, len)?;
        s.held.wait_clear(offset, len);
        s.dev
            .allocation(offset, len)
            .map_err(|e| Error::io("map", s.object(), e).at(offset))
    }

    /// The volume's identity.
    #[must_use]
    pub fn identity(&self) -> [u8; 16] {
        self.core.id
    }

    /// The live snapshot named `name`.
    #[must_use]
    pub fn snapshot(&self, name: &str) -> Option<Snapshot> {
        let chains = self.core.chains();
        let snap = chains.all().find(|x| x.name == name)?;
        Some(Snapshot::new(Arc::clone(&self.core), Arc::clone(snap)))
    }

    /// Every live snapshot, oldest first.
    #[must_use]
    pub fn snapshots(&self) -> Vec<Snapshot> {
        let chains = self.core.chains();
        let mut v: Vec<Snapshot> = chains
            .all()
            .map(|snap| Snapshot::new(Arc::clone(&self.core), Arc::clone(snap)))
            .collect();
        v.sort_by_key(|x| x.state().id);
        v
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> VolumeStats {
        let s = &self.core;
        let snapshots = s.chains().chain.iter().map(|c| c.len() as u64).sum();
        VolumeStats {
            reads: s.counters.reads.load(Ordering::Relaxed),
            bytes_read: s.counters.bytes_read.load(Ordering::Relaxed),
            writes: s.counters.writes.load(Ordering::Relaxed),
            bytes_written: s.counters.bytes_written.load(Ordering::Relaxed),
            cow_calls: s.counters.cow_calls.load(Ordering::Relaxed),
            blocks_preserved: s.counters.blocks_preserved.load(Ordering::Relaxed),
            busy_waits: s.counters.busy_waits.load(Ordering::Relaxed),
            snapshots,
            held_bytes: s.held.bytes(),
        }
    }
}
