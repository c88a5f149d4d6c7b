//! Freeze leases: a client that froze a file system on an fss volume holds one while it takes
//! the snapshot. If it does not close the lease within [`LEASE_TIMEOUT`], or its connection
//! drops, the daemon thaws the file system (FITHAW only: the daemon never freezes).
//!
//! Open leases are written to `<state-dir>/leases.json` (mount point, deadline on the boot
//! clock), so that a serving process started after the one that granted them dies still thaws
//! within the timeout: at start it thaws those past their deadline and watches the rest.

use crate::error::DaemonError;
use crate::freeze;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How long a freeze lease may stay open before the daemon thaws.
pub const LEASE_TIMEOUT: Duration = Duration::from_secs(10);

struct Lease {
    mount_point: String,
    dir: File,
    deadline: Instant,
}

/// Open freeze leases; [`Leases::expire`] thaws expired ones.
#[derive(Default)]
pub struct Leases {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Lease>>,
    /// Where open leases are recorded (`None`: in memory only, for in-process tests).
    file: Option<PathBuf>,
}

/// One lease as `leases.json` records it.
#[derive(Serialize, Deserialize)]
struct Recorded {
    id: u64,
    mount_point: String,
    /// The deadline, in milliseconds of `CLOCK_BOOTTIME` (which runs through suspend and is
    /// the same in every process).
    deadline_ms: u64,
}

#[derive(Serialize, Deserialize, Default)]
struct LeaseFile {
    /// The boot the deadlines belong to (a reboot thawed everything anyway).
    boot_id: String,
    leases: Vec<Recorded>,
}

fn boot_ms() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1000 + u64::try_from(t.tv_nsec).unwrap_or(0) / 1_000_000
}

impl Leases {
    /// Leases recorded in `file`, taking over those a previous process left there: the ones
    /// past their deadline are thawed now, the others are watched until theirs.
    #[must_use]
    pub fn recover(file: PathBuf) -> Self {
        let leases = Leases {
            file: Some(file),
            ..Leases::default()
        };
        let left = leases.load();
        let recorded = !left.is_empty();
        let now = boot_ms();
        let mut max_id = 0;
        for r in left {
            max_id = max_id.max(r.id);
            let dir = match freeze::open_mount(Path::new(&r.mount_point)) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(mount_point = %r.mount_point, error = %e,
                        "cannot open the mount point of a freeze lease of the previous process");
                    continue;
                }
            };
            let lease = Lease {
                mount_point: r.mount_point,
                dir,
                deadline: Instant::now() + Duration::from_millis(r.deadline_ms.saturating_sub(now)),
            };
            if r.deadline_ms <= now {
                thaw(
                    &lease,
                    "a freeze lease of the previous serving process expired",
                );
            } else {
                tracing::info!(mount_point = %lease.mount_point,
                    "watching a freeze lease of the previous serving process");
                leases.lock().insert(r.id, lease);
            }
        }
        leases.next.store(max_id, Ordering::Relaxed);
        if recorded {
            leases.save(&leases.lock());
        }
        leases
    }

    fn load(&self) -> Vec<Recorded> {
        let Some(path) = &self.file else {
            return Vec::new();
        };
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read the freeze leases");
                return Vec::new();
            }
        };
        match serde_json::from_slice::<LeaseFile>(&text) {
            Ok(f) if f.boot_id == crate::registry::boot_id() => f.leases,
            Ok(_) => Vec::new(),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "ignoring damaged freeze leases");
                Vec::new()
            }
        }
    }

    /// Record the open leases (temp file and rename; no fsync: a power cut thaws them all).
    fn save(&self, open: &HashMap<u64, Lease>) {
        let Some(path) = &self.file else {
            return;
        };
        let now_instant = Instant::now();
        let now = boot_ms();
        let f = LeaseFile {
            boot_id: crate::registry::boot_id(),
            leases: open
                .iter()
                .map(|(&id, l)| Recorded {
                    id,
                    mount_point: l.mount_point.clone(),
                    deadline_ms: now
                        + u64::try_from(
                            l.deadline
                                .saturating_duration_since(now_instant)
                                .as_millis(),
                        )
                        .unwrap_or(u64::MAX / 2),
                })
                .collect(),
        };
        let tmp = path.with_extension("json.tmp");
        let written = serde_json::to_vec(&f)
            .map_err(std::io::Error::other)
            .and_then(|text| {
                let _ = std::fs::remove_file(&tmp);
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(fss_core::device::FILE_MODE)
                    .open(&tmp)?
                    .write_all(&text)
            })
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::error!(file = %path.display(), error = %e,
                "cannot record the freeze leases: a crash now would leave them to their holder");
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Lease>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Open a lease on `mount_point`.
    ///
    /// # Errors
    /// The mount point cannot be opened.
    pub fn open(&self, mount_point: &str) -> Result<u64, DaemonError> {
        let dir = freeze::open_mount(Path::new(mount_point))
            .map_err(|e| DaemonError::io(&format!("cannot open mount point {mount_point}"), &e))?;
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let lease = Lease {
            mount_point: mount_point.to_string(),
            dir,
            deadline: Instant::now() + LEASE_TIMEOUT,
        };
        let mut open = self.lock();
        open.insert(id, lease);
        self.save(&open);
        Ok(id)
    }

    /// Whether the lease (if any) is still open: not expired nor abandoned.
    #[must_use]
    pub fn all_open(&self, lease: &Option<u64>) -> bool {
        lease.is_none_or(|id| self.lock().contains_key(&id))
    }

    /// Close a lease (its holder thawed); whether it was open.
    pub fn close(&self, id: u64) -> bool {
        let mut open = self.lock();
        let was = open.remove(&id).is_some();
        if was {
            self.save(&open);
        }
        was
    }

    /// Thaw (and forget) a lease whose holder went away.
    pub fn abandon(&self, id: u64, why: &str) {
        let lease = {
            let mut open = self.lock();
            let l = open.remove(&id);
            if l.is_some() {
                self.save(&open);
            }
            l
        };
        if let Some(l) = lease {
            thaw(&l, why);
        }
    }

    /// Thaw every lease past its deadline.
    pub fn expire(&self) {
        let now = Instant::now();
        let expired: Vec<Lease> = {
            let mut open = self.lock();
            let ids: Vec<u64> = open
                .iter()
                .filter(|(_, l)| l.deadline <= now)
                .map(|(&k, _)| k)
                .collect();
            let gone: Vec<Lease> = ids.into_iter().filter_map(|k| open.remove(&k)).collect();
            if !gone.is_empty() {
                self.save(&open);
            }
            gone
        };
        for l in expired {
            let why = format!(
                "the freeze lease was not closed within {} s",
                LEASE_TIMEOUT.as_secs()
            );
            thaw(&l, &why);
        }
    }
}

fn thaw(l: &Lease, why: &str) {
    match freeze::thaw(&l.dir) {
        Ok(()) => tracing::warn!(mount_point = %l.mount_point, "thawed the file system: {why}"),
        // EINVAL: not frozen (the client thawed already).
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {}
        Err(e) => {
            tracing::error!(mount_point = %l.mount_point, error = %e, "could not thaw ({why})");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_leases_are_taken_over_thawed_when_past_and_watched_otherwise() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = tmp.path().join("leases.json");
        let dir = tmp.path().display().to_string();
        let first = Leases::recover(file.clone());
        let id = first.open(&dir).unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        assert!(text.contains(&dir), "{text}");
        // The process dies with the lease open: the next one watches it.
        drop(first);
        let second = Leases::recover(file.clone());
        assert!(second.all_open(&Some(id)));
        let newer = second.open(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert!(newer > id, "ids go on after the recorded ones");
        assert!(second.close(newer) && second.close(id));
        assert!(!second.all_open(&Some(id)));
        // One past its deadline is thawed (here: not frozen, so nothing to do) and forgotten.
        let past = LeaseFile {
            boot_id: crate::registry::boot_id(),
            leases: vec![Recorded {
                id: 7,
                mount_point: dir.clone(),
                deadline_ms: boot_ms().saturating_sub(1),
            }],
        };
        std::fs::write(&file, serde_json::to_vec(&past).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}"));
        let third = Leases::recover(file.clone());
        assert!(!third.all_open(&Some(7)));
        assert!(!std::fs::read_to_string(&file)
            .unwrap_or_default()
            .contains(&dir));
        // Another boot's leases mean nothing.
        let other = LeaseFile {
            boot_id: "another boot".into(),
            leases: vec![Recorded {
                id: 7,
                mount_point: dir.clone(),
                deadline_ms: boot_ms() + 60_000,
            }],
        };
        std::fs::write(&file, serde_json::to_vec(&other).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!Leases::recover(file).all_open(&Some(7)));
    }
}
