//! Restoring backups onto a volume. Recorded in the state (saved and flushed) before the first
//! byte is written and forgotten once the volume is flushed, so that a volume is never served
//! half restored: a stop midway is finished at the next start, before anything is served,
//! when the backups are still there (restoring a chain again from the start is idempotent:
//! its full backup rewrites every byte); otherwise, and when a restore fails midway, the volume
//! stays offline with the commands to finish the restore or abandon it.

use super::rollback::now_secs;
use super::{Inner, Registry};
use crate::error::{DaemonError, ErrorKind, Result};
use crate::protocol::{RestoreAbandoned, RestoreDone};
use crate::state::RestoreState;
use crate::volume_target::VolumeTarget;
use fss_core::backup::format::hex;
use fss_core::backup::{check_restore, restore_readers, BackupReader, RestoreSummary};
use fss_core::export::Export;
use fss_core::Volume;
use std::path::PathBuf;

/// Open backup files and read their headers.
fn open_backups(files: &[PathBuf]) -> Result<Vec<BackupReader>> {
    files
        .iter()
        .map(|f| {
            let file = std::fs::File::open(f)
                .map_err(|e| DaemonError::io(&format!("cannot open backup {}", f.display()), &e))?;
            BackupReader::open(f.display().to_string(), Box::new(file)).map_err(DaemonError::from)
        })
        .collect()
}

/// The files of a restore, as a command line takes them.
fn file_list(files: &[PathBuf]) -> String {
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    names.join(" ")
}

/// The commands that finish or abandon an unfinished restore from `files` onto `volume`.
pub(super) fn finish_or_abandon(volume: &str, files: &[PathBuf]) -> String {
    format!(
        "run `fss restore {} {volume}` again to finish it, or `fss restore --abandon {volume}` \
         to serve it as it is (partial)",
        file_list(files)
    )
}

/// Why a volume whose restore from `files` did not complete (`what` happened) is not served,
/// and the commands to finish or abandon the restore.
fn unfinished_why(volume: &str, files: &[PathBuf], what: &str) -> String {
    format!(
        "a restore from {} {what}; the volume holds part of the backups and part of its old \
         data and is not served: {}",
        file_list(files),
        finish_or_abandon(volume, files)
    )
}

impl Registry {
    /// Restore backup files (a full backup, then incrementals in order) onto the volume
    /// `volume`, which must have no snapshots and not be open; it is not served meanwhile.
    /// Also finishes a restore left unfinished on it (from any chain: a full restore rewrites
    /// every byte).
    ///
    /// # Errors
    /// The volume is missing, busy, open, offline or has snapshots; a file cannot be opened;
    /// the chain is wrong or damaged (the library's error, naming the file). A restore that
    /// fails after writing leaves the volume offline (the error says so).
    pub fn restore_volume(
        &self,
        volume: &str,
        files: &[PathBuf],
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<RestoreDone> {
        let readers = open_backups(files)?;
        let mut inner = self.lock();
        let (vol, unfinished) = self.restore_checks(&inner, volume)?;
        let target = VolumeTarget::new(vol.clone(), self.hooks.restore_halt_after);
        check_restore(&readers, &target)?;
        if !unfinished {
            self.withdraw_unopened(volume, &vol, "a restore")?;
        }
        if let Err(e) = self.record_restore(&mut inner, volume, files, &readers) {
            if !unfinished {
                self.publish(volume, Export::Volume(vol));
            }
            return Err(e);
        }
        let _hold = self.hold(&[volume], &format!("a restore onto '{volume}'"));
        drop(inner);
        tracing::info!(volume, files = ?files, "restore onto volume started");
        let result = restore_readers(readers, &target, progress);
        let wrote = target.changed() || unfinished;
        self.finish_restore(volume, files, vol, wrote, result)
    }

    /// The volume, and whether a restore onto it is unfinished, if a restore may start.
    fn restore_checks(&self, inner: &Inner, volume: &str) -> Result<(Volume, bool)> {
        let vol = Self::online_volume(inner, volume)?;
        let unfinished = inner.unfinished_restore(volume).is_some();
        if let (Some(r), false) = (inner.offline(volume), unfinished) {
            return Err(DaemonError::busy(format!(
                "volume '{volume}' is not served: {r}"
            )));
        }
        let snaps: Vec<&str> = inner
            .snapshots_of(volume)
            .map(|s| s.record.name.as_str())
            .collect();
        if !snaps.is_empty() {
            return Err(DaemonError::busy(format!(
                "volume '{volume}' has snapshots ({}): a restore rewrites the whole volume; \
                 delete them first, or restore into a new volume or image",
                snaps.join(", ")
            )));
        }
        if let Some(what) = self.held_by(volume) {
            return Err(DaemonError::busy(format!(
                "volume '{volume}' is busy with {what}; wait for it to finish"
            )));
        }
        Ok((vol, unfinished))
    }

    /// Record the restore in the state before the first byte is written.
    fn record_restore(
        &self,
        inner: &mut Inner,
        volume: &str,
        files: &[PathBuf],
        readers: &[BackupReader],
    ) -> Result<()> {
        let before = inner.meta.restores.clone();
        inner.meta.restores.retain(|r| r.volume != volume);
        let volume_id = inner
            .volumes
            .get(volume)
            .map(|v| v.record.id.clone())
            .unwrap_or_default();
        inner.meta.restores.push(RestoreState {
            volume: volume.to_string(),
            volume_id,
            files: files.to_vec(),
            backup_ids: readers.iter().map(|r| hex(&r.header().backup_id)).collect(),
            started: now_secs(),
        });
        let saved = self.save(inner);
        if saved.is_err() {
            inner.meta.restores = before;
        }
        saved
    }

    /// Serve the volume again and forget the record when the restore is complete or wrote
    /// nothing (`wrote` false: the volume is as it was); otherwise keep both and withdraw it.
    fn finish_restore(
        &self,
        volume: &str,
        files: &[PathBuf],
        vol: Volume,
        wrote: bool,
        result: fss_core::Result<RestoreSummary>,
    ) -> Result<RestoreDone> {
        let mut inner = self.lock();
        match result {
            Err(e) if wrote => {
                let why = unfinished_why(volume, files, &format!("failed midway ({e})"));
                tracing::error!(volume, "{why}");
                self.take_offline(&mut inner, volume, vol, why.clone());
                Err(DaemonError::new(DaemonError::from(e).kind, why))
            }
            Err(e) => {
                tracing::error!(volume, error = %e, "restore onto volume failed before writing");
                inner.meta.restores.retain(|r| r.volume != volume);
                self.serve_again(&mut inner, volume, vol);
                if let Err(se) = self.save(&inner) {
                    tracing::error!(volume, error = %se, "could not forget the failed restore: the next start runs it again");
                }
                Err(e.into())
            }
            Ok(s) => {
                inner.meta.restores.retain(|r| r.volume != volume);
                self.serve_again(&mut inner, volume, vol);
                tracing::info!(volume, snapshot = %s.snapshot.name, backups = s.backups, "restore onto volume done");
                if let Err(e) = self.save(&inner) {
                    return Err(DaemonError::new(
                        ErrorKind::Io,
                        format!(
                            "the restore onto '{volume}' is complete, but the state could not \
                             be updated ({e}); the next start will redo it, which is harmless \
                             while the backups are there"
                        ),
                    ));
                }
                Ok(RestoreDone {
                    volume: volume.to_string(),
                    snapshot: s.snapshot.name,
                    backups: s.backups as u64,
                    data_bytes: s.data_bytes,
                    zero_bytes: s.zero_bytes,
                })
            }
        }
    }

    /// `restore-abandon`: forget the unfinished restore onto `volume` and serve it as it is,
    /// partly restored.
    ///
    /// # Errors
    /// No such volume, none unfinished, a restore running now, or the state cannot be saved.
    pub fn abandon_restore(&self, volume: &str) -> Result<RestoreAbandoned> {
        let mut inner = self.lock();
        if !inner.volumes.contains_key(volume) {
            return Err(DaemonError::not_found(format!(
                "no volume named '{volume}'; see `fss volume list`"
            )));
        }
        if let Some(what) = self.held_by(volume) {
            return Err(DaemonError::busy(format!(
                "volume '{volume}' is busy with {what}; wait for it to finish"
            )));
        }
        let Some(record) = inner.unfinished_restore(volume).cloned() else {
            return Err(DaemonError::invalid(format!(
                "volume '{volume}' has no unfinished restore to abandon"
            )));
        };
        let before = inner.meta.restores.clone();
        inner.meta.restores.retain(|r| r.volume != volume);
        if let Err(e) = self.save(&inner) {
            inner.meta.restores = before;
            return Err(e);
        }
        let vol = inner.volume(volume).cloned();
        let online = vol.is_some();
        if let Some(vol) = vol {
            self.serve_again(&mut inner, volume, vol);
        }
        tracing::warn!(volume, files = ?record.files,
            "unfinished restore abandoned: the volume holds partial contents");
        Ok(RestoreAbandoned {
            volume: volume.to_string(),
            files: record.files,
            online,
        })
    }

    /// Finish the restores a stop interrupted, before anything is served; a volume whose
    /// restore cannot be finished is left offline with the commands to finish or abandon it.
    pub(super) fn resume_restores(&self, inner: &mut Inner) {
        let records = std::mem::take(&mut inner.meta.restores);
        let mut keep = Vec::new();
        for r in records {
            let current = inner.volumes.get(&r.volume);
            if current.is_none_or(|v| v.record.id != r.volume_id) {
                tracing::info!(volume = %r.volume, "forgetting the interrupted restore of a volume that was removed");
                continue;
            }
            let Some(vol) = inner.volume(&r.volume).cloned() else {
                tracing::error!(volume = %r.volume,
                    "cannot finish the interrupted restore: the volume is offline; it is retried at the next start");
                keep.push(r);
                continue;
            };
            if let Err(why) = self.redo_restore(&r, &vol) {
                tracing::error!(volume = %r.volume, "{why}");
                self.take_offline(inner, &r.volume, vol, why);
                keep.push(r);
            }
        }
        inner.meta.restores = keep;
    }

    /// Restore `r`'s backups onto `vol` again from the start; why the volume is left offline
    /// if that cannot be done.
    fn redo_restore(&self, r: &RestoreState, vol: &Volume) -> std::result::Result<(), String> {
        let files = file_list(&r.files);
        let not_now = |cause: String| {
            unfinished_why(
                &r.volume,
                &r.files,
                &format!("was interrupted by a stop and cannot be finished now ({cause})"),
            )
        };
        let readers = open_backups(&r.files).map_err(|e| not_now(e.message))?;
        let ids: Vec<String> = readers.iter().map(|x| hex(&x.header().backup_id)).collect();
        if ids != r.backup_ids {
            return Err(not_now(
                "the files are no longer the backups that were being restored".to_string(),
            ));
        }
        tracing::warn!(volume = %r.volume,
            "resuming the restore of volume {} from {files} interrupted by a stop", r.volume);
        let target = VolumeTarget::new(vol.clone(), self.hooks.restore_halt_after);
        let s = restore_readers(readers, &target, &mut |_, _| {}).map_err(|e| {
            let what = format!("was interrupted by a stop and failed again when resumed ({e})");
            unfinished_why(&r.volume, &r.files, &what)
        })?;
        tracing::info!(volume = %r.volume, snapshot = %s.snapshot.name,
            "finished the interrupted restore of volume {} from {files}", r.volume);
        Ok(())
    }
}
