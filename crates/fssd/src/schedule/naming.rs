//! Names of scheduled snapshots: `<volume>-YYYYmmddTHHMMZ`, or `...THHMMSSZ` when the interval
//! is under a minute, within the 64-character limit of names.

use super::calendar::Utc;

/// The longest volume prefix of a name with minutes (`-YYYYmmddTHHMMZ` is 15 characters).
pub const PREFIX_MINUTES: usize = 48;
/// The longest volume prefix of a name with seconds: one less, since 48 + 17 would pass 64.
pub const PREFIX_SECONDS: usize = 47;

/// The name of the snapshot of `volume` a schedule running every `every` seconds takes at
/// `secs` (seconds since the epoch, UTC).
#[must_use]
pub fn snapshot_name(volume: &str, every: u64, secs: u64) -> String {
    let t = Utc::of(secs);
    let with_seconds = every < 60;
    let cut = if with_seconds {
        PREFIX_SECONDS
    } else {
        PREFIX_MINUTES
    };
    // Names are ASCII (see `names::check_name`); `get` keeps this safe for any input.
    let prefix = volume.get(..cut.min(volume.len())).unwrap_or(volume);
    let stamp = format!(
        "{:04}{:02}{:02}T{:02}{:02}",
        t.year, t.month, t.day, t.hour, t.minute
    );
    if with_seconds {
        format!("{prefix}-{stamp}{:02}Z", t.second)
    } else {
        format!("{prefix}-{stamp}Z")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_seconds_and_cut() {
        // 2026-12-04T20:31:24Z
        let t = 1_796_416_284;
        assert_eq!(snapshot_name("db", 3600, t), "db-20261204T2031Z");
        assert_eq!(snapshot_name("db", 5, t), "db-20261204T203124Z");
        let long = "v".repeat(70);
        let n = snapshot_name(&long, 60, t);
        assert_eq!(n.len(), 48 + 15);
        assert!(n.starts_with(&"v".repeat(48)));
        let n = snapshot_name(&long, 1, t);
        assert_eq!(n.len(), 64);
        crate::names::check_name(&n).unwrap();
    }
}
