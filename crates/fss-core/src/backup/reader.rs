//! Reading backups: checking a stream record by record, and restoring a chain onto a device.

use super::format::{
    check_chain, BackupHeader, Problem, Record, SnapshotRef, StreamCheck, HEADER_LEN, RECORD_LEN,
};
use super::BackupSummary;
use crate::device::{BlockDevice, Extent};
use crate::error::{Error, ErrorKind, Result};
use std::io::{self, BufReader, Read};

/// Fill `buf` from `r` until it is full or the stream ends; the number of bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// One extent of a backup: `len` bytes at volume offset `offset`, given as `data` or, when
/// `data` is `None`, all zero.
#[derive(Debug)]
pub struct BackupExtent<'a> {
    /// Volume offset.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// The bytes (checked against their checksum), or `None` for zeroes.
    pub data: Option<&'a [u8]>,
    /// Where the record starts in the backup stream.
    pub at: u64,
}

/// A backup being read: its header is read and checked on [`BackupReader::open`], its records
/// one by one with [`BackupReader::next_extent`], each checked before it is returned.
pub struct BackupReader {
    name: String,
    input: BufReader<Box<dyn Read>>,
    header: BackupHeader,
    check: StreamCheck,
    pos: u64,
    crc: u32,
    finished: bool,
    buf: Vec<u8>,
}

impl std::fmt::Debug for BackupReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupReader")
            .field("name", &self.name)
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl BackupReader {
    /// Read and check the header of the backup `input`; `name` (a file name, or "-" for
    /// standard input) is used in messages.
    ///
    /// # Errors
    /// `InvalidArgument` (not a backup), `UnsupportedFormat`, `CorruptStore` (damaged or
    /// truncated header), `Io`.
    pub fn open(name: impl Into<String>, input: Box<dyn Read>) -> Result<Self> {
        let name = name.into();
        let mut input = BufReader::with_capacity(256 << 10, input);
        let mut h = vec![0u8; HEADER_LEN];
        let n = read_full(&mut input, &mut h)
            .map_err(|e| Error::io("read", format!("backup '{name}'"), e).at(0))?;
        let problem = |p: Problem| Error::new(p.kind, "read", format!("backup '{name}'"), p.detail);
        if n == 0 {
            return Err(problem(Problem {
                kind: ErrorKind::CorruptStore,
                detail: "the stream is empty: no backup header; the backup is truncated or was \
                         never written"
                    .into(),
            })
            .at(0));
        }
        let header = BackupHeader::decode(&h[..n]).map_err(|p| problem(p).at(0))?;
        Ok(BackupReader {
            check: StreamCheck::new(&header),
            crc: crc32c::crc32c(&h),
            name,
            input,
            header,
            pos: HEADER_LEN as u64,
            finished: false,
            buf: Vec::new(),
        })
    }

    /// The name given to [`BackupReader::open`].
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The header: volume, snapshot, base, length.
    #[must_use]
    pub fn header(&self) -> &BackupHeader {
        &self.header
    }

    /// Bytes of the stream consumed so far.
    #[must_use]
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn error(&self, p: Problem, at: u64) -> Error {
        Error::new(p.kind, "read", format!("backup '{}'", self.name), p.detail).at(at)
    }

    fn read_exactly(&mut self, what: &str, at: u64, len: usize) -> Result<()> {
        self.buf.resize(len, 0);
        let n = read_full(&mut self.input, &mut self.buf)
            .map_err(|e| Error::io("read", format!("backup '{}'", self.name), e).at(at))?;
        if n == len {
            return Ok(());
        }
        let detail = if n == 0 && what == "record header" {
            format!(
                "the stream ends after {} records, without its trailer: the backup is truncated",
                self.check.records()
            )
        } else {
            format!(
                "the stream ends {n} bytes into a {what} of {len} bytes: the backup is truncated"
            )
        };
        Err(self.error(
            Problem {
                kind: ErrorKind::CorruptStore,
                detail,
            },
            at,
        ))
    }

    /// The next extent, checked (record checksum, order, bounds, payload checksum), or `None`
    /// after the trailer was read and checked and the stream has ended.
    ///
    /// # Errors
    /// `CorruptStore` naming the problem and the stream offset, `Io`.
    pub fn next_extent(&mut self) -> Result<Option<BackupExtent<'_>>> {
        if self.finished {
            return Ok(None);
        }
        let at = self.pos;
        self.read_exactly("record header", at, RECORD_LEN)?;
        let mut rb = [0u8; RECORD_LEN];
        rb.copy_from_slice(&self.buf);
        let rec = Record::decode(&self.header.backup_id, &rb).map_err(|p| self.error(p, at))?;
        let (offset, len, data_crc) = match rec {
            Record::End(t) => {
                self.check
                    .end(&t, self.crc)
                    .map_err(|p| self.error(p, at))?;
                self.pos += RECORD_LEN as u64;
                let mut one = [0u8; 1];
                let n = read_full(&mut self.input, &mut one).map_err(|e| {
                    Error::io("read", format!("backup '{}'", self.name), e).at(self.pos)
                })?;
                if n != 0 {
                    return Err(self.error(
                        Problem {
                            kind: ErrorKind::CorruptStore,
                            detail: "bytes follow the trailer: the stream is longer than the \
                                     backup (two backups joined?)"
                                .into(),
                        },
                        self.pos,
                    ));
                }
                self.finished = true;
                return Ok(None);
            }
            Record::Data {
                offset, len, crc, ..
            } => (offset, len, Some(crc)),
            Record::Zero { offset, len, .. } => (offset, len, None),
        };
        self.check.extent(&rec).map_err(|p| self.error(p, at))?;
        self.crc = crc32c::crc32c_append(self.crc, &rb);
        self.pos += RECORD_LEN as u64;
        let Some(want) = data_crc else {
            return Ok(Some(BackupExtent {
                offset,
                len,
                data: None,
                at,
            }));
        };
        // `len` is at most MAX_DATA: the stream check refused longer records.
        let payload_at = self.pos;
        self.read_exactly("payload", payload_at, len as usize)?;
        if crc32c::crc32c(&self.buf) != want {
            return Err(self.error(
                Problem {
                    kind: ErrorKind::CorruptStore,
                    detail: format!(
                        "DATA record {} (volume offset {offset}, {len} bytes): payload checksum \
                         mismatch: the data is damaged",
                        self.check.records() - 1
                    ),
                },
                payload_at,
            ));
        }
        self.crc = crc32c::crc32c_append(self.crc, &self.buf);
        self.pos += len;
        Ok(Some(BackupExtent {
            offset,
            len,
            data: Some(&self.buf),
            at,
        }))
    }

    /// Read the rest of the backup and check everything, writing nothing.
    /// `progress(done, total)` counts volume bytes covered.
    ///
    /// # Errors
    /// As [`BackupReader::next_extent`].
    pub fn verify(mut self, progress: &mut dyn FnMut(u64, u64)) -> Result<BackupSummary> {
        let total = self.header.covered;
        let mut done = 0;
        progress(0, total);
        while let Some(e) = self.next_extent()? {
            done += e.len;
            progress(done, total);
        }
        Ok(self.summary())
    }

    fn summary(&self) -> BackupSummary {
        BackupSummary {
            header: self.header.clone(),
            records: self.check.records(),
            data_bytes: self.check.data_bytes(),
            zero_bytes: self.check.zero_bytes(),
            stream_bytes: self.pos,
        }
    }
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSummary {
    /// The volume's identity.
    pub volume_id: [u8; 16],
    /// The volume's name.
    pub volume_name: String,
    /// The volume's (and the target's) length.
    pub volume_len: u64,
    /// The snapshot the target now holds: the last backup's.
    pub snapshot: SnapshotRef,
    /// Backups applied.
    pub backups: usize,
    /// Bytes written from `DATA` records.
    pub data_bytes: u64,
    /// Bytes zeroed from `ZERO` records (whether or not the target needed it).
    pub zero_bytes: u64,
}

/// Restore `inputs` (name for messages, stream), a full backup followed by incrementals in
/// order, onto `target`; see [`restore_readers`].
///
/// # Errors
/// As [`BackupReader::open`] and [`restore_readers`].
pub fn restore(
    inputs: Vec<(String, Box<dyn Read>)>,
    target: &dyn BlockDevice,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RestoreSummary> {
    let mut readers = Vec::with_capacity(inputs.len());
    for (name, input) in inputs {
        readers.push(BackupReader::open(name, input)?);
    }
    restore_readers(readers, target, progress)
}

/// Check, writing nothing, that `readers` (opened, headers read) are a chain
/// [`restore_readers`] accepts and that `target` is as long as their volume; returns the full
/// backup's header. [`restore_readers`] checks the same first; this lets a caller check before
/// it prepares the target.
///
/// # Errors
/// `InvalidArgument`: a wrong chain (naming the file and what was expected) or a target of the
/// wrong length.
pub fn check_restore(readers: &[BackupReader], target: &dyn BlockDevice) -> Result<BackupHeader> {
    let target_name = format!("target '{}'", target.describe());
    let chain: Vec<(&str, &BackupHeader)> =
        readers.iter().map(|r| (r.name(), r.header())).collect();
    check_chain(&chain).map_err(|p| Error::new(p.kind, "restore", "backup chain", p.detail))?;
    let Some(first) = readers.first().map(|r| r.header().clone()) else {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "restore",
            "backup chain",
            "no backup to restore was given",
        ));
    };
    if target.len() != first.volume_len {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "restore onto",
            &target_name,
            format!(
                "the target is {} bytes but volume '{}' of '{}' is {} bytes; restore onto a \
                 device or image of exactly that size",
                target.len(),
                first.volume_name,
                readers[0].name(),
                first.volume_len
            ),
        ));
    }
    Ok(first)
}

/// `e`, met while applying backup `name` after `applied` of `count` backups were applied and
/// something was written: says the target is now partially restored and must not be used.
fn partially_restored(e: &Error, name: &str, applied: usize, count: usize) -> Error {
    let source = std::error::Error::source(e)
        .map(|s| format!(" ({s})"))
        .unwrap_or_default();
    let detail = format!(
        "{}{source}; the target is now partially restored ({applied} of {count} backups \
         applied, '{name}' in part) and must not be used: restore again from the full \
         backup",
        e.detail()
    );
    let new = Error::new(e.kind(), e.op(), e.object(), detail);
    match e.offset() {
        Some(o) => new.at(o),
        None => new,
    }
}

/// Restore opened backups onto `target`, which must be exactly as long as the volume.
///
/// Before anything is written, every header is checked and the chain must be a full backup
/// followed by incrementals, each based on the snapshot of the one before, all of one volume.
/// Then the backups are applied in order, each record checked before it is written. A damaged
/// record found midway stops the restore and leaves `target` partially restored; the error
/// says so. `progress(done, total)` counts volume bytes covered across all inputs.
///
/// # Errors
/// `InvalidArgument` (a wrong chain, naming the file and what was expected; or a target of the
/// wrong length), `CorruptStore` (a damaged or truncated input, naming it and the offset in
/// it), `Io` (reading an input or writing the target).
pub fn restore_readers(
    readers: Vec<BackupReader>,
    target: &dyn BlockDevice,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RestoreSummary> {
    let target_name = format!("target '{}'", target.describe());
    let first = check_restore(&readers, target)?;
    let count = readers.len();
    let total: u64 = readers.iter().map(|r| r.header().covered).sum();
    let mut summary = RestoreSummary {
        volume_id: first.volume_id,
        volume_name: first.volume_name.clone(),
        volume_len: first.volume_len,
        snapshot: first.snapshot.clone(),
        backups: 0,
        data_bytes: 0,
        zero_bytes: 0,
    };
    let mut done = 0;
    let mut wrote = false;
    progress(0, total);
    for mut r in readers {
        let name = r.name().to_string();
        let partial = |e: Error, wrote: bool, applied: usize| {
            if wrote {
                partially_restored(&e, &name, applied, count)
            } else {
                e
            }
        };
        loop {
            let e = match r.next_extent() {
                Ok(Some(e)) => e,
                Ok(None) => break,
                Err(e) => return Err(partial(e, wrote, summary.backups)),
            };
            let (offset, len) = (e.offset, e.len);
            let res = match e.data {
                Some(d) => target.write_at(d, offset),
                None => zero(target, offset, len),
            };
            wrote = true;
            if let Err(err) = res {
                let err = Error::io("restore onto", target_name.clone(), err).at(offset);
                return Err(partial(err, wrote, summary.backups));
            }
            if e.data.is_some() {
                summary.data_bytes += len;
            } else {
                summary.zero_bytes += len;
            }
            done += len;
            progress(done, total);
        }
        summary.backups += 1;
        summary.snapshot = r.header().snapshot.clone();
    }
    target.flush().map_err(|e| {
        let e = Error::io("restore onto", target_name.clone(), e);
        let detail = format!(
            "{}: flushing the restored data failed; the target may be incomplete",
            e.detail()
        );
        Error::new(e.kind(), e.op(), e.object(), detail)
    })?;
    Ok(summary)
}

/// Make `[offset, offset + len)` of `target` read as zeroes, leaving alone what it reports as
/// holes already (so a new sparse image stays sparse).
fn zero(target: &dyn BlockDevice, offset: u64, len: u64) -> io::Result<()> {
    let extents = target.allocation(offset, len).unwrap_or_else(|_| {
        vec![Extent {
            offset,
            len,
            data: true,
        }]
    });
    for x in extents.iter().filter(|x| x.data) {
        target.write_zeroes(x.offset, x.len)?;
    }
    Ok(())
}
