//! The journal of held writes: where an acknowledged write that has not reached the volume yet
//! (see `held_writes`) is kept outside the process, so that it outlives the process's death.
//!
//! The journal lives in memory that survives a process but not the machine (a file on tmpfs,
//! or any file: nothing here is ever flushed). A power cut may lose what no FLUSH covered, as
//! a disk's volatile cache does; a crash or kill of the serving process must lose nothing it
//! acknowledged. A write is appended before it is acknowledged and retired (the header's
//! `retired` number passes it) once applied, before any later write of its blocks can be
//! applied. At the next start on the same boot, the writes not retired are replayed in order
//! through the volume's write path, after its snapshots are attached: the store records of
//! their pre-images may have died with the process, so they are preserved again (a write that
//! was applied already finds its pre-images mapped and writes the same bytes again).
//!
//! Layout: a header block (offset 0) and records from offset [`START`], each a 48-byte header
//! and its data. Records carry consecutive numbers; a scan stops at the first record that is
//! torn (checksum), foreign, or out of sequence (a leftover from before the area was reused).

use crate::device::{BlockDevice, DIRECT_ALIGN};
use crate::format::le::{u32_at as get_u32, u64_at as get_u64};
use std::io;
use std::sync::Arc;

/// Where records start.
pub(crate) const START: u64 = 4096;

/// Record area past which a writer waits until everything held is applied and the area is
/// reused from the start.
pub(crate) const LIMIT: u64 = 96 << 20;

/// Record area past which reusing it also frees it (tmpfs keeps written pages in memory).
const FREE_PAST: u64 = 8 << 20;

const MAGIC: &[u8; 8] = b"FSSHELD1";
const RECORD_MAGIC: u32 = 0x4845_4C44;
const HEADER_LEN: usize = 56;
/// Bytes of a record's header, before its data.
pub(crate) const RECORD_LEN: usize = 48;

/// What a journaled change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Write = 1,
    Discard = 2,
    Zeroes = 3,
}

/// One change read back from the journal.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Pending {
    pub kind: Kind,
    pub offset: u64,
    pub len: u64,
    pub data: Vec<u8>,
}

/// The journal of one volume.
pub(crate) struct HeldJournal {
    dev: Arc<dyn BlockDevice>,
    volume_id: [u8; 16],
    boot_id: [u8; 16],
}

impl HeldJournal {
    pub(crate) fn new(dev: Arc<dyn BlockDevice>, volume_id: [u8; 16], boot_id: [u8; 16]) -> Self {
        HeldJournal {
            dev,
            volume_id,
            boot_id,
        }
    }

    /// Write the header: every record numbered `retired` or below is applied.
    pub(crate) fn retire(&self, retired: u64) -> io::Result<()> {
        let mut b = vec![0u8; START as usize];
        b[..8].copy_from_slice(MAGIC);
        b[8..24].copy_from_slice(&self.volume_id);
        b[24..40].copy_from_slice(&self.boot_id);
        put_u64(&mut b, 40, retired);
        let crc = crc32c::crc32c(&b[..48]);
        put_u32(&mut b, 48, crc);
        self.dev.write_at_cached(&b, 0)
    }

    /// Append change `seq` at `at`; returns where the next record goes.
    #[cfg(test)]
    pub(crate) fn append(
        &self,
        at: u64,
        seq: u64,
        kind: Kind,
        offset: u64,
        len: u64,
        data: &[u8],
    ) -> io::Result<u64> {
        self.append_record(at, seq, &mut record(kind, offset, len, data))
    }

    /// Append `rec` (made by [`record`]) as change `seq` at `at`; returns where the next
    /// record goes. Only the number and the header's checksum are filled in here: this runs
    /// under the held writes' lock, the rest of the record was made before it.
    pub(crate) fn append_record(&self, at: u64, seq: u64, rec: &mut [u8]) -> io::Result<u64> {
        put_u64(rec, 8, seq);
        let crc = crc32c::crc32c(&rec[..44]);
        put_u32(rec, 44, crc);
        self.dev.write_at_cached(rec, at)?;
        Ok(at + rec.len() as u64)
    }

    /// Give back the memory of the record area up to `end` once it is reused from the start.
    pub(crate) fn reused(&self, end: u64) {
        if end > FREE_PAST {
            // Best effort: a failure only keeps the memory.
            let _ = self.dev.discard(START, end - START);
        }
    }

    /// The changes a previous process acknowledged and did not apply, in order, and the
    /// number of the last one; nothing if the journal is empty, another volume's, or from
    /// before a reboot (a power cut loses what no FLUSH covered).
    pub(crate) fn pending(&self) -> io::Result<(Vec<Pending>, u64)> {
        if self.dev.len() < START {
            return Ok((Vec::new(), 0));
        }
        let mut h = vec![0u8; HEADER_LEN];
        self.dev.read_at_cached(&mut h, 0)?;
        let ok = &h[..8] == MAGIC
            && h[8..24] == self.volume_id
            && h[24..40] == self.boot_id
            && get_u32(&h, 48) == crc32c::crc32c(&h[..48]);
        if !ok {
            return Ok((Vec::new(), 0));
        }
        let retired = get_u64(&h, 40);
        let mut out = Vec::new();
        let (mut at, mut prev) = (START, None::<u64>);
        while let Some((seq, p, next)) = self.record_at(at)? {
            if prev.is_some_and(|q| seq != q + 1) {
                break;
            }
            prev = Some(seq);
            if seq > retired {
                out.push(p);
            }
            at = next;
        }
        Ok((out, prev.unwrap_or(0).max(retired)))
    }

    /// The record at `at`, if a whole one is there.
    fn record_at(&self, at: u64) -> io::Result<Option<(u64, Pending, u64)>> {
        let end = self.dev.len();
        if at + RECORD_LEN as u64 > end {
            return Ok(None);
        }
        let mut r = vec![0u8; RECORD_LEN];
        self.dev.read_at_cached(&mut r, at)?;
        if get_u32(&r, 0) != RECORD_MAGIC || get_u32(&r, 44) != crc32c::crc32c(&r[..44]) {
            return Ok(None);
        }
        let kind = match r[4] {
            1 => Kind::Write,
            2 => Kind::Discard,
            3 => Kind::Zeroes,
            _ => return Ok(None),
        };
        let data_len = get_u64(&r, 32);
        let data_at = at + RECORD_LEN as u64;
        if data_len > LIMIT || data_at + data_len > end {
            return Ok(None);
        }
        let mut data = vec![0u8; data_len as usize];
        self.dev.read_at_cached(&mut data, data_at)?;
        if get_u32(&r, 40) != crc32c::crc32c(&data) {
            return Ok(None);
        }
        let p = Pending {
            kind,
            offset: get_u64(&r, 16),
            len: get_u64(&r, 24),
            data,
        };
        Ok(Some((get_u64(&r, 8), p, data_at + data_len)))
    }
}

/// A record of a change, ready but for its number (set by `append_record`): the header, then
/// `data`. Made before the held writes' lock is taken, so the copy and the data's checksum
/// do not hold up other writers; the held write keeps it and applies the data from it.
pub(crate) fn record(kind: Kind, offset: u64, len: u64, data: &[u8]) -> Vec<u8> {
    record_at(kind, offset, len, data, false).0
}

/// As [`record`], in a buffer where the record starts at the returned index, chosen when
/// `align_data` so that the data lies on a [`DIRECT_ALIGN`] boundary: a large held write is
/// then applied from it with O_DIRECT, without a bounce copy.
pub(crate) fn record_at(
    kind: Kind,
    offset: u64,
    len: u64,
    data: &[u8],
    align_data: bool,
) -> (Vec<u8>, usize) {
    let (mut b, at) = if align_data {
        aligned_vec(RECORD_LEN, RECORD_LEN + data.len())
    } else {
        (Vec::with_capacity(RECORD_LEN + data.len()), 0)
    };
    b.resize(at + RECORD_LEN, 0);
    let h = &mut b[at..];
    put_u32(h, 0, RECORD_MAGIC);
    h[4] = kind as u8;
    put_u64(h, 16, offset);
    put_u64(h, 24, len);
    put_u64(h, 32, data.len() as u64);
    put_u32(h, 40, crc32c::crc32c(data));
    b.extend_from_slice(data);
    (b, at)
}

/// An empty `Vec` with room for `at + len` bytes, and the index `at` (its length, filled with
/// zeroes) from which writing `len` bytes puts byte `prefix` of them on a [`DIRECT_ALIGN`]
/// boundary.
pub(crate) fn aligned_vec(prefix: usize, len: usize) -> (Vec<u8>, usize) {
    let mut b = Vec::with_capacity(DIRECT_ALIGN + len);
    let addr = b.as_ptr() as usize + prefix;
    let at = (DIRECT_ALIGN - addr % DIRECT_ALIGN) % DIRECT_ALIGN;
    b.resize(at, 0);
    (b, at)
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::device::MemDevice;

    fn journal(dev: &Arc<MemDevice>, boot: u8) -> HeldJournal {
        let d: Arc<dyn BlockDevice> = dev.clone();
        HeldJournal::new(d, [7; 16], [boot; 16])
    }

    #[test]
    fn an_aligned_record_is_the_same_record_with_its_data_on_a_boundary() {
        for n in [0usize, 1, 4096, 300_000, 1 << 20] {
            let data: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
            let plain = record(Kind::Write, 8192, n as u64, &data);
            let (b, at) = record_at(Kind::Write, 8192, n as u64, &data, true);
            assert_eq!(&b[at..], &plain[..], "{n} bytes");
            assert_eq!((b.as_ptr() as usize + at + RECORD_LEN) % DIRECT_ALIGN, 0);
            let (mut v, at) = aligned_vec(0, n);
            v.extend_from_slice(&data);
            assert_eq!(&v[at..], &data[..]);
            assert_eq!((v.as_ptr() as usize + at) % DIRECT_ALIGN, 0);
        }
    }

    #[test]
    fn records_past_retired_come_back_in_order_and_a_torn_tail_is_dropped() {
        let dev = Arc::new(MemDevice::growable(1 << 30));
        let j = journal(&dev, 1);
        assert!(j.pending().unwrap().0.is_empty(), "an empty file");
        j.retire(10).unwrap();
        let mut at = START;
        for seq in 9..14u64 {
            let data = vec![seq as u8; 100 + seq as usize];
            at = j
                .append(at, seq, Kind::Write, seq * 4096, data.len() as u64, &data)
                .unwrap();
        }
        at = j.append(at, 14, Kind::Discard, 0, 8192, &[]).unwrap();
        let (p, last) = j.pending().unwrap();
        assert_eq!(last, 14);
        let seqs: Vec<u64> = p.iter().map(|p| p.offset / 4096).collect();
        assert_eq!(seqs, [11, 12, 13, 0]);
        assert_eq!(p[0].data, vec![11u8; 111]);
        assert_eq!(p[3].kind, Kind::Discard);
        // A record torn by a death mid-append is not replayed (it was not acknowledged).
        let at2 = j.append(at, 15, Kind::Write, 0, 4, b"abcd").unwrap();
        dev.write_at(&[0xff], at2 - 1).unwrap();
        assert_eq!(j.pending().unwrap().0.len(), 4);
        // Another boot, or another volume: nothing.
        assert!(journal(&dev, 2).pending().unwrap().0.is_empty());
    }

    #[test]
    fn a_reused_area_stops_at_the_older_leftovers() {
        let dev = Arc::new(MemDevice::growable(1 << 30));
        let j = journal(&dev, 1);
        let mut at = START;
        for seq in 1..=5u64 {
            at = j.append(at, seq, Kind::Zeroes, seq, 1, &[]).unwrap();
        }
        let _ = at;
        // All applied; the area is reused from the start by 6 and 7.
        j.retire(5).unwrap();
        let mut at = START;
        for seq in 6..=7u64 {
            at = j.append(at, seq, Kind::Zeroes, seq, 1, &[]).unwrap();
        }
        let (p, last) = j.pending().unwrap();
        assert_eq!(p.iter().map(|p| p.offset).collect::<Vec<_>>(), [6, 7]);
        assert_eq!(last, 7);
    }
}
