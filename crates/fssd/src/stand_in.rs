//! A stand-in for the store of a persistent snapshot that is missing or unreadable at start.
//!
//! Leaving such a snapshot out of its volume's chain would let writes overwrite blocks it
//! needs with nothing preserved, and it would come back `valid` with the new bytes once its
//! store returned. Attached in its place, the stand-in keeps the snapshot in the chain: a
//! write that should preserve a pre-image into it fails to, the engine's failure policy then
//! invalidates it (and the older snapshots that needed the block) or fails the write, and the
//! invalidation is recorded durably in a marker file under `<state-dir>/invalidated/`, since
//! the store itself cannot take it. The next start folds the marker into `state.json`, so the
//! snapshot stays invalid for good even after its store is put back.

use fss_core::store::{Store, VerifyReport};
use fss_core::{Error, ErrorKind};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The store of a snapshot that could not be opened at start.
pub(crate) struct StandIn {
    /// Where the store should be.
    store: PathBuf,
    /// Why it could not be opened.
    why: String,
    /// The marker recording an invalidation.
    marker: PathBuf,
}

impl StandIn {
    /// A stand-in for the store at `store`, unopened because of `why`; an invalidation is
    /// recorded at `marker`.
    pub(crate) fn new(store: PathBuf, why: String, marker: PathBuf) -> Self {
        StandIn { store, why, marker }
    }

    fn unavailable(&self, op: &'static str) -> Error {
        Error::new(
            ErrorKind::Io,
            op,
            format!("store {}", self.store.display()),
            format!(
                "the store could not be opened at start ({}); put it back and restart fss",
                self.why
            ),
        )
    }
}

/// The marker file of snapshot `snapshot_id` of the volume whose identity is `volume_id`.
pub(crate) fn marker_path(dir: &Path, volume_id: &str, snapshot_id: u64) -> PathBuf {
    dir.join(format!("{volume_id}.{snapshot_id}"))
}

/// The reason recorded at `marker`, if any.
pub(crate) fn read_marker(marker: &Path) -> Option<String> {
    std::fs::read_to_string(marker)
        .ok()
        .map(|r| r.trim_end().to_string())
}

/// Write `reason` to `marker` durably: a fresh temporary file (mode 0600), fsync, rename,
/// fsync of the directory.
fn write_marker(marker: &Path, reason: &str) -> std::io::Result<()> {
    if let Some(dir) = marker.parent() {
        crate::paths::create_private_dir(dir)?;
    }
    let tmp = marker.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(fss_core::device::FILE_MODE)
        .open(&tmp)?;
    f.write_all(reason.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, marker)?;
    if let Some(dir) = marker.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl Store for StandIn {
    fn describe(&self) -> String {
        self.store.display().to_string()
    }

    fn allocate_slot(&self, _cluster: u32) -> fss_core::Result<u32> {
        Err(self.unavailable("preserve a pre-image in"))
    }

    fn write_blocks(&self, _: u32, _: u32, _: u32, _: &[u8]) -> fss_core::Result<()> {
        Err(self.unavailable("preserve a pre-image in"))
    }

    fn read(&self, _slot: u32, _offset: u64, _buf: &mut [u8]) -> fss_core::Result<()> {
        Err(self.unavailable("read"))
    }

    fn sync(&self) -> fss_core::Result<()> {
        Ok(())
    }

    fn used_bytes(&self) -> u64 {
        0
    }

    fn max_bytes(&self) -> Option<u64> {
        None
    }

    fn set_max_bytes(&self, _max: Option<u64>) -> fss_core::Result<()> {
        Err(self.unavailable("change the maximum size of"))
    }

    fn is_persistent(&self) -> bool {
        true
    }

    fn check_room(&self, _new_slots: u64, _new_blocks: u64) -> fss_core::Result<()> {
        Err(self.unavailable("move entries into"))
    }

    fn record_invalid(&self, reason: &str) -> fss_core::Result<()> {
        write_marker(&self.marker, reason)
            .map_err(|e| Error::io("record the invalidation of", self.describe(), e))
    }

    fn verify(&self) -> fss_core::Result<VerifyReport> {
        Err(self.unavailable("verify"))
    }

    fn destroy(&self) -> fss_core::Result<()> {
        // Nothing of it is fss's to remove: the registry removes an owned store file.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn refuses_every_preservation_and_records_an_invalidation_durably() {
        let tmp = tempfile::tempdir().unwrap();
        let marker = marker_path(&tmp.path().join("invalidated"), "00ab", 7);
        let s = StandIn::new("/gone/v.p.fss".into(), "missing".into(), marker.clone());
        let e = s.allocate_slot(0).unwrap_err();
        assert!(e.to_string().contains("/gone/v.p.fss"), "{e}");
        assert!(e.to_string().contains("missing"), "{e}");
        assert!(s.write_blocks(0, 0, 0, &[0; 4096]).is_err());
        assert!(s.check_room(1, 1).is_err());
        assert!(s.is_persistent());
        assert_eq!(read_marker(&marker), None);
        s.record_invalid("lost a pre-image").unwrap();
        assert_eq!(read_marker(&marker).as_deref(), Some("lost a pre-image"));
        s.record_invalid("again").unwrap();
        assert_eq!(read_marker(&marker).as_deref(), Some("again"));
    }
}
