//! Backup format v1: pure encoding, decoding and checking, no I/O (see `docs/BACKUP.md`).
//!
//! - [`BackupHeader`]: the 512-byte header (section 2);
//! - [`Record`]: a 40-byte record header, an extent record or the trailer (sections 3 and 4);
//! - [`StreamCheck`]: the rules a sequence of records obeys (sequence, offsets, counts);
//! - [`check_chain`]: the rules a list of backups given to a restore obeys (section 6).

use crate::error::ErrorKind;
use crate::format::le::{u32_at, u64_at};

/// The magic at offset 0.
pub const MAGIC: [u8; 8] = *b"FSSBACK\0";
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;
/// Bytes in the header.
pub const HEADER_LEN: usize = 512;
/// Bytes in a record header and in the trailer.
pub const RECORD_LEN: usize = 40;
/// The block size recorded in the header; extent offsets are multiples of it.
pub const BLOCK: u64 = 4096;
/// The largest payload of one `DATA` record.
pub const MAX_DATA: u64 = 1 << 20;
/// The longest name (volume or snapshot), in bytes.
pub const NAME_MAX: usize = 64;

const HEADER_CRC_AT: usize = HEADER_LEN - 4;
const TAG_DATA: [u8; 4] = *b"DATA";
const TAG_ZERO: [u8; 4] = *b"ZERO";
const TAG_END: [u8; 4] = *b"END\0";

/// Why bytes are not acceptable: the error kind a reader reports and a sentence saying what is
/// wrong (the reader adds the file name and the offset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `InvalidArgument` (not a backup, or a wrong chain), `UnsupportedFormat` (another
    /// version) or `CorruptStore` (damaged).
    pub kind: ErrorKind,
    /// What is wrong and, where it helps, what was expected.
    pub detail: String,
}

impl Problem {
    fn corrupt(detail: impl Into<String>) -> Self {
        Problem {
            kind: ErrorKind::CorruptStore,
            detail: detail.into(),
        }
    }

    fn chain(detail: impl Into<String>) -> Self {
        Problem {
            kind: ErrorKind::InvalidArgument,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

/// Full or incremental.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupKind {
    /// Every byte of the snapshot.
    Full,
    /// The extents changed since a base snapshot.
    Incremental,
}

impl BackupKind {
    /// "full" or "incremental".
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            BackupKind::Full => "full",
            BackupKind::Incremental => "incremental",
        }
    }
}

/// A snapshot as a backup names it: name, id (creation order within its volume) and creation
/// time, which together tell apart incarnations that reuse an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRef {
    /// Its name.
    pub name: String,
    /// Its creation order within the volume.
    pub id: u64,
    /// Its creation time, ns since the Unix epoch.
    pub created_ns: u64,
}

impl std::fmt::Display for SnapshotRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "'{}' (id {})", self.name, self.id)
    }
}

/// The decoded header of a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupHeader {
    /// Random, unique to the backup; seeds record checksums.
    pub backup_id: [u8; 16],
    /// The volume's identity.
    pub volume_id: [u8; 16],
    /// The volume's name.
    pub volume_name: String,
    /// The volume's length in bytes.
    pub volume_len: u64,
    /// The snapshot the backup holds.
    pub snapshot: SnapshotRef,
    /// For an incremental backup, the snapshot it is based on.
    pub base: Option<SnapshotRef>,
    /// The sum of the lengths of the extent records.
    pub covered: u64,
    /// When the backup was started, ns since the epoch.
    pub written_ns: u64,
}

fn name_bytes(what: &str, name: &str) -> Result<usize, Problem> {
    if name.len() > NAME_MAX {
        return Err(Problem {
            kind: ErrorKind::InvalidArgument,
            detail: format!(
                "the {what} name '{name}' is longer than {NAME_MAX} bytes and cannot be recorded"
            ),
        });
    }
    Ok(name.len())
}

fn decode_name(b: &[u8], len_at: usize, at: usize, what: &str) -> Result<String, Problem> {
    let n = usize::from(b[len_at]);
    if n > NAME_MAX {
        return Err(Problem::corrupt(format!(
            "header: {what} name length {n} is over {NAME_MAX}"
        )));
    }
    if b[at + n..at + NAME_MAX].iter().any(|&x| x != 0) {
        return Err(Problem::corrupt(format!(
            "header: {what} name is not zero padded"
        )));
    }
    match std::str::from_utf8(&b[at..at + n]) {
        Ok(s) => Ok(s.to_string()),
        Err(_) => Err(Problem::corrupt(format!(
            "header: {what} name is not UTF-8"
        ))),
    }
}

impl BackupHeader {
    /// Full or incremental.
    #[must_use]
    pub fn kind(&self) -> BackupKind {
        if self.base.is_some() {
            BackupKind::Incremental
        } else {
            BackupKind::Full
        }
    }

    /// Whether the fields obey the rules of a valid header (section 2).
    fn check(&self) -> Result<(), Problem> {
        match &self.base {
            None if self.covered != self.volume_len => Err(Problem::corrupt(format!(
                "header: a full backup must cover the volume's {} bytes, not {}",
                self.volume_len, self.covered
            ))),
            Some(b) if b.id == 0 || b.id >= self.snapshot.id => Err(Problem::corrupt(format!(
                "header: base snapshot id {} is not below the snapshot's id {}",
                b.id, self.snapshot.id
            ))),
            Some(_) if self.covered > self.volume_len => Err(Problem::corrupt(format!(
                "header: covers {} bytes, more than the volume's {}",
                self.covered, self.volume_len
            ))),
            _ => Ok(()),
        }
    }

    /// Encode into [`HEADER_LEN`] bytes.
    ///
    /// # Errors
    /// `InvalidArgument` if a name is longer than [`NAME_MAX`] bytes or the fields break a
    /// rule of section 2.
    pub fn encode(&self) -> Result<Vec<u8>, Problem> {
        self.check().map_err(|p| Problem::chain(p.detail))?;
        let vn = name_bytes("volume", &self.volume_name)?;
        let sn = name_bytes("snapshot", &self.snapshot.name)?;
        let bn = match &self.base {
            Some(b) => name_bytes("base snapshot", &b.name)?,
            None => 0,
        };
        let mut b = vec![0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        let kind: u32 = match self.kind() {
            BackupKind::Full => 1,
            BackupKind::Incremental => 2,
        };
        b[16..20].copy_from_slice(&kind.to_le_bytes());
        b[20..24].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        b[24..40].copy_from_slice(&self.backup_id);
        b[40..56].copy_from_slice(&self.volume_id);
        b[56..64].copy_from_slice(&self.volume_len.to_le_bytes());
        b[64..72].copy_from_slice(&self.snapshot.id.to_le_bytes());
        b[72..80].copy_from_slice(&self.snapshot.created_ns.to_le_bytes());
        if let Some(base) = &self.base {
            b[80..88].copy_from_slice(&base.id.to_le_bytes());
            b[88..96].copy_from_slice(&base.created_ns.to_le_bytes());
            b[256..256 + bn].copy_from_slice(base.name.as_bytes());
        }
        b[96..104].copy_from_slice(&self.covered.to_le_bytes());
        b[104..112].copy_from_slice(&self.written_ns.to_le_bytes());
        b[112] = vn as u8;
        b[113] = sn as u8;
        b[114] = bn as u8;
        b[128..128 + vn].copy_from_slice(self.volume_name.as_bytes());
        b[192..192 + sn].copy_from_slice(self.snapshot.name.as_bytes());
        let crc = crc32c::crc32c(&b[..HEADER_CRC_AT]);
        b[HEADER_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        Ok(b)
    }

    /// Decode and check a header from its first [`HEADER_LEN`] bytes.
    ///
    /// # Errors
    /// A [`Problem`]: not a backup (`InvalidArgument`), another version (`UnsupportedFormat`),
    /// or damaged (`CorruptStore`).
    pub fn decode(b: &[u8]) -> Result<Self, Problem> {
        if b.len() < MAGIC.len() && MAGIC.starts_with(b) {
            return Err(Problem::corrupt(format!(
                "the stream ends after {} bytes, inside the magic; the backup is truncated",
                b.len()
            )));
        }
        if b.len() < MAGIC.len() || b[0..8] != MAGIC {
            return Err(Problem {
                kind: ErrorKind::InvalidArgument,
                detail: "not an fss backup (no FSSBACK magic at its start)".into(),
            });
        }
        if b.len() < HEADER_LEN {
            return Err(Problem::corrupt(format!(
                "the stream ends after {} bytes, inside the {HEADER_LEN}-byte header; \
                 the backup is truncated",
                b.len()
            )));
        }
        let version = u32_at(b, 8);
        if version != VERSION {
            return Err(Problem {
                kind: ErrorKind::UnsupportedFormat,
                detail: format!(
                    "backup format version {version} is not supported (this fss reads version \
                     {VERSION}); if the backup was not written by a newer fss, it is damaged"
                ),
            });
        }
        if crc32c::crc32c(&b[..HEADER_CRC_AT]) != u32_at(b, HEADER_CRC_AT) {
            return Err(Problem::corrupt(
                "header checksum mismatch: the header is damaged",
            ));
        }
        let header_len = u32_at(b, 12);
        if header_len as usize != HEADER_LEN {
            return Err(Problem::corrupt(format!(
                "header: length {header_len} is not {HEADER_LEN}"
            )));
        }
        let block = u32_at(b, 20);
        if u64::from(block) != BLOCK {
            return Err(Problem::corrupt(format!(
                "header: block size {block} is not {BLOCK}"
            )));
        }
        if b[115..128]
            .iter()
            .chain(&b[320..HEADER_CRC_AT])
            .any(|&x| x != 0)
        {
            return Err(Problem::corrupt("header: reserved bytes are not zero"));
        }
        let volume_name = decode_name(b, 112, 128, "volume")?;
        let snapshot_name = decode_name(b, 113, 192, "snapshot")?;
        let base_name = decode_name(b, 114, 256, "base snapshot")?;
        let base_id = u64_at(b, 80);
        let base_created = u64_at(b, 88);
        let base = match u32_at(b, 16) {
            1 => {
                if base_id != 0 || base_created != 0 || !base_name.is_empty() {
                    return Err(Problem::corrupt(
                        "header: a full backup names a base snapshot",
                    ));
                }
                None
            }
            2 => Some(SnapshotRef {
                name: base_name,
                id: base_id,
                created_ns: base_created,
            }),
            k => {
                return Err(Problem::corrupt(format!(
                    "header: kind {k} is neither 1 (full) nor 2 (incremental)"
                )))
            }
        };
        let mut backup_id = [0u8; 16];
        backup_id.copy_from_slice(&b[24..40]);
        let mut volume_id = [0u8; 16];
        volume_id.copy_from_slice(&b[40..56]);
        let h = BackupHeader {
            backup_id,
            volume_id,
            volume_name,
            volume_len: u64_at(b, 56),
            snapshot: SnapshotRef {
                name: snapshot_name,
                id: u64_at(b, 64),
                created_ns: u64_at(b, 72),
            },
            base,
            covered: u64_at(b, 96),
            written_ns: u64_at(b, 104),
        };
        h.check()?;
        Ok(h)
    }
}

/// The trailer's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// Extent records in the stream.
    pub records: u64,
    /// Bytes covered by `DATA` records.
    pub data_bytes: u64,
    /// Bytes covered by `ZERO` records.
    pub zero_bytes: u64,
    /// CRC-32C of every byte before the trailer.
    pub stream_crc: u32,
}

/// A decoded record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// `len` bytes of data for volume offset `offset` follow, with checksum `crc`.
    Data {
        /// Sequence number.
        seq: u64,
        /// Volume offset.
        offset: u64,
        /// Length of the extent and of the payload.
        len: u64,
        /// CRC-32C of the payload.
        crc: u32,
    },
    /// `len` bytes at volume offset `offset` are zero.
    Zero {
        /// Sequence number.
        seq: u64,
        /// Volume offset.
        offset: u64,
        /// Length of the extent.
        len: u64,
    },
    /// The end of the stream.
    End(Trailer),
}

fn record_crc(backup_id: &[u8; 16], b: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(backup_id), &b[..36])
}

impl Record {
    /// Encode into [`RECORD_LEN`] bytes, for the backup `backup_id`.
    #[must_use]
    pub fn encode(&self, backup_id: &[u8; 16]) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        let (tag, a, o, l, c) = match *self {
            Record::Data {
                seq,
                offset,
                len,
                crc,
            } => (TAG_DATA, seq, offset, len, crc),
            Record::Zero { seq, offset, len } => (TAG_ZERO, seq, offset, len, 0),
            Record::End(t) => (TAG_END, t.records, t.data_bytes, t.zero_bytes, t.stream_crc),
        };
        b[0..4].copy_from_slice(&tag);
        b[8..16].copy_from_slice(&a.to_le_bytes());
        b[16..24].copy_from_slice(&o.to_le_bytes());
        b[24..32].copy_from_slice(&l.to_le_bytes());
        b[32..36].copy_from_slice(&c.to_le_bytes());
        let crc = record_crc(backup_id, &b);
        b[36..40].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decode a record header of the backup `backup_id` (checksum, type, reserved bytes; the
    /// stream rules are [`StreamCheck`]'s).
    ///
    /// # Errors
    /// `CorruptStore`.
    pub fn decode(backup_id: &[u8; 16], b: &[u8; RECORD_LEN]) -> Result<Self, Problem> {
        if record_crc(backup_id, b) != u32_at(b, 36) {
            return Err(Problem::corrupt(
                "record header checksum mismatch: the record is damaged, or comes from \
                 another backup",
            ));
        }
        if u32_at(b, 4) != 0 {
            return Err(Problem::corrupt("record: reserved bytes are not zero"));
        }
        let (a, o, l, c) = (u64_at(b, 8), u64_at(b, 16), u64_at(b, 24), u32_at(b, 32));
        let mut tag = [0u8; 4];
        tag.copy_from_slice(&b[0..4]);
        match tag {
            TAG_DATA => Ok(Record::Data {
                seq: a,
                offset: o,
                len: l,
                crc: c,
            }),
            TAG_ZERO if c == 0 => Ok(Record::Zero {
                seq: a,
                offset: o,
                len: l,
            }),
            TAG_ZERO => Err(Problem::corrupt("ZERO record with a payload checksum")),
            TAG_END => Ok(Record::End(Trailer {
                records: a,
                data_bytes: o,
                zero_bytes: l,
                stream_crc: c,
            })),
            _ => Err(Problem::corrupt(format!(
                "unknown record type {:?}",
                String::from_utf8_lossy(&tag)
            ))),
        }
    }
}

/// The rules of a stream of records (sections 3 and 4), checked record by record.
#[derive(Debug, Clone)]
pub struct StreamCheck {
    full: bool,
    volume_len: u64,
    covered: u64,
    next_seq: u64,
    next_offset: u64,
    data_bytes: u64,
    zero_bytes: u64,
}

impl StreamCheck {
    /// The rules for the records after `header`.
    #[must_use]
    pub fn new(header: &BackupHeader) -> Self {
        StreamCheck {
            full: header.kind() == BackupKind::Full,
            volume_len: header.volume_len,
            covered: header.covered,
            next_seq: 0,
            next_offset: 0,
            data_bytes: 0,
            zero_bytes: 0,
        }
    }

    /// Extent records accepted so far.
    #[must_use]
    pub fn records(&self) -> u64 {
        self.next_seq
    }

    /// Bytes covered by `DATA` records so far.
    #[must_use]
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Bytes covered by `ZERO` records so far.
    #[must_use]
    pub fn zero_bytes(&self) -> u64 {
        self.zero_bytes
    }

    /// Accept the next extent record (not the trailer: [`StreamCheck::end`]).
    ///
    /// # Errors
    /// `CorruptStore`, saying which rule is broken.
    pub fn extent(&mut self, r: &Record) -> Result<(), Problem> {
        let (seq, offset, len, data) = match *r {
            Record::Data {
                seq, offset, len, ..
            } => (seq, offset, len, true),
            Record::Zero { seq, offset, len } => (seq, offset, len, false),
            Record::End(_) => return Err(Problem::corrupt("unexpected trailer")),
        };
        let what = if data { "DATA" } else { "ZERO" };
        let bad = |why: String| {
            Err(Problem::corrupt(format!(
                "{what} record {seq} (volume offset {offset}, {len} bytes): {why}"
            )))
        };
        if seq != self.next_seq {
            return bad(format!(
                "sequence number out of order, expected {}: records are missing, repeated or \
                 reordered",
                self.next_seq
            ));
        }
        let Some(end) = offset.checked_add(len).filter(|&e| e <= self.volume_len) else {
            return bad(format!("ends past the volume's {} bytes", self.volume_len));
        };
        if len == 0 {
            return bad("empty extent".into());
        }
        if offset % BLOCK != 0 || (end % BLOCK != 0 && end != self.volume_len) {
            return bad(format!("not aligned to {BLOCK} bytes"));
        }
        if offset < self.next_offset {
            return bad(format!(
                "overlaps or precedes the previous extent, which ended at {}",
                self.next_offset
            ));
        }
        if self.full && offset != self.next_offset {
            return bad(format!(
                "a full backup must continue at offset {}: bytes are missing",
                self.next_offset
            ));
        }
        if data && len > MAX_DATA {
            return bad(format!("payload longer than {MAX_DATA} bytes"));
        }
        let done = self.data_bytes + self.zero_bytes + len;
        if done > self.covered {
            return bad(format!(
                "the records cover more than the header's {} bytes",
                self.covered
            ));
        }
        if data {
            self.data_bytes += len;
        } else {
            self.zero_bytes += len;
        }
        self.next_seq += 1;
        self.next_offset = end;
        Ok(())
    }

    /// Accept the trailer, given the checksum of every byte before it.
    ///
    /// # Errors
    /// `CorruptStore`, saying what does not match.
    pub fn end(&self, t: &Trailer, stream_crc: u32) -> Result<(), Problem> {
        if t.records != self.next_seq
            || t.data_bytes != self.data_bytes
            || t.zero_bytes != self.zero_bytes
        {
            return Err(Problem::corrupt(format!(
                "trailer: it counts {} records covering {} data and {} zero bytes, but {} \
                 records covering {} and {} were read",
                t.records,
                t.data_bytes,
                t.zero_bytes,
                self.next_seq,
                self.data_bytes,
                self.zero_bytes
            )));
        }
        if self.data_bytes + self.zero_bytes != self.covered {
            return Err(Problem::corrupt(format!(
                "trailer: the records cover {} bytes, the header promised {}",
                self.data_bytes + self.zero_bytes,
                self.covered
            )));
        }
        if t.stream_crc != stream_crc {
            return Err(Problem::corrupt(
                "trailer: stream checksum mismatch: bytes before the trailer are damaged",
            ));
        }
        Ok(())
    }
}

/// Check that `chain` (file name and header, in the order given) is a full backup followed by
/// incrementals, each based on the snapshot of the one before, all of one volume.
///
/// # Errors
/// `InvalidArgument`, naming the file at fault and what was expected there.
pub fn check_chain(chain: &[(&str, &BackupHeader)]) -> Result<(), Problem> {
    let Some(&(first_name, first)) = chain.first() else {
        return Err(Problem::chain("no backup to restore was given"));
    };
    if let Some(base) = &first.base {
        let hint = match chain.iter().find(|(_, h)| h.base.is_none()) {
            Some((f, _)) => format!("; put the full backup '{f}' first"),
            None => String::new(),
        };
        return Err(Problem::chain(format!(
            "'{first_name}' is an incremental backup of snapshot {} based on {base}; a \
             restore starts with a full backup{hint}",
            first.snapshot
        )));
    }
    for (i, w) in chain.windows(2).enumerate() {
        let [(prev_name, prev), (name, h)] = w else {
            continue;
        };
        if h.volume_id != first.volume_id
            || (h.volume_id == [0; 16] && h.volume_name != first.volume_name)
        {
            return Err(Problem::chain(format!(
                "'{name}' is a backup of volume '{}' ({}), not of volume '{}' ({}) like \
                 '{first_name}'",
                h.volume_name,
                hex(&h.volume_id),
                first.volume_name,
                hex(&first.volume_id)
            )));
        }
        if h.volume_len != first.volume_len {
            return Err(Problem::chain(format!(
                "'{name}' is a backup of a {}-byte volume, '{first_name}' of a {}-byte one",
                h.volume_len, first.volume_len
            )));
        }
        let Some(base) = &h.base else {
            return Err(Problem::chain(format!(
                "'{name}' is a full backup (of snapshot {}); only the first backup of a \
                 restore may be full, the others must be incrementals",
                h.snapshot
            )));
        };
        let at = &prev.snapshot;
        if base == at {
            continue;
        }
        let detail = if base.id == at.id {
            format!(
                "'{name}' is based on snapshot {base} taken at {} ns, but '{prev_name}' holds \
                 snapshot {at} taken at {} ns: another snapshot that reused the id",
                base.created_ns, at.created_ns
            )
        } else if let Some((f, _)) = chain[i + 2..]
            .iter()
            .find(|(_, x)| x.base.as_ref() == Some(at))
        {
            format!(
                "wrong order: '{name}' (based on snapshot {base}) comes after '{prev_name}' \
                 (snapshot {at}), but the incremental based on {at} is '{f}', further down the \
                 list; give the incrementals oldest first"
            )
        } else if base.id < at.id {
            format!(
                "wrong order or repeated backup: '{name}' is based on snapshot {base}, older \
                 than snapshot {at} that '{prev_name}' leaves the target at; expected an \
                 incremental based on {at}"
            )
        } else {
            format!(
                "gap in the chain: '{name}' is based on snapshot {base}, but '{prev_name}' \
                 leaves the target at snapshot {at}; the incremental backup(s) from {at} to \
                 {base} are missing"
            )
        };
        return Err(Problem::chain(detail));
    }
    Ok(())
}

/// Lowercase hex of an identity, for messages.
#[must_use]
pub fn hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> BackupHeader {
        BackupHeader {
            backup_id: [9; 16],
            volume_id: [1; 16],
            volume_name: "vol0".into(),
            volume_len: 3 * BLOCK + 100,
            snapshot: SnapshotRef {
                name: "a".into(),
                id: 1,
                created_ns: 1_700_000_000_000_000_000,
            },
            base: None,
            covered: 3 * BLOCK + 100,
            written_ns: 1_700_000_000_500_000_000,
        }
    }

    fn incr(base: &BackupHeader, name: &str, id: u64) -> BackupHeader {
        BackupHeader {
            backup_id: [id as u8; 16],
            snapshot: SnapshotRef {
                name: name.into(),
                id,
                created_ns: base.snapshot.created_ns + id,
            },
            base: Some(base.snapshot.clone()),
            covered: BLOCK,
            ..base.clone()
        }
    }

    /// CRC-32C of the whole encoded [`full`] header, fixed when format v1 was written.
    const GOLDEN_HEADER_CRC: u32 = 0x4867_4bc7;

    #[test]
    fn header_round_trips_and_is_stable() {
        let h = full();
        let b = h.encode().unwrap();
        assert_eq!(b.len(), HEADER_LEN);
        assert_eq!(&b[0..8], b"FSSBACK\0");
        assert_eq!(BackupHeader::decode(&b).unwrap(), h);
        // The layout is fixed by docs/BACKUP.md: a change here breaks every backup written.
        assert_eq!(
            crc32c::crc32c(&b),
            GOLDEN_HEADER_CRC,
            "the v1 header layout changed"
        );
        assert_eq!(u64_at(&b, 56), 3 * BLOCK + 100);
        assert_eq!(&b[128..132], b"vol0");
        let i = incr(&h, "b", 2);
        let bi = i.encode().unwrap();
        assert_eq!(BackupHeader::decode(&bi).unwrap(), i);
        assert_eq!(u32_at(&bi, 16), 2);
        assert_eq!(u64_at(&bi, 80), 1);
        assert_eq!(&bi[256..257], b"a");
    }

    #[test]
    fn every_flipped_header_bit_is_refused() {
        let b = full().encode().unwrap();
        for i in 0..HEADER_LEN * 8 {
            let mut d = b.clone();
            d[i / 8] ^= 1 << (i % 8);
            let p = BackupHeader::decode(&d).unwrap_err();
            assert!(!p.detail.is_empty());
        }
    }

    #[test]
    fn bad_magic_version_and_truncation() {
        let b = full().encode().unwrap();
        assert_eq!(
            BackupHeader::decode(b"hello world").unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
        let mut v = b.clone();
        v[8] = 2;
        assert_eq!(
            BackupHeader::decode(&v).unwrap_err().kind,
            ErrorKind::UnsupportedFormat
        );
        assert_eq!(
            BackupHeader::decode(&b[..100]).unwrap_err().kind,
            ErrorKind::CorruptStore
        );
    }

    #[test]
    fn long_names_are_refused_when_encoding() {
        let mut h = full();
        h.volume_name = "v".repeat(65);
        assert_eq!(h.encode().unwrap_err().kind, ErrorKind::InvalidArgument);
    }

    #[test]
    fn records_round_trip_and_are_tied_to_their_backup() {
        let id = [5; 16];
        for r in [
            Record::Data {
                seq: 3,
                offset: 8192,
                len: 4096,
                crc: 77,
            },
            Record::Zero {
                seq: 4,
                offset: 1 << 40,
                len: 1 << 30,
            },
            Record::End(Trailer {
                records: 5,
                data_bytes: 1,
                zero_bytes: 2,
                stream_crc: 3,
            }),
        ] {
            let b = r.encode(&id);
            assert_eq!(Record::decode(&id, &b).unwrap(), r);
            assert!(Record::decode(&[6; 16], &b).is_err());
            for i in 0..RECORD_LEN * 8 {
                let mut d = b;
                d[i / 8] ^= 1 << (i % 8);
                assert!(Record::decode(&id, &d).is_err());
            }
        }
    }

    #[test]
    fn stream_rules() {
        let h = full();
        let data = |seq, offset, len| Record::Data {
            seq,
            offset,
            len,
            crc: 0,
        };
        let zero = |seq, offset, len| Record::Zero { seq, offset, len };
        let mut c = StreamCheck::new(&h);
        c.extent(&data(0, 0, BLOCK)).unwrap();
        c.extent(&zero(1, BLOCK, BLOCK)).unwrap();
        // The last extent may end at the volume's unaligned end.
        c.extent(&data(2, 2 * BLOCK, BLOCK + 100)).unwrap();
        let t = Trailer {
            records: 3,
            data_bytes: 2 * BLOCK + 100,
            zero_bytes: BLOCK,
            stream_crc: 42,
        };
        c.end(&t, 42).unwrap();
        assert!(c.end(&t, 43).is_err());
        assert!(c.end(&Trailer { records: 2, ..t }, 42).is_err());

        let bad = |r: Record| {
            let mut c = StreamCheck::new(&h);
            c.extent(&data(0, 0, BLOCK)).unwrap();
            c.extent(&r).unwrap_err().detail
        };
        assert!(bad(data(2, BLOCK, BLOCK)).contains("sequence"));
        assert!(bad(data(1, 2 * BLOCK, BLOCK)).contains("missing"));
        assert!(bad(data(1, 0, BLOCK)).contains("overlaps"));
        assert!(bad(data(1, BLOCK + 1, BLOCK)).contains("aligned"));
        assert!(bad(data(1, BLOCK, 100)).contains("aligned"));
        assert!(bad(data(1, BLOCK, 0)).contains("empty"));
        assert!(bad(zero(1, BLOCK, u64::MAX)).contains("past"));
        assert!(bad(data(1, BLOCK, 4 * BLOCK)).contains("past"));

        // Incomplete full backup: the trailer does not add up.
        let mut c = StreamCheck::new(&h);
        c.extent(&data(0, 0, BLOCK)).unwrap();
        assert!(c
            .end(
                &Trailer {
                    records: 1,
                    data_bytes: BLOCK,
                    zero_bytes: 0,
                    stream_crc: 0
                },
                0
            )
            .unwrap_err()
            .detail
            .contains("promised"));

        // Incrementals may skip, not overlap; data records are bounded.
        let big = BackupHeader {
            volume_len: 1 << 30,
            ..incr(&h, "b", 2)
        };
        let big = BackupHeader {
            covered: 1 << 30,
            ..big
        };
        let mut c = StreamCheck::new(&big);
        c.extent(&zero(0, 8 * BLOCK, BLOCK)).unwrap();
        assert!(c
            .extent(&data(1, 16 * BLOCK, MAX_DATA + BLOCK))
            .unwrap_err()
            .detail
            .contains("longer"));
    }

    #[test]
    fn chains() {
        let a = full();
        let b = incr(&a, "b", 2);
        let c = incr(&b, "c", 3);
        let ok = |v: &[(&str, &BackupHeader)]| check_chain(v);
        ok(&[("a", &a)]).unwrap();
        ok(&[("a", &a), ("b", &b), ("c", &c)]).unwrap();
        let err = |v: &[(&str, &BackupHeader)]| {
            let p = check_chain(v).unwrap_err();
            assert_eq!(p.kind, ErrorKind::InvalidArgument);
            p.detail
        };
        assert!(err(&[]).contains("no backup"));
        assert!(err(&[("b", &b), ("a", &a)]).contains("put the full backup 'a' first"));
        assert!(err(&[("a", &a), ("c", &c), ("b", &b)]).contains("wrong order"));
        assert!(err(&[("a", &a), ("c", &c)]).contains("gap"));
        assert!(err(&[("a", &a), ("b", &b), ("b2", &b)]).contains("repeated"));
        assert!(err(&[("a", &a), ("a2", &a)]).contains("only the first"));
        let other = BackupHeader {
            volume_id: [2; 16],
            ..b.clone()
        };
        assert!(err(&[("a", &a), ("x", &other)]).contains("not of volume"));
        let reborn = BackupHeader {
            base: Some(SnapshotRef {
                created_ns: 5,
                ..a.snapshot.clone()
            }),
            ..b.clone()
        };
        assert!(err(&[("a", &a), ("x", &reborn)]).contains("reused the id"));
    }
}
