//! The daemon's heartbeat: `<state-dir>/heartbeat` holds the time of its last sign of life,
//! rewritten every [`PERIOD`] while it runs.
//!
//! A beat is a write to the page cache, which a killed daemon's process does not take with
//! it (as it does not take its volume writes); every [`DURABLE_EVERY`] a beat is also made
//! durable, so a power cut loses at most that much of it. After an unclean stop, the next
//! start reads the last beat to bound when the dead daemon can last have written its volumes:
//! an image whose ctime is later than that was changed by someone else
//! (`registry/fingerprint.rs`, docs/CLI.md "Unverified snapshots").
//!
//! The cost: two 21-byte writes a second and a `fdatasync` every ten seconds, on one thread.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often the heartbeat is rewritten.
pub const PERIOD: Duration = Duration::from_millis(500);

/// How late a beat, or the clock an image's ctime is taken from, may be beyond [`PERIOD`]
/// (a busy machine's scheduling, coarse file-system timestamps).
pub const MARGIN: Duration = Duration::from_millis(500);

/// How often a beat is also made durable.
pub const DURABLE_EVERY: Duration = Duration::from_secs(10);

/// Nanoseconds since the epoch, as file times are compared (negative before it).
#[must_use]
pub fn now_ns() -> i128 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => nanos(d),
        Err(e) => -nanos(e.duration()),
    }
}

/// A duration in nanoseconds.
#[must_use]
pub fn nanos(d: Duration) -> i128 {
    i128::from(d.as_secs()) * 1_000_000_000 + i128::from(d.subsec_nanos())
}

/// The last beat recorded in `path`, if there is one.
#[must_use]
pub fn last_beat(path: &Path) -> Option<i128> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The heartbeat thread; stopped (and joined) when dropped.
pub struct Heartbeat {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    /// Make `path` (mode 0600, never through a link), write a durable first beat, and beat on
    /// a thread from then on. The last beat of a previous run must have been read first.
    ///
    /// # Errors
    /// The file cannot be made or written, or the thread cannot be started.
    pub fn start(path: &Path) -> io::Result<Heartbeat> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(fss_core::device::FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        beat(&file, true)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let shown = path.display().to_string();
        let thread = std::thread::Builder::new()
            .name("fss-heartbeat".into())
            .spawn(move || {
                let mut durable_at = Instant::now();
                let mut failing = false;
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(PERIOD) {
                    let durable = durable_at.elapsed() >= DURABLE_EVERY;
                    match beat(&file, durable) {
                        Ok(()) => {
                            if durable {
                                durable_at = Instant::now();
                            }
                            failing = false;
                        }
                        Err(e) => {
                            if !failing {
                                tracing::warn!(file = %shown, error = %e,
                                    "cannot write the heartbeat: after a crash, images may be reported changed while fss was not running");
                            }
                            failing = true;
                        }
                    }
                }
            })?;
        Ok(Heartbeat {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Write the time now (fixed width, so a beat rewrites the last in place), durably if asked.
fn beat(file: &File, durable: bool) -> io::Result<()> {
    file.write_all_at(format!("{:>20}\n", now_ns()).as_bytes(), 0)?;
    if durable {
        file.sync_data()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beats_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("heartbeat");
        assert_eq!(last_beat(&p), None);
        let start = now_ns();
        let hb = Heartbeat::start(&p).unwrap();
        let first = last_beat(&p).unwrap();
        assert!(first >= start, "{first} < {start}");
        std::thread::sleep(PERIOD * 3);
        let later = last_beat(&p).unwrap();
        assert!(later > first, "no beat after the first");
        drop(hb);
        let last = last_beat(&p).unwrap();
        std::thread::sleep(PERIOD * 2);
        assert_eq!(last_beat(&p), Some(last), "a beat after the stop");
        std::fs::write(&p, "garbage").unwrap();
        assert_eq!(last_beat(&p), None);
    }
}
