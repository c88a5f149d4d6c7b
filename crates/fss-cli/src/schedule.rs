//! `fss schedule add|list|remove`: snapshots on a schedule, kept and run by the daemon.

use crate::{call, connect, decode, output, path_arg, size_arg};
use clap::{Args, Subcommand};
use fssd::names::human_size;
use fssd::protocol::{Request, Retention, ScheduleInfo, ScheduleSpec};
use fssd::schedule::{format_every, parse_every};
use std::path::{Path, PathBuf};

/// The schedule commands.
#[derive(Subcommand)]
pub enum ScheduleCmd {
    /// Take a snapshot of TARGET every DURATION, named `<volume>-YYYYmmddTHHMMZ` (with
    /// seconds when DURATION is under a minute), and prune the schedule's own snapshots.
    ///
    /// TARGET is a volume or the mount point of a file system on one: then each snapshot is
    /// consistent (frozen and thawed as `snapshot create` does). The first snapshot is taken
    /// at once; a run missed while the daemon was down is taken once when it starts. One
    /// schedule per volume: a second is refused (remove the first). With no --keep option,
    /// nothing is pruned but for --min-free.
    Add(AddArgs),
    /// Every schedule: target, interval, retention, last run and its result, next run.
    List {
        /// Print one JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Stop the schedule of TARGET (a volume or a mount point on one); its snapshots stay.
    Remove {
        /// A volume or the mount point of a file system on one.
        target: String,
        /// Print the schedule removed (with its snapshots) as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `fss schedule add`.
#[derive(Args)]
pub struct AddArgs {
    /// A volume or the mount point of a file system on one.
    target: String,
    /// Interval: a number with s, m, h or d (30s, 15m, 1h, 1d).
    #[arg(long, value_name = "DURATION", value_parser = parse_every)]
    every: u64,
    /// Keep the N newest.
    #[arg(long, value_name = "N")]
    keep: Option<u32>,
    /// Also keep the newest of each of the last N hours (UTC).
    #[arg(long, value_name = "N")]
    keep_hourly: Option<u32>,
    /// Also keep the newest of each of the last N days (UTC).
    #[arg(long, value_name = "N")]
    keep_daily: Option<u32>,
    /// Also keep the newest of each of the last N ISO weeks (UTC).
    #[arg(long, value_name = "N")]
    keep_weekly: Option<u32>,
    /// Also keep the newest of each of the last N months (UTC).
    #[arg(long, value_name = "N")]
    keep_monthly: Option<u32>,
    /// Take transient snapshots (gone after a restart).
    #[arg(long)]
    transient: bool,
    /// Directory for the stores (default <state-dir>/stores/).
    #[arg(long, value_name = "DIR", value_parser = path_arg)]
    store: Option<PathBuf>,
    /// Keep this much free on the stores' file system by deleting the schedule's oldest
    /// snapshots (never its newest), checked at each store write.
    #[arg(long, value_name = "SIZE", value_parser = size_arg)]
    min_free: Option<u64>,
    /// Print the schedule as JSON.
    #[arg(long)]
    json: bool,
}

/// Run a schedule command against the daemon of `state`.
///
/// # Errors
/// The daemon refused or could not be reached.
pub fn run(state: &Path, cmd: ScheduleCmd) -> anyhow::Result<()> {
    let mut client = connect(state)?;
    let (json, v, shown) = match cmd {
        ScheduleCmd::Add(a) => (a.json, add(&mut client, a)?, Shown::Added),
        ScheduleCmd::List { json } => (
            json,
            call(&mut client, Request::ScheduleList)?,
            Shown::Listed,
        ),
        ScheduleCmd::Remove { target: t, json } => {
            let (volume, _) = target(&mut client, &t)?;
            let v = call(&mut client, Request::ScheduleRemove { volume })?;
            (json, v, Shown::Removed)
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    match shown {
        Shown::Added => {
            let s: ScheduleInfo = decode(v)?;
            println!(
                "scheduled a snapshot of {} every {}, keeping {}",
                target_of(&s),
                format_every(s.every_seconds),
                retention(&s.retention)
            );
        }
        Shown::Listed => print!("{}", table(&decode::<Vec<ScheduleInfo>>(v)?)),
        Shown::Removed => {
            let s: ScheduleInfo = decode(v)?;
            println!(
                "removed the schedule of {}; its {} snapshots are kept",
                target_of(&s),
                s.snapshots.len()
            );
        }
    }
    Ok(())
}

/// What a command's answer is, for people.
enum Shown {
    Added,
    Listed,
    Removed,
}

/// `schedule add`: resolve the target and ask the daemon.
fn add(client: &mut fssd::client::Client, a: AddArgs) -> anyhow::Result<serde_json::Value> {
    let (volume, mount_point) = target(client, &a.target)?;
    if let (Some(store), Some(mp)) = (&a.store, &mount_point) {
        crate::mounts::check_store_not_on(store, Path::new(mp))?;
    }
    let spec = ScheduleSpec {
        volume,
        mount_point,
        every_seconds: a.every,
        retention: Retention {
            last: a.keep,
            hourly: a.keep_hourly,
            daily: a.keep_daily,
            weekly: a.keep_weekly,
            monthly: a.keep_monthly,
        },
        transient: a.transient,
        store: a.store,
        min_free: a.min_free,
    };
    call(client, Request::ScheduleAdd(spec))
}

/// A volume name, or a mount point (which has a `/`) and the volume under it.
fn target(client: &mut fssd::client::Client, t: &str) -> anyhow::Result<(String, Option<String>)> {
    if !t.contains('/') {
        return Ok((t.to_string(), None));
    }
    let (volume, mp) = crate::mounts::volume_of_target(client, t)?;
    Ok((volume, Some(mp.display().to_string())))
}

fn target_of(s: &ScheduleInfo) -> String {
    match &s.mount_point {
        Some(mp) => format!("{mp} (volume '{}')", s.volume),
        None => format!("volume '{}'", s.volume),
    }
}

/// `last 5, hourly 24` or `everything`.
fn retention(r: &Retention) -> String {
    let parts: Vec<String> = [
        ("last", r.last),
        ("hourly", r.hourly),
        ("daily", r.daily),
        ("weekly", r.weekly),
        ("monthly", r.monthly),
    ]
    .iter()
    .filter_map(|(k, n)| n.map(|n| format!("{k} {n}")))
    .collect();
    if parts.is_empty() {
        "everything".into()
    } else {
        parts.join(", ")
    }
}

fn table(list: &[ScheduleInfo]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            let target = s.mount_point.clone().unwrap_or_else(|| s.volume.clone());
            let result = match (s.last_run_ok, &s.last_error) {
                (None, _) => "-".to_string(),
                (Some(true), _) => "ok".to_string(),
                (Some(false), e) => format!("failed: {}", e.as_deref().unwrap_or("")),
            };
            let keep = match s.min_free {
                Some(m) => format!("{}; min-free {}", retention(&s.retention), human_size(m)),
                None => retention(&s.retention),
            };
            vec![
                target,
                format_every(s.every_seconds),
                keep,
                s.snapshots.len().to_string(),
                s.last_run.map_or("-".into(), output::iso_utc),
                output::iso_utc(s.next_run),
                result,
            ]
        })
        .collect();
    output::table(
        &[
            "TARGET",
            "EVERY",
            "KEEP",
            "SNAPSHOTS",
            "LAST RUN",
            "NEXT RUN",
            "LAST RESULT",
        ],
        &rows,
    )
}
