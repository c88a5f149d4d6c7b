//! `fss serve --metrics-listen ADDR:PORT`: the figures of [`crate::stats`] in the Prometheus
//! text exposition format (version 0.0.4), served at `GET /metrics` by [`http`].
//!
//! The figures are read from the registry at each scrape rather than kept in metric objects:
//! every one of them already exists as an engine counter or a registry fact, so a collector
//! library would only copy them. Counters count from the start of the serving process; a
//! restart resets them, which Prometheus treats as a counter reset.

pub mod http;

use crate::stats::Stats;
use std::fmt::Write;

/// One metric family: its name, help, type, and samples (label values, value).
struct Family<'a> {
    name: &'a str,
    help: &'a str,
    kind: &'a str,
    labels: &'a [&'a str],
    samples: Vec<(Vec<&'a str>, u64)>,
}

impl Family<'_> {
    fn write(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (values, v) in &self.samples {
            out.push_str(self.name);
            if !self.labels.is_empty() {
                out.push('{');
                for (i, (l, value)) in self.labels.iter().zip(values).enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{l}=\"{}\"", escape(value));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {v}");
        }
    }
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

const SNAPSHOT: &[&str] = &["volume", "snapshot"];
const VOLUME: &[&str] = &["volume"];

/// Encode `stats` in the Prometheus text format, every family with its HELP and TYPE.
#[must_use]
pub fn encode(stats: &Stats) -> String {
    let snap = |f: fn(&crate::stats::SnapshotStat) -> Option<u64>| {
        stats
            .snapshots
            .iter()
            .filter_map(|s| f(s).map(|v| (vec![s.volume.as_str(), s.name.as_str()], v)))
            .collect()
    };
    let vol = |f: fn(&crate::stats::VolumeStat) -> u64| {
        stats
            .volumes
            .iter()
            .map(|v| (vec![v.name.as_str()], f(v)))
            .collect()
    };
    let sched = |f: fn(&crate::stats::ScheduleStat) -> Option<u64>| {
        stats
            .schedules
            .iter()
            .filter_map(|s| f(s).map(|v| (vec![s.volume.as_str()], v)))
            .collect()
    };
    let families = [
        Family {
            name: "fss_snapshot_store_used_bytes",
            help: "Bytes the snapshot's store uses.",
            kind: "gauge",
            labels: SNAPSHOT,
            samples: snap(|s| Some(s.store_used_bytes)),
        },
        Family {
            name: "fss_snapshot_store_max_bytes",
            help: "The snapshot store's maximum size (absent: no limit but the medium's).",
            kind: "gauge",
            labels: SNAPSHOT,
            samples: snap(|s| s.store_max_bytes),
        },
        Family {
            name: "fss_snapshot_valid",
            help: "1 if the snapshot is valid, 0 if invalid, unverified or unavailable.",
            kind: "gauge",
            labels: SNAPSHOT,
            samples: snap(|s| Some(u64::from(s.valid))),
        },
        Family {
            name: "fss_snapshot_created_timestamp_seconds",
            help: "When the snapshot was taken, seconds since the epoch.",
            kind: "gauge",
            labels: SNAPSHOT,
            samples: snap(|s| Some(s.created)),
        },
        Family {
            name: "fss_volume_read_bytes_total",
            help: "Bytes read from the volume since the serving process started.",
            kind: "counter",
            labels: VOLUME,
            samples: vol(|v| v.read_bytes),
        },
        Family {
            name: "fss_volume_written_bytes_total",
            help: "Bytes written, discarded or zeroed on the volume since the serving process started.",
            kind: "counter",
            labels: VOLUME,
            samples: vol(|v| v.written_bytes),
        },
        Family {
            name: "fss_preserved_blocks_total",
            help: "Pre-image blocks (4 KiB) written to the volume's snapshot stores since the serving process started.",
            kind: "counter",
            labels: VOLUME,
            samples: vol(|v| v.preserved_blocks),
        },
        Family {
            name: "fss_held_writes_bytes",
            help: "Bytes of acknowledged writes not applied to the volume yet.",
            kind: "gauge",
            labels: VOLUME,
            samples: vol(|v| v.held_write_bytes),
        },
        Family {
            name: "fss_schedule_last_success_timestamp_seconds",
            help: "When the volume's snapshot schedule last succeeded, seconds since the epoch (absent: never).",
            kind: "gauge",
            labels: VOLUME,
            samples: sched(|s| s.last_success),
        },
        Family {
            name: "fss_schedule_last_run_ok",
            help: "1 if the last run of the volume's snapshot schedule succeeded, 0 if it failed (absent: no run yet).",
            kind: "gauge",
            labels: VOLUME,
            samples: sched(|s| s.last_run_ok.map(u64::from)),
        },
        Family {
            name: "fss_nbd_connections",
            help: "NBD connections with an export open.",
            kind: "gauge",
            labels: &[],
            samples: vec![(Vec::new(), stats.nbd_connections)],
        },
        Family {
            name: "fss_fuse_open_files",
            help: "Files open in the FUSE directory.",
            kind: "gauge",
            labels: &[],
            samples: vec![(Vec::new(), stats.fuse_open_files)],
        },
        Family {
            name: "fss_daemon_restarts_total",
            help: "Serving processes the supervisor replaced since it started (crashes and fss restart).",
            kind: "counter",
            labels: &[],
            samples: vec![(Vec::new(), stats.restarts)],
        },
    ];
    let mut out = String::new();
    for f in &families {
        f.write(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{ScheduleStat, SnapshotStat, VolumeStat};

    #[test]
    fn samples_carry_their_labels_and_values_escaped() {
        let stats = Stats {
            restarts: 2,
            nbd_connections: 1,
            fuse_open_files: 0,
            volumes: vec![VolumeStat {
                name: "v0".into(),
                read_bytes: 10,
                written_bytes: 20,
                preserved_blocks: 3,
                held_write_bytes: 0,
            }],
            snapshots: vec![SnapshotStat {
                name: "a\"b".into(),
                volume: "v0".into(),
                store_used_bytes: 4096,
                store_max_bytes: None,
                valid: true,
                created: 1_700_000_000,
            }],
            schedules: vec![
                ScheduleStat {
                    volume: "v0".into(),
                    last_success: Some(1_700_000_100),
                    last_run_ok: Some(false),
                },
                ScheduleStat {
                    volume: "v1".into(),
                    last_success: None,
                    last_run_ok: None,
                },
            ],
        };
        let text = encode(&stats);
        assert!(text
            .contains("fss_snapshot_store_used_bytes{volume=\"v0\",snapshot=\"a\\\"b\"} 4096\n"));
        assert!(!text.contains("fss_snapshot_store_max_bytes{"));
        assert!(text.contains("fss_volume_written_bytes_total{volume=\"v0\"} 20\n"));
        assert!(text.contains("fss_daemon_restarts_total 2\n"));
        assert!(text.contains("# TYPE fss_preserved_blocks_total counter\n"));
        assert!(text
            .contains("fss_schedule_last_success_timestamp_seconds{volume=\"v0\"} 1700000100\n"));
        assert!(text.contains("fss_schedule_last_run_ok{volume=\"v0\"} 0\n"));
        assert!(
            !text.contains("{volume=\"v1\"}"),
            "a schedule that never ran has no samples"
        );
        assert_eq!(text.matches("# HELP ").count(), 13);
    }
}
