//! Long operations and what they hold: diffs, checksums, backups (restores: `restore.rs`).

use super::{Inner, Registry};
use crate::error::{DaemonError, Result};
use crate::protocol::{BackupKind, DiffExtent};
use fss_core::export::{Catalog, Export};
use fss_core::snapshot::PairUse;
use fss_core::Snapshot;
use std::sync::PoisonError;

/// Names held by a long operation; released when dropped.
pub struct Hold<'a> {
    reg: &'a Registry,
    names: Vec<String>,
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        let mut held = self.reg.held.lock().unwrap_or_else(PoisonError::into_inner);
        for n in &self.names {
            if let Some(v) = held.get_mut(n) {
                v.pop();
                if v.is_empty() {
                    held.remove(n);
                }
            }
        }
    }
}

/// A backup about to be streamed: the snapshots, held against deletion until it is dropped.
pub struct BackupJob<'a> {
    /// The snapshot to back up.
    pub snapshot: Snapshot,
    /// The base of an incremental backup.
    pub base: Option<Snapshot>,
    /// What the first response says.
    pub start: crate::protocol::BackupStart,
    _hold: Hold<'a>,
}

/// SHA-256 of an export's whole contents, hex.
pub(super) fn checksum(e: &Export) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < e.len() {
        let n = (e.len() - off).min(buf.len() as u64) as usize;
        e.read(&mut buf[..n], off)?;
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The extents changed since `older` (until `newer`, or now), exact to 4 KiB.
pub(super) fn diff_extents(older: &Snapshot, newer: Option<&Snapshot>) -> Result<Vec<DiffExtent>> {
    let len = older.len();
    let changed = match newer {
        Some(n) => older.changed_until(n, 0, len)?,
        None => older.changed(0, len)?,
    };
    Ok(changed
        .into_iter()
        .filter(|e| e.data)
        .map(|e| DiffExtent {
            offset: e.offset,
            length: e.len,
        })
        .collect())
}

impl Registry {
    /// `checksum`: SHA-256 (hex) of a volume's or snapshot's whole contents.
    ///
    /// # Errors
    /// Nothing served under that name, or a read failed.
    pub fn checksum(&self, name: &str) -> Result<String> {
        // Under the registry's lock, as every operation: one running now finishes first.
        let inner = self.lock();
        let export = self.lookup(name);
        drop(inner);
        let export = export.ok_or_else(|| {
            DaemonError::not_found(format!(
                "no volume or snapshot named '{name}'; see `fss volume list` and `fss snapshot list`"
            ))
        })?;
        checksum(&export)
    }

    /// `diff`: the extents changed between `snapshot` and `until` (or the volume now).
    ///
    /// # Errors
    /// A snapshot is missing or unusable, or the pair is not of one chain in order.
    pub fn diff(&self, snapshot: &str, until: Option<&str>) -> Result<Vec<DiffExtent>> {
        let (older, newer) = self.diff_pair(&self.lock(), snapshot, until)?;
        diff_extents(&older, newer.as_ref())
    }

    /// Hold `names` for `what` until the returned guard is dropped.
    pub(super) fn hold(&self, names: &[&str], what: &str) -> Hold<'_> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        for n in names {
            held.entry((*n).to_string())
                .or_default()
                .push(what.to_string());
        }
        Hold {
            reg: self,
            names: names.iter().map(|n| (*n).to_string()).collect(),
        }
    }

    /// Long operations running now (backup, restore, rollback), as "name (what)".
    #[must_use]
    pub fn running_operations(&self) -> Vec<String> {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let mut v: Vec<String> = held
            .iter()
            .filter(|(_, w)| !w.is_empty())
            .map(|(n, w)| format!("{n} ({})", w.join(", ")))
            .collect();
        v.sort();
        v
    }

    /// What holds `name` now, if anything.
    pub(super) fn held_by(&self, name: &str) -> Option<String> {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .and_then(|v| v.last().cloned())
    }

    /// Refuse a new snapshot of a volume that a long operation holds now, or whose rollback
    /// or restore is unfinished.
    pub(super) fn check_volume_free(&self, inner: &Inner, volume: &str) -> Result<()> {
        if let Some(what) = self.held_by(volume) {
            return Err(DaemonError::busy(format!(
                "volume '{volume}' is busy with {what}; wait for it to finish"
            )));
        }
        if let Some(r) = inner.unfinished_rollback(volume) {
            let finish = if inner.snapshot(&r.snapshot).is_some() {
                format!(
                    "finish it first with `fss rollback {volume} {}`",
                    r.snapshot
                )
            } else {
                format!(
                    "that snapshot is gone: roll the volume back to another of its \
                     snapshots first (`fss rollback {volume} SNAPSHOT`)"
                )
            };
            return Err(DaemonError::busy(format!(
                "volume '{volume}' has an unfinished rollback to snapshot '{}'; {finish}",
                r.snapshot
            )));
        }
        if let Some(r) = inner.unfinished_restore(volume) {
            return Err(DaemonError::busy(format!(
                "volume '{volume}' has an unfinished restore: {}",
                super::restore::finish_or_abandon(volume, &r.files)
            )));
        }
        Ok(())
    }

    /// Refuse to delete a snapshot a long operation uses now, or the target of an unfinished
    /// rollback.
    pub(super) fn check_snapshot_deletable(&self, inner: &Inner, name: &str) -> Result<()> {
        if let Some(what) = self.held_by(name) {
            return Err(DaemonError::busy(format!(
                "snapshot '{name}' is in use by {what}; wait for it to finish"
            )));
        }
        if let Some(r) = inner.meta.rollbacks.iter().find(|r| r.snapshot == name) {
            return Err(DaemonError::busy(format!(
                "snapshot '{name}' is the target of an unfinished rollback of volume \
                 '{}'; finish it first with `fss rollback {} {name}`",
                r.volume, r.volume
            )));
        }
        Ok(())
    }

    /// The snapshots of a diff, checked: one volume, `until` newer, both of one chain.
    pub(super) fn diff_pair(
        &self,
        inner: &Inner,
        snapshot: &str,
        until: Option<&str>,
    ) -> Result<(Snapshot, Option<Snapshot>)> {
        let older = Self::usable(inner, snapshot)?;
        let Some(until) = until else {
            return Ok((older, None));
        };
        let newer = Self::usable(inner, until)?;
        // One rule for diffs and incremental backups, in the engine; the command to type
        // instead is the daemon's to add.
        older.check_older_than(&newer, PairUse::Diff).map_err(|e| {
            let (a, b) = (older.info(), newer.info());
            let mut err = DaemonError::from(e);
            if a.volume == b.volume && a.id > b.id {
                err.message +=
                    &format!(" (give the older snapshot first: `fss diff {until} {snapshot}`)");
            } else if a.volume == b.volume && a.persistent != b.persistent {
                err.message += &format!(
                    " (or diff '{snapshot}' against the volume now: `fss diff {snapshot}`)"
                );
            }
            err
        })?;
        Ok((older, Some(newer)))
    }

    /// Look up and hold the snapshots of a backup.
    ///
    /// # Errors
    /// A snapshot is missing, unusable, or `since` is not an older snapshot of the same volume.
    pub fn backup_job(&self, snapshot: &str, since: Option<&str>) -> Result<BackupJob<'_>> {
        let inner = self.lock();
        let snap = Self::usable(&inner, snapshot)?;
        let info = snap.info();
        let base = match since {
            None => None,
            Some(b) => {
                let base = Self::usable(&inner, b)?;
                base.check_older_than(&snap, PairUse::IncrementalBackup)?;
                Some(base)
            }
        };
        let mut names = vec![snapshot];
        names.extend(since);
        let what = format!("a backup of '{snapshot}'");
        Ok(BackupJob {
            start: crate::protocol::BackupStart {
                snapshot: snapshot.to_string(),
                volume: info.volume.clone(),
                kind: if base.is_some() {
                    BackupKind::Incremental
                } else {
                    BackupKind::Full
                },
                since: since.map(str::to_string),
                size: info.len,
            },
            snapshot: snap,
            base,
            _hold: self.hold(&names, &what),
        })
    }
}
