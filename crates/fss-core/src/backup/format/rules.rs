//! The rules of a backup stream (`docs/BACKUP.md` sections 3, 4 and 6): record order and
//! coverage ([`StreamCheck`]) and the order of a restore chain ([`check_chain`]).

use super::{hex, BackupHeader, BackupKind, Problem, Record, Trailer, BLOCK, MAX_DATA};

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
