//! The durable store, format v1 (`docs/FORMAT.md`): a superblock, a checksummed append-only
//! log of records, and cluster-sized data slots, on a file or a raw device. Group commit: one
//! flush covers the data and records of every writer that staged before it.

use super::slots::Slots;
use super::{MapEntry, Recovered, Store, StoreParams, VerifyReport};
use crate::cluster_map::{mask_set, mask_words};
use crate::device::BlockDevice;
use crate::error::{Error, ErrorKind, Result};
use crate::format::layout::Layout;
use crate::format::record::{self, Body, Bounds, LogWriter, Replay, MAX_RUN};
use crate::format::superblock::Superblock;
use crate::format::{FormatError, BLOCK};
use rustc_hash::FxHashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn format_error(e: FormatError, object: String) -> Error {
    let (kind, detail) = match &e {
        FormatError::NotAStore => (
            ErrorKind::ForeignStore,
            "this is not an fss store (or it was deleted); give the right file or device"
                .to_string(),
        ),
        FormatError::UnsupportedVersion(_) => (
            ErrorKind::UnsupportedFormat,
            format!("{e}; use the fss release that made it"),
        ),
        FormatError::Corrupt(_) => (
            ErrorKind::CorruptStore,
            format!("{e}; the snapshot cannot be trusted, delete it and take a new one"),
        ),
    };
    Error::new(kind, "open", object, detail)
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
        let io = |e| Error::io("open", object.clone(), e);
        let mut block = vec![0u8; BLOCK];
        if dev.len() < BLOCK as u64 {
            return Err(format_error(FormatError::NotAStore, object));
        }
        dev.read_at(&mut block, 0).map_err(io)?;
        let sb = Superblock::decode(&block).map_err(|e| format_error(e, object.clone()))?;
        let foreign = |detail: String| {
            Err(Error::new(
                ErrorKind::ForeignStore,
                "open",
                object.clone(),
                detail,
            ))
        };
        if sb.volume_id != expect.volume_id {
            return foreign(format!(
                "the store belongs to another volume (volume id {}, this volume is {}); give this \
                 volume's store",
                hex(&sb.volume_id),
                hex(&expect.volume_id)
            ));
        }
        if sb.volume_len != expect.volume_len {
            return foreign(format!(
                "the volume changed size since the snapshot was taken (the store says {} bytes, the \
                 volume has {}); delete the snapshot, or give the volume its old size back",
                sb.volume_len, expect.volume_len
            ));
        }
        if sb.snapshot_id != expect.snapshot_id {
            return foreign(format!(
                "the store belongs to snapshot #{} of this volume, not #{}; give the right store",
                sb.snapshot_id, expect.snapshot_id
            ));
        }
        let layout = sb.layout();
        let bpc = (u64::from(sb.cluster_size) / BLOCK as u64) as u32;
        let clusters = sb.volume_len.div_ceil(u64::from(sb.cluster_size));
        let mut replay = Replay::new(
            sb.nonce,
            Bounds {
                clusters,
                blocks_per_cluster: bpc,
            },
        );
        let corrupt = |e| format_error(e, object.clone());
        let max_blocks = layout.log_blocks_for_slots(clusters);
        let mut j = 0u64;
        while !replay.ended() && j < max_blocks {
            read_log_block(&*dev, &layout, j, &mut block).map_err(io)?;
            replay.feed(&block).map_err(corrupt)?;
            j += 1;
        }
        // Records past the last durable horizon may lack their data (a crash before their
        // flush completed): keep them only if their blocks match their checksums.
        let positions = record::record_positions(&replay.records);
        let mut data = Vec::new();
        let first_unsure = replay.records.iter().position(|r| r.seq > replay.horizon);
        if let Some(from) = first_unsure {
            for i in from..replay.records.len() {
                if let Body::Preserve {
                    slot,
                    first_block,
                    crcs,
                    ..
                } = &replay.records[i].body
                {
                    data.resize(crcs.len() * BLOCK, 0);
                    let off = layout.slot_offset(*slot) + u64::from(*first_block) * BLOCK as u64;
                    let ok = off + data.len() as u64 <= dev.len()
                        && dev.read_at(&mut data, off).is_ok()
                        && data
                            .chunks(BLOCK)
                            .zip(crcs)
                            .all(|(b, c)| crc32c::crc32c(b) == *c);
                    if !ok {
                        replay.truncate(i, &positions);
                        break;
                    }
                }
            }
        }
        // A valid record beyond the end means damage in the middle, not a torn tail. Records of
        // a torn last batch left beyond the end are cleared below, before anything is
        // appended: otherwise a later, shorter batch could make them the next in sequence.
        let (end_block, end_pos) = replay.end;
        let scan_to = (end_block + 1024).min(max_blocks);
        let mut stale = Vec::new();
        for k in end_block..scan_to {
            if layout.log_block_offset(k) >= dev.len() {
                break;
            }
            read_log_block(&*dev, &layout, k, &mut block).map_err(io)?;
            if k == end_block {
                if block[end_pos..].iter().any(|&b| b != 0) {
                    stale.push(k);
                }
                block[..end_pos].fill(0);
            }
            if replay.finds_later_record(&block) {
                return Err(corrupt(FormatError::Corrupt(format!(
                    "the log is damaged near log block {end_block}: records follow a record that does \
                     not check out"
                ))));
            }
            if k > end_block && replay.holds_any_record(&block) {
                stale.push(k);
            }
        }
        // Durable records whose data lies past the end of the medium: the store was truncated.
        for r in replay.records.iter().filter(|r| r.seq <= replay.horizon) {
            if let Body::Preserve {
                slot,
                first_block,
                crcs,
                ..
            } = &r.body
            {
                let end = layout.slot_offset(*slot)
                    + (u64::from(*first_block) + crcs.len() as u64) * BLOCK as u64;
                if end > dev.len() {
                    return Err(corrupt(FormatError::Corrupt(format!(
                        "the store is truncated: log record {} describes data up to byte {end}, but the \
                         store has only {} bytes",
                        r.seq,
                        dev.len()
                    ))));
                }
            }
        }
        // Assemble the map.
        let words = mask_words(bpc);
        let mut by_cluster: FxHashMap<u32, usize> = FxHashMap::default();
        let mut slot_owner: FxHashMap<u32, u32> = FxHashMap::default();
        let mut entries: Vec<MapEntry> = Vec::new();
        let mut invalid = None;
        let mut slots = 0u32;
        for r in &replay.records {
            match &r.body {
                Body::Preserve {
                    cluster,
                    slot,
                    first_block,
                    crcs,
                } => {
                    if *slot_owner.entry(*slot).or_insert(*cluster) != *cluster {
                        return Err(corrupt(FormatError::Corrupt(format!(
                            "slot {slot} is claimed by two clusters"
                        ))));
                    }
                    let i = *by_cluster.entry(*cluster).or_insert_with(|| {
                        entries.push(MapEntry {
                            cluster: *cluster,
                            slot: *slot,
                            mask: vec![0; words],
                        });
                        entries.len() - 1
                    });
                    if entries[i].slot != *slot {
                        return Err(corrupt(FormatError::Corrupt(format!(
                            "cluster {cluster} is mapped to two slots"
                        ))));
                    }
                    for b in 0..crcs.len() as u32 {
                        mask_set(&mut entries[i].mask, u32::from(*first_block) + b);
                    }
                    slots = slots.max(slot + 1);
                }
                Body::Invalidate { reason } => invalid = Some(reason.clone()),
            }
        }
        let last_seq = replay.records.last().map_or(0, |r| r.seq);
        let (end_block, end_pos) = replay.end;
        read_log_block(&*dev, &layout, end_block, &mut block).map_err(io)?;
        if !stale.is_empty() {
            let zero = vec![0u8; BLOCK];
            for &k in &stale {
                let mut bytes = zero.clone();
                if k == end_block {
                    bytes[..end_pos].copy_from_slice(&block[..end_pos]);
                }
                let off = layout.log_block_offset(k);
                let n = (dev.len() - off).min(BLOCK as u64) as usize;
                dev.write_at(&bytes[..n], off)
                    .map_err(|e| Error::io("clear the torn tail of", object.clone(), e))?;
            }
            dev.flush()
                .map_err(|e| Error::io("flush", object.clone(), e))?;
        }
        let writer = LogWriter::new(sb.nonce, end_block, block, end_pos, last_seq);
        let recovered = Recovered {
            name: sb.name.clone(),
            snapshot_id: sb.snapshot_id,
            created: UNIX_EPOCH + Duration::from_nanos(sb.created_ns),
            cluster_size: u64::from(sb.cluster_size),
            entries,
            invalid,
        };
        let store = Self::assemble(
            dev, sb, slots, writer, last_seq, max, fixed_size, owned_path,
        );
        Ok((store, recovered))
    }

    fn lock(&self) -> MutexGuard<'_, Commit> {
        // Commit state changes are whole assignments; a panic cannot leave it half-done.
        self.commit.lock().unwrap_or_else(PoisonError::into_inner)
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

fn read_log_block(
    dev: &dyn BlockDevice,
    layout: &Layout,
    j: u64,
    buf: &mut [u8],
) -> std::io::Result<()> {
    let off = layout.log_block_offset(j);
    let len = dev.len();
    if off + BLOCK as u64 > len {
        // Past the end of a sparse file: never written. A block the medium holds only in part
        // reads as what is there, then zeroes.
        buf.fill(0);
        if off < len {
            dev.read_at(&mut buf[..(len - off) as usize], off)?;
        }
        return Ok(());
    }
    dev.read_at(buf, off)
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
        Ok(())
    }

    fn read(&self, slot: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        let off = self.layout.slot_offset(slot) + offset;
        self.dev
            .read_at(buf, off)
            .map_err(|e| Error::io("read pre-image from", self.describe(), e).at(off))
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
        let mut j = 0;
        while !replay.ended() && j < max_blocks {
            read_log_block(&*self.dev, &self.layout, j, &mut block)
                .map_err(|e| Error::io("verify", self.describe(), e))?;
            replay
                .feed(&block)
                .map_err(|e| format_error(e, self.describe()))?;
            j += 1;
        }
        let mut report = VerifyReport {
            checksummed: true,
            ..VerifyReport::default()
        };
        let mut data = Vec::new();
        for r in &replay.records {
            if let Body::Preserve {
                cluster,
                slot,
                first_block,
                crcs,
            } = &r.body
            {
                data.resize(crcs.len() * BLOCK, 0);
                let off = self.layout.slot_offset(*slot) + u64::from(*first_block) * BLOCK as u64;
                let read_ok = self.dev.read_at(&mut data, off).is_ok();
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
