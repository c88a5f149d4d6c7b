//! `fss diff`, `fss backup`, `fss restore` and `fss rollback`.
//!
//! The daemon owns the snapshots, so a backup is streamed from it over the control connection
//! (`docs/CONTROL.md`) into a file or standard output. A restore into an image file or a block
//! device runs here, with the engine's backup reader; a restore onto an fss volume and a
//! rollback run in the daemon, which sends progress.

use crate::output::table;
use crate::progress::{exact_size, Reporter};
use crate::{call, connect, decode};
use anyhow::{bail, Context};
use fss_core::backup::{format::check_chain, restore_readers, BackupReader};
use fss_core::device::{FileDevice, OpenOptions};
use fssd::names::human_size;
use fssd::protocol::{
    BackupDone, BackupStart, DiffExtent, Request, RestoreAbandoned, RestoreDone, RollbackDone,
    VolumeInfo,
};
use std::ffi::OsString;
use std::fs::File;
use std::io::{BufWriter, IsTerminal, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// `fss diff A [B] [--json]`.
///
/// # Errors
/// The daemon refused (unknown snapshots, two chains, wrong order).
pub fn diff(state: &Path, older: &str, newer: Option<&str>, json: bool) -> anyhow::Result<()> {
    let v = call(
        &mut connect(state)?,
        Request::Diff {
            snapshot: older.to_string(),
            until: newer.map(str::to_string),
        },
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let extents: Vec<DiffExtent> = decode(v)?;
    print!("{}", diff_table(&extents, older, newer));
    Ok(())
}

/// The human form of a diff: a table and a total line.
#[must_use]
pub fn diff_table(extents: &[DiffExtent], older: &str, newer: Option<&str>) -> String {
    let rows: Vec<Vec<String>> = extents
        .iter()
        .map(|e| vec![exact_size(e.offset), exact_size(e.length)])
        .collect();
    let total: u64 = extents.iter().map(|e| e.length).sum();
    let until = newer.map_or_else(|| "now".to_string(), |n| format!("'{n}'"));
    format!(
        "{}total: {} extent{}, {} ({total} bytes) changed between '{older}' and {until}\n",
        table(&["OFFSET", "LENGTH"], &rows),
        extents.len(),
        if extents.len() == 1 { "" } else { "s" },
        exact_size(total),
    )
}

/// `FILE.partial`, where a backup is written before it is renamed to `FILE`.
fn partial_path(path: &Path) -> PathBuf {
    let mut s: OsString = path.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// Create `path` fresh, mode 0600 (backups hold volume data), never through a link planted at
/// the name; a `.partial` left by an interrupted run is replaced.
fn create_private(path: &Path) -> anyhow::Result<File> {
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(fss_core::device::FILE_MODE)
        .custom_flags(nofollow_flag())
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

fn nofollow_flag() -> i32 {
    i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0)
}

/// Flush a file's directory entry (after a rename into it).
fn sync_dir_of(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Removes a partial file if the command is interrupted (SIGINT, SIGTERM, SIGHUP) before it
/// is dropped.
struct RemoveOnSignal {
    handle: signal_hook::iterator::Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RemoveOnSignal {
    fn new(path: &Path) -> Option<Self> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).ok()?;
        let handle = signals.handle();
        let path = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("fss-cleanup".into())
            .spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    if std::fs::remove_file(&path).is_ok() {
                        eprintln!("\nfss: interrupted; removed {}", path.display());
                    }
                    std::process::exit(128 + sig);
                }
            })
            .ok()?;
        Some(RemoveOnSignal {
            handle,
            thread: Some(thread),
        })
    }
}

impl Drop for RemoveOnSignal {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `fss backup SNAPSHOT FILE|- [--since OLDER]`.
///
/// # Errors
/// The daemon refused or failed, or the output could not be written (a partial file is
/// removed).
pub fn backup(state: &Path, snapshot: &str, dest: &str, since: Option<&str>) -> anyhow::Result<()> {
    let request = Request::Backup {
        snapshot: snapshot.to_string(),
        since: since.map(str::to_string),
        align: None,
    };
    let mut client = connect(state)?;
    let mut rep = Reporter::new(format!("backup {snapshot}"));
    if dest == "-" {
        let stdout = std::io::stdout();
        if stdout.is_terminal() {
            bail!("refusing to write a binary backup to a terminal: redirect standard output (`> FILE`) or give a FILE");
        }
        let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
        let r = client.backup(request, &mut out, &mut |d, t| rep.update(d, t));
        let (start, done) = r.map_err(|e| anyhow::anyhow!(e.message))?;
        rep.finish();
        eprintln!(
            "{}",
            summary(&decode(start)?, &decode(done)?, "standard output")
        );
        return Ok(());
    }
    let path = PathBuf::from(dest);
    if std::fs::symlink_metadata(&path).is_ok() {
        bail!(
            "{} exists; remove it or choose another name (fss does not overwrite a backup)",
            path.display()
        );
    }
    let partial = partial_path(&path);
    let file = create_private(&partial)?;
    let cleanup = RemoveOnSignal::new(&partial);
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let result = client
        .backup(request, &mut out, &mut |d, t| rep.update(d, t))
        .map_err(|e| {
            if e.kind == fssd::error::ErrorKind::Output {
                anyhow::anyhow!("cannot write {}: {}", partial.display(), e.message)
            } else {
                anyhow::anyhow!(e.message)
            }
        })
        .and_then(|(start, done)| {
            let file = out.into_inner().map_err(|e| {
                anyhow::anyhow!("cannot write {}: {}", partial.display(), e.error())
            })?;
            file.sync_all()
                .with_context(|| format!("cannot flush {}", partial.display()))?;
            drop(file);
            std::fs::rename(&partial, &path).with_context(|| {
                format!("cannot rename {} to {}", partial.display(), path.display())
            })?;
            sync_dir_of(&path);
            Ok((start, done))
        });
    drop(cleanup);
    match result {
        Ok((start, done)) => {
            rep.finish();
            println!(
                "{}",
                summary(&decode(start)?, &decode(done)?, &path.display().to_string())
            );
            Ok(())
        }
        Err(e) => {
            rep.abandon();
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

fn summary(start: &BackupStart, done: &BackupDone, dest: &str) -> String {
    let what = match &done.since {
        Some(b) => format!("incremental backup of '{}' since '{b}'", done.snapshot),
        None => format!("full backup of '{}'", done.snapshot),
    };
    format!(
        "{what} (volume '{}', {}) written to {dest}: {} covered ({} data, {} zero), {} written \
         in {} records, backup id {}",
        start.volume,
        human_size(start.size),
        human_size(done.covered),
        human_size(done.data_bytes),
        human_size(done.zero_bytes),
        human_size(done.stream_bytes),
        done.records,
        done.backup_id
    )
}

/// Where a restore goes.
enum Target {
    /// An fss volume: the daemon restores onto it.
    Volume(String),
    /// An existing image file or block device.
    Existing(PathBuf),
    /// A new image file.
    New(PathBuf),
}

/// A volume name or a path? A name with no '/' that the daemon serves is a volume; an
/// existing path, or one with a '/', is a file or device.
fn target_of(state: &Path, target: &str) -> anyhow::Result<Target> {
    let path = PathBuf::from(target);
    let exists = std::fs::symlink_metadata(&path).is_ok();
    if target.contains('/') {
        return Ok(if exists {
            Target::Existing(path)
        } else {
            Target::New(path)
        });
    }
    let volume = match connect(state) {
        Ok(mut c) => {
            let list: Vec<VolumeInfo> = decode(call(&mut c, Request::VolumeList)?)?;
            list.iter().any(|v| v.name == target)
        }
        Err(_) => false,
    };
    match (volume, exists) {
        (true, true) => {
            bail!("'{target}' is both an fss volume and a file here; write ./{target} for the file")
        }
        (true, false) => Ok(Target::Volume(target.to_string())),
        (false, true) => Ok(Target::Existing(path)),
        (false, false) => Ok(Target::New(path)),
    }
}

fn open_input(name: &Path) -> anyhow::Result<Box<dyn Read>> {
    if name == Path::new("-") {
        return Ok(Box::new(std::io::stdin()));
    }
    let f = File::open(name).with_context(|| format!("cannot open backup {}", name.display()))?;
    Ok(Box::new(f))
}

/// `fss restore FULL [INCR...] TARGET`.
///
/// # Errors
/// The chain is wrong or damaged (the library's error, naming the file), the target is of the
/// wrong size or in use, or the daemon refused.
pub fn restore(state: &Path, backups: &[PathBuf], target: &str) -> anyhow::Result<()> {
    if backups.is_empty() {
        bail!("give at least one backup (the full one first) and a TARGET");
    }
    if backups.iter().filter(|b| b.as_os_str() == "-").count() > 1 {
        bail!("standard input (-) can be only one of the backups");
    }
    let mut rep = Reporter::new(format!("restore {target}"));
    match target_of(state, target)? {
        Target::Volume(volume) => {
            let mut files = Vec::new();
            for b in backups {
                if b.as_os_str() == "-" {
                    bail!("the daemon restores onto volume '{volume}' from files: give backup files, not standard input");
                }
                files.push(
                    std::fs::canonicalize(b)
                        .with_context(|| format!("cannot open backup {}", b.display()))?,
                );
            }
            let v = connect(state)?
                .call_with_progress(
                    Request::Restore {
                        volume: volume.clone(),
                        files,
                    },
                    &mut |d, t| rep.update(d, t),
                )
                .map_err(|e| anyhow::anyhow!(e.message))?;
            rep.finish();
            let r: RestoreDone = decode(v)?;
            println!(
                "restored snapshot '{}' onto volume '{}' ({} backup{}: {} data, {} zero)",
                r.snapshot,
                r.volume,
                r.backups,
                if r.backups == 1 { "" } else { "s" },
                human_size(r.data_bytes),
                human_size(r.zero_bytes)
            );
            Ok(())
        }
        Target::Existing(path) => {
            let readers = open_chain(backups)?;
            let meta = std::fs::metadata(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            if !meta.is_file() && !meta.file_type().is_block_device() {
                bail!(
                    "{} is neither an image file nor a block device",
                    path.display()
                );
            }
            let dev = FileDevice::open(
                &path,
                &OpenOptions {
                    exclusive: true,
                    ..OpenOptions::default()
                },
            )
            .map_err(|e| in_use(&path, &e))?;
            let s = restore_readers(readers, &dev, &mut |d, t| rep.update(d, t))?;
            rep.finish();
            println!("{}", restored(&s, &path));
            Ok(())
        }
        Target::New(path) => {
            let readers = open_chain(backups)?;
            let len = readers[0].header().volume_len;
            let partial = partial_path(&path);
            let _ = std::fs::remove_file(&partial);
            let dev = FileDevice::open(
                &partial,
                &OpenOptions {
                    exclusive: true,
                    create_len: Some(len),
                    create_new: true,
                    ..OpenOptions::default()
                },
            )
            .with_context(|| format!("cannot create {}", partial.display()))?;
            let cleanup = RemoveOnSignal::new(&partial);
            let result = restore_readers(readers, &dev, &mut |d, t| rep.update(d, t))
                .map_err(anyhow::Error::from)
                .and_then(|s| {
                    drop(dev);
                    std::fs::rename(&partial, &path).with_context(|| {
                        format!("cannot rename {} to {}", partial.display(), path.display())
                    })?;
                    sync_dir_of(&path);
                    Ok(s)
                });
            drop(cleanup);
            match result {
                Ok(s) => {
                    rep.finish();
                    println!("{}", restored(&s, &path));
                    Ok(())
                }
                Err(e) => {
                    rep.abandon();
                    let _ = std::fs::remove_file(&partial);
                    Err(anyhow::anyhow!(
                        "{e:#} (the new image {} was not kept)",
                        path.display()
                    ))
                }
            }
        }
    }
}

/// `fss restore --abandon VOLUME`.
///
/// # Errors
/// The daemon refused (no such volume, no unfinished restore, a restore running now).
pub fn abandon_restore(state: &Path, volume: &str) -> anyhow::Result<()> {
    let request = Request::RestoreAbandon {
        volume: volume.to_string(),
    };
    let r: RestoreAbandoned = decode(call(&mut connect(state)?, request)?)?;
    let files: Vec<String> = r.files.iter().map(|f| f.display().to_string()).collect();
    let served = if r.online {
        "it is served again"
    } else {
        "it is served as it is once it can be opened"
    };
    println!(
        "abandoned the unfinished restore onto volume '{}' from {}: its contents are partial \
         (part from the backups, part what it held before); {served}: restore it again or \
         check it before trusting its data",
        r.volume,
        files.join(" ")
    );
    Ok(())
}

/// Open every backup and check the chain before anything is written.
fn open_chain(backups: &[PathBuf]) -> anyhow::Result<Vec<BackupReader>> {
    let mut readers = Vec::new();
    for b in backups {
        readers.push(BackupReader::open(b.display().to_string(), open_input(b)?)?);
    }
    let chain: Vec<(&str, &fss_core::backup::BackupHeader)> =
        readers.iter().map(|r| (r.name(), r.header())).collect();
    check_chain(&chain).map_err(|p| anyhow::anyhow!("cannot restore: {}", p.detail))?;
    Ok(readers)
}

/// The error for a target that cannot be opened: in use by another process, or why not.
pub(crate) fn in_use(path: &Path, e: &std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::WouldBlock || e.raw_os_error() == Some(16) {
        anyhow::anyhow!(
            "{} is in use by another process (an fss volume is held by the daemon: restore onto \
             it by its volume name); stop that user first",
            path.display()
        )
    } else {
        anyhow::anyhow!("cannot open {}: {e}", path.display())
    }
}

fn restored(s: &fss_core::backup::RestoreSummary, path: &Path) -> String {
    format!(
        "restored snapshot '{}' of volume '{}' ({}) onto {} ({} backup{}: {} data, {} zero)",
        s.snapshot.name,
        s.volume_name,
        human_size(s.volume_len),
        path.display(),
        s.backups,
        if s.backups == 1 { "" } else { "s" },
        human_size(s.data_bytes),
        human_size(s.zero_bytes)
    )
}

/// `fss rollback VOLUME SNAPSHOT [--force]`.
///
/// # Errors
/// The daemon refused (open volume, unknown names) or the rollback failed midway.
pub fn rollback(state: &Path, volume: &str, snapshot: &str, force: bool) -> anyhow::Result<()> {
    let mut rep = Reporter::new(format!("rollback {volume} to {snapshot}"));
    let v = connect(state)?
        .call_with_progress(
            Request::Rollback {
                volume: volume.to_string(),
                snapshot: snapshot.to_string(),
                force,
            },
            &mut |d, t| rep.update(d, t),
        )
        .map_err(|e| anyhow::anyhow!(e.message))?;
    rep.finish();
    let r: RollbackDone = decode(v)?;
    println!(
        "rolled back volume '{}' to snapshot '{}': {} extent{}, {} rewritten",
        r.volume,
        r.snapshot,
        r.extents,
        if r.extents == 1 { "" } else { "s" },
        exact_size(r.bytes)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_tables() {
        let e = [
            DiffExtent {
                offset: 0,
                length: 4096,
            },
            DiffExtent {
                offset: 1 << 20,
                length: 65536,
            },
        ];
        let t = diff_table(&e, "a", Some("b"));
        assert_eq!(
            t,
            "OFFSET  LENGTH\n0 B     4 KiB\n1 MiB   64 KiB\n\
             total: 2 extents, 68 KiB (69632 bytes) changed between 'a' and 'b'\n"
        );
        let t = diff_table(&[], "a", None);
        assert!(t.ends_with("total: 0 extents, 0 B (0 bytes) changed between 'a' and now\n"));
    }

    #[test]
    fn partial_names() {
        assert_eq!(
            partial_path(Path::new("/x/full.fss")),
            Path::new("/x/full.fss.partial")
        );
    }
}
