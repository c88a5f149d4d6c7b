//! Bringing everything back at start: volumes (noticing those changed while fss was not
//! running), persistent snapshots, interrupted deletes and rollbacks.

use super::entries::{SnapshotEntry, SnapshotLive, VolumeEntry, VolumeLive};
use super::fingerprint::{changed_while_stopped, fingerprint, PreviousStop};
use super::rollback::rollback_pass;
use super::{Inner, Registry};
use crate::config::VolumeIo;
use crate::error::{DaemonError, Result};
use crate::state::{SnapshotState, VolumeState};
use crate::stores::{self, StorePlace};
use fss_core::device::{BlockDevice, FileDevice, OpenOptions};
use fss_core::export::Export;
use fss_core::store::StoreIdentity;
use fss_core::{SnapshotOptions, Volume};
use rustix::io::Errno;
use std::path::Path;
use std::sync::Arc;

pub(crate) fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub(super) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(super) fn unhex(s: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = s
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0);
    }
    out
}

pub(super) fn open_volume_device(path: &Path, io: VolumeIo) -> Result<Arc<FileDevice>> {
    let mut opts = OpenOptions {
        exclusive: true,
        ..OpenOptions::default()
    };
    io.apply(&mut opts);
    FileDevice::open(path, &opts).map(Arc::new).map_err(|e| {
        if e.kind() == std::io::ErrorKind::WouldBlock
            || e.raw_os_error() == Some(Errno::BUSY.raw_os_error())
        {
            DaemonError::busy(format!(
                "{} is in use by another process (fss holds volumes exclusively); stop it first",
                path.display()
            ))
        } else {
            DaemonError::io(&format!("cannot open {}", path.display()), &e)
        }
    })
}

impl Registry {
    /// Open every volume of the state and serve it; one that cannot be opened stays offline.
    /// `snapshots` (the state's) tell which volumes have snapshots to mark unverified, if
    /// their images changed since the previous run, which ended as `stop` says.
    pub(super) fn bring_back_volumes(
        &self,
        inner: &mut Inner,
        volumes: Vec<VolumeState>,
        snapshots: &[SnapshotState],
        stop: PreviousStop,
    ) {
        for mut v in volumes {
            let dev = match open_volume_device(&v.path, self.volume_io) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(volume = %v.name, error = %e, "volume is offline");
                    let live = VolumeLive::Unopened(e.message);
                    inner
                        .volumes
                        .insert(v.name.clone(), VolumeEntry { record: v, live });
                    continue;
                }
            };
            let now = fingerprint(&v.path, true);
            let changed = changed_while_stopped(&v, dev.len(), &now, stop);
            // A ctime on record tells the next start that this run beat (a state of an older
            // release has none), so that a crash of this run is checked; a clean stop records
            // the ctime it leaves.
            v.fingerprint.ctime_ns = now.ctime_ns;
            let has_snapshots = snapshots.iter().any(|s| s.volume == v.name);
            if let (Some(why), true) = (&changed, has_snapshots) {
                tracing::error!(volume = %v.name, "volume changed while fss was not running ({why}): its snapshots are UNVERIFIED");
                v.unverified = Some(why.clone());
            }
            if let (Some(why), None) = (&v.unverified, &changed) {
                tracing::warn!(volume = %v.name, "snapshots still UNVERIFIED ({why}); delete them and take new ones");
            }
            let dyn_dev: Arc<dyn BlockDevice> = dev;
            let vol = Volume::with_identity(v.name.clone(), dyn_dev, unhex(&v.id));
            self.publish(&v.name, Export::Volume(vol.clone()));
            let live = VolumeLive::Online(vol);
            inner
                .volumes
                .insert(v.name.clone(), VolumeEntry { record: v, live });
        }
    }

    /// Bring back the persistent snapshots of the state, drop transient ones, finish
    /// interrupted deletes.
    pub(super) fn bring_back_snapshots(&self, inner: &mut Inner, snapshots: Vec<SnapshotState>) {
        for s in snapshots {
            if !s.persistent {
                tracing::warn!(snapshot = %s.name, volume = %s.volume,
                    "dropped transient snapshot {} (transient snapshots do not survive a restart)", s.name);
                if s.store_owned {
                    let _ = std::fs::remove_file(&s.store);
                }
                continue;
            }
            let Some(vol) = inner.volume(&s.volume).cloned() else {
                let why = format!("its volume '{}' is offline", s.volume);
                let live = SnapshotLive::Unavailable(why);
                inner
                    .snapshots
                    .insert(s.name.clone(), SnapshotEntry { record: s, live });
                continue;
            };
            let live = match attach(&vol, &s, &self.space) {
                Ok(snap) if s.deleting => match vol.delete_snapshot(&s.name) {
                    Ok(()) => {
                        tracing::info!(snapshot = %s.name, "finished deleting snapshot interrupted by a stop");
                        continue;
                    }
                    Err(e) => {
                        // Refused, not half done: the snapshot stays, exact.
                        tracing::error!(snapshot = %s.name, error = %e, "could not finish deleting snapshot; it is kept");
                        self.publish(&s.name, Export::Snapshot(snap.clone()));
                        let record = SnapshotState {
                            deleting: false,
                            ..s
                        };
                        let live = SnapshotLive::Live(snap);
                        inner
                            .snapshots
                            .insert(record.name.clone(), SnapshotEntry { record, live });
                        continue;
                    }
                },
                Ok(snap) => {
                    if let Some(r) = &s.invalid {
                        snap.invalidate(r);
                    }
                    tracing::info!(snapshot = %s.name, volume = %s.volume, "persistent snapshot recovered");
                    self.publish(&s.name, Export::Snapshot(snap.clone()));
                    SnapshotLive::Live(snap)
                }
                // The store of an interrupted delete may already be gone: the delete is done.
                Err(_) if s.deleting => {
                    tracing::info!(snapshot = %s.name, "finished deleting snapshot");
                    continue;
                }
                Err(e) => {
                    tracing::error!(snapshot = %s.name, error = %e, "snapshot could not be brought back");
                    let volume_id = inner.volumes.get(&s.volume).map(|v| v.record.id.clone());
                    let why = format!(
                        "its store could not be opened ({}); put it back and restart fss",
                        e.message
                    );
                    match volume_id.and_then(|id| self.attach_stand_in(&vol, &id, &s, &e.message)) {
                        Some(snap) => SnapshotLive::Blocked {
                            snap,
                            why,
                            stand_in: true,
                        },
                        None => SnapshotLive::Unavailable(e.message),
                    }
                }
            };
            inner
                .snapshots
                .insert(s.name.clone(), SnapshotEntry { record: s, live });
        }
        let volumes: Vec<String> = inner.volumes.keys().cloned().collect();
        for v in volumes {
            self.block_dependents(inner, &v);
        }
    }

    /// Finish the rollbacks a stop interrupted, before anything is served.
    pub(super) fn resume_rollbacks(&self, inner: &mut Inner) {
        let records = std::mem::take(&mut inner.meta.rollbacks);
        let mut keep = Vec::new();
        for r in records {
            let current = inner.volumes.get(&r.volume);
            if current.is_none_or(|v| v.record.id != r.volume_id) {
                tracing::info!(volume = %r.volume, "forgetting the interrupted rollback of a volume that was removed");
                continue;
            }
            let Some(vol) = inner.volume(&r.volume).cloned() else {
                tracing::error!(volume = %r.volume, snapshot = %r.snapshot,
                    "cannot finish the interrupted rollback: the volume is offline; it is retried at the next start");
                keep.push(r);
                continue;
            };
            let snap = inner
                .snapshot(&r.snapshot)
                .filter(|s| s.info().id == r.snapshot_id && s.is_valid())
                .cloned();
            let failed = match snap {
                None => Some(format!(
                    "a rollback to snapshot '{}' was interrupted and the snapshot is gone or \
                     unusable (a transient snapshot does not survive a restart): the volume \
                     holds a mix of the snapshot's data and later data and is not served; roll \
                     it back to another of its snapshots (`fss rollback {} SNAPSHOT`), or check \
                     it, `fss volume remove {}` and add it again",
                    r.snapshot, r.volume, r.volume
                )),
                Some(snap) => {
                    tracing::warn!(volume = %r.volume, snapshot = %r.snapshot,
                        "resuming the rollback of volume {} to snapshot {} interrupted by a stop", r.volume, r.snapshot);
                    match rollback_pass(&vol, &snap, self.hooks.rollback_pause, &mut |_, _| {}) {
                        Ok((extents, bytes)) => {
                            tracing::info!(volume = %r.volume, snapshot = %r.snapshot, extents, bytes,
                                "finished the interrupted rollback of volume {} to snapshot {}", r.volume, r.snapshot);
                            None
                        }
                        Err(e) => Some(format!(
                            "the interrupted rollback to snapshot '{}' could not be finished \
                             ({}); the volume holds a mix and is not served: run `fss rollback \
                             {} {}` again",
                            r.snapshot, e.message, r.volume, r.snapshot
                        )),
                    }
                }
            };
            if let Some(why) = failed {
                tracing::error!(volume = %r.volume, "{why}");
                self.take_offline(inner, &r.volume, vol, why);
                keep.push(r);
            }
        }
        inner.meta.rollbacks = keep;
    }
}

/// Reopen a persistent snapshot's store and attach it to its volume.
fn attach(
    vol: &Volume,
    s: &SnapshotState,
    watch: &std::sync::Arc<crate::schedule::space::SpaceWatch>,
) -> Result<fss_core::Snapshot> {
    let place = StorePlace {
        path: s.store.clone(),
        owned: s.store_owned,
        is_device: s.store_is_device,
        fresh: false,
    };
    let expect = StoreIdentity {
        volume_id: vol.identity(),
        volume_len: vol.len(),
        snapshot_id: s.id,
    };
    let (store, rec) = stores::reopen(&place, &expect, s.max_store_bytes, watch)?;
    let opts = SnapshotOptions {
        persistent: true,
        on_store_error: s.on_store_error.into(),
        ..SnapshotOptions::default()
    };
    vol.attach_snapshot(&opts, store, rec)
        .map_err(DaemonError::from)
}
