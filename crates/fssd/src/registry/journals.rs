//! The journals of held writes, one file per volume in the run directory
//! (`paths::journal_dir`): acknowledged writes not yet on the volume outlive the death of the
//! process there, and are replayed at the next start on the same boot (see
//! `fss_core::Volume::attach_journal`).

use super::{Inner, Registry};
use crate::error::{DaemonError, Result};
use fss_core::device::{BlockDevice, FileDevice, OpenOptions};
use fss_core::Volume;
use std::path::PathBuf;
use std::sync::Arc;

impl Registry {
    fn journal_path(&self, volume_id: &str) -> PathBuf {
        crate::paths::journal_dir(&self.paths.state_dir).join(format!("{volume_id}.journal"))
    }

    /// Replay what a dead process left in `vol`'s journal, then keep its held writes there.
    /// Returns how many changes were replayed.
    ///
    /// # Errors
    /// The journal could not be opened, read or replayed (it is then left as it is).
    pub(super) fn start_journal(&self, vol: &Volume, volume_id: &str) -> Result<u64> {
        let path = self.journal_path(volume_id);
        let io = |what: &str, e: &dyn std::fmt::Display| {
            DaemonError::new(
                crate::error::ErrorKind::Io,
                format!(
                    "cannot {what} the journal of held writes {}: {e}",
                    path.display()
                ),
            )
        };
        if let Some(dir) = path.parent() {
            crate::paths::create_private_dir(dir).map_err(|e| io("make the directory of", &e))?;
        }
        let opts = OpenOptions {
            exclusive: true,
            create_len: Some(0),
            ..OpenOptions::default()
        };
        let dev = FileDevice::open(&path, &opts).map_err(|e| io("open", &e))?;
        let dev: Arc<dyn BlockDevice> = Arc::new(dev);
        let n = vol
            .attach_journal(dev, boot_id_bytes())
            .map_err(|e| io("replay", &e))?;
        if let Some(pause) = self.hooks.hold_commits {
            vol.pause_commits(pause);
        }
        Ok(n)
    }

    /// At start, once snapshots are attached and before anything else writes: replay every
    /// open volume's journal. A volume whose journal cannot be replayed is not served: it
    /// would lack writes that were acknowledged.
    pub(super) fn replay_journals(&self, inner: &mut Inner) {
        let open: Vec<(String, String, Volume)> = inner
            .volumes
            .values()
            .filter_map(|e| {
                Some((
                    e.record.name.clone(),
                    e.record.id.clone(),
                    e.volume()?.clone(),
                ))
            })
            // Volumes added since (the default one of a fresh directory) have theirs.
            .filter(|(_, _, v)| !v.has_journal())
            .collect();
        for (name, id, vol) in open {
            match self.start_journal(&vol, &id) {
                Ok(0) => {}
                Ok(n) => tracing::warn!(volume = %name, writes = n,
                    "replayed {n} acknowledged writes that a stopped process had not applied yet"),
                Err(e) => {
                    let why = format!(
                        "{}; it holds acknowledged writes that are not on the volume: free what \
                         blocks it and restart fss",
                        e.message
                    );
                    tracing::error!(volume = %name, "{why}");
                    self.take_offline(inner, &name, vol, why);
                }
            }
        }
    }

    /// Remove the journal of a volume that is gone, or stopped cleanly (nothing held).
    pub(super) fn remove_journal(&self, volume_id: &str) {
        let _ = std::fs::remove_file(self.journal_path(volume_id));
    }
}

/// This boot's id as 16 bytes (zeroes if it cannot be read).
fn boot_id_bytes() -> [u8; 16] {
    let id = super::recovery::boot_id().replace('-', "");
    super::recovery::unhex(&id)
}
