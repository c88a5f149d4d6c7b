//! What identifies a volume's storage between runs, and the check at start that nobody
//! changed it while fss was not running; if someone did, its snapshots are "unverified"
//! (DESIGN decision 3; docs/CLI.md, "Unverified snapshots").
//!
//! An image file's fingerprint holds its device and inode numbers, its status change time
//! (ctime: recorded when the volume is added, at each start and at each clean stop) and, from
//! a clean stop, its modification time. A write to the file, and a change of its mode, owner
//! or links, set its ctime to the time of the change, and nothing but a change of the system
//! clock sets it back. How the start judges the ctime depends on how the previous run ended:
//!
//! - a clean stop: fss wrote nothing since it took the fingerprint, so the ctime (and the
//!   mtime) must be exactly as recorded;
//! - the daemon died (kill -9, a crash) and the machine kept running: its last writes are not
//!   on record, but they came before its death, which its heartbeat ([`crate::heartbeat`])
//!   bounds: the ctime may be up to the last beat plus [`PERIOD`] plus [`MARGIN`] (1 s).
//!   Missed: a change whose ctime falls within that bound, that is, made less than 1 s after
//!   the death (the window ends between 0.5 and 1 s after it when beats are on time);
//! - the machine restarted since (power cut, reboot): a beat may have been lost with the page
//!   cache, and every write of the previous run came before this boot: the ctime may be up to
//!   the earlier of the boot time (whole seconds, plus one) and the last beat found plus
//!   [`DURABLE_EVERY`] plus [`PERIOD`], plus [`MARGIN`]. Missed: a change within that bound
//!   (up to about 11 s after the death, or before this boot, whichever is earlier);
//! - a block device: its ctime does not follow writes; only its size and device number are
//!   compared, as before;
//! - a state recorded by an fss that kept no ctime: as before (the mtime after a clean stop,
//!   nothing after a crash), until this run records one.

use crate::heartbeat::{nanos, DURABLE_EVERY, MARGIN, PERIOD};
use crate::state::{Fingerprint, VolumeState};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Nanoseconds since the epoch of a file time.
fn ns(secs: i64, nsec: i64) -> i128 {
    i128::from(secs) * 1_000_000_000 + i128::from(nsec)
}

/// The fingerprint of `path` now; the modification time only `with_mtime`.
pub(super) fn fingerprint(path: &Path, with_mtime: bool) -> Fingerprint {
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_block_device() => Fingerprint {
            size: 0,
            dev: m.rdev(),
            ino: 0,
            mtime_ns: None,
            ctime_ns: None,
        },
        Ok(m) => Fingerprint {
            size: m.len(),
            dev: m.dev(),
            ino: m.ino(),
            mtime_ns: with_mtime.then(|| ns(m.mtime(), m.mtime_nsec())),
            ctime_ns: Some(ns(m.ctime(), m.ctime_nsec())),
        },
        Err(_) => Fingerprint::default(),
    }
}

/// The fingerprint at a clean stop, once the volume is flushed: the image's inode (its times)
/// is made durable first, so a power cut right after the stop cannot bring older times back.
pub(super) fn settled_fingerprint(path: &Path) -> Fingerprint {
    if let Ok(f) = std::fs::File::open(path) {
        if f.metadata().is_ok_and(|m| m.is_file()) {
            if let Err(e) = f.sync_all() {
                tracing::warn!(image = %path.display(), error = %e, "cannot sync the image at stop");
            }
        }
    }
    fingerprint(path, true)
}

/// How the previous run ended, as far as its volumes' images are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PreviousStop {
    /// `fss serve` stopped cleanly (or there was no previous run).
    Clean,
    /// The daemon died and the machine kept running: its last heartbeat, if one was found.
    Died {
        /// Its last beat (ns since the epoch).
        last_beat: Option<i128>,
    },
    /// The machine restarted since: when this boot began and the last heartbeat found.
    Rebooted {
        /// The boot time (`btime`, whole seconds, in ns).
        boot: Option<i128>,
        /// The last beat found (ns since the epoch).
        last_beat: Option<i128>,
    },
}

impl PreviousStop {
    /// How the run that left a state with `clean_shutdown` ended, on this boot or not, read
    /// before this run beats (`heartbeat`: the heartbeat file).
    pub(super) fn of(clean: bool, rebooted: bool, heartbeat: &Path) -> Self {
        let last_beat = crate::heartbeat::last_beat(heartbeat);
        match (clean, rebooted) {
            (true, _) => PreviousStop::Clean,
            (false, false) => PreviousStop::Died { last_beat },
            (false, true) => PreviousStop::Rebooted {
                boot: boot_time_ns(),
                last_beat,
            },
        }
    }

    /// The latest ctime the previous run's own writes can have left on an image after an
    /// unclean stop, if that can be told (`None`: not checked).
    fn latest_own_ctime(self) -> Option<i128> {
        let after_beat = nanos(PERIOD);
        let latest = match self {
            PreviousStop::Clean => return None,
            PreviousStop::Died { last_beat } => last_beat? + after_beat,
            PreviousStop::Rebooted { boot, last_beat } => {
                let by_beat = last_beat.map(|b| b + nanos(DURABLE_EVERY) + after_beat);
                let by_boot = boot.map(|b| b + 1_000_000_000);
                match (by_beat, by_boot) {
                    (Some(a), Some(b)) => a.min(b),
                    (a, b) => a.or(b)?,
                }
            }
        };
        Some(latest + nanos(MARGIN))
    }
}

/// When this boot began (`btime` of `/proc/stat`, whole seconds), in ns since the epoch.
fn boot_time_ns() -> Option<i128> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let secs: i64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(ns(secs, 0))
}

/// Why volume `v` changed while fss was not running, if it did (`len`: its length now, `now`:
/// its fingerprint now, with the mtime): its snapshots are then unverified.
pub(super) fn changed_while_stopped(
    v: &VolumeState,
    len: u64,
    now: &Fingerprint,
    stop: PreviousStop,
) -> Option<String> {
    let old = &v.fingerprint;
    if len != v.size {
        Some(format!("its size changed from {} to {len} bytes", v.size))
    } else if old.ino != 0 && (old.ino != now.ino || old.dev != now.dev) {
        Some("its image file was replaced".to_string())
    } else if stop == PreviousStop::Clean && old.mtime_ns.is_some() && old.mtime_ns != now.mtime_ns
    {
        Some("its image was modified while fss was not running".to_string())
    } else {
        ctime_moved(old.ctime_ns?, now.ctime_ns?, stop)
    }
}

/// Why an image whose ctime was `was` (at the last record) and is `is` now was changed by
/// someone else, if it was.
fn ctime_moved(was: i128, is: i128, stop: PreviousStop) -> Option<String> {
    const WHAT: &str = "it was written, or its mode, owner or links were changed";
    if stop == PreviousStop::Clean {
        return (is != was).then(|| {
            format!(
                "its image's status change time (ctime) moved after fss stopped cleanly \
                 (the modification time may have been put back): {WHAT}"
            )
        });
    }
    let latest = stop.latest_own_ctime()?;
    (is > latest).then(|| {
        let late = (is - latest) / 1_000_000;
        format!(
            "its image's status change time (ctime) is {}.{:03} s later than the last write \
             fss can have made before it stopped: {WHAT}",
            late / 1000,
            late % 1000
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::VolumeKind;

    const S: i128 = 1_000_000_000;

    fn volume(ctime: Option<i128>, mtime: Option<i128>) -> VolumeState {
        VolumeState {
            name: "v".into(),
            id: "00".into(),
            path: "/x".into(),
            kind: VolumeKind::Image,
            size: 10,
            fingerprint: Fingerprint {
                size: 10,
                dev: 1,
                ino: 2,
                mtime_ns: mtime,
                ctime_ns: ctime,
            },
            unverified: None,
        }
    }

    fn now(ctime: Option<i128>, mtime: Option<i128>) -> Fingerprint {
        volume(ctime, mtime).fingerprint
    }

    fn changed(old: &VolumeState, is: &Fingerprint, stop: PreviousStop) -> bool {
        changed_while_stopped(old, 10, is, stop).is_some()
    }

    #[test]
    fn after_a_clean_stop_the_times_must_be_exact() {
        let old = volume(Some(100 * S), Some(90 * S));
        let clean = PreviousStop::Clean;
        assert!(!changed(&old, &now(Some(100 * S), Some(90 * S)), clean));
        // An edit with its mtime put back, or a chmod.
        let why = changed_while_stopped(&old, 10, &now(Some(100 * S + 1), Some(90 * S)), clean);
        assert!(why.unwrap().contains("ctime"));
        assert!(changed(&old, &now(Some(100 * S), Some(91 * S)), clean));
        // Recorded by an fss without ctimes: the mtime as before.
        let older = volume(None, Some(90 * S));
        assert!(!changed(&older, &now(Some(500 * S), Some(90 * S)), clean));
        assert!(changed(&older, &now(Some(500 * S), Some(91 * S)), clean));
        // Size and identity come first.
        assert!(
            changed_while_stopped(&old, 11, &now(Some(100 * S), None), clean)
                .unwrap()
                .contains("size")
        );
    }

    #[test]
    fn after_a_death_the_last_beat_bounds_own_writes() {
        let old = volume(Some(100 * S), None);
        let died = PreviousStop::Died {
            last_beat: Some(200 * S),
        };
        let allowed = 200 * S + nanos(PERIOD) + nanos(MARGIN);
        assert_eq!(allowed, 201 * S);
        for own in [100 * S, 150 * S, 200 * S, allowed] {
            assert!(!changed(&old, &now(Some(own), Some(own)), died), "{own}");
        }
        let why = changed_while_stopped(&old, 10, &now(Some(allowed + S / 4), None), died);
        assert!(why.unwrap().contains("0.250 s later"));
        // No heartbeat, or no ctime on record: not checked, as before.
        let unknown = PreviousStop::Died { last_beat: None };
        assert!(!changed(&old, &now(Some(900 * S), None), unknown));
        assert!(!changed(
            &volume(None, None),
            &now(Some(900 * S), None),
            died
        ));
        // Block devices have no ctime in their fingerprint.
        assert!(!changed(&volume(None, None), &now(None, None), died));
    }

    #[test]
    fn after_a_reboot_the_boot_time_or_a_durable_beat_bounds_own_writes() {
        let old = volume(Some(100 * S), None);
        let margin = nanos(MARGIN);
        let by_boot = PreviousStop::Rebooted {
            boot: Some(300 * S),
            last_beat: None,
        };
        assert!(!changed(&old, &now(Some(301 * S + margin), None), by_boot));
        assert!(changed(
            &old,
            &now(Some(301 * S + margin + 1), None),
            by_boot
        ));
        // A beat long before the boot: the boot time is not the bound, the beat is.
        let beat = PreviousStop::Rebooted {
            boot: Some(300 * S),
            last_beat: Some(200 * S),
        };
        let by_beat = 200 * S + nanos(DURABLE_EVERY) + nanos(PERIOD) + margin;
        assert!(!changed(&old, &now(Some(by_beat), None), beat));
        assert!(changed(&old, &now(Some(by_beat + 1), None), beat));
        let neither = PreviousStop::Rebooted {
            boot: None,
            last_beat: None,
        };
        assert!(!changed(&old, &now(Some(900 * S), None), neither));
    }
}
