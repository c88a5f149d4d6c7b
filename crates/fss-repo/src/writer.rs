//! Writing one backup: volume extents in, chunks out. Chunks that the repository already holds
//! are not stored again; new ones are compressed, sealed and gathered into packs, which
//! [`crate::upload`] stores in parallel; the manifest is written last, after every pack and
//! index it needs.

use crate::crypto::{hex, pack_plain, ChunkId};
use crate::error::{RepoError, Result};
use crate::format::{
    backup_object, new_id, now_secs, IndexEntry, Manifest, PackIndex, PACK_TARGET,
};
use crate::repo::{ChunkIndex, Repository};
use crate::restore::read_chunk;
use crate::upload::{Pack, Uploader};
use std::collections::HashSet;

/// What a backup is of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupMeta {
    /// The volume's name.
    pub volume: String,
    /// The volume's identity, hex.
    pub volume_id: String,
    /// The snapshot's name.
    pub snapshot: String,
    /// The snapshot's id within its volume.
    pub snapshot_id: u64,
    /// The snapshot's creation time, ns since the epoch.
    pub snapshot_created_ns: u64,
    /// The volume's size.
    pub size: u64,
}

/// The chunk being filled: its index, its bytes, and the ranges extents wrote (the rest comes
/// from the base chunk, read only if an extent left a gap).
struct Current {
    i: usize,
    buf: Vec<u8>,
    written: Vec<(usize, usize)>,
}

/// A backup being written. Feed it extents in ascending, non-overlapping order with
/// [`BackupWriter::extent`], then [`BackupWriter::finish`]. With a base manifest only the
/// chunks that an extent touches are rebuilt (from the base chunk and the extent); every other
/// chunk is the base's. Without a base, untouched chunks are zero.
pub struct BackupWriter<'r, 's> {
    repo: &'r Repository,
    meta: BackupMeta,
    base: Option<Manifest>,
    index: ChunkIndex,
    chunks: Vec<Option<String>>,
    current: Option<Current>,
    added: HashSet<ChunkId>,
    reused_packs: HashSet<String>,
    pack: Vec<u8>,
    pack_index: Vec<IndexEntry>,
    uploader: Uploader<'s>,
    new_bytes: u64,
}

impl<'r, 's> BackupWriter<'r, 's> {
    /// Start a backup of `meta`, on top of `base` (a manifest of the same volume and size).
    /// Uploads run on `connections` threads in `scope`.
    ///
    /// # Errors
    /// The index cannot be read, or the base does not fit.
    pub fn new(
        scope: &'s std::thread::Scope<'s, 'r>,
        repo: &'r Repository,
        meta: BackupMeta,
        base: Option<Manifest>,
        connections: usize,
    ) -> Result<Self> {
        let n = chunk_count(meta.size, repo.chunk_size());
        if let Some(b) = &base {
            if b.size != meta.size || b.chunk_size != repo.chunk_size() || b.chunks.len() != n {
                return Err(RepoError::Invalid(format!(
                    "backup {} is of a {}-byte volume and cannot be the base of a backup of {} ({} bytes)",
                    b.id, b.size, meta.snapshot, meta.size
                )));
            }
        }
        Ok(BackupWriter {
            repo,
            index: repo.load_index()?,
            chunks: base
                .as_ref()
                .map_or_else(|| vec![None; n], |b| b.chunks.clone()),
            base,
            meta,
            current: None,
            added: HashSet::new(),
            reused_packs: HashSet::new(),
            pack: Vec::new(),
            pack_index: Vec::new(),
            uploader: Uploader::new(scope, repo, connections),
            new_bytes: 0,
        })
    }

    /// `len` bytes at volume offset `offset`: `data`, or zeroes when `None`.
    ///
    /// # Errors
    /// Out of order or past the end, a base chunk cannot be read, or an upload failed.
    pub fn extent(&mut self, offset: u64, len: u64, data: Option<&[u8]>) -> Result<()> {
        if offset + len > self.meta.size {
            return Err(RepoError::Invalid(format!(
                "extent at {offset} of {len} bytes is past the end of {} ({} bytes)",
                self.meta.snapshot, self.meta.size
            )));
        }
        let cs = u64::from(self.repo.chunk_size());
        let mut pos = offset;
        while pos < offset + len {
            let i = usize::try_from(pos / cs).unwrap_or(usize::MAX);
            let chunk_start = i as u64 * cs;
            let end = (chunk_start + cs).min(offset + len);
            let cur = self.chunk_buffer(i)?;
            let (a, b) = (
                usize::try_from(pos - chunk_start).unwrap_or(0),
                usize::try_from(end - chunk_start).unwrap_or(0),
            );
            match cur.written.last_mut() {
                Some(last) if last.1 == a => last.1 = b,
                _ => cur.written.push((a, b)),
            }
            let buf = &mut cur.buf;
            match data {
                Some(d) => {
                    let from = usize::try_from(pos - offset).unwrap_or(0);
                    buf[a..b].copy_from_slice(&d[from..from + (b - a)]);
                }
                None => buf[a..b].fill(0),
            }
            pos = end;
        }
        Ok(())
    }

    /// The buffer of chunk `i`, closing the current chunk when `i` is past it.
    fn chunk_buffer(&mut self, i: usize) -> Result<&mut Current> {
        match &self.current {
            Some(c) if c.i == i => {}
            Some(c) if c.i > i => {
                return Err(RepoError::Invalid(format!(
                    "extents of {} arrived out of order (chunk {i} after {})",
                    self.meta.snapshot, c.i
                )))
            }
            _ => {
                self.close_current()?;
                let len = chunk_len(self.meta.size, self.repo.chunk_size(), i);
                self.current = Some(Current {
                    i,
                    buf: vec![0; len],
                    written: Vec::new(),
                });
            }
        }
        self.current
            .as_mut()
            .ok_or_else(|| RepoError::Invalid("no current chunk".into()))
    }

    /// The base's content of chunk `i`: zeroes without a base.
    fn base_chunk(&self, i: usize) -> Result<Vec<u8>> {
        let len = chunk_len(self.meta.size, self.repo.chunk_size(), i);
        let id = self.base.as_ref().and_then(|b| b.chunks[i].clone());
        match (id, &self.base) {
            (Some(id), Some(base)) => read_chunk(self.repo, &self.index, &base.id, &id, len),
            _ => Ok(vec![0; len]),
        }
    }

    fn close_current(&mut self) -> Result<()> {
        let Some(Current { i, buf, written }) = self.current.take() else {
            return Ok(());
        };
        let buf = if written == [(0, buf.len())] {
            buf
        } else {
            // Gaps keep the base's bytes.
            let mut full = self.base_chunk(i)?;
            for (a, b) in written {
                full[a..b].copy_from_slice(&buf[a..b]);
            }
            full
        };
        if buf.iter().all(|&b| b == 0) {
            self.chunks[i] = None;
            return Ok(());
        }
        let id = self.repo.keys().chunk_id(&buf);
        self.chunks[i] = Some(hex(&id));
        if self.added.contains(&id) {
            return Ok(());
        }
        if let Some(loc) = self.index.chunks.get(&id) {
            // A chunk in a pack that garbage collection marked is stored again, never reused.
            if !self.index.marked.contains(&loc.pack) {
                self.reused_packs.insert(loc.pack.clone());
                return Ok(());
            }
        }
        let blob = self.repo.keys().seal(&pack_plain(&buf));
        self.pack_index.push(IndexEntry {
            id,
            offset: self.pack.len() as u64,
            length: u32::try_from(blob.len()).unwrap_or(u32::MAX),
            raw: u32::try_from(buf.len()).unwrap_or(u32::MAX),
        });
        self.pack.extend_from_slice(&blob);
        self.added.insert(id);
        self.new_bytes += buf.len() as u64;
        if self.pack.len() >= PACK_TARGET {
            self.flush_pack()?;
        }
        Ok(())
    }

    fn flush_pack(&mut self) -> Result<()> {
        if self.pack_index.is_empty() {
            return Ok(());
        }
        let name = crate::crypto::random_hex(32);
        let pack = Pack {
            index: PackIndex {
                pack: name.clone(),
                chunks: std::mem::take(&mut self.pack_index),
            },
            name,
            data: std::mem::take(&mut self.pack),
        };
        self.uploader.send(pack)
    }

    /// Close the last chunk, wait for the uploads, and write the manifest.
    ///
    /// # Errors
    /// An upload failed, a reused pack has gone, or the manifest cannot be stored.
    pub fn finish(mut self) -> Result<Manifest> {
        self.close_current()?;
        self.flush_pack()?;
        let stored_bytes = self.uploader.finish()?;
        check_reused(self.repo, &self.reused_packs, &self.meta.snapshot)?;
        let created = now_secs();
        let m = Manifest {
            id: new_id(created),
            volume: self.meta.volume,
            volume_id: self.meta.volume_id,
            snapshot: self.meta.snapshot,
            snapshot_id: self.meta.snapshot_id,
            snapshot_created_ns: self.meta.snapshot_created_ns,
            created,
            size: self.meta.size,
            chunk_size: self.repo.chunk_size(),
            chunks: self.chunks,
            new_bytes: self.new_bytes,
            stored_bytes,
        };
        self.repo.write_immutable_doc(&backup_object(&m.id), &m)?;
        Ok(m)
    }
}

/// A concurrent prune may have marked a pack this backup reuses after it loaded the index;
/// such a pack is only deleted a grace period after the mark, so it still exists unless this
/// backup ran longer than that. Refuse to write a manifest that needs a deleted pack.
fn check_reused(repo: &Repository, reused: &HashSet<String>, snapshot: &str) -> Result<()> {
    let marked: HashSet<String> = repo
        .marks()?
        .into_iter()
        .flat_map(|(_, m)| m.packs)
        .collect();
    for pack in reused.intersection(&marked) {
        let object = crate::format::pack_object(pack);
        if !repo.backend().exists(&object)? {
            return Err(RepoError::Missing {
                    object,
                    context: format!(
                        ", reused by the backup of {snapshot} and removed by a concurrent prune; run the backup again"
                    ),
                });
        }
    }
    Ok(())
}

/// Chunks of a volume of `size` bytes.
#[must_use]
pub fn chunk_count(size: u64, chunk_size: u32) -> usize {
    usize::try_from(size.div_ceil(u64::from(chunk_size))).unwrap_or(usize::MAX)
}

/// Bytes of chunk `i` (the last may be short).
#[must_use]
pub fn chunk_len(size: u64, chunk_size: u32, i: usize) -> usize {
    let cs = u64::from(chunk_size);
    let start = i as u64 * cs;
    usize::try_from(size.saturating_sub(start).min(cs)).unwrap_or(0)
}
