//! Reading backups back: one chunk (for an incremental's base), or a whole backup onto a target
//! with `n` threads fetching coalesced ranges of packs. Every chunk is authenticated (when
//! encrypted), decompressed and hashed against its id before a byte of it is written.

use crate::crypto::{unhex, unpack_plain, ChunkId};
use crate::error::{RepoError, Result};
use crate::format::{pack_object, IndexEntry, Manifest};
use crate::repo::{ChunkIndex, Repository};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Ranges read from a pack are merged up to this size.
const RANGE_MAX: u64 = 16 << 20;

/// Decode a blob read from `pack` and check it against its index entry.
///
/// # Errors
/// [`RepoError::Damaged`] naming the backup, the pack and the offset.
pub fn decode_blob(
    repo: &Repository,
    backup: &str,
    pack: &str,
    e: &IndexEntry,
    blob: &[u8],
) -> Result<Vec<u8>> {
    let damaged = |detail: String| RepoError::Damaged {
        backup: backup.to_string(),
        object: pack_object(pack),
        offset: e.offset,
        detail,
    };
    let plain = repo.keys().open(blob).ok_or_else(|| {
        damaged("the chunk does not authenticate (damaged, or written with another key)".into())
    })?;
    let data = unpack_plain(&plain, e.raw as usize).map_err(damaged)?;
    if data.len() != e.raw as usize || repo.keys().chunk_id(&data) != e.id {
        return Err(damaged(format!(
            "the chunk's content does not match its id {}",
            crate::crypto::hex(&e.id)
        )));
    }
    Ok(data)
}

fn parse_id(backup: &str, id: &str) -> Result<ChunkId> {
    unhex::<32>(id).ok_or_else(|| {
        RepoError::corrupt(
            &crate::format::backup_object(backup),
            format!("bad chunk id '{id}'"),
        )
    })
}

fn locate<'a>(
    index: &'a ChunkIndex,
    backup: &str,
    id: &ChunkId,
) -> Result<&'a crate::repo::Location> {
    index.chunks.get(id).ok_or_else(|| RepoError::Missing {
        object: format!("chunk {}", crate::crypto::hex(id)),
        context: format!(", needed by backup {backup} (no index names it)"),
    })
}

/// One chunk of backup `backup`, `len` bytes.
///
/// # Errors
/// Not indexed, missing, or damaged.
pub fn read_chunk(
    repo: &Repository,
    index: &ChunkIndex,
    backup: &str,
    id: &str,
    len: usize,
) -> Result<Vec<u8>> {
    let id = parse_id(backup, id)?;
    let loc = locate(index, backup, &id)?;
    let blob = fetch(
        repo,
        backup,
        &loc.pack,
        loc.entry.offset,
        u64::from(loc.entry.length),
    )?;
    let data = decode_blob(repo, backup, &loc.pack, &loc.entry, &blob)?;
    if data.len() != len {
        return Err(RepoError::Damaged {
            backup: backup.to_string(),
            object: pack_object(&loc.pack),
            offset: loc.entry.offset,
            detail: format!("the chunk has {} bytes, the backup needs {len}", data.len()),
        });
    }
    Ok(data)
}

fn fetch(repo: &Repository, backup: &str, pack: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
    repo.backend()
        .get_range(&pack_object(pack), offset, len)
        .map_err(|e| match e {
            RepoError::Missing { object, .. } => RepoError::Missing {
                object,
                context: format!(", needed by backup {backup}"),
            },
            RepoError::Backend { detail, object, .. } => RepoError::Damaged {
                backup: backup.to_string(),
                object,
                offset,
                detail,
            },
            e => e,
        })
}

/// Where a restore writes: `write_at(offset, bytes)`, callable from several threads.
pub type WriteAt<'a> = dyn Fn(u64, &[u8]) -> std::io::Result<()> + Sync + 'a;

/// One range of one pack and the chunks in it, with the volume offsets each goes to.
struct Job {
    pack: String,
    start: u64,
    end: u64,
    chunks: Vec<(IndexEntry, Vec<u64>)>,
}

fn plan(index: &ChunkIndex, m: &Manifest) -> Result<Vec<Job>> {
    let mut by_id: HashMap<ChunkId, Vec<u64>> = HashMap::new();
    for (i, c) in m.chunks.iter().enumerate() {
        if let Some(id) = c {
            by_id
                .entry(parse_id(&m.id, id)?)
                .or_default()
                .push(i as u64 * u64::from(m.chunk_size));
        }
    }
    let mut by_pack: HashMap<String, Vec<(IndexEntry, Vec<u64>)>> = HashMap::new();
    for (id, offsets) in by_id {
        let loc = locate(index, &m.id, &id)?;
        by_pack
            .entry(loc.pack.clone())
            .or_default()
            .push((loc.entry, offsets));
    }
    let mut jobs = Vec::new();
    for (pack, mut chunks) in by_pack {
        chunks.sort_by_key(|(e, _)| e.offset);
        let mut job: Option<Job> = None;
        for (e, offs) in chunks {
            let end = e.offset + u64::from(e.length);
            match &mut job {
                Some(j) if e.offset >= j.end && end - j.start <= RANGE_MAX => {
                    j.end = end;
                    j.chunks.push((e, offs));
                }
                _ => {
                    jobs.extend(job.take());
                    job = Some(Job {
                        pack: pack.clone(),
                        start: e.offset,
                        end,
                        chunks: vec![(e, offs)],
                    });
                }
            }
        }
        jobs.extend(job);
    }
    Ok(jobs)
}

/// What a restore did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Volume bytes written from chunks.
    pub data_bytes: u64,
    /// Bytes fetched from the store.
    pub fetched_bytes: u64,
}

/// Write backup `m` through `write_at` with `connections` threads. Zero chunks are written
/// only when `write_zeros` (a fresh sparse file needs none). `progress(done, total)` is called
/// from the worker threads.
///
/// # Errors
/// A missing or damaged chunk (nothing wrong is ever written), or a write failed.
pub fn restore(
    repo: &Repository,
    m: &Manifest,
    write_at: &WriteAt<'_>,
    write_zeros: bool,
    connections: usize,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<RestoreStats> {
    let index = repo.load_index()?;
    let jobs = Mutex::new(plan(&index, m)?);
    // Progress counts what is written: without zeroes, the data chunks only.
    let total = if write_zeros {
        m.size
    } else {
        (0..m.chunks.len())
            .filter(|&i| m.chunks[i].is_some())
            .map(|i| crate::writer::chunk_len(m.size, m.chunk_size, i) as u64)
            .sum()
    };
    let counters = Counters {
        total,
        ..Counters::default()
    };
    let write_err = |e: std::io::Error| write_error(m, e);
    if write_zeros {
        let zeros = vec![0u8; m.chunk_size as usize];
        for (i, c) in m.chunks.iter().enumerate() {
            if c.is_none() {
                let len = crate::writer::chunk_len(m.size, m.chunk_size, i);
                write_at(i as u64 * u64::from(m.chunk_size), &zeros[..len]).map_err(write_err)?;
                progress(
                    counters.done.fetch_add(len as u64, Ordering::Relaxed) + len as u64,
                    m.size,
                );
            }
        }
    }
    let worker = || -> Result<()> {
        while let Some(job) = jobs.lock().ok().and_then(|mut j| j.pop()) {
            let r = run_job(repo, m, &job, write_at, &counters, progress);
            if r.is_err() {
                // Stop the other threads: the restore has failed.
                if let Ok(mut j) = jobs.lock() {
                    j.clear();
                }
                return r;
            }
        }
        Ok(())
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..connections.max(1)).map(|_| s.spawn(worker)).collect();
        let mut first = Ok(());
        for h in handles {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(RepoError::Invalid("a restore thread panicked".into())));
            if first.is_ok() {
                first = r;
            }
        }
        first
    })?;
    Ok(RestoreStats {
        data_bytes: counters.data.load(Ordering::Relaxed),
        fetched_bytes: counters.fetched.load(Ordering::Relaxed),
    })
}

#[derive(Default)]
struct Counters {
    total: u64,
    done: AtomicU64,
    fetched: AtomicU64,
    data: AtomicU64,
}

fn write_error(m: &Manifest, e: std::io::Error) -> RepoError {
    RepoError::io(format!("cannot write the restore of backup {}", m.id), e)
}

/// Fetch one range, check its chunks, write them where the backup puts them.
fn run_job(
    repo: &Repository,
    m: &Manifest,
    job: &Job,
    write_at: &WriteAt<'_>,
    c: &Counters,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<()> {
    let range = fetch(repo, &m.id, &job.pack, job.start, job.end - job.start)?;
    c.fetched.fetch_add(range.len() as u64, Ordering::Relaxed);
    for (e, offsets) in &job.chunks {
        let at = usize::try_from(e.offset - job.start).unwrap_or(0);
        let blob = range.get(at..at + e.length as usize).unwrap_or_default();
        let data = decode_blob(repo, &m.id, &job.pack, e, blob)?;
        let n = data.len() as u64;
        for &off in offsets {
            write_at(off, &data).map_err(|e| write_error(m, e))?;
            c.data.fetch_add(n, Ordering::Relaxed);
            progress(c.done.fetch_add(n, Ordering::Relaxed) + n, c.total);
        }
    }
    Ok(())
}
