//! Persistent snapshots whose store is missing or unreadable at start. Each is attached to its
//! volume with a stand-in store (`crate::stand_in`), so that a write it would have needed
//! preserved invalidates it for good instead of going unnoticed; it is not served, and neither
//! are the older snapshots of its volume, which may resolve blocks through its map.

use super::entries::{SnapshotEntry, SnapshotLive};
use super::{Inner, Registry};
use crate::error::Result;
use crate::paths::Paths;
use crate::stand_in::{self, StandIn};
use crate::state::{SnapshotState, State};
use fss_core::export::Export;
use fss_core::store::Recovered;
use fss_core::{Snapshot, SnapshotOptions, Volume};
use std::time::{Duration, UNIX_EPOCH};

/// Fold the invalidations that stand-ins recorded in the last run into `state`, save it, and
/// only then remove their markers.
///
/// # Errors
/// The state could not be saved (the markers are then kept for the next start).
pub(super) fn fold_invalidations(paths: &Paths, state: &mut State) -> Result<()> {
    let dir = paths.invalidated_dir();
    let mut folded = Vec::new();
    for s in &mut state.snapshots {
        let Some(vol) = state.volumes.iter().find(|v| v.name == s.volume) else {
            continue;
        };
        let marker = stand_in::marker_path(&dir, &vol.id, s.id);
        if let Some(reason) = stand_in::read_marker(&marker) {
            tracing::warn!(snapshot = %s.name, %reason,
                "snapshot {} was invalidated while its store was unavailable", s.name);
            s.invalid.get_or_insert(reason);
            folded.push(marker);
        }
    }
    if !folded.is_empty() {
        state.save(&paths.state_file())?;
        for m in folded {
            let _ = std::fs::remove_file(m);
        }
    }
    Ok(())
}

impl Registry {
    /// Attach `s`, whose store could not be opened because of `why`, with a stand-in store.
    /// `None` if even that fails (the volume then runs without it, as before stand-ins).
    pub(super) fn attach_stand_in(
        &self,
        vol: &Volume,
        volume_id: &str,
        s: &SnapshotState,
        why: &str,
    ) -> Option<Snapshot> {
        let marker = stand_in::marker_path(&self.paths.invalidated_dir(), volume_id, s.id);
        let store = StandIn::new(s.store.clone(), why.to_string(), marker);
        let rec = Recovered {
            name: s.name.clone(),
            snapshot_id: s.id,
            created: UNIX_EPOCH + Duration::from_secs(s.created),
            cluster_size: s.cluster_size,
            map: fss_core::cluster_map::ClusterMap::new(
                u32::try_from(s.cluster_size / fss_core::BLOCK_SIZE).unwrap_or(u32::MAX),
            ),
            invalid: s.invalid.clone(),
        };
        let opts = SnapshotOptions {
            persistent: true,
            on_store_error: s.on_store_error.into(),
            ..SnapshotOptions::default()
        };
        match vol.attach_snapshot(&opts, Box::new(store), rec) {
            Ok(snap) => Some(snap),
            Err(e) => {
                tracing::error!(snapshot = %s.name, error = %e,
                    "could not keep the snapshot in its volume's chain: writes its store should preserve now go unnoticed");
                None
            }
        }
    }

    /// Withhold from front-ends every persistent snapshot of `volume` older than one standing
    /// in for an unavailable store, and serve again those no longer behind one.
    pub(super) fn block_dependents(&self, inner: &mut Inner, volume: &str) {
        let mut newer_stand_in: Option<String> = None;
        let mut newest_first: Vec<(u64, String)> = inner
            .snapshots_of(volume)
            .filter(|e| e.record.persistent)
            .map(|e| (e.record.id, e.record.name.clone()))
            .collect();
        newest_first.sort_unstable_by(|a, b| b.cmp(a));
        for (_, name) in newest_first {
            let Some(entry) = inner.snapshots.get_mut(&name) else {
                continue;
            };
            if is_stand_in(entry) {
                newer_stand_in.get_or_insert(name);
                continue;
            }
            let live = std::mem::replace(&mut entry.live, SnapshotLive::Unavailable(String::new()));
            entry.live = match (live, &newer_stand_in) {
                (SnapshotLive::Live(snap), Some(n)) => {
                    self.unpublish(&name);
                    let why = format!(
                        "it needs the store of the newer snapshot '{n}', which is unavailable; \
                         put that store back and restart fss"
                    );
                    SnapshotLive::Blocked {
                        snap,
                        why,
                        stand_in: false,
                    }
                }
                (
                    SnapshotLive::Blocked {
                        snap,
                        stand_in: false,
                        ..
                    },
                    None,
                ) => {
                    self.publish(&name, Export::Snapshot(snap.clone()));
                    SnapshotLive::Live(snap)
                }
                (live, _) => live,
            };
        }
    }
}

/// Whether `entry` stands in for an unavailable store (rather than waiting on a newer one).
pub(super) fn is_stand_in(entry: &SnapshotEntry) -> bool {
    matches!(&entry.live, SnapshotLive::Blocked { stand_in: true, .. })
}
