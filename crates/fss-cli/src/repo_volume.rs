//! `fss restore URL --backup ID VOLUME`: a repository backup restored onto an fss volume.
//!
//! The daemon restores volumes only from backup stream files, which it records in its state
//! before it writes a byte, so that a restore cut short by a crash is finished at the next start
//! (docs/CLI.md). A repository backup is therefore first turned into such a file: its chunks
//! are fetched in parallel into a sparse scratch image (in any order), which is then read front
//! to back into a full backup stream, all under `<state>/restores/`. The daemon restores from
//! the stream; the stream is removed once the restore has completed, and kept (with the command
//! that finishes the restore) when it has not.
//!
//! Why not stream straight to the daemon: a pipe cannot be read again after a crash, and the
//! daemon must never keep a half-restored volume with nothing to finish it from.

use crate::progress::Reporter;
use anyhow::Context;
use fss_core::backup::format::MAX_DATA;
use fss_core::backup::{new_backup_id, BackupHeader, SnapshotRef, StreamWriter};
use fss_repo::{Manifest, Repository};
use fssd::names::human_size;
use fssd::protocol::{Request, RestoreDone};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Restore backup `m` of `repo` onto the daemon's volume `volume`.
///
/// # Errors
/// The scratch files cannot be made (room under the state directory), a chunk is missing or
/// damaged, or the daemon refused or failed the restore (its message says what to do).
pub fn restore(
    state: &Path,
    repo: &Repository,
    m: &Manifest,
    volume: &str,
    connections: usize,
) -> anyhow::Result<()> {
    let dir = state.join("restores");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let image = dir.join(format!("{volume}.{}.img", m.id));
    let stream = stream_path(state, volume, &m.id);
    let made =
        fetch_into_image(repo, m, &image, connections).and_then(|f| write_stream(m, &f, &stream));
    let _ = std::fs::remove_file(&image);
    if let Err(e) = made {
        let _ = std::fs::remove_file(&stream);
        return Err(e);
    }
    let mut rep = Reporter::new(format!("restore {volume}"));
    let r = crate::connect(state)?.call_with_progress(
        Request::Restore {
            volume: volume.to_string(),
            files: vec![stream.clone()],
        },
        &mut |d, t| rep.update(d, t),
    );
    match r {
        Ok(v) => {
            rep.finish();
            let _ = std::fs::remove_file(&stream);
            let r: RestoreDone = crate::decode(v)?;
            println!(
                "restored backup {} (snapshot '{}' of volume '{}', {}) onto volume '{}': {} of data",
                m.id,
                m.snapshot,
                m.volume,
                human_size(m.size),
                r.volume,
                human_size(r.data_bytes)
            );
            Ok(())
        }
        Err(e) => {
            rep.abandon();
            // The daemon names the file in its instructions when the restore is unfinished;
            // with nothing written, the file is of no further use.
            if !e.message.contains(&stream.display().to_string()) {
                let _ = std::fs::remove_file(&stream);
            }
            anyhow::bail!("{}", e.message)
        }
    }
}

/// Fetch every data chunk of `m` into a new sparse image at `path` (zero chunks stay holes).
fn fetch_into_image(
    repo: &Repository,
    m: &Manifest,
    path: &Path,
    connections: usize,
) -> anyhow::Result<File> {
    let _ = std::fs::remove_file(path);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(fss_core::device::FILE_MODE)
        .open(path)
        .with_context(|| format!("cannot create the scratch image {}", path.display()))?;
    f.set_len(m.size)
        .with_context(|| format!("cannot size the scratch image {}", path.display()))?;
    let mut rep = Reporter::new(format!("fetch {}", m.id));
    let rep_lock = std::sync::Mutex::new(&mut rep);
    let progress = |d: u64, t: u64| {
        if let Ok(mut r) = rep_lock.lock() {
            r.update(d, t);
        }
    };
    let write = |off: u64, data: &[u8]| f.write_all_at(data, off);
    let fetched = fss_repo::restore(repo, m, &write, false, connections, &progress);
    let _ = rep_lock.into_inner();
    match fetched {
        Ok(_) => rep.finish(),
        Err(e) => {
            rep.abandon();
            return Err(e.into());
        }
    }
    Ok(f)
}

/// Write the image `image` (backup `m`'s bytes) as a full backup stream at `path`, flushed.
fn write_stream(m: &Manifest, image: &File, path: &Path) -> anyhow::Result<()> {
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(fss_core::device::FILE_MODE)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let header = BackupHeader {
        backup_id: new_backup_id(&format!("backup {}", m.id))?,
        volume_id: volume_id(&m.volume_id),
        volume_name: m.volume.clone(),
        volume_len: m.size,
        snapshot: SnapshotRef {
            name: m.snapshot.clone(),
            id: m.snapshot_id,
            created_ns: m.snapshot_created_ns,
        },
        base: None,
        covered: m.size,
        written_ns: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
    };
    let mut w = StreamWriter::start(&mut out, header, &m.snapshot)?;
    let chunk = u64::from(m.chunk_size);
    let mut buf = vec![0u8; usize::try_from(MAX_DATA).unwrap_or(1 << 20)];
    let mut off = 0;
    while off < m.size {
        let n = (m.size - off).min(MAX_DATA);
        let piece = &mut buf[..usize::try_from(n).unwrap_or(0)];
        // Chunks are whole multiples of pieces or the reverse: a piece is in one chunk, or
        // covers whole ones; it is zero only if each of its chunks is.
        let first = off / chunk;
        let last = (off + n - 1) / chunk;
        let zero = (first..=last).all(|c| {
            usize::try_from(c)
                .ok()
                .and_then(|c| m.chunks.get(c))
                .is_some_and(Option::is_none)
        });
        if zero {
            piece.fill(0);
        } else {
            image
                .read_exact_at(piece, off)
                .context("cannot read back the scratch image")?;
        }
        w.extent(off, piece, zero)?;
        off += n;
    }
    w.finish()?;
    out.flush()?;
    out.sync_all()
        .with_context(|| format!("cannot flush {}", path.display()))?;
    Ok(())
}

/// The 16 bytes of a hex volume identity (zeroes if it is not one).
fn volume_id(hex: &str) -> [u8; 16] {
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = hex
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0);
    }
    id
}

/// Where a repository restore onto `volume` keeps its stream while the daemon restores.
fn stream_path(state: &Path, volume: &str, backup: &str) -> PathBuf {
    state
        .join("restores")
        .join(format!("{volume}.{backup}.fss"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_ids_parse_from_hex() {
        let id = volume_id("000102030405060708090a0b0c0d0e0f");
        assert_eq!(id[1], 1);
        assert_eq!(id[15], 15);
        assert_eq!(volume_id("zz"), [0u8; 16]);
    }
}
