//! The durable store, format v1 (`docs/FORMAT.md`): a superblock, a checksummed append-only
//! log of records, and cluster-sized data slots, on a file or a raw device. Group commit: one
//! flush covers the data and records of every writer that staged before it.

use super::replay::{self, format_error, read_log_block};
use super::slots::Slots;
use super::{Recovered, Store, StoreParams, VerifyReport};
use crate::device::BlockDevice;
use crate::error::{Error, ErrorKind, Result};
use crate::format::layout::{Layout, MIN_RECORDS_PER_BLOCK};
use crate::format::record::{Body, Bounds, LogWriter, Record, Replay, MAX_RUN};
use crate::format::superblock::Superblock;
use crate::format::BLOCK;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// Who a store must belong to, checked when it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreIdentity {
    /// The volume's identity.
    pub volume_id: [u8; 16],
    /// The volume's length.
    pub volume_len: u64,
    /// The snapshot's creation order within the volume.
    pub snapshot_id: u64,
}

struct Commit {
    /// Taken by the leader while it writes (outside the lock).
    writer: Option<LogWriter>,
    staged: Vec<Body>,
    /// Records staged so far, ever.
    staged_total: u64,
    /// Records durable so far, ever.
    durable_total: u64,
    /// The highest sequence number durable.
    durable_seq: u64,
    leader: bool,
    /// A failed flush poisons the store: nothing after it can be trusted.
    failed: Option<String>,
}

/// A persistent snapshot store on a file or raw device.
pub struct FileStore {
    dev: Arc<dyn BlockDevice>,
    sb: Superblock,
    layout: Layout,
    slots: Slots,
    commit: Mutex<Commit>,
    committed: Condvar,
    /// A file fss made for this store (inside a store directory), removed on destroy.
    owned_path: Option<PathBuf>,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore")
            .field("dev", &self.dev.describe())
            .finish_non_exhaustive()
    }
}

fn ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl FileStore {
    /// Make a new store on `dev` for `params`: write the superblock and flush it.
    /// `fixed_size`: a raw device (its length bounds the store). `owned_path`: a file fss made,
    /// removed when the snapshot is deleted.
    ///
    /// # Errors
    /// The device is too small, or the write or flush failed.
    pub fn create(
        dev: Arc<dyn BlockDevice>,
        params: &StoreParams,
        fixed_size: bool,
        owned_path: Option<PathBuf>,
    ) -> Result<Self> {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                "create",
                dev.describe(),
                format!("no randomness: {e}"),
            )
        })?;
        let sb = Superblock {
            nonce,
            volume_id: params.volume_id,
            snapshot_id: params.snapshot_id,
            volume_len: params.volume_len,
            cluster_size: u32::try_from(params.cluster_size).unwrap_or(0),
            created_ns: ns(params.created),
            name: params.snapshot.clone(),
        };
        let layout = sb.layout();
        let object = format!("store {}", dev.describe());
        if fixed_size && dev.len() < layout.bytes_for_slots(1) {
            return Err(Error::new(
                ErrorKind::NoSpace,
                "create",
                object,
                format!(
                    "the device has {} bytes; a store with {} byte clusters needs at least {}",
                    dev.len(),
                    params.cluster_size,
                    layout.bytes_for_slots(1)
                ),
            ));
        }
        let io = |op, e| Error::io(op, object.clone(), e);
        // Clear the first log block: a raw device may hold old bytes there.
        dev.write_at(&vec![0u8; BLOCK], layout.log_block_offset(0))
            .map_err(|e| io("create", e))?;
        dev.write_at(&sb.encode(), 0).map_err(|e| io("create", e))?;
        dev.flush().map_err(|e| io("flush", e))?;
        let writer = LogWriter::new(nonce, 0, vec![0u8; BLOCK], 0, 0);
        Ok(Self::assemble(
            dev,
            sb,
            0,
            writer,
            0,
            params.max_bytes,
            fixed_size,
            owned_path,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        dev: Arc<dyn BlockDevice>,
        sb: Superblock,
        slots: u32,
        writer: LogWriter,
        last_seq: u64,
        max: Option<u64>,
        fixed_size: bool,
        owned_path: Option<PathBuf>,
    ) -> Self {
        let medium_max = fixed_size.then(|| dev.len());
        FileStore {
            layout: sb.layout(),
            sb,
            slots: Slots::new(slots, max, medium_max),
            commit: Mutex::new(Commit {
                writer: Some(writer),
                staged: Vec::new(),
                staged_total: 0,
                durable_total: 0,
                durable_seq: last_seq,
                leader: false,
                failed: None,
            }),
            committed: Condvar::new(),
            owned_path,
            dev,
        }
    }

    /// Open an existing store on `dev`, check it belongs to `expect`, and replay its log.
    ///
    /// # Errors
    /// `ForeignStore` (not a store, or another volume's or chain position's),
    /// `UnsupportedFormat`, `CorruptStore`, `Io`.
    pub fn open(
        dev: Arc<dyn BlockDevice>,
        expect: &StoreIdentity,
        fixed_size: bool,
        max: Option<u64>,
        owned_path: Option<PathBuf>,
    ) -> Result<(Self, Recovered)> {
        let object = format!("store {}", dev.describe());
        let o = replay::open(&*dev, expect, &object)?;
        let store = Self::assemble(
            dev, o.sb, o.slots, o.writer, o.last_seq, max, fixed_size, owned_path,
        );
        Ok((store, o.recovered))
    }

    fn lock(&self) -> MutexGuard<'_, Commit> {
        // Commit state changes are whole assignments; a panic cannot leave it half-done.
        self.commit.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stage the records that find `data`, just written at block `first_block` of `slot`.
    fn stage_blocks(&self, cluster: u32, slot: u32, first_block: u32, data: &[u8]) {
        let crcs: Vec<u32> = data.chunks(BLOCK).map(crc32c::crc32c).collect();
        for (i, run) in crcs.chunks(MAX_RUN).enumerate() {
            let first = first_block as usize + i * MAX_RUN;
            self.stage(Body::Preserve {
                cluster,
                slot,
                first_block: u16::try_from(first).unwrap_or(u16::MAX),
                crcs: run.to_vec(),
            });
        }
    }

    /// Cut `len` bytes from byte `offset` of `slot` on, through the slots after it, at the
    /// ends of groups (a group's slots lie end to end; the next group starts with its log):
    /// `f(store offset, range of the len bytes)` for each piece, in order.
    fn per_group(
        &self,
        slot: u32,
        offset: u64,
        len: usize,
        mut f: impl FnMut(u64, std::ops::Range<usize>) -> Result<()>,
    ) -> Result<()> {
        let cluster = u64::from(self.sb.cluster_size);
        let per_group = self.layout.slots_per_group();
        let (mut slot, mut offset, mut done) = (u64::from(slot), offset, 0);
        while done < len {
            let in_group = per_group - slot % per_group;
            let n = usize::try_from(in_group * cluster - offset)
                .map_or(len - done, |n| n.min(len - done));
            let at = self
                .layout
                .slot_offset(u32::try_from(slot).unwrap_or(u32::MAX))
                + offset;
            f(at, done..done + n)?;
            (slot, offset, done) = (slot + in_group, 0, done + n);
        }
        Ok(())
    }

    fn stage(&self, body: Body) {
        let mut c = self.lock();
        c.staged.push(body);
        c.staged_total += 1;
    }

    /// Write the staged batch as the leader: log blocks, then one flush.
    fn lead(
        &self,
        mut writer: LogWriter,
        batch: Vec<Body>,
        horizon: u64,
    ) -> (LogWriter, Result<u64>) {
        for b in batch {
            writer.append(b, horizon);
        }
        let last = writer.next_seq() - 1;
        let dirty = writer.take_dirty();
        let result = (|| {
            let mut i = 0;
            while i < dirty.len() {
                // Adjacent log blocks go out in one write.
                let mut j = i + 1;
                while j < dirty.len()
                    && dirty[j].0 == dirty[j - 1].0 + 1
                    && self.layout.log_blocks_adjacent(dirty[j - 1].0)
                {
                    j += 1;
                }
                let mut buf = Vec::with_capacity((j - i) * BLOCK);
                for (_, b) in &dirty[i..j] {
                    buf.extend_from_slice(b);
                }
                let off = self.layout.log_block_offset(dirty[i].0);
                self.dev
                    .write_at(&buf, off)
                    .map_err(|e| Error::io("append to", self.describe(), e).at(off))?;
                i = j;
            }
            self.dev
                .flush()
                .map_err(|e| Error::io("flush", self.describe(), e))?;
            Ok(last)
        })();
        (writer, result)
    }
}

impl Store for FileStore {
    fn describe(&self) -> String {
        format!("store {}", self.dev.describe())
    }

    fn allocate_slot(&self, _cluster: u32) -> Result<u32> {
        let layout = self.layout;
        self.slots
            .allocate(&self.describe(), |n| layout.bytes_for_slots(n))
    }

    fn write_blocks(&self, cluster: u32, slot: u32, first_block: u32, data: &[u8]) -> Result<()> {
        let off = self.layout.slot_offset(slot) + u64::from(first_block) * BLOCK as u64;
        self.dev
            .write_at(data, off)
            .map_err(|e| Error::io("write pre-image to", self.describe(), e).at(off))?;
        self.stage_blocks(cluster, slot, first_block, data);
        Ok(())
    }

    fn write_slot_run(
        &self,
        clusters: &[u32],
        first_slot: u32,
        first_block: u32,
        data: &[u8],
        _cluster_size: u64,
    ) -> Result<()> {
        // The slots of one group lie end to end: one write per group touched, then the
        // records, as slot by slot (data before the records that find it).
        let cap = self.slots.limit().unwrap_or(u64::MAX);
        let at = u64::from(first_block) * BLOCK as u64;
        self.per_group(first_slot, at, data.len(), |off, piece| {
            let now = &data[piece];
            // Direct if large, into room allocated ahead (see DeviceStore).
            if now.len() >= crate::device::DIRECT_WRITE_MIN {
                self.dev.reserve(off + now.len() as u64, cap);
            }
            self.dev
                .write_at(now, off)
                .map_err(|e| Error::io("write pre-image to", self.describe(), e).at(off))
        })?;
        let cluster = u64::from(self.sb.cluster_size);
        super::for_each_slot(
            clusters,
            first_slot,
            first_block,
            data,
            cluster,
            |c, s, b, d| {
                self.stage_blocks(c, s, b, d);
                Ok(())
            },
        )
    }

    fn read(&self, slot: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        let off = self.layout.slot_offset(slot) + offset;
        self.dev
            .read_at(buf, off)
            .map_err(|e| Error::io("read pre-image from", self.describe(), e).at(off))
    }

    fn read_slots(&self, slot: u32, offset: u64, buf: &mut [u8], _cluster_size: u64) -> Result<()> {
        // The slots of one group lie end to end: one read per group touched.
        self.per_group(slot, offset, buf.len(), |off, piece| {
            self.dev
                .read_at(&mut buf[piece], off)
                .map_err(|e| Error::io("read pre-image from", self.describe(), e).at(off))
        })
    }

    fn read_source(
        &self,
        slot: u32,
        offset: u64,
        buf: &[u8],
    ) -> Option<(std::os::fd::BorrowedFd<'_>, u64)> {
        // One read only within one group: the next group starts with its log area.
        let cluster = u64::from(self.sb.cluster_size);
        let per_group = self.layout.slots_per_group();
        let in_group = (per_group - u64::from(slot) % per_group) * cluster;
        if offset + buf.len() as u64 > in_group {
            return None;
        }
        let off = self.layout.slot_offset(slot) + offset;
        Some((self.dev.read_source(off, buf)?, off))
    }

    fn sync(&self) -> Result<()> {
        let mut c = self.lock();
        let mine = c.staged_total;
        loop {
            if let Some(f) = &c.failed {
                return Err(Error::new(
                    ErrorKind::Io,
                    "sync",
                    self.describe(),
                    format!("an earlier flush failed ({f}); the store cannot be trusted any more"),
                ));
            }
            if c.durable_total >= mine {
                return Ok(());
            }
            if c.leader {
                c = self
                    .committed
                    .wait(c)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            c.leader = true;
            let batch = std::mem::take(&mut c.staged);
            let upto = c.staged_total;
            let horizon = c.durable_seq;
            let Some(writer) = c.writer.take() else {
                c.leader = false;
                continue;
            };
            drop(c);
            let (writer, result) = self.lead(writer, batch, horizon);
            c = self.lock();
            c.writer = Some(writer);
            c.leader = false;
            match result {
                Ok(last) => {
                    c.durable_total = upto;
                    c.durable_seq = last;
                }
                Err(e) => c.failed = Some(e.to_string()),
            }
            self.committed.notify_all();
        }
    }

    fn used_bytes(&self) -> u64 {
        self.layout.bytes_for_slots(u64::from(self.slots.count()))
    }

    fn max_bytes(&self) -> Option<u64> {
        self.slots.limit()
    }

    fn set_max_bytes(&self, max: Option<u64>) -> Result<()> {
        self.slots.set_max(&self.describe(), max, self.used_bytes())
    }

    fn is_persistent(&self) -> bool {
        true
    }

    fn check_room(&self, new_slots: u64, new_blocks: u64) -> Result<()> {
        let free = self
            .dev
            .space_available()
            .map_err(|e| Error::io("make room in", self.describe(), e))?;
        // The blocks, their records (a log block holds at least MIN_RECORDS_PER_BLOCK), and
        // one more log block for a batch that starts a fresh one.
        let log_blocks = new_blocks.div_ceil(MIN_RECORDS_PER_BLOCK) + 1;
        let need = (new_blocks + log_blocks) * BLOCK as u64;
        let layout = self.layout;
        self.slots.check_room(
            &self.describe(),
            |n| layout.bytes_for_slots(n),
            new_slots,
            need,
            free,
        )
    }

    fn record_invalid(&self, reason: &str) -> Result<()> {
        self.stage(Body::Invalidate {
            reason: reason.to_string(),
        });
        self.sync()
    }

    fn verify(&self) -> Result<VerifyReport> {
        // Replay the log afresh (the map in memory keeps no checksums), then reread the data.
        let bpc = u64::from(self.sb.cluster_size) / BLOCK as u64;
        let mut replay = Replay::new(
            self.sb.nonce,
            Bounds {
                clusters: self.sb.volume_len.div_ceil(u64::from(self.sb.cluster_size)),
                blocks_per_cluster: bpc as u32,
            },
        );
        let mut block = vec![0u8; BLOCK];
        let max_blocks = self
            .layout
            .log_blocks_for_slots(u64::from(self.slots.count()));
        let mut report = VerifyReport {
            checksummed: true,
            ..VerifyReport::default()
        };
        let mut data = Vec::new();
        let mut j = 0;
        while !replay.ended() && j < max_blocks {
            read_log_block(&*self.dev, &self.layout, j, &mut block)
                .map_err(|e| Error::io("verify", self.describe(), e))?;
            replay
                .feed(&block)
                .map_err(|e| format_error(e, self.describe()))?;
            // Checked as they come, so that only the last batch's records are kept.
            for r in replay.take_settled() {
                self.verify_record(&r, bpc, &mut data, &mut report);
            }
            j += 1;
        }
        for r in std::mem::take(&mut replay.records) {
            self.verify_record(&r, bpc, &mut data, &mut report);
        }
        Ok(report)
    }

    fn destroy(&self) -> Result<()> {
        if let Some(p) = &self.owned_path {
            return std::fs::remove_file(p).map_err(|e| Error::io("remove", self.describe(), e));
        }
        // A store the user gave: make it no longer look like one, and give back its space.
        let io = |e| Error::io("release", self.describe(), e);
        self.dev.write_at(&vec![0u8; BLOCK], 0).map_err(io)?;
        let len = self.dev.len();
        if len > BLOCK as u64 {
            // Discard is advisory: a device that cannot is not an error.
            let _ = self.dev.discard(BLOCK as u64, len - BLOCK as u64);
        }
        self.dev.flush().map_err(io)
    }
}

impl FileStore {
    /// Reread the blocks record `r` describes and add what it finds to `report`.
    fn verify_record(&self, r: &Record, bpc: u64, data: &mut Vec<u8>, report: &mut VerifyReport) {
        let Body::Preserve {
            cluster,
            slot,
            first_block,
            crcs,
        } = &r.body
        else {
            return;
        };
        data.resize(crcs.len() * BLOCK, 0);
        let off = self.layout.slot_offset(*slot) + u64::from(*first_block) * BLOCK as u64;
        let read_ok = self.dev.read_at(data, off).is_ok();
        for (i, c) in crcs.iter().enumerate() {
            report.blocks_checked += 1;
            let good = read_ok && crc32c::crc32c(&data[i * BLOCK..(i + 1) * BLOCK]) == *c;
            if !good {
                let block = u64::from(*cluster) * bpc + u64::from(*first_block) + i as u64;
                report.damaged.push(block * BLOCK as u64);
            }
        }
    }
}
