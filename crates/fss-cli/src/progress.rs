//! Progress of long operations (backup, restore, rollback) on stderr: a progress bar with
//! throughput on a terminal, plain lines otherwise (every 5 seconds and at the end), so that
//! logs and pipes get something readable.

use fssd::names::human_size;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often a plain progress line is printed.
pub const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// Reports `done` of `total` bytes for one operation.
pub struct Reporter {
    label: String,
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Instant,
    done: u64,
    total: u64,
    finished: bool,
}

/// A size as exact as a human can read it: `4 KiB`, `1028 KiB`, or bytes when it is not a
/// whole number of KiB.
#[must_use]
pub fn exact_size(bytes: u64) -> String {
    if bytes % 1024 == 0 || bytes < 1024 {
        human_size(bytes)
    } else {
        format!("{bytes} B")
    }
}

/// A rate in bytes per second, for people.
#[must_use]
pub fn rate(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(0.001);
    format!("{}/s", human_size((bytes as f64 / secs) as u64))
}

impl Reporter {
    /// A reporter labelled `label` ("backup s2"): a bar when stderr is a terminal.
    #[must_use]
    pub fn new(label: impl Into<String>) -> Self {
        Self::with_bar(label, std::io::stderr().is_terminal())
    }

    /// A reporter with (`bar`) or without a progress bar.
    #[must_use]
    pub fn with_bar(label: impl Into<String>, bar: bool) -> Self {
        let label = label.into();
        let bar = bar.then(|| {
            let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            b.set_style(style);
            b.set_message(label.clone());
            b
        });
        let now = Instant::now();
        Reporter {
            label,
            bar,
            started: now,
            last_line: now,
            done: 0,
            total: 0,
            finished: false,
        }
    }

    /// The plain line for the current state: "backup s2: 512 MiB of 1 GiB, 210 MiB/s".
    #[must_use]
    pub fn line(&self) -> String {
        format!(
            "{}: {} of {}, {}",
            self.label,
            human_size(self.done),
            human_size(self.total),
            rate(self.done, self.started.elapsed())
        )
    }

    /// `done` of `total` bytes are done.
    pub fn update(&mut self, done: u64, total: u64) {
        self.done = done;
        self.total = total;
        match &self.bar {
            Some(b) => {
                b.set_length(total);
                b.set_position(done);
            }
            None => {
                if self.last_line.elapsed() >= PLAIN_EVERY {
                    self.last_line = Instant::now();
                    eprintln!("{}", self.line());
                }
            }
        }
    }

    /// The operation completed: the bar is filled, or the last plain line printed.
    pub fn finish(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        match &self.bar {
            Some(b) => b.finish(),
            None => eprintln!("{}", self.line()),
        }
    }

    /// The operation failed: the bar is left where it stopped, nothing more is printed.
    pub fn abandon(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        if let Some(b) = &self.bar {
            b.abandon();
        }
    }

    /// Time since the start.
    #[must_use]
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.abandon();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_and_sizes() {
        let mut r = Reporter::with_bar("backup s2", false);
        r.done = 512 << 20;
        r.total = 1 << 30;
        let l = r.line();
        assert!(l.starts_with("backup s2: 512 MiB of 1 GiB, "), "{l}");
        assert!(l.ends_with("/s"), "{l}");
        r.finished = true;
        assert_eq!(exact_size(4096), "4 KiB");
        assert_eq!(exact_size(1_052_672), "1028 KiB");
        assert_eq!(exact_size(1000), "1000 B");
        assert_eq!(exact_size(5000), "5000 B");
        assert_eq!(rate(10 << 20, Duration::from_secs(2)), "5 MiB/s");
    }
}
