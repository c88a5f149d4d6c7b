//! Log records, the log-block writer and the replay scanner (see `docs/FORMAT.md` section 3).

use super::le::{u16_at, u32_at, u64_at};
use super::{FormatError, BLOCK};

/// Bytes of a record header.
pub const HEADER: usize = 40;
/// Most blocks one preserve record covers, so that it fits in a log block.
pub const MAX_RUN: usize = (BLOCK - HEADER) / 4;
/// Longest invalidation reason kept, in bytes.
pub const MAX_REASON: usize = 256;

const KIND_PRESERVE: u16 = 1;
const KIND_INVALIDATE: u16 = 2;

/// What a record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Blocks `first_block..first_block + crcs.len()` of `cluster` are preserved in `slot`.
    Preserve {
        /// Cluster index in the volume.
        cluster: u32,
        /// Slot in the store.
        slot: u32,
        /// First block inside the cluster.
        first_block: u16,
        /// CRC-32C of each block.
        crcs: Vec<u32>,
    },
    /// The snapshot is invalid.
    Invalidate {
        /// Why.
        reason: String,
    },
}

/// A log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Sequence number, dense from 1.
    pub seq: u64,
    /// Highest sequence number durable when this one was written.
    pub horizon: u64,
    /// The content.
    pub body: Body,
}

fn checksum(nonce: &[u8; 16], header: &[u8], payload: &[u8]) -> u32 {
    let c = crc32c::crc32c(nonce);
    let c = crc32c::crc32c_append(c, &header[..36]);
    crc32c::crc32c_append(c, payload)
}

impl Record {
    fn payload(&self) -> Vec<u8> {
        match &self.body {
            Body::Preserve { crcs, .. } => crcs.iter().flat_map(|c| c.to_le_bytes()).collect(),
            Body::Invalidate { reason } => {
                let mut r = reason.as_bytes().to_vec();
                if r.len() > MAX_REASON {
                    let mut cut = MAX_REASON;
                    while !reason.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    r.truncate(cut);
                }
                r
            }
        }
    }

    /// Bytes this record takes in a log block (a multiple of 4).
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        padded(HEADER + self.payload().len())
    }

    /// Encode with the store's nonce.
    #[must_use]
    pub fn encode(&self, nonce: &[u8; 16]) -> Vec<u8> {
        let payload = self.payload();
        let mut h = [0u8; HEADER];
        let (kind, first, cluster, slot) = match &self.body {
            Body::Preserve {
                cluster,
                slot,
                first_block,
                ..
            } => (KIND_PRESERVE, *first_block, *cluster, *slot),
            Body::Invalidate { .. } => (KIND_INVALIDATE, 0, 0, 0),
        };
        h[0..2].copy_from_slice(&kind.to_le_bytes());
        h[2..4].copy_from_slice(&(payload.len() as u16).to_le_bytes());
        h[4..6].copy_from_slice(&first.to_le_bytes());
        h[8..16].copy_from_slice(&self.seq.to_le_bytes());
        h[16..24].copy_from_slice(&self.horizon.to_le_bytes());
        h[24..28].copy_from_slice(&cluster.to_le_bytes());
        h[28..32].copy_from_slice(&slot.to_le_bytes());
        let crc = checksum(nonce, &h, &payload);
        h[36..40].copy_from_slice(&crc.to_le_bytes());
        let mut out = h.to_vec();
        out.extend_from_slice(&payload);
        out.resize(padded(out.len()), 0);
        out
    }
}

/// The result of decoding at one position of a log block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A record whose checksum matches, and its length.
    Record(Record, usize),
    /// Zero bytes: no record here.
    Empty,
    /// Not a record (torn, damaged, or foreign).
    Invalid,
}

/// Decode the record at the start of `b` (the rest of a log block).
#[must_use]
pub fn decode(nonce: &[u8; 16], b: &[u8]) -> Decoded {
    if b.len() < HEADER {
        return Decoded::Empty;
    }
    let h = &b[..HEADER];
    if h.iter().all(|&x| x == 0) {
        return Decoded::Empty;
    }
    let len = usize::from(u16_at(h, 2));
    if HEADER + len > b.len() {
        return Decoded::Invalid;
    }
    let payload = &b[HEADER..HEADER + len];
    if checksum(nonce, h, payload) != u32_at(h, 36) {
        return Decoded::Invalid;
    }
    let seq = u64_at(h, 8);
    let horizon = u64_at(h, 16);
    let body = match u16_at(h, 0) {
        KIND_PRESERVE if len % 4 == 0 && len > 0 => Body::Preserve {
            cluster: u32_at(h, 24),
            slot: u32_at(h, 28),
            first_block: u16_at(h, 4),
            crcs: payload.chunks_exact(4).map(|c| u32_at(c, 0)).collect(),
        },
        KIND_INVALIDATE => Body::Invalidate {
            reason: String::from_utf8_lossy(payload).into_owned(),
        },
        // A valid checksum on an unknown kind: written by something else than format v1.
        _ => return Decoded::Invalid,
    };
    Decoded::Record(
        Record { seq, horizon, body },
        padded(HEADER + len).min(b.len()),
    )
}

/// Records start at multiples of 4 bytes.
fn padded(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// Appends records to the log, producing the log blocks to write (pure: the caller writes them).
#[derive(Debug, Clone)]
pub struct LogWriter {
    nonce: [u8; 16],
    block_index: u64,
    block: Vec<u8>,
    pos: usize,
    next_seq: u64,
    dirty_from: Option<u64>,
    dirty: Vec<(u64, Vec<u8>)>,
}

impl LogWriter {
    /// A writer that continues after `last_seq`, at position `pos` of log block `block_index`
    /// whose current bytes are `block`.
    #[must_use]
    pub fn new(
        nonce: [u8; 16],
        block_index: u64,
        block: Vec<u8>,
        pos: usize,
        last_seq: u64,
    ) -> Self {
        let mut block = block;
        block.resize(BLOCK, 0);
        // Whatever follows the last valid record (a torn tail) is cleared on the next write.
        block[pos..].fill(0);
        LogWriter {
            nonce,
            block_index,
            block,
            pos,
            next_seq: last_seq + 1,
            dirty_from: None,
            dirty: Vec::new(),
        }
    }

    /// The sequence number the next record gets.
    #[must_use]
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The log block being filled.
    #[must_use]
    pub fn block_index(&self) -> u64 {
        self.block_index
    }

    /// Append a record with the next sequence number and `horizon`; returns its sequence number.
    pub fn append(&mut self, body: Body, horizon: u64) -> u64 {
        let rec = Record {
            seq: self.next_seq,
            horizon,
            body,
        };
        let bytes = rec.encode(&self.nonce);
        if self.pos + bytes.len() > BLOCK {
            self.finish_block();
            self.block_index += 1;
            self.block = vec![0u8; BLOCK];
            self.pos = 0;
        }
        self.block[self.pos..self.pos + bytes.len()].copy_from_slice(&bytes);
        self.pos += bytes.len();
        self.dirty_from.get_or_insert(self.block_index);
        self.next_seq += 1;
        rec.seq
    }

    fn finish_block(&mut self) {
        if self.dirty_from.is_some() {
            self.dirty.push((self.block_index, self.block.clone()));
        }
    }

    /// The log blocks changed since the last call, ascending, to be written as they are.
    pub fn take_dirty(&mut self) -> Vec<(u64, Vec<u8>)> {
        self.finish_block();
        self.dirty_from = None;
        std::mem::take(&mut self.dirty)
    }
}

/// Bounds that valid preserve records must respect.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Clusters in the volume.
    pub clusters: u64,
    /// Blocks per cluster.
    pub blocks_per_cluster: u32,
}

/// Scans log blocks in order and collects the valid prefix of the log.
#[derive(Debug)]
pub struct Replay {
    nonce: [u8; 16],
    bounds: Bounds,
    /// The valid records not taken yet (see [`Replay::take_settled`]), in order.
    pub records: Vec<Record>,
    /// Where each of `records` starts: (log block, byte).
    positions: Vec<(u64, usize)>,
    /// The sequence number of the last valid record (taken or not).
    last_seq: u64,
    /// The highest durable horizon seen.
    pub horizon: u64,
    /// Where the log ends: block index and byte position of the first byte after the last
    /// valid record.
    pub end: (u64, usize),
    ended: bool,
    blocks_fed: u64,
}

impl Replay {
    /// A scanner for a store with `nonce` and `bounds`.
    #[must_use]
    pub fn new(nonce: [u8; 16], bounds: Bounds) -> Self {
        Replay {
            nonce,
            bounds,
            records: Vec::new(),
            positions: Vec::new(),
            last_seq: 0,
            horizon: 0,
            end: (0, 0),
            ended: false,
            blocks_fed: 0,
        }
    }

    /// Whether the end of the log was found.
    #[must_use]
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The sequence number of the last valid record so far (0 for none).
    #[must_use]
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Where each of [`Replay::records`] starts in the log: (log block, byte), as found while
    /// fed. Only these are exact: a record's decoded form may encode to another length (an
    /// invalidation reason that is not UTF-8 decodes lossily).
    #[must_use]
    pub fn positions(&self) -> &[(u64, usize)] {
        &self.positions
    }

    /// Take the records known durable so far: those at or below the highest durable horizon
    /// seen. The horizon only grows, so they stay trusted whatever follows; a replay that
    /// takes them as it goes keeps only the last batch's records in memory.
    pub fn take_settled(&mut self) -> Vec<Record> {
        let n = self.records.partition_point(|r| r.seq <= self.horizon);
        self.positions.drain(..n);
        self.records.drain(..n).collect()
    }

    fn check(&self, r: &Record) -> Result<(), FormatError> {
        match &r.body {
            Body::Preserve {
                cluster,
                slot,
                first_block,
                crcs,
            } => {
                let end = usize::from(*first_block) + crcs.len();
                if u64::from(*cluster) >= self.bounds.clusters
                    || u64::from(*slot) >= self.bounds.clusters
                    || end > self.bounds.blocks_per_cluster as usize
                {
                    return Err(FormatError::Corrupt(format!(
                        "log record {} names cluster {cluster}, slot {slot}, blocks {first_block}..{end}, \
                         outside the volume",
                        r.seq
                    )));
                }
                Ok(())
            }
            Body::Invalidate { .. } => Ok(()),
        }
    }

    /// Feed the next log block (index `blocks_fed`). Stops at the end of the log.
    ///
    /// # Errors
    /// A valid record with out-of-range fields: the store is corrupt.
    pub fn feed(&mut self, block: &[u8]) -> Result<(), FormatError> {
        if self.ended {
            return Ok(());
        }
        let index = self.blocks_fed;
        self.blocks_fed += 1;
        let mut pos = 0;
        loop {
            match decode(&self.nonce, &block[pos..]) {
                Decoded::Record(r, len) if r.seq == self.last_seq + 1 => {
                    self.check(&r)?;
                    self.horizon = self.horizon.max(r.horizon);
                    self.last_seq = r.seq;
                    self.positions.push((index, pos));
                    self.records.push(r);
                    pos += len;
                    self.end = (index, pos);
                }
                Decoded::Empty if pos > 0 => {
                    // Padding, or the end: the next block tells. The end stays after the last
                    // record, where the next append goes.
                    return Ok(());
                }
                _ => {
                    self.ended = true;
                    return Ok(());
                }
            }
        }
    }

    /// After the end: whether `block` holds a valid record that proves the log was damaged in
    /// the middle rather than torn at its tail: one written after a flush that made records
    /// past the end durable (its durable horizon is past the last valid sequence number).
    /// Records of the one batch whose flush may not have completed have a horizon at or below
    /// the end, whatever subset of them survived, and are ignored.
    #[must_use]
    pub fn finds_later_record(&self, block: &[u8]) -> bool {
        let last = self.last_seq();
        (0..=BLOCK - HEADER).step_by(4).any(|pos| {
            matches!(decode(&self.nonce, &block[pos..]), Decoded::Record(ref r, _) if r.horizon > last)
        })
    }

    /// Whether `block` holds any record of this store that checks out (stale or not).
    #[must_use]
    pub fn holds_any_record(&self, block: &[u8]) -> bool {
        (0..=BLOCK - HEADER)
            .step_by(4)
            .any(|pos| matches!(decode(&self.nonce, &block[pos..]), Decoded::Record(..)))
    }

    /// Drop the records from index `i` of those not taken on (their data did not survive a
    /// crash), moving the end to just before record `i`.
    pub fn truncate(&mut self, i: usize) {
        if i < self.records.len() {
            self.end = self.positions[i];
            self.last_seq = self.records[i].seq - 1;
            self.records.truncate(i);
            self.positions.truncate(i);
        }
    }
}

/// Every record's starting (block, byte) position, recomputed from lengths in order, as a
/// writer of format v1 lays them out (for records decoded from a log, see
/// [`Replay::positions`]).
#[must_use]
pub fn record_positions(records: &[Record]) -> Vec<(u64, usize)> {
    let mut out = Vec::with_capacity(records.len());
    let (mut block, mut pos) = (0u64, 0usize);
    for r in records {
        let len = r.encoded_len();
        if pos + len > BLOCK {
            block += 1;
            pos = 0;
        }
        out.push((block, pos));
        pos += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: [u8; 16] = [9; 16];
    const B: Bounds = Bounds {
        clusters: 1000,
        blocks_per_cluster: 16,
    };

    fn pres(cluster: u32, slot: u32, first: u16, n: usize) -> Body {
        Body::Preserve {
            cluster,
            slot,
            first_block: first,
            crcs: (0..n as u32).collect(),
        }
    }

    #[test]
    fn record_round_trip_and_foreign_nonce() {
        let r = Record {
            seq: 5,
            horizon: 3,
            body: pres(7, 2, 4, 3),
        };
        let b = r.encode(&N);
        assert_eq!(b.len(), r.encoded_len());
        assert_eq!(decode(&N, &b), Decoded::Record(r, 52));
        assert_eq!(decode(&[1; 16], &b), Decoded::Invalid);
        let inv = Record {
            seq: 1,
            horizon: 0,
            body: Body::Invalidate {
                reason: "full".into(),
            },
        };
        assert!(matches!(decode(&N, &inv.encode(&N)), Decoded::Record(x, _) if x == inv));
    }

    fn write_log(bodies: Vec<Body>) -> Vec<Vec<u8>> {
        let mut w = LogWriter::new(N, 0, vec![0; BLOCK], 0, 0);
        let mut blocks: Vec<Vec<u8>> = Vec::new();
        for (i, b) in bodies.into_iter().enumerate() {
            w.append(b, i as u64 / 3 * 3);
            if i % 3 == 2 {
                for (idx, bytes) in w.take_dirty() {
                    if blocks.len() <= idx as usize {
                        blocks.resize(idx as usize + 1, vec![0; BLOCK]);
                    }
                    blocks[idx as usize] = bytes;
                }
            }
        }
        for (idx, bytes) in w.take_dirty() {
            if blocks.len() <= idx as usize {
                blocks.resize(idx as usize + 1, vec![0; BLOCK]);
            }
            blocks[idx as usize] = bytes;
        }
        blocks.push(vec![0; BLOCK]);
        blocks
    }

    fn replay(blocks: &[Vec<u8>]) -> Result<Replay, FormatError> {
        let mut r = Replay::new(N, B);
        for b in blocks {
            r.feed(b)?;
        }
        Ok(r)
    }

    #[test]
    fn writer_and_replay_agree_across_block_boundaries() {
        let bodies: Vec<Body> = (0..300)
            .map(|i| pres(i, i, (i % 12) as u16, 1 + (i as usize % 5)))
            .collect();
        let blocks = write_log(bodies.clone());
        assert!(blocks.len() > 3);
        let r = replay(&blocks).unwrap();
        assert_eq!(r.records.len(), 300);
        assert!(r.records.iter().zip(&bodies).all(|(a, b)| &a.body == b));
        assert_eq!(r.horizon, 297);
        let pos = record_positions(&r.records);
        assert_eq!(r.positions, pos, "positions noted as fed");
        let last = r.records.last().unwrap();
        assert_eq!(r.end, (pos[299].0, pos[299].1 + last.encoded_len()));
    }

    #[test]
    fn settled_records_are_taken_and_a_truncate_counts_from_the_rest() {
        let blocks = write_log((0..300).map(|i| pres(i, i, 0, 1)).collect());
        let mut all = replay(&blocks).unwrap();
        let pos = record_positions(&all.records);
        let mut r = replay(&blocks).unwrap();
        let settled = r.take_settled();
        assert_eq!(settled.len(), 297, "every record up to the horizon");
        assert!(settled
            .iter()
            .zip(&all.records)
            .all(|(a, b)| a.seq == b.seq));
        assert_eq!(r.records.len(), 3);
        assert_eq!(r.last_seq(), 300);
        assert!(r.take_settled().is_empty());
        r.truncate(1);
        all.truncate(298);
        assert_eq!(r.end, pos[298]);
        assert_eq!((r.end, r.last_seq()), (all.end, all.last_seq()));
        assert_eq!(r.last_seq(), 298);
    }

    #[test]
    fn torn_tail_ends_the_log_and_a_damaged_middle_is_found() {
        let blocks = write_log((0..300).map(|i| pres(i, i, 0, 2)).collect());
        // Tear the last record.
        let r = replay(&blocks).unwrap();
        let (b, p) = record_positions(&r.records)[299];
        let mut torn = blocks.clone();
        torn[b as usize][p + 10] ^= 0xFF;
        let t = replay(&torn).unwrap();
        assert_eq!(t.records.len(), 299);
        assert!(!(b as usize + 1..torn.len()).any(|i| t.finds_later_record(&torn[i])));
        // Damage a record in the middle: later records are still there to find.
        let mut mid = blocks.clone();
        mid[0][100] ^= 1;
        let m = replay(&mid).unwrap();
        assert!(m.records.len() < 10);
        assert!((0..mid.len()).any(|i| m.finds_later_record(&mid[i])));
    }

    #[test]
    fn out_of_range_record_is_corruption() {
        let blocks = write_log(vec![pres(5000, 0, 0, 1)]);
        assert!(matches!(replay(&blocks), Err(FormatError::Corrupt(_))));
        let blocks = write_log(vec![pres(1, 0, 15, 2)]);
        assert!(matches!(replay(&blocks), Err(FormatError::Corrupt(_))));
    }

    #[test]
    fn writer_resumes_after_a_partial_block() {
        let blocks = write_log((0..5).map(|i| pres(i, i, 0, 1)).collect());
        let r = replay(&blocks).unwrap();
        let (bi, pos) = r.end;
        let mut w = LogWriter::new(N, bi, blocks[bi as usize].clone(), pos, 5);
        assert_eq!(w.append(pres(9, 9, 0, 1), 5), 6);
        let dirty = w.take_dirty();
        assert_eq!(dirty.len(), 1);
        let mut blocks2 = blocks.clone();
        blocks2[dirty[0].0 as usize] = dirty[0].1.clone();
        // Earlier records are rewritten with the same bytes.
        assert_eq!(blocks2[0][..pos], blocks[0][..pos]);
        assert_eq!(replay(&blocks2).unwrap().records.len(), 6);
    }
}
