//! Writing backups: a snapshot (or the changes between two) to a byte stream, in one pass.

use super::format::{BackupHeader, Record, SnapshotRef, Trailer, BLOCK, MAX_DATA};
use super::BackupSummary;
use crate::error::{Error, ErrorKind, Result};
use crate::snapshot::{PairUse, Snapshot, SnapshotInfo};
use std::io::{BufWriter, Write};
use std::time::{SystemTime, UNIX_EPOCH};

/// How much of the snapshot is read at once; also the largest `DATA` record written.
const PIECE: u64 = MAX_DATA;

fn ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn snapshot_ref(info: &SnapshotInfo) -> SnapshotRef {
    SnapshotRef {
        name: info.name.clone(),
        id: info.id,
        created_ns: ns(info.created),
    }
}

/// Write a full backup of `snapshot` to `out`: the header, then every byte of the snapshot as
/// `DATA` records (all-zero blocks as `ZERO` records without data), then the trailer.
/// `progress(done, total)` is called as volume bytes are covered.
///
/// The stream is written front to back, so `out` may be a pipe. On an error the stream is
/// incomplete (a reader will refuse it as truncated); the caller should discard it.
///
/// # Errors
/// `InvalidSnapshot` or `NotFound` if the snapshot cannot be read, `InvalidArgument` if a name
/// is too long to record, `Io` from the snapshot or from `out`.
pub fn write_full(
    snapshot: &Snapshot,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<BackupSummary> {
    let info = readable(snapshot)?;
    let len = info.len;
    let header = new_header(snapshot, &info, None, len)?;
    let mut w = StreamWriter::start(out, header, &info.name)?;
    let mut done = 0;
    progress(0, len);
    copy_range(snapshot, &mut w, 0, len, &mut done, len, progress)?;
    w.finish()
}

/// Write an incremental backup to `out`: the extents that changed between `older` and
/// `snapshot` (a newer snapshot of the same volume), read from `snapshot`. Restored on top of
/// a restore of `older`, it yields `snapshot`.
///
/// The change list is exact to 4 KiB when both snapshots are in the same chain (both
/// persistent or both transient); otherwise it is every block changed since `older` was taken,
/// a superset that gives the same result.
///
/// # Errors
/// `InvalidArgument` if `older` is not an older snapshot of the same volume; as
/// [`write_full`].
pub fn write_incremental(
    older: &Snapshot,
    snapshot: &Snapshot,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<BackupSummary> {
    write_incremental_aligned(older, snapshot, 0, out, progress)
}

/// [`write_incremental`], with every changed extent widened out to multiples of `align` bytes
/// (0: exact), so that a reader cutting the volume into `align`-sized chunks gets every chunk a
/// change touches whole, read from `snapshot`.
///
/// # Errors
/// As [`write_incremental`].
pub fn write_incremental_aligned(
    older: &Snapshot,
    snapshot: &Snapshot,
    align: u64,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<BackupSummary> {
    let base = readable(older)?;
    let info = readable(snapshot)?;
    older.check_older_than(snapshot, PairUse::IncrementalBackup)?;
    let len = info.len;
    let changed = if base.persistent == info.persistent {
        older.changed_until(snapshot, 0, len)?
    } else {
        // Two chains: everything changed since `older` up to now is a superset of what changed
        // up to `snapshot`, and reading it from `snapshot` gives `snapshot`'s bytes.
        older.changed(0, len)?
    };
    let extents = widen(
        changed
            .into_iter()
            .filter(|e| e.data)
            .map(|e| (e.offset, e.len)),
        align,
        len,
    );
    let covered = extents.iter().map(|e| e.1).sum();
    let header = new_header(snapshot, &info, Some(snapshot_ref(&base)), covered)?;
    let mut w = StreamWriter::start(out, header, &info.name)?;
    let mut done = 0;
    progress(0, covered);
    for &(offset, n) in &extents {
        copy_range(snapshot, &mut w, offset, n, &mut done, covered, progress)?;
    }
    w.finish()
}

/// Extents `(offset, len)` in ascending order, widened out to multiples of `align` (0: as
/// they are) within `len` bytes, merged where they meet.
#[must_use]
fn widen(extents: impl Iterator<Item = (u64, u64)>, align: u64, len: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (offset, n) in extents {
        let (start, end) = match offset.checked_div(align) {
            None => (offset, offset + n),
            Some(q) => (
                q * align,
                (offset + n).div_ceil(align).saturating_mul(align).min(len),
            ),
        };
        match out.last_mut() {
            Some(last) if last.0 + last.1 >= start => last.1 = last.1.max(end - last.0),
            _ => out.push((start, end - start)),
        }
    }
    out
}

/// The snapshot's description, if it can be read now.
fn readable(snapshot: &Snapshot) -> Result<SnapshotInfo> {
    snapshot.check_readable("back up")?;
    Ok(snapshot.info())
}

/// A new random backup id.
///
/// # Errors
/// No randomness is available; `what` names the object for the message.
pub fn new_backup_id(what: &str) -> Result<[u8; 16]> {
    let mut backup_id = [0u8; 16];
    getrandom::fill(&mut backup_id).map_err(|e| {
        Error::new(
            ErrorKind::Io,
            "back up",
            what,
            format!("no randomness for the backup id: {e}"),
        )
    })?;
    Ok(backup_id)
}

fn new_header(
    snapshot: &Snapshot,
    info: &SnapshotInfo,
    base: Option<SnapshotRef>,
    covered: u64,
) -> Result<BackupHeader> {
    let backup_id = new_backup_id(&format!("snapshot '{}'", info.name))?;
    Ok(BackupHeader {
        backup_id,
        volume_id: snapshot.volume_identity(),
        volume_name: info.volume.clone(),
        volume_len: info.len,
        snapshot: snapshot_ref(info),
        base,
        covered,
        written_ns: ns(SystemTime::now()),
    })
}

static ZERO_BLOCK: [u8; BLOCK as usize] = [0; BLOCK as usize];

/// Whether a block (at most [`BLOCK`] bytes) is all zero: one `memcmp`.
fn is_zero(b: &[u8]) -> bool {
    ZERO_BLOCK.get(..b.len()) == Some(b)
}

/// Read `[offset, offset + len)` of `snapshot` in pieces and write it as records.
fn copy_range(
    snapshot: &Snapshot,
    w: &mut StreamWriter<'_>,
    offset: u64,
    len: u64,
    done: &mut u64,
    total: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let mut buf = vec![0u8; PIECE.min(len) as usize];
    let end = offset + len;
    let mut pos = offset;
    while pos < end {
        let n = (end - pos).min(PIECE) as usize;
        let piece = &mut buf[..n];
        snapshot.read(piece, pos)?;
        // Runs of blocks that are all zero or not, within the piece.
        let mut run: Option<(usize, bool)> = None;
        let mut i = 0;
        while i < n {
            let stop = (i + BLOCK as usize).min(n);
            let zero = is_zero(&piece[i..stop]);
            match run {
                Some((_, z)) if z == zero => {}
                Some((start, z)) => {
                    w.extent(pos + start as u64, &piece[start..i], z)?;
                    run = Some((i, zero));
                }
                None => run = Some((i, zero)),
            }
            i = stop;
        }
        if let Some((start, z)) = run {
            w.extent(pos + start as u64, &piece[start..n], z)?;
        }
        pos += n as u64;
        *done += n as u64;
        progress(*done, total);
    }
    Ok(())
}

/// The record stream: counts, the running checksum, and a pending run of zero blocks that may
/// still grow. Public for writers of backups whose bytes come from elsewhere than a snapshot
/// (a repository backup turned back into a stream for the daemon's restore).
pub struct StreamWriter<'a> {
    out: BufWriter<&'a mut dyn Write>,
    object: String,
    header: BackupHeader,
    crc: u32,
    bytes: u64,
    seq: u64,
    data_bytes: u64,
    zero_bytes: u64,
    pending_zero: Option<(u64, u64)>,
}

impl<'a> StreamWriter<'a> {
    /// Begin a stream with `header` (its `covered` must be what the extents will add up to)
    /// for the snapshot named `snapshot` (for messages).
    ///
    /// # Errors
    /// A name in the header too long to record; writing to `out`.
    pub fn start(out: &'a mut dyn Write, header: BackupHeader, snapshot: &str) -> Result<Self> {
        let object = format!("snapshot '{snapshot}'");
        let bytes = header
            .encode()
            .map_err(|p| Error::new(p.kind, "back up", object.clone(), p.detail))?;
        let mut w = StreamWriter {
            out: BufWriter::with_capacity(256 << 10, out),
            object,
            header,
            crc: 0,
            bytes: 0,
            seq: 0,
            data_bytes: 0,
            zero_bytes: 0,
            pending_zero: None,
        };
        w.put(&bytes)?;
        Ok(w)
    }

    /// Append bytes to the stream (and to the running checksum).
    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, b);
        self.bytes += b.len() as u64;
        self.out.write_all(b).map_err(|e| {
            Error::io("write backup of", self.object.clone(), e).at(self.bytes - b.len() as u64)
        })
    }

    /// The bytes at `offset`: `data`, or as many zeroes when `zero`. Extents come in volume
    /// order, each at most [`super::format::MAX_DATA`] bytes.
    ///
    /// # Errors
    /// Writing to the output.
    pub fn extent(&mut self, offset: u64, data: &[u8], zero: bool) -> Result<()> {
        let len = data.len() as u64;
        if zero {
            match &mut self.pending_zero {
                Some((o, l)) if *o + *l == offset => *l += len,
                _ => {
                    self.flush_zero()?;
                    self.pending_zero = Some((offset, len));
                }
            }
            return Ok(());
        }
        self.flush_zero()?;
        let r = Record::Data {
            seq: self.seq,
            offset,
            len,
            crc: crc32c::crc32c(data),
        };
        self.put(&r.encode(&self.header.backup_id))?;
        self.put(data)?;
        self.seq += 1;
        self.data_bytes += len;
        Ok(())
    }

    fn flush_zero(&mut self) -> Result<()> {
        if let Some((offset, len)) = self.pending_zero.take() {
            let r = Record::Zero {
                seq: self.seq,
                offset,
                len,
            };
            self.put(&r.encode(&self.header.backup_id))?;
            self.seq += 1;
            self.zero_bytes += len;
        }
        Ok(())
    }

    /// Write the trailer and flush.
    ///
    /// # Errors
    /// Writing to the output.
    pub fn finish(mut self) -> Result<BackupSummary> {
        self.flush_zero()?;
        let t = Record::End(Trailer {
            records: self.seq,
            data_bytes: self.data_bytes,
            zero_bytes: self.zero_bytes,
            stream_crc: self.crc,
        });
        self.put(&t.encode(&self.header.backup_id))?;
        self.out
            .flush()
            .map_err(|e| Error::io("write backup of", self.object.clone(), e))?;
        Ok(BackupSummary {
            header: self.header,
            records: self.seq,
            data_bytes: self.data_bytes,
            zero_bytes: self.zero_bytes,
            stream_bytes: self.bytes,
        })
    }
}

#[cfg(test)]
mod widen_tests {
    use super::widen;

    #[test]
    fn extents_grow_to_whole_chunks_and_merge() {
        let e = [(10, 5), (100, 1), (4096, 4096), (9000, 10)];
        assert_eq!(widen(e.into_iter(), 0, 20_000), e.to_vec());
        assert_eq!(widen(e.into_iter(), 4096, 20_000), vec![(0, 4096 * 3)]);
        assert_eq!(
            widen([(10, 5), (9000, 10)].into_iter(), 4096, 9005),
            vec![(0, 4096), (8192, 813)]
        );
    }
}
