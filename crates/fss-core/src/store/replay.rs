//! Opening a [`FileStore`](super::FileStore): the replay of `docs/FORMAT.md` §4 "Replay
//! (opening a store)", one function per phase, in the order [`open`] runs them.

use super::file_store::StoreIdentity;
use super::Recovered;
use crate::cluster_map::{mask_set, mask_words, ClusterMap};
use crate::device::BlockDevice;
use crate::error::{Error, ErrorKind, Result};
use crate::format::layout::Layout;
use crate::format::record::{Body, Bounds, LogWriter, Record, Replay};
use crate::format::superblock::Superblock;
use crate::format::{FormatError, BLOCK};
use std::time::{Duration, UNIX_EPOCH};

/// What replay leaves: the superblock, the recovered map, the slot count, and the log writer
/// positioned right after the last valid record.
pub(super) struct Opened {
    pub sb: Superblock,
    pub recovered: Recovered,
    pub slots: u32,
    pub writer: LogWriter,
    pub last_seq: u64,
}

/// The store being opened: its medium, layout and name in messages.
struct Opening<'a> {
    dev: &'a dyn BlockDevice,
    layout: Layout,
    object: &'a str,
}

impl Opening<'_> {
    fn io(&self, e: std::io::Error) -> Error {
        Error::io("open", self.object.to_string(), e)
    }

    fn corrupt(&self, e: FormatError) -> Error {
        format_error(e, self.object.to_string())
    }

    fn read_log_block(&self, j: u64, buf: &mut [u8]) -> Result<()> {
        read_log_block(self.dev, &self.layout, j, buf).map_err(|e| self.io(e))
    }
}

/// Replay the store on `dev`: read and check the superblock, read the log, check the last
/// batch's data, scan past the end for damage, check the medium holds every durable record's
/// data, build the map, and clear a torn tail.
pub(super) fn open(dev: &dyn BlockDevice, expect: &StoreIdentity, object: &str) -> Result<Opened> {
    let sb = read_superblock(dev, expect, object)?;
    let o = Opening {
        dev,
        layout: sb.layout(),
        object,
    };
    let clusters = sb.volume_len.div_ceil(u64::from(sb.cluster_size));
    let bpc = (u64::from(sb.cluster_size) / BLOCK as u64) as u32;
    let max_blocks = o.layout.log_blocks_for_slots(clusters);
    let mut map = MapBuilder::new(bpc);
    let mut replay = read_log(&o, &sb, clusters, bpc, max_blocks, &mut map)?;
    check_last_batch(&o, &mut replay);
    let stale = scan_past_end(&o, &replay, max_blocks)?;
    // The last batch's records that kept their data.
    for r in std::mem::take(&mut replay.records) {
        map.add(&o, &r, false)?;
    }
    let last_seq = replay.last_seq();
    let (end_block, end_pos) = replay.end;
    let end = clear_torn_tail(&o, &stale, replay.end)?;
    let writer = LogWriter::new(sb.nonce, end_block, end, end_pos, last_seq);
    let recovered = Recovered {
        name: sb.name.clone(),
        snapshot_id: sb.snapshot_id,
        created: UNIX_EPOCH + Duration::from_nanos(sb.created_ns),
        cluster_size: u64::from(sb.cluster_size),
        map: map.map,
        invalid: map.invalid,
    };
    Ok(Opened {
        sb,
        recovered,
        slots: map.slots,
        writer,
        last_seq,
    })
}

/// §2: read the superblock and check the store belongs to `expect`.
fn read_superblock(
    dev: &dyn BlockDevice,
    expect: &StoreIdentity,
    object: &str,
) -> Result<Superblock> {
    let mut block = vec![0u8; BLOCK];
    if dev.len() < BLOCK as u64 {
        return Err(format_error(FormatError::NotAStore, object.to_string()));
    }
    dev.read_at(&mut block, 0)
        .map_err(|e| Error::io("open", object.to_string(), e))?;
    let sb = Superblock::decode(&block).map_err(|e| format_error(e, object.to_string()))?;
    let foreign = |detail: String| Err(Error::new(ErrorKind::ForeignStore, "open", object, detail));
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
    Ok(sb)
}

/// Read the log from block 0, record after record, up to its end. Records known durable are
/// put into `map` as they come: only the last batch's stay in the returned replay.
fn read_log(
    o: &Opening<'_>,
    sb: &Superblock,
    clusters: u64,
    bpc: u32,
    max_blocks: u64,
    map: &mut MapBuilder,
) -> Result<Replay> {
    let mut replay = Replay::new(
        sb.nonce,
        Bounds {
            clusters,
            blocks_per_cluster: bpc,
        },
    );
    let mut block = vec![0u8; BLOCK];
    let mut j = 0u64;
    while !replay.ended() && j < max_blocks {
        o.read_log_block(j, &mut block)?;
        replay.feed(&block).map_err(|e| o.corrupt(e))?;
        for r in replay.take_settled() {
            map.add(o, &r, true)?;
        }
        j += 1;
    }
    Ok(replay)
}

/// Records past the last durable horizon may lack their data (a crash before their flush
/// completed): keep them only if their blocks match their checksums; the log ends before the
/// first that does not.
fn check_last_batch(o: &Opening<'_>, replay: &mut Replay) {
    let mut data = Vec::new();
    let Some(from) = replay.records.iter().position(|r| r.seq > replay.horizon) else {
        return;
    };
    for i in from..replay.records.len() {
        if let Body::Preserve {
            slot,
            first_block,
            crcs,
            ..
        } = &replay.records[i].body
        {
            data.resize(crcs.len() * BLOCK, 0);
            let off = o.layout.slot_offset(*slot) + u64::from(*first_block) * BLOCK as u64;
            let ok = off + data.len() as u64 <= o.dev.len()
                && o.dev.read_at(&mut data, off).is_ok()
                && data
                    .chunks(BLOCK)
                    .zip(crcs)
                    .all(|(b, c)| crc32c::crc32c(b) == *c);
            if !ok {
                replay.truncate(i);
                break;
            }
        }
    }
}

/// Scan the log blocks after the end. A valid record beyond the end means damage in the
/// middle, not a torn tail: refused. Returns the blocks that hold records of a torn last
/// batch, to be cleared before anything is appended (otherwise a later, shorter batch could
/// make them the next in sequence).
fn scan_past_end(o: &Opening<'_>, replay: &Replay, max_blocks: u64) -> Result<Vec<u64>> {
    let (end_block, end_pos) = replay.end;
    let scan_to = (end_block + 1024).min(max_blocks);
    let mut block = vec![0u8; BLOCK];
    let mut stale = Vec::new();
    for k in end_block..scan_to {
        if o.layout.log_block_offset(k) >= o.dev.len() {
            break;
        }
        o.read_log_block(k, &mut block)?;
        if k == end_block {
            if block[end_pos..].iter().any(|&b| b != 0) {
                stale.push(k);
            }
            block[..end_pos].fill(0);
        }
        if replay.finds_later_record(&block) {
            return Err(o.corrupt(FormatError::Corrupt(format!(
                "the log is damaged near log block {end_block}: records follow a record that does \
                 not check out"
            ))));
        }
        if k > end_block && replay.holds_any_record(&block) {
            stale.push(k);
        }
    }
    Ok(stale)
}

/// The map the valid records describe, built as they are read: the slot of each cluster and
/// its preserved blocks, the invalidation reason if one was recorded, and the slot count (one
/// more than the highest slot a record names). No record is kept once it is in the map.
struct MapBuilder {
    map: ClusterMap,
    /// The slots some cluster holds, one bit each.
    used: Vec<u64>,
    slots: u32,
    invalid: Option<String>,
    /// A scratch mask.
    mask: Vec<u16>,
}

impl MapBuilder {
    fn new(bpc: u32) -> Self {
        MapBuilder {
            map: ClusterMap::new(bpc),
            used: Vec::new(),
            slots: 0,
            invalid: None,
            mask: vec![0; mask_words(bpc)],
        }
    }

    /// Put record `r` into the map. `durable`: it was made durable before a later batch was
    /// written, so its data must lie within the medium (otherwise the store was truncated).
    fn add(&mut self, o: &Opening<'_>, r: &Record, durable: bool) -> Result<()> {
        let (cluster, slot, first_block, crcs) = match &r.body {
            Body::Preserve {
                cluster,
                slot,
                first_block,
                crcs,
            } => (*cluster, *slot, *first_block, crcs),
            Body::Invalidate { reason } => {
                self.invalid = Some(reason.clone());
                return Ok(());
            }
        };
        let corrupt = |m: String| Err(o.corrupt(FormatError::Corrupt(m)));
        let end = o.layout.slot_offset(slot)
            + (u64::from(first_block) + crcs.len() as u64) * BLOCK as u64;
        if durable && end > o.dev.len() {
            return corrupt(format!(
                "the store is truncated: log record {} describes data up to byte {end}, but the \
                 store has only {} bytes",
                r.seq,
                o.dev.len()
            ));
        }
        let (word, bit) = ((slot / 64) as usize, 1u64 << (slot % 64));
        match self.map.slot(cluster) {
            Some(s) if s != slot => {
                return corrupt(format!("cluster {cluster} is mapped to two slots"));
            }
            Some(_) => {}
            None => {
                if self.used.get(word).is_some_and(|w| w & bit != 0) {
                    return corrupt(format!("slot {slot} is claimed by two clusters"));
                }
                if self.used.len() <= word {
                    self.used.resize(word + 1, 0);
                }
                self.used[word] |= bit;
                self.map.insert_slot(cluster, slot);
            }
        }
        self.mask.fill(0);
        for b in 0..crcs.len() as u32 {
            mask_set(&mut self.mask, u32::from(first_block) + b);
        }
        self.map.add_blocks(cluster, &self.mask);
        self.slots = self.slots.max(slot + 1);
        Ok(())
    }
}

/// Clear the `stale` log blocks (keeping the valid records before `end` in the end block),
/// flush, and return the end block's contents, where the next append goes.
fn clear_torn_tail(
    o: &Opening<'_>,
    stale: &[u64],
    (end_block, end_pos): (u64, usize),
) -> Result<Vec<u8>> {
    let mut block = vec![0u8; BLOCK];
    o.read_log_block(end_block, &mut block)?;
    if stale.is_empty() {
        return Ok(block);
    }
    let zero = vec![0u8; BLOCK];
    for &k in stale {
        let mut bytes = zero.clone();
        if k == end_block {
            bytes[..end_pos].copy_from_slice(&block[..end_pos]);
        }
        let off = o.layout.log_block_offset(k);
        let n = (o.dev.len() - off).min(BLOCK as u64) as usize;
        o.dev
            .write_at(&bytes[..n], off)
            .map_err(|e| Error::io("clear the torn tail of", o.object.to_string(), e))?;
    }
    o.dev
        .flush()
        .map_err(|e| Error::io("flush", o.object.to_string(), e))?;
    Ok(block)
}

/// A format error met while opening, as the engine's error for `object`.
pub(super) fn format_error(e: FormatError, object: String) -> Error {
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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Read log block `j` into `buf`.
pub(super) fn read_log_block(
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
