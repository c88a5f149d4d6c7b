//! The command-line arguments of `fss repo ...` and the repository options of `fss backup`
//! and `fss restore`.

#![allow(missing_docs)] // clap's derive turns the doc comments into help; fields need none.

use crate::path_arg;
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};

/// Options of the commands that use a repository.
#[derive(Args, Clone)]
pub struct RepoArgs {
    /// The key file of an encrypted repository.
    #[arg(long, value_name = "KEYFILE", value_parser = path_arg)]
    pub key: Option<PathBuf>,
    /// Parallel uploads or downloads.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub connections: usize,
}

impl RepoArgs {
    /// The options for [`crate::repo`].
    #[must_use]
    pub fn opts(&self) -> crate::repo::RepoOpts {
        crate::repo::RepoOpts {
            key: self.key.clone(),
            connections: self.connections.max(1),
        }
    }
}

/// Backup repositories on S3-compatible object storage (s3://BUCKET/PREFIX, endpoint and
/// credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
/// AWS_ALLOW_HTTP) or in a directory (file:///PATH).
#[derive(Subcommand)]
pub enum RepoCmd {
    /// Create a repository; with --encrypt, encrypted with the key in KEYFILE (a new random
    /// key is written there if it does not exist).
    Init {
        /// The repository URL.
        url: String,
        /// Encrypt with this key file.
        #[arg(long, value_name = "KEYFILE", value_parser = path_arg)]
        encrypt: Option<PathBuf>,
        /// Chunk size (a power of two, 64K to 16M; docs/REPOSITORY.md says why 1M).
        #[arg(long, value_name = "SIZE", value_parser = crate::size_arg, default_value = "1M")]
        chunk_size: u64,
    },
    /// List the backups: id, volume, snapshot, created, size, new and stored bytes.
    List {
        /// The repository URL.
        url: String,
        /// Print one JSON array.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Check the repository's structure; with --read-data also every chunk's content.
    Verify {
        /// The repository URL.
        url: String,
        /// Read, decrypt, decompress and hash every chunk.
        #[arg(long)]
        read_data: bool,
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Forget the backups no --keep rule keeps (per volume, periods in UTC) and collect
    /// unused packs: marked now, deleted by a later prune after the grace period.
    Prune {
        /// The repository URL.
        url: String,
        /// Keep the newest N backups of each volume.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_last: usize,
        /// Keep the newest backup of each of the last N hours that have one.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_hourly: usize,
        /// Likewise for days.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_daily: usize,
        /// Likewise for weeks (Monday to Sunday).
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_weekly: usize,
        /// Likewise for calendar months.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_monthly: usize,
        /// Seconds an unused pack stays marked before a prune deletes it; longer than any
        /// backup runs.
        #[arg(long, value_name = "SECS", default_value_t = 3600)]
        gc_grace: u64,
        /// Report what would be forgotten and collected; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        repo: RepoArgs,
    },
}

/// Run `fss repo ...`.
///
/// # Errors
/// The command failed.
pub fn run(cmd: RepoCmd) -> anyhow::Result<()> {
    match cmd {
        RepoCmd::Init {
            url,
            encrypt,
            chunk_size,
        } => crate::repo::init(&url, encrypt.as_deref(), chunk_size),
        RepoCmd::List { url, json, repo } => crate::repo::list(&url, json, &repo.opts()),
        RepoCmd::Verify {
            url,
            read_data,
            repo,
        } => crate::repo::verify(&url, read_data, &repo.opts()),
        RepoCmd::Prune {
            url,
            keep_last,
            keep_hourly,
            keep_daily,
            keep_weekly,
            keep_monthly,
            gc_grace,
            dry_run,
            repo,
        } => {
            let policy = fss_repo::KeepPolicy {
                last: keep_last,
                hourly: keep_hourly,
                daily: keep_daily,
                weekly: keep_weekly,
                monthly: keep_monthly,
            };
            let opts = fss_repo::PruneOptions {
                dry_run,
                grace_secs: gc_grace,
            };
            crate::repo::prune(&url, &policy, opts, &repo.opts())
        }
    }
}

/// `fss backup SNAPSHOT FILE|-|URL`: to a repository or to a backup file.
///
/// # Errors
/// The backup failed.
pub fn backup(
    state: &Path,
    snapshot: &str,
    dest: &str,
    since: Option<&str>,
    repo: &RepoArgs,
) -> anyhow::Result<()> {
    if !fss_repo::is_repo_url(dest) {
        return crate::backup::backup(state, snapshot, dest, since);
    }
    if since.is_some() {
        anyhow::bail!("--since is for backup files: a repository backup chooses its base itself");
    }
    crate::repo::backup(state, snapshot, dest, &repo.opts())
}

/// `fss restore BACKUP... TARGET`, `fss restore URL --backup ID TARGET` or
/// `fss restore --abandon VOLUME`.
///
/// # Errors
/// The arguments do not fit, or the restore failed.
pub fn restore(
    state: &Path,
    paths: &[String],
    abandon: bool,
    id: Option<&str>,
    repo: &RepoArgs,
) -> anyhow::Result<()> {
    let Some((target, sources)) = paths.split_last() else {
        anyhow::bail!("give the backups and a TARGET");
    };
    if abandon {
        if !sources.is_empty() || id.is_some() {
            anyhow::bail!("--abandon takes only the volume: `fss restore --abandon VOLUME`");
        }
        return crate::backup::abandon_restore(state, target);
    }
    match (sources, id) {
        ([url], Some(id)) if fss_repo::is_repo_url(url) => {
            if is_volume(state, target) {
                if std::path::Path::new(target).exists() {
                    anyhow::bail!("'{target}' is both an fss volume and a file here; write ./{target} for the file");
                }
                return crate::repo::restore_onto_volume(state, url, id, target, &repo.opts());
            }
            crate::repo::restore(url, id, target, &repo.opts())
        }
        ([url, ..], None) if fss_repo::is_repo_url(url) => anyhow::bail!(
            "give the backup to restore from {url} with --backup ID (`fss repo list {url}` shows them)"
        ),
        (_, Some(_)) => anyhow::bail!("--backup ID goes with one repository URL (s3://... or file://...) and a TARGET"),
        ([], None) => anyhow::bail!("give at least one backup (the full one first) and a TARGET"),
        _ => {
            let backups = sources.iter().map(|b| crate::path_arg(b).map_err(anyhow::Error::msg)).collect::<anyhow::Result<Vec<_>>>()?;
            crate::backup::restore(state, &backups, target)
        }
    }
}

/// Whether `name` (no '/') is a volume the daemon serves.
fn is_volume(state: &Path, name: &str) -> bool {
    if name.contains('/') {
        return false;
    }
    let Ok(mut c) = crate::connect(state) else {
        return false;
    };
    crate::call(&mut c, fssd::protocol::Request::VolumeList)
        .ok()
        .and_then(|v| crate::decode::<Vec<fssd::protocol::VolumeInfo>>(v).ok())
        .is_some_and(|list| list.iter().any(|v| v.name == name))
}
