//! `fss`: serve volumes and take, list and delete their snapshots.

use clap::{Args, CommandFactory, Parser, Subcommand};
use fss_cli::{call, connect, decode, output, path_arg, size_arg, state_dir, EXIT_FAILED};
use fssd::protocol::{Request, SnapshotInfo, SnapshotSpec, StatusInfo, VerifyInfo, VolumeInfo};
use std::path::PathBuf;

/// Copy-on-write, point-in-time, read-only snapshots of live block devices.
///
/// `fss serve` runs the daemon; the other commands talk to it over
/// <state-dir>/control.sock. Volumes are served read-write, snapshots read-only, as NBD
/// exports and as files in the FUSE directory (attach them with losetup).
#[derive(Parser)]
#[command(name = "fss", version, propagate_version = true)]
struct Cli {
    /// State directory (default: FSS_STATE_DIR, else /var/lib/fss for root, else
    /// $XDG_STATE_HOME/fss).
    #[arg(long, global = true, value_name = "DIR", value_parser = path_arg)]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (stop it with SIGTERM or Ctrl-C).
    ///
    /// With no volume configured it creates a 1 GiB sparse volume `default`. It prints
    /// `ready` when `fss status` can answer. This process supervises the one that serves
    /// I/O: it holds the sockets and starts a new serving process within a second if that
    /// one dies.
    Serve(fss_cli::serve::ServeArgs),
    /// Hand over to the fss binary on disk (an upgrade) without stopping service: the serving
    /// process drains and saves, the new one takes over the sockets.
    ///
    /// Waits for backups, restores and rollbacks up to --timeout, then carries them over (the
    /// new process resumes restores and rollbacks; a backup is cut off). Refused while
    /// transient snapshots exist, unless --drop-transient. Prints the old and new version
    /// and pid; if the new binary does not start, the old one serves on and this says why.
    Restart {
        /// Print {old_pid, new_pid, old_version, new_version, ms, ...} as JSON.
        #[arg(long)]
        json: bool,
        /// Seconds to wait for long operations before carrying them over.
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        timeout: u64,
        /// Restart even though transient snapshots exist: they are dropped.
        #[arg(long)]
        drop_transient: bool,
    },
    /// Create, add, list and remove volumes.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Create, list, verify and prune backup repositories (docs/REPOSITORY.md).
    #[command(subcommand)]
    Repo(fss_cli::repo_args::RepoCmd),
    /// Take, list, inspect, verify and delete snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Take snapshots of a volume on a schedule and prune them (kept by the daemon).
    #[command(subcommand)]
    Schedule(fss_cli::schedule::ScheduleCmd),
    /// What the daemon serves, and where.
    Status {
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// The figures `--metrics-listen` serves, without HTTP: per volume, per snapshot, and the
    /// daemon's (schema in docs/CLI.md).
    Stats {
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Mount the file system of a volume or snapshot on DIR: its FUSE file on a loop device
    /// (read-only for a snapshot), with the options a snapshot needs (ext4, xfs, btrfs).
    /// Prints the loop device.
    Mount {
        /// Volume or snapshot name.
        name: String,
        /// An empty directory.
        #[arg(value_parser = path_arg)]
        dir: PathBuf,
    },
    /// Unmount what `fss mount` mounted on DIR and detach its loop device.
    Umount {
        /// The mount point.
        #[arg(value_parser = path_arg)]
        dir: PathBuf,
    },
    /// Print a completion script for bash, zsh or fish, for example
    /// `source <(fss completions bash)`.
    Completions {
        /// The shell.
        #[arg(value_parser = fss_cli::manual::SHELLS)]
        shell: String,
    },
    /// Write the man pages fss.8 and fssconfig.8 into DIR (docs/man in the source tree).
    #[command(hide = true)]
    Man {
        /// The directory.
        #[arg(value_parser = path_arg)]
        dir: PathBuf,
    },
    /// SHA-256 of a volume's or snapshot's whole contents (for checks).
    Checksum {
        /// Volume or snapshot name.
        name: String,
    },
    /// The extents changed on the volume between snapshot A and the newer snapshot B (or
    /// now), exact to 4 KiB. No data is read.
    Diff {
        /// The older snapshot.
        #[arg(value_name = "A")]
        older: String,
        /// The newer snapshot of the same volume and kind (default: the volume now).
        #[arg(value_name = "B")]
        newer: Option<String>,
        /// Print one JSON array of {offset, length}.
        #[arg(long)]
        json: bool,
    },
    /// Write a full backup of a snapshot, or with --since an incremental one holding only
    /// the extents changed since an older snapshot (format: docs/BACKUP.md).
    Backup {
        /// The snapshot to back up.
        snapshot: String,
        /// The backup file (written as FILE.partial, then renamed), - for standard output, or
        /// a repository URL (s3://BUCKET/PREFIX or file:///PATH, docs/REPOSITORY.md): then the
        /// backup is incremental from the newest earlier snapshot of the volume that is in the
        /// repository and still exists, and full otherwise.
        #[arg(value_name = "FILE|-|URL")]
        file: String,
        /// Make an incremental backup from this older snapshot of the same volume (files only).
        #[arg(long, value_name = "OLDER")]
        since: Option<String>,
        #[command(flatten)]
        repo: fss_cli::repo_args::RepoArgs,
    },
    /// Restore a full backup and its incrementals, in order, onto TARGET: a new image file, an
    /// existing image or block device of the volume's size, or an fss volume (not open, no
    /// snapshots). A restore onto a volume that a stop interrupted is finished at the next
    /// start while its backups are there; otherwise the volume stays offline until it is run
    /// again or abandoned (--abandon).
    Restore {
        /// The full backup, then incrementals in order (- reads one from standard input), or a
        /// repository URL with --backup ID; then TARGET: a new or existing image file, a block
        /// device, or an fss volume name.
        #[arg(required = true, num_args = 1.., value_name = "BACKUP... TARGET")]
        paths: Vec<String>,
        /// The backup to restore from the repository URL (`fss repo list URL` shows the ids).
        #[arg(long, value_name = "ID")]
        backup: Option<String>,
        #[command(flatten)]
        repo: fss_cli::repo_args::RepoArgs,
        /// Give no backups: forget the unfinished restore onto the volume TARGET (interrupted
        /// and not finishable, or failed midway) and serve it as it is, partly restored.
        #[arg(long)]
        abandon: bool,
    },
    /// Return a volume to a snapshot's contents (the snapshot is kept; newer snapshots stay
    /// exact). Refused while the volume is open, unless --force; a stop midway is finished at
    /// the next start.
    Rollback {
        /// The volume.
        volume: String,
        /// The snapshot of that volume to return to.
        snapshot: String,
        /// Roll back even while NBD clients or FUSE users have the volume open (they see its
        /// data change beneath them).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum VolumeCmd {
    /// Create a sparse image and serve it as a new volume.
    Create {
        /// Volume name (letters, digits, _ . -).
        name: String,
        /// Size, with an optional K, M, G or T suffix (powers of 1024).
        #[arg(long, value_parser = size_arg)]
        size: u64,
        /// Where the image goes (default <state-dir>/volumes/NAME.img).
        #[arg(long, value_name = "PATH", value_parser = path_arg)]
        image: Option<PathBuf>,
    },
    /// Serve an existing image file or block device as a volume.
    Add {
        /// Volume name.
        name: String,
        /// The image or block device; fss holds it exclusively while it serves it.
        #[arg(long, value_name = "PATH", value_parser = path_arg)]
        device: PathBuf,
    },
    /// List volumes.
    List {
        /// Print one JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Stop serving a volume; its image is kept. Refused while it has snapshots or is open.
    Remove {
        /// Volume name.
        name: String,
    },
}

#[derive(Args, Clone)]
struct SnapOpts {
    /// Store: a directory (a fresh file is made inside), a file, or a raw device
    /// (default <state-dir>/stores/).
    #[arg(long, value_name = "PATH", value_parser = path_arg)]
    store: Option<PathBuf>,
    /// Cluster size (first snapshot of the volume only): 4K to 16M, default 64K.
    #[arg(long, value_parser = size_arg, value_name = "SIZE")]
    cluster_size: Option<u64>,
    /// The store's maximum size.
    #[arg(long, value_parser = size_arg, value_name = "SIZE")]
    max_store_size: Option<u64>,
    /// Keep the snapshot in memory only: faster, gone after a restart.
    #[arg(long)]
    transient: bool,
    /// When a pre-image cannot be preserved: invalidate the snapshot (default) or fail the
    /// volume write.
    #[arg(long, value_name = "POLICY", value_parser = ["invalidate", "fail-write"])]
    on_store_error: Option<String>,
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Take a snapshot of a volume, or of the file system mounted at a directory (frozen for
    /// an instant so the snapshot is consistent).
    Create {
        /// Volume name, or mount point of a file system on an fss volume.
        volume: String,
        /// Snapshot name.
        name: String,
        #[command(flatten)]
        opts: SnapOpts,
        /// Print the new snapshot as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Take several snapshots at one instant: VOLUME:NAME (volume name or mount point).
    CreateGroup {
        /// VOLUME:NAME pairs.
        #[arg(required = true, value_name = "VOLUME:NAME")]
        members: Vec<String>,
        #[command(flatten)]
        opts: SnapOpts,
        /// Print the new snapshots as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot (any order; the others stay exact).
    Delete {
        /// Snapshot name.
        name: String,
    },
    /// List snapshots.
    List {
        /// Print one JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Describe a snapshot.
    Info {
        /// Snapshot name.
        name: String,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Change a live snapshot's store maximum: raise it before the store fills, or `none`.
    Set {
        /// Snapshot name.
        name: String,
        /// The new maximum (K, M, G, T suffixes), or `none` for no limit but the medium's.
        #[arg(long, value_name = "SIZE|none", value_parser = max_arg)]
        max_store_size: Max,
    },
    /// Reread a snapshot's store and check every preserved block's checksum.
    Verify {
        /// Snapshot name.
        name: String,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

/// A store maximum from the command line: a size, or `none`.
#[derive(Clone)]
struct Max(Option<u64>);

fn max_arg(s: &str) -> Result<Max, String> {
    if s.eq_ignore_ascii_case("none") {
        Ok(Max(None))
    } else {
        size_arg(s).map(|n| Max(Some(n)))
    }
}

fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn spec(volume: String, name: String, o: &SnapOpts) -> SnapshotSpec {
    SnapshotSpec {
        volume,
        name,
        store: o.store.clone(),
        cluster_size: o.cluster_size,
        max_store_size: o.max_store_size,
        transient: o.transient,
        on_store_error: o.on_store_error.clone(),
        unlink_store: false,
        mount_point: None,
        lease: None,
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let state = state_dir(cli.state_dir.clone());
    if !matches!(cli.command, Command::Serve(_)) {
        fss_cli::serve::debug_logging();
    }
    match cli.command {
        Command::Serve(a) => {
            let code = fss_cli::serve::serve(&state, a)?;
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
        Command::Restart {
            json,
            timeout,
            drop_transient,
        } => fss_cli::restart::restart(
            &state,
            fss_cli::restart::RestartArgs {
                json,
                timeout: Some(timeout),
                drop_transient,
            },
        ),
        Command::Status { json } => {
            let v = call(&mut connect(&state)?, Request::Status)?;
            if json {
                return print_json(&v);
            }
            let s: StatusInfo = decode(v)?;
            println!(
                "fss {} (pid {}), state directory {}",
                s.version,
                s.pid,
                s.state_dir.display()
            );
            println!("volumes: {}, snapshots: {}", s.volumes, s.snapshots);
            match s.fuse_dir {
                Some(d) => println!("FUSE directory: {}", d.display()),
                None => println!("FUSE directory: none (NBD only)"),
            }
            if let Some(d) = s.nbd_socket {
                println!("NBD socket: {}", d.display());
            }
            if let Some(d) = s.nbd_listen {
                match &s.frontends.nbd_tls {
                    Some(t) => println!("NBD TCP: {d} (TLS {t})"),
                    None => println!("NBD TCP: {d} (plaintext)"),
                }
            }
            if let Some(d) = s.frontends.metrics {
                println!("metrics: http://{d}/metrics");
            }
            if let Some(sup) = s.supervisor_pid {
                print!("supervisor: pid {sup}, {} restart(s)", s.restarts);
                match &s.last_restart {
                    Some(l) => println!(", the last {}", output::restart_cause(l)),
                    None => println!(),
                }
            }
            if s.recovered_from_crash {
                println!("note: the previous run did not stop cleanly; persistent snapshots were recovered");
            }
            Ok(())
        }
        Command::Mount { name, dir } => fss_cli::mount_helper::mount(&state, &name, &dir),
        Command::Umount { dir } => fss_cli::mount_helper::umount(&dir),
        Command::Completions { shell } => fss_cli::manual::completions(&shell, &mut Cli::command()),
        Command::Man { dir } => fss_cli::manual::write_pages(&dir, Cli::command()),
        Command::Stats { json } => fss_cli::stats::stats(&state, json),
        Command::Checksum { name } => {
            let v = call(&mut connect(&state)?, Request::Checksum { name })?;
            println!("{}", v.as_str().unwrap_or_default());
            Ok(())
        }
        Command::Diff { older, newer, json } => {
            fss_cli::backup::diff(&state, &older, newer.as_deref(), json)
        }
        Command::Backup {
            snapshot,
            file,
            since,
            repo,
        } => fss_cli::repo_args::backup(&state, &snapshot, &file, since.as_deref(), &repo),
        Command::Restore {
            paths,
            abandon,
            backup,
            repo,
        } => fss_cli::repo_args::restore(&state, &paths, abandon, backup.as_deref(), &repo),
        Command::Repo(cmd) => fss_cli::repo_args::run(cmd),
        Command::Rollback {
            volume,
            snapshot,
            force,
        } => fss_cli::backup::rollback(&state, &volume, &snapshot, force),
        Command::Schedule(cmd) => fss_cli::schedule::run(&state, cmd),
        Command::Volume(cmd) => {
            let mut c = connect(&state)?;
            match cmd {
                VolumeCmd::Create { name, size, image } => {
                    let v: VolumeInfo =
                        decode(call(&mut c, Request::VolumeCreate { name, size, image })?)?;
                    println!(
                        "created volume '{}' ({}) at {}",
                        v.name,
                        fssd::names::human_size(v.size),
                        v.path.display()
                    );
                }
                VolumeCmd::Add { name, device } => {
                    let v: VolumeInfo = decode(call(&mut c, Request::VolumeAdd { name, device })?)?;
                    println!(
                        "added volume '{}' ({}) from {}",
                        v.name,
                        fssd::names::human_size(v.size),
                        v.path.display()
                    );
                }
                VolumeCmd::List { json } => {
                    let v = call(&mut c, Request::VolumeList)?;
                    if json {
                        return print_json(&v);
                    }
                    print!("{}", output::volumes(&decode::<Vec<VolumeInfo>>(v)?));
                }
                VolumeCmd::Remove { name } => {
                    call(&mut c, Request::VolumeRemove { name: name.clone() })?;
                    println!("removed volume '{name}' (its image is kept)");
                }
            }
            Ok(())
        }
        Command::Snapshot(cmd) => match cmd {
            SnapshotCmd::Create {
                volume,
                name,
                opts,
                json,
            } => fss_cli::consistent::create(&state, vec![spec(volume, name, &opts)], json, false),
            SnapshotCmd::CreateGroup {
                members,
                opts,
                json,
            } => {
                let mut specs = Vec::new();
                for m in members {
                    let Some((vol, name)) = m.rsplit_once(':') else {
                        anyhow::bail!("'{m}' is not VOLUME:NAME (for example vol0:backup1)");
                    };
                    specs.push(spec(vol.to_string(), name.to_string(), &opts));
                }
                fss_cli::consistent::create(&state, specs, json, true)
            }
            SnapshotCmd::Set {
                name,
                max_store_size: Max(max),
            } => {
                let req = Request::SnapshotSet {
                    name: name.clone(),
                    max_store_size: max,
                };
                let s: SnapshotInfo = decode(call(&mut connect(&state)?, req)?)?;
                let shown = s
                    .store_max
                    .map_or("no limit".into(), fssd::names::human_size);
                println!("snapshot '{name}': store maximum {shown}");
                Ok(())
            }
            SnapshotCmd::Delete { name } => {
                call(
                    &mut connect(&state)?,
                    Request::SnapshotDelete { name: name.clone() },
                )?;
                println!("deleted snapshot '{name}'");
                Ok(())
            }
            SnapshotCmd::List { json } => {
                let v = call(&mut connect(&state)?, Request::SnapshotList)?;
                if json {
                    return print_json(&v);
                }
                print!("{}", output::snapshots(&decode::<Vec<SnapshotInfo>>(v)?));
                Ok(())
            }
            SnapshotCmd::Info { name, json } => {
                let v = call(&mut connect(&state)?, Request::SnapshotInfo { name })?;
                if json {
                    return print_json(&v);
                }
                print!("{}", output::snapshot_detail(&decode(v)?));
                Ok(())
            }
            SnapshotCmd::Verify { name, json } => {
                let v = call(&mut connect(&state)?, Request::SnapshotVerify { name })?;
                if json {
                    return print_json(&v);
                }
                let r: VerifyInfo = decode(v)?;
                if !r.checksummed {
                    println!("snapshot '{}' is transient: its store keeps no checksums, nothing to verify", r.name);
                } else if r.damaged.is_empty() {
                    println!(
                        "snapshot '{}': {} preserved blocks checked, all intact",
                        r.name, r.blocks_checked
                    );
                } else {
                    for off in &r.damaged {
                        println!("damaged: block at volume offset {off}");
                    }
                    anyhow::bail!(
                        "snapshot '{}': {} of {} preserved blocks are damaged",
                        r.name,
                        r.damaged.len(),
                        r.blocks_checked
                    );
                }
                Ok(())
            }
        },
    }
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("fss: {e:#}");
        std::process::exit(EXIT_FAILED);
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::{CommandFactory, Parser};

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn restore_takes_backups_then_a_target_or_abandon_and_a_volume() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|c| c.command);
        let r = parse(&["fss", "restore", "--abandon", "v"]);
        assert!(
            matches!(r, Ok(super::Command::Restore { ref paths, abandon: true, .. })
                if paths == &["v"]),
            "abandon"
        );
        let r = parse(&["fss", "restore", "/b/full", "/b/incr", "v"]);
        assert!(
            matches!(r, Ok(super::Command::Restore { ref paths, abandon: false, .. })
                if paths.len() == 3 && paths[2] == "v"),
            "restore"
        );
        let r = parse(&["fss", "restore", "s3://b/p", "--backup", "X", "/t.img"]);
        assert!(
            matches!(r, Ok(super::Command::Restore { ref paths, ref backup, .. })
                if paths.len() == 2 && backup.as_deref() == Some("X")),
            "repository restore"
        );
    }
}
