//! Helpers for the repository tests: back up byte images, restore into memory.

#![allow(dead_code)]

use fss_repo::{BackupMeta, BackupWriter, Manifest, Repository};
use std::sync::Mutex;

/// Block size of the change lists the tests feed (fss tracks 4 KiB blocks).
pub const BLOCK: usize = 4096;

fn meta(volume: &str, snapshot: &str, id: u64, size: usize) -> BackupMeta {
    BackupMeta {
        volume: volume.to_string(),
        volume_id: format!("{:032x}", volume.len()),
        snapshot: snapshot.to_string(),
        snapshot_id: id,
        snapshot_created_ns: id * 1_000,
        size: size as u64,
    }
}

/// The extents (offset, len) of `new` that differ from `old` in 4 KiB blocks, or, without
/// `old`, that are not zero: what fss's change lists and allocated extents give.
pub fn extents(old: Option<&[u8]>, new: &[u8]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (i, b) in new.chunks(BLOCK).enumerate() {
        let off = i * BLOCK;
        let changed = match old {
            Some(o) => o[off..off + b.len()] != *b,
            None => b.iter().any(|&x| x != 0),
        };
        if changed {
            match out.last_mut() {
                Some((o, l)) if *o + *l == off => *l += b.len(),
                _ => out.push((off, b.len())),
            }
        }
    }
    out
}

/// Back up `image` as snapshot `snapshot` (id `id`) of `volume`, incrementally from `base`
/// (its manifest and image) when given.
pub fn backup(
    repo: &Repository,
    volume: &str,
    snapshot: &str,
    id: u64,
    image: &[u8],
    base: Option<(&Manifest, &[u8])>,
) -> fss_repo::Result<Manifest> {
    std::thread::scope(|s| {
        let mut w = BackupWriter::new(
            s,
            repo,
            meta(volume, snapshot, id, image.len()),
            base.map(|b| b.0.clone()),
            3,
        )?;
        for (off, len) in extents(base.map(|b| b.1), image) {
            w.extent(off as u64, len as u64, Some(&image[off..off + len]))?;
        }
        w.finish()
    })
}

/// Restore backup `id` into memory.
pub fn restore(repo: &Repository, id: &str) -> fss_repo::Result<Vec<u8>> {
    let m = repo.backup(id)?;
    let out = Mutex::new(vec![0u8; usize::try_from(m.size).unwrap_or(0)]);
    let write = |off: u64, data: &[u8]| -> std::io::Result<()> {
        let mut v = out.lock().map_err(|_| std::io::Error::other("poisoned"))?;
        let off = usize::try_from(off).map_err(std::io::Error::other)?;
        v[off..off + data.len()].copy_from_slice(data);
        Ok(())
    };
    fss_repo::restore(repo, &m, &write, false, 3, &|_, _| {})?;
    out.into_inner()
        .map_err(|_| fss_repo::RepoError::Invalid("poisoned".into()))
}

/// A temporary `file://` repository.
pub fn file_repo(dir: &tempfile::TempDir, key: Option<&std::path::Path>) -> (String, Repository) {
    let url = format!("file://{}/repo", dir.path().display());
    // The cache in the test's directory, so every test exercises it.
    let repo = Repository::init(&url, key)
        .unwrap_or_else(|e| panic!("init {url}: {e}"))
        .with_cache(Some(fss_repo::cache::DocCache::at(
            dir.path().join("cache"),
        )));
    (url, repo)
}
