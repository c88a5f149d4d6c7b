//! Returning a volume to a snapshot: recorded first, so that a stop midway is finished at the
//! next start (`recovery.rs`).

use super::{Inner, Registry};
use crate::error::{DaemonError, ErrorKind, Result};
use crate::state::RollbackState;
use fss_core::export::Export;
use fss_core::{Snapshot, Volume};
use std::time::UNIX_EPOCH;

/// How much a rollback reads from the snapshot and writes to the volume at once.
const ROLLBACK_CHUNK: u64 = 4 << 20;

pub(super) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Write `snap`'s bytes over every extent of its volume changed since it was taken, through
/// the engine (so newer snapshots keep their contents), then flush. Idempotent.
/// Returns (extents, bytes) rewritten.
pub(super) fn rollback_pass(
    vol: &Volume,
    snap: &Snapshot,
    pause: Option<std::time::Duration>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(u64, u64)> {
    let extents: Vec<_> = snap
        .changed(0, vol.len())?
        .into_iter()
        .filter(|e| e.data)
        .collect();
    let total: u64 = extents.iter().map(|e| e.len).sum();
    let mut buf = vec![0u8; ROLLBACK_CHUNK.min(total.max(1)) as usize];
    let mut done = 0;
    progress(0, total);
    for e in &extents {
        let (mut off, end) = (e.offset, e.offset + e.len);
        while off < end {
            let n = (end - off).min(buf.len() as u64) as usize;
            snap.read(&mut buf[..n], off)?;
            vol.write(&buf[..n], off)?;
            off += n as u64;
            done += n as u64;
            progress(done, total);
            if let Some(p) = pause {
                std::thread::sleep(p);
            }
        }
    }
    vol.flush()?;
    Ok((extents.len() as u64, total))
}

impl Registry {
    /// Return `volume` to `snapshot`'s contents: rewrite, through the engine, every extent
    /// changed since the snapshot with its bytes. Refused while the volume is open unless
    /// `force`. Recorded in the state first, so that a stop midway is finished at the next
    /// start; the volume is not served meanwhile (unless `force`).
    ///
    /// # Errors
    /// The volume or snapshot is missing or unusable, the volume is open or busy, or the
    /// rollback failed midway (the volume is then withdrawn until it is run again).
    pub fn rollback(
        &self,
        volume: &str,
        snapshot: &str,
        force: bool,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<crate::protocol::RollbackDone> {
        let mut inner = self.lock();
        let (vol, snap, unfinished) = self.rollback_checks(&inner, volume, snapshot)?;
        if force {
            let open = self.opens_of(volume);
            if open > 0 {
                tracing::warn!(volume, open, "rolling back a volume that is open (--force)");
            }
        } else {
            self.withdraw_unopened(volume, &vol, "a rollback")?;
        }
        let again = unfinished.as_ref().is_some_and(|r| r.snapshot == snapshot);
        if !again {
            if let Err(e) = self.record_rollback(&mut inner, volume, snapshot, snap.info().id) {
                if unfinished.is_none() {
                    self.publish(volume, Export::Volume(vol));
                }
                return Err(e);
            }
        }
        let _hold = self.hold(
            &[volume, snapshot],
            &format!("a rollback of '{volume}' to '{snapshot}'"),
        );
        drop(inner);
        if !snap.info().persistent {
            tracing::warn!(volume, snapshot, "rolling back to a transient snapshot: if the daemon stops before the rollback completes, the snapshot is gone and the volume is left offline");
        }
        tracing::info!(volume, snapshot, force, "rollback started");
        let result = rollback_pass(&vol, &snap, self.hooks.rollback_pause, progress);
        self.finish_rollback(volume, snapshot, vol, result)
    }

    /// The volume, the snapshot and the volume's unfinished rollback, if the rollback may
    /// start.
    fn rollback_checks(
        &self,
        inner: &Inner,
        volume: &str,
        snapshot: &str,
    ) -> Result<(Volume, Snapshot, Option<RollbackState>)> {
        let vol = Self::online_volume(inner, volume)?;
        let unfinished = inner.unfinished_rollback(volume).cloned();
        if let Some(r) = &unfinished {
            // Another target is allowed only when the unfinished one's snapshot is gone: the
            // volume can then be put back into one consistent state.
            if r.snapshot != snapshot && inner.snapshot(&r.snapshot).is_some() {
                return Err(DaemonError::busy(format!(
                    "volume '{volume}' has an unfinished rollback to snapshot '{}'; finish it \
                     first with `fss rollback {volume} {}`",
                    r.snapshot, r.snapshot
                )));
            }
        } else if let Some(r) = inner.offline(volume) {
            return Err(DaemonError::busy(format!(
                "volume '{volume}' is not served: {r}"
            )));
        }
        let snap = Self::usable(inner, snapshot)?;
        let of = snap.info().volume;
        if of != volume {
            return Err(DaemonError::invalid(format!(
                "'{snapshot}' is a snapshot of volume '{of}', not of '{volume}'"
            )));
        }
        if let Some(what) = self.held_by(volume) {
            return Err(DaemonError::busy(format!(
                "volume '{volume}' is busy with {what}; wait for it to finish"
            )));
        }
        Ok((vol, snap, unfinished))
    }

    /// Record the rollback in the state before the first byte is rewritten.
    fn record_rollback(
        &self,
        inner: &mut Inner,
        volume: &str,
        snapshot: &str,
        snapshot_id: u64,
    ) -> Result<()> {
        let before = inner.meta.rollbacks.clone();
        inner.meta.rollbacks.retain(|r| r.volume != volume);
        let volume_id = inner
            .volumes
            .get(volume)
            .map(|v| v.record.id.clone())
            .unwrap_or_default();
        inner.meta.rollbacks.push(RollbackState {
            volume: volume.to_string(),
            volume_id,
            snapshot: snapshot.to_string(),
            snapshot_id,
            started: now_secs(),
        });
        let saved = self.save(inner);
        if saved.is_err() {
            inner.meta.rollbacks = before;
        }
        saved
    }

    /// Serve the volume again and forget the record, or withdraw it if the pass failed.
    fn finish_rollback(
        &self,
        volume: &str,
        snapshot: &str,
        vol: Volume,
        result: Result<(u64, u64)>,
    ) -> Result<crate::protocol::RollbackDone> {
        let mut inner = self.lock();
        match result {
            Ok((extents, bytes)) => {
                inner.meta.rollbacks.retain(|r| r.volume != volume);
                self.serve_again(&mut inner, volume, vol);
                tracing::info!(volume, snapshot, extents, bytes, "rollback done");
                if let Err(e) = self.save(&inner) {
                    return Err(DaemonError::new(
                        ErrorKind::Io,
                        format!(
                            "the rollback of '{volume}' to '{snapshot}' is complete, but the \
                             state could not be updated ({e}); the next start will redo it, \
                             which is harmless"
                        ),
                    ));
                }
                Ok(crate::protocol::RollbackDone {
                    volume: volume.to_string(),
                    snapshot: snapshot.to_string(),
                    extents,
                    bytes,
                })
            }
            Err(e) => {
                let why = format!(
                    "the rollback to snapshot '{snapshot}' failed midway ({}); the volume holds \
                     a mix of old and new data and is not served: run `fss rollback {volume} \
                     {snapshot}` again",
                    e.message
                );
                tracing::error!(volume, snapshot, "{why}");
                self.take_offline(&mut inner, volume, vol, why.clone());
                Err(DaemonError::new(e.kind, why))
            }
        }
    }
}
