//! `fss repo ...`, `fss backup SNAPSHOT URL` and `fss restore URL --backup ID TARGET`: backups
//! in a repository (`docs/REPOSITORY.md`, the `fss-repo` crate).
//!
//! The daemon knows nothing of repositories: a backup is the daemon's ordinary backup stream
//! (`docs/BACKUP.md`), full or incremental since the base chosen here, parsed on this side and
//! fed to the repository writer. A restore writes chunks straight into the target file or device.

use crate::progress::Reporter;
use crate::repo_stream::channel;
use crate::{call, connect, decode};
use anyhow::{bail, Context};
use fss_core::backup::{format::hex, BackupReader};
use fss_repo::{BackupMeta, BackupWriter, KeepPolicy, Manifest, PruneOptions, Repository};
use fssd::names::human_size;
use fssd::protocol::{Request, SnapshotInfo};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Options every repository command shares.
#[derive(Debug, Clone, Default)]
pub struct RepoOpts {
    /// The key file of an encrypted repository.
    pub key: Option<PathBuf>,
    /// Parallel transfers.
    pub connections: usize,
}

fn open(url: &str, opts: &RepoOpts) -> anyhow::Result<Repository> {
    Repository::open(url, opts.key.as_deref())
        .map(|r| r.with_connections(opts.connections))
        .with_context(|| format!("cannot open repository {url}"))
}

/// `fss repo init URL [--encrypt KEYFILE]`.
///
/// # Errors
/// A repository is there already, or the store refused.
pub fn init(url: &str, encrypt: Option<&Path>, chunk_size: u64) -> anyhow::Result<()> {
    let chunk_size = u32::try_from(chunk_size).unwrap_or(u32::MAX);
    Repository::init_with(url, encrypt, chunk_size)
        .with_context(|| format!("cannot create repository {url}"))?;
    match encrypt {
        Some(k) => println!("created encrypted repository {url} (key: {}; keep a copy: without it nothing can be restored)", k.display()),
        None => println!("created repository {url} (not encrypted)"),
    }
    Ok(())
}

/// The newest backup in the repository of an earlier snapshot of `snap`'s volume that fss
/// still has, matched by identity (id and creation time), and that snapshot's name.
fn choose_base(
    backups: &[Manifest],
    snaps: &[SnapshotInfo],
    snap: &SnapshotInfo,
) -> Option<(Manifest, String)> {
    backups
        .iter()
        .filter(|m| m.volume == snap.volume && m.snapshot_id < snap.id && m.size == snap.size)
        .filter_map(|m| {
            snaps
                .iter()
                .find(|s| {
                    s.volume == m.volume
                        && s.id == m.snapshot_id
                        && s.created == m.snapshot_created_ns / 1_000_000_000
                        && s.kind == snap.kind
                })
                .map(|s| (m.clone(), s.name.clone()))
        })
        .max_by_key(|(m, _)| (m.snapshot_id, m.created))
}

/// `fss backup SNAPSHOT URL`: incremental from the newest earlier snapshot of the volume that
/// is in the repository and still in fss, else full.
///
/// # Errors
/// The daemon or the repository refused or failed; nothing is half-written (no manifest).
pub fn backup(state: &Path, snapshot: &str, url: &str, opts: &RepoOpts) -> anyhow::Result<()> {
    let repo = open(url, opts)?;
    tracing::debug!("repository opened");
    let snaps: Vec<SnapshotInfo> = decode(call(&mut connect(state)?, Request::SnapshotList)?)?;
    tracing::debug!("snapshot list read");
    let Some(snap) = snaps.iter().find(|s| s.name == snapshot) else {
        bail!("no snapshot '{snapshot}'; `fss snapshot list` shows them");
    };
    let base = choose_base(&repo.backups()?, &snaps, snap);
    tracing::debug!("manifests read");
    let since = base.as_ref().map(|(_, name)| name.clone());
    let mut rep = Reporter::new(format!("backup {snapshot}"));
    let result = stream_into(
        state,
        &repo,
        snapshot,
        since.as_deref(),
        base.map(|b| b.0),
        opts,
        &mut rep,
    );
    match result {
        Ok(m) => {
            rep.finish();
            let kind = since.map_or_else(
                || "full".to_string(),
                |s| format!("incremental since '{s}'"),
            );
            println!(
                "backup {} of snapshot '{}' (volume '{}', {}) to {url}: {kind}, {} new, {} stored, in {:.1} s",
                m.id,
                m.snapshot,
                m.volume,
                human_size(m.size),
                human_size(m.new_bytes),
                human_size(m.stored_bytes),
                rep.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Err(e) => {
            rep.abandon();
            Err(e)
        }
    }
}

/// Stream the daemon's backup of `snapshot` (since `since`) into a repository backup.
fn stream_into(
    state: &Path,
    repo: &Repository,
    snapshot: &str,
    since: Option<&str>,
    base: Option<Manifest>,
    opts: &RepoOpts,
    rep: &mut Reporter,
) -> anyhow::Result<Manifest> {
    let request = Request::Backup {
        snapshot: snapshot.to_string(),
        since: since.map(str::to_string),
        align: Some(u64::from(repo.chunk_size())),
    };
    let mut client = connect(state)?;
    let (mut w, r) = channel();
    std::thread::scope(|s| {
        let daemon = s.spawn(move || client.backup(request, &mut w, &mut |_, _| {}).map(|_| ()));
        let written = write_stream(s, repo, r, base, opts, rep);
        let streamed = daemon
            .join()
            .map_err(|_| anyhow::anyhow!("the backup stream thread panicked"))?;
        match (written, streamed) {
            (Ok(m), Ok(())) => Ok(m),
            // The daemon's error says why the stream broke off.
            (_, Err(e)) => Err(anyhow::anyhow!("{}", e.message)),
            (Err(e), Ok(())) => Err(e),
        }
    })
}

fn write_stream<'s, 'r>(
    s: &'s std::thread::Scope<'s, 'r>,
    repo: &'r Repository,
    r: crate::repo_stream::ChannelReader,
    base: Option<Manifest>,
    opts: &RepoOpts,
    rep: &mut Reporter,
) -> anyhow::Result<Manifest> {
    let mut reader = BackupReader::open("the daemon's backup stream", Box::new(r))?;
    let h = reader.header().clone();
    if let (Some(b), Some(m)) = (&h.base, &base) {
        if b.id != m.snapshot_id
            || b.created_ns != m.snapshot_created_ns
            || hex(&h.volume_id) != m.volume_id
        {
            bail!("snapshot '{}' is not the one backup {} was made of (it was deleted and its name reused); run the backup again", b.name, m.id);
        }
    }
    let meta = BackupMeta {
        volume: h.volume_name.clone(),
        volume_id: hex(&h.volume_id),
        snapshot: h.snapshot.name.clone(),
        snapshot_id: h.snapshot.id,
        snapshot_created_ns: h.snapshot.created_ns,
        size: h.volume_len,
    };
    let mut w = BackupWriter::new(s, repo, meta, base, opts.connections)?;
    tracing::debug!("index loaded");
    let mut done = 0;
    while let Some(e) = reader.next_extent()? {
        // A zero extent needs no write without a base: a new chunk starts as zeroes.
        if e.data.is_some() || h.base.is_some() {
            w.extent(e.offset, e.len, e.data)?;
        }
        done += e.len;
        rep.update(done, h.covered);
    }
    tracing::debug!("stream read and chunked");
    let m = w.finish()?;
    tracing::debug!("uploads and manifest written");
    Ok(m)
}

/// `fss restore URL --backup ID TARGET` onto a new image file or an existing image or device.
///
/// # Errors
/// No such backup, a damaged or missing chunk (a new file is removed), the target's size.
pub fn restore(url: &str, id: &str, target: &str, opts: &RepoOpts) -> anyhow::Result<()> {
    let repo = open(url, opts)?;
    let m = repo.backup(id)?;
    tracing::debug!("repository opened, manifest read");
    let path = PathBuf::from(target);
    let mut rep = Reporter::new(format!("restore {id}"));
    let rep_lock = std::sync::Mutex::new(&mut rep);
    let progress = |d: u64, t: u64| {
        if let Ok(mut r) = rep_lock.lock() {
            r.update(d, t);
        }
    };
    let exists = std::fs::symlink_metadata(&path).is_ok();
    let result = if exists {
        restore_existing(&repo, &m, &path, opts, &progress)
    } else {
        restore_new(&repo, &m, &path, opts, &progress)
    };
    let _ = rep_lock.into_inner();
    match result {
        Ok(s) => {
            rep.finish();
            println!(
                "restored backup {} (snapshot '{}' of volume '{}', {}) onto {}: {} of data, {} fetched",
                m.id,
                m.snapshot,
                m.volume,
                human_size(m.size),
                path.display(),
                human_size(s.data_bytes),
                human_size(s.fetched_bytes)
            );
            Ok(())
        }
        Err(e) => {
            rep.abandon();
            Err(e)
        }
    }
}

/// `fss restore URL --backup ID VOLUME` onto a volume the daemon at `state` serves.
///
/// # Errors
/// As [`crate::repo_volume::restore`].
pub fn restore_onto_volume(
    state: &Path,
    url: &str,
    id: &str,
    volume: &str,
    opts: &RepoOpts,
) -> anyhow::Result<()> {
    let repo = open(url, opts)?;
    let m = repo.backup(id)?;
    crate::repo_volume::restore(state, &repo, &m, volume, opts.connections)
}

type Progress<'a> = dyn Fn(u64, u64) + Sync + 'a;

fn restore_existing(
    repo: &Repository,
    m: &Manifest,
    path: &Path,
    opts: &RepoOpts,
    progress: &Progress<'_>,
) -> anyhow::Result<fss_repo::RestoreStats> {
    use fss_core::device::{BlockDevice, FileDevice, OpenOptions};
    // Held exclusively, as `fss restore FILE TARGET` does: a mounted block device (O_EXCL) or
    // an image another process holds (flock, the daemon's volumes too) is refused.
    let dev = FileDevice::open(
        path,
        &OpenOptions {
            exclusive: true,
            ..OpenOptions::default()
        },
    )
    .map_err(|e| crate::backup::in_use(path, &e))?;
    let len = dev.len();
    if len != m.size {
        bail!("{} has {len} bytes; backup {} is of a {}-byte volume: restore onto a target of that size or a new file", path.display(), m.id, m.size);
    }
    let write = |off: u64, data: &[u8]| dev.write_at(data, off);
    let s = fss_repo::restore(repo, m, &write, true, opts.connections, progress)?;
    dev.flush()
        .with_context(|| format!("cannot flush {}", path.display()))?;
    Ok(s)
}

/// Restore `m` into the new sparse file `f` (named `path`; zero chunks stay holes) and flush
/// it.
fn write_into(
    repo: &Repository,
    m: &Manifest,
    f: &std::fs::File,
    path: &Path,
    opts: &RepoOpts,
    progress: &Progress<'_>,
) -> anyhow::Result<fss_repo::RestoreStats> {
    let write = |off: u64, data: &[u8]| {
        f.write_all_at(data, off)?;
        // Start writing these pages back now (and drop them once clean), so the final flush
        // does not wait for the whole image and the restore does not fill the page cache.
        let len = std::num::NonZeroU64::new(data.len() as u64);
        let _ = rustix::fs::fadvise(f, off, len, rustix::fs::Advice::DontNeed);
        Ok(())
    };
    let s = fss_repo::restore(repo, m, &write, false, opts.connections, progress)?;
    tracing::debug!("chunks fetched and written");
    f.sync_all()
        .with_context(|| format!("cannot flush {}", path.display()))?;
    tracing::debug!("target flushed");
    Ok(s)
}

fn restore_new(
    repo: &Repository,
    m: &Manifest,
    path: &Path,
    opts: &RepoOpts,
    progress: &Progress<'_>,
) -> anyhow::Result<fss_repo::RestoreStats> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let _ = std::fs::remove_file(&partial);
    let run = || -> anyhow::Result<fss_repo::RestoreStats> {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        f.set_len(m.size)
            .with_context(|| format!("cannot size {}", partial.display()))?;
        let s = write_into(repo, m, &f, &partial, opts, progress)?;
        std::fs::rename(&partial, path).with_context(|| {
            format!("cannot rename {} to {}", partial.display(), path.display())
        })?;
        Ok(s)
    };
    run()
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&partial);
        })
        .map_err(|e| anyhow::anyhow!("{e:#} (the new image {} was not kept)", path.display()))
}

/// `fss repo list URL [--json]`.
///
/// # Errors
/// The repository cannot be read.
pub fn list(url: &str, json: bool, opts: &RepoOpts) -> anyhow::Result<()> {
    let repo = open(url, opts)?;
    let backups = repo.backups()?;
    if json {
        let v: Vec<serde_json::Value> = backups
            .iter()
            .map(|m| {
                serde_json::json!({
                    "id": m.id, "volume": m.volume, "snapshot": m.snapshot,
                    "created": fss_repo::format::rfc3339(m.created), "size": m.size,
                    "new_bytes": m.new_bytes, "stored_bytes": m.stored_bytes,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = backups
        .iter()
        .map(|m| {
            vec![
                m.id.clone(),
                m.volume.clone(),
                m.snapshot.clone(),
                fss_repo::format::rfc3339(m.created),
                human_size(m.size),
                human_size(m.new_bytes),
                human_size(m.stored_bytes),
            ]
        })
        .collect();
    print!(
        "{}",
        crate::output::table(
            &["ID", "VOLUME", "SNAPSHOT", "CREATED", "SIZE", "NEW", "STORED"],
            &rows
        )
    );
    Ok(())
}

/// `fss repo verify URL [--read-data]`.
///
/// # Errors
/// The repository cannot be read, or a problem was found.
pub fn verify(url: &str, read_data: bool, opts: &RepoOpts) -> anyhow::Result<()> {
    let repo = open(url, opts)?;
    let mut rep = Reporter::new("verify");
    let r = fss_repo::verify(&repo, read_data, &mut |d, t| rep.update(d, t))?;
    rep.finish();
    for p in &r.problems {
        eprintln!("problem: {p}");
    }
    let what = if read_data {
        format!(
            ", {} chunks read ({})",
            r.chunks_read,
            human_size(r.bytes_read)
        )
    } else {
        String::new()
    };
    if !r.problems.is_empty() {
        bail!(
            "{url}: {} problem(s) in {} backups and {} packs{what}",
            r.problems.len(),
            r.backups,
            r.packs
        );
    }
    println!(
        "{url}: {} backups and {} packs are sound{what}",
        r.backups, r.packs
    );
    Ok(())
}

/// `fss repo prune URL --keep-... [--dry-run]`.
///
/// # Errors
/// No keep rule, or the repository failed.
pub fn prune(
    url: &str,
    policy: &KeepPolicy,
    prune_opts: PruneOptions,
    opts: &RepoOpts,
) -> anyhow::Result<()> {
    if *policy == KeepPolicy::default() {
        bail!("give at least one of --keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly (prune would forget every backup)");
    }
    let repo = open(url, opts)?;
    let r = fss_repo::prune(&repo, policy, prune_opts)?;
    let verb = if prune_opts.dry_run {
        "would forget"
    } else {
        "forgot"
    };
    for id in &r.removed {
        println!("{verb} backup {id}");
    }
    println!(
        "{}: kept {} backups, {verb} {}; {} packs newly marked unused, {} packs ({}) deleted after the {} s grace period",
        url,
        r.kept.len(),
        r.removed.len(),
        r.marked.len(),
        r.deleted.len(),
        human_size(r.deleted_bytes),
        prune_opts.grace_secs
    );
    Ok(())
}
