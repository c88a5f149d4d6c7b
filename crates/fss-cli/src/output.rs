//! Human tables (aligned, with units) and JSON for listings.

use fssd::names::human_size;
use fssd::protocol::{SnapshotInfo, VolumeInfo};
use fssd::schedule::Utc;

/// Render rows as an aligned table under `header`.
#[must_use]
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < width.len() {
                width[i] = width[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// A time as ctime(3) prints it, in local time as the C library knows it (UTC here if TZ is
/// unset): "Wed Nov 25 10:06:50 2026".
#[must_use]
pub fn ctime(secs: u64) -> String {
    let t = Utc::of(secs);
    const WD: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MO: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{} {} {:>2} {:02}:{:02}:{:02} {}",
        WD[t.weekday as usize % 7],
        MO[(t.month as usize).saturating_sub(1) % 12],
        t.day,
        t.hour,
        t.minute,
        t.second,
        t.year
    )
}

/// A time as ISO 8601 in UTC: "2026-11-25T10:06:50Z".
#[must_use]
pub fn iso_utc(secs: u64) -> String {
    let t = Utc::of(secs);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// The volume table.
#[must_use]
pub fn volumes(list: &[VolumeInfo]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                human_size(v.size),
                v.snapshots.to_string(),
                v.cluster_size.map_or_else(|| "-".to_string(), human_size),
                v.open.to_string(),
                v.state.to_string(),
                v.path.display().to_string(),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "SIZE",
            "SNAPSHOTS",
            "CLUSTER",
            "OPEN",
            "STATE",
            "PATH",
        ],
        &rows,
    )
}

/// The snapshot table.
#[must_use]
pub fn snapshots(list: &[SnapshotInfo]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.volume.clone(),
                s.kind.to_string(),
                s.state.to_string(),
                ctime(s.created),
                human_size(s.store_used),
                s.blocks_preserved.to_string(),
                s.store.display().to_string(),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "VOLUME",
            "TYPE",
            "STATE",
            "CREATED",
            "STORE USED",
            "BLOCKS",
            "STORE",
        ],
        &rows,
    )
}

/// One snapshot in detail.
#[must_use]
pub fn snapshot_detail(s: &SnapshotInfo) -> String {
    let mut rows = vec![
        ("name", s.name.clone()),
        ("volume", s.volume.clone()),
        ("type", s.kind.to_string()),
        ("state", s.state.to_string()),
    ];
    if let Some(r) = &s.reason {
        rows.push(("reason", r.clone()));
    }
    rows.extend([
        ("created", ctime(s.created)),
        ("size", format!("{} ({} bytes)", human_size(s.size), s.size)),
        ("cluster size", human_size(s.cluster_size)),
        ("store", s.store.display().to_string()),
        (
            "store used",
            format!("{} ({} bytes)", human_size(s.store_used), s.store_used),
        ),
        (
            "store maximum",
            s.store_max.map_or_else(|| "none".to_string(), human_size),
        ),
        ("on store error", s.on_store_error.to_string()),
        (
            "blocks preserved",
            format!(
                "{} ({})",
                s.blocks_preserved,
                human_size(s.blocks_preserved * 4096)
            ),
        ),
        ("clusters preserved", s.clusters_preserved.to_string()),
        ("copy-on-write calls", s.cow_calls.to_string()),
        ("busy waits", s.busy_waits.to_string()),
    ]);
    if let Some(m) = &s.mount_point {
        rows.push(("mount point", m.clone()));
    }
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<w$}  {v}\n"))
        .collect()
}

/// How the last serving process ended, for `fss status`: `at <ctime>: killed by signal 9`.
#[must_use]
pub fn restart_cause(l: &fssd::protocol::LastRestart) -> String {
    use fssd::protocol::RestartReason;
    let how = match (l.reason, l.signal, l.exit_code) {
        (RestartReason::Signal, Some(sig), _) => format!("killed by signal {sig}"),
        (RestartReason::Upgrade, ..) => "fss restart".to_string(),
        (_, _, Some(code)) => format!("exit status {code}"),
        _ => l.reason.to_string(),
    };
    let failed = l
        .upgrade_error
        .as_ref()
        .map(|e| format!(" ({e})"))
        .unwrap_or_default();
    format!("at {}: {how}{failed}", ctime(l.time))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctime_matches_libc_format() {
        assert_eq!(ctime(0), "Thu Jan  1 00:00:00 1970");
        assert_eq!(ctime(1795601210), "Wed Nov 25 10:06:50 2026");
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["A", "BB"],
            &[
                vec!["xxx".into(), "1".into()],
                vec!["y".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A    BB\nxxx  1\ny    22\n");
    }
}
