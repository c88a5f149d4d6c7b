//! Backup format v1: pure encoding, decoding and checking, no I/O (see `docs/BACKUP.md`).
//!
//! - [`BackupHeader`]: the 512-byte header (section 2);
//! - [`Record`]: a 40-byte record header, an extent record or the trailer (sections 3 and 4);
//! - [`StreamCheck`]: the rules a sequence of records obeys (sequence, offsets, counts);
//! - [`check_chain`]: the rules a list of backups given to a restore obeys (section 6).

use crate::error::ErrorKind;
use crate::format::le::{u32_at, u64_at};

mod rules;
pub use rules::{check_chain, StreamCheck};

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
        check_framing(b)?;
        let volume_name = decode_name(b, 112, 128, "volume")?;
        let snapshot_name = decode_name(b, 113, 192, "snapshot")?;
        let base = decode_base(b)?;
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

/// The parts of a header that say whether it is one, of this version, and intact: magic,
/// length, version, checksum, block size and reserved bytes.
fn check_framing(b: &[u8]) -> Result<(), Problem> {
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
    Ok(())
}

/// The base snapshot a header names: none for a full backup, one for an incremental.
fn decode_base(b: &[u8]) -> Result<Option<SnapshotRef>, Problem> {
    let base_name = decode_name(b, 114, 256, "base snapshot")?;
    let base_id = u64_at(b, 80);
    let base_created = u64_at(b, 88);
    match u32_at(b, 16) {
        1 => {
            if base_id != 0 || base_created != 0 || !base_name.is_empty() {
                return Err(Problem::corrupt(
                    "header: a full backup names a base snapshot",
                ));
            }
            Ok(None)
        }
        2 => Ok(Some(SnapshotRef {
            name: base_name,
            id: base_id,
            created_ns: base_created,
        })),
        k => Err(Problem::corrupt(format!(
            "header: kind {k} is neither 1 (full) nor 2 (incremental)"
        ))),
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

/// Lowercase hex of an identity, for messages.
#[must_use]
pub fn hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
