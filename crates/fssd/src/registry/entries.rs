//! The registry's state: one entry per volume and per snapshot, each holding its record (as
//! saved in `state.json`) and either its live engine object or why it has none.

use crate::state::{RestoreState, RollbackState, SnapshotState, State, VolumeState};
use fss_core::{Snapshot, Volume};
use indexmap::IndexMap;

/// What a volume is now.
pub(crate) enum VolumeLive {
    /// Open and served.
    Online(Volume),
    /// Could not be opened at start, and why: not served, no engine object.
    Unopened(String),
    /// Open, but withdrawn from front-ends because a rollback or a restore failed midway or
    /// was interrupted, and why: only running it again (which needs the engine object), or
    /// abandoning a restore, brings it back.
    Withdrawn {
        /// The engine object.
        volume: Volume,
        /// What failed and what to do.
        why: String,
    },
}

/// A volume the registry knows.
pub(crate) struct VolumeEntry {
    /// As saved.
    pub(crate) record: VolumeState,
    /// As it is now.
    pub(crate) live: VolumeLive,
}

impl VolumeEntry {
    /// The engine object, served or not.
    pub(crate) fn volume(&self) -> Option<&Volume> {
        match &self.live {
            VolumeLive::Online(v) | VolumeLive::Withdrawn { volume: v, .. } => Some(v),
            VolumeLive::Unopened(_) => None,
        }
    }

    /// Why it is not served, if so.
    pub(crate) fn offline(&self) -> Option<&str> {
        match &self.live {
            VolumeLive::Online(_) => None,
            VolumeLive::Unopened(why) | VolumeLive::Withdrawn { why, .. } => Some(why),
        }
    }
}

/// What a snapshot is now.
pub(crate) enum SnapshotLive {
    /// Attached to its volume.
    Live(Snapshot),
    /// Could not be brought back at start, and why.
    Unavailable(String),
    /// In its volume's chain but not served, and why: its store is unavailable (it stands in
    /// with `stand_in::StandIn`), or it needs such a newer snapshot's store.
    Blocked {
        /// The engine object.
        snap: Snapshot,
        /// Why it is not served.
        why: String,
        /// Whether its own store is the unavailable one (else a newer snapshot's is).
        stand_in: bool,
    },
}

/// A snapshot the registry knows.
pub(crate) struct SnapshotEntry {
    /// As saved.
    pub(crate) record: SnapshotState,
    /// As it is now.
    pub(crate) live: SnapshotLive,
}

impl SnapshotEntry {
    /// The engine object, if it is served.
    pub(crate) fn snapshot(&self) -> Option<&Snapshot> {
        match &self.live {
            SnapshotLive::Live(s) => Some(s),
            SnapshotLive::Unavailable(_) | SnapshotLive::Blocked { .. } => None,
        }
    }

    /// The engine object, served or not.
    pub(crate) fn attached(&self) -> Option<&Snapshot> {
        match &self.live {
            SnapshotLive::Live(snap) | SnapshotLive::Blocked { snap, .. } => Some(snap),
            SnapshotLive::Unavailable(_) => None,
        }
    }

    /// Why it is unavailable, if so.
    pub(crate) fn unavailable(&self) -> Option<&str> {
        match &self.live {
            SnapshotLive::Live(_) => None,
            SnapshotLive::Unavailable(why) | SnapshotLive::Blocked { why, .. } => Some(why),
        }
    }
}

/// Everything under the registry's main lock.
pub(crate) struct Inner {
    /// The state file's other fields (version, clean stop, boot id, unfinished rollbacks and
    /// restores);
    /// its `volumes` and `snapshots` are empty: they live in the entries.
    pub(crate) meta: State,
    /// Volumes by name, in the order they were added.
    pub(crate) volumes: IndexMap<String, VolumeEntry>,
    /// Snapshots by name, in the order they were taken.
    pub(crate) snapshots: IndexMap<String, SnapshotEntry>,
    /// Whether the previous run did not stop cleanly.
    pub(crate) recovered_from_crash: bool,
}

impl Inner {
    /// The state file's contents.
    pub(crate) fn to_state(&self) -> State {
        State {
            volumes: self.volumes.values().map(|e| e.record.clone()).collect(),
            snapshots: self.snapshots.values().map(|e| e.record.clone()).collect(),
            ..self.meta.clone()
        }
    }

    /// The engine object of volume `name`, served or not.
    pub(crate) fn volume(&self, name: &str) -> Option<&Volume> {
        self.volumes.get(name).and_then(VolumeEntry::volume)
    }

    /// Why volume `name` is not served, if it exists and is not.
    pub(crate) fn offline(&self, name: &str) -> Option<&str> {
        self.volumes.get(name).and_then(VolumeEntry::offline)
    }

    /// The engine object of snapshot `name`, if it is live.
    pub(crate) fn snapshot(&self, name: &str) -> Option<&Snapshot> {
        self.snapshots.get(name).and_then(SnapshotEntry::snapshot)
    }

    /// Why volume `name`'s snapshots are unverified, if they are.
    pub(crate) fn unverified(&self, volume: &str) -> Option<&str> {
        self.volumes
            .get(volume)
            .and_then(|v| v.record.unverified.as_deref())
    }

    /// The snapshots of volume `volume`.
    pub(crate) fn snapshots_of<'a>(
        &'a self,
        volume: &'a str,
    ) -> impl Iterator<Item = &'a SnapshotEntry> + 'a {
        self.snapshots
            .values()
            .filter(move |s| s.record.volume == volume)
    }

    /// The unfinished rollback of the volume `volume` (this incarnation of it), if any.
    pub(crate) fn unfinished_rollback(&self, volume: &str) -> Option<&RollbackState> {
        let id = &self.volumes.get(volume)?.record.id;
        self.meta
            .rollbacks
            .iter()
            .find(|r| r.volume == volume && &r.volume_id == id)
    }

    /// The unfinished restore onto the volume `volume` (this incarnation of it), if any.
    pub(crate) fn unfinished_restore(&self, volume: &str) -> Option<&RestoreState> {
        let id = &self.volumes.get(volume)?.record.id;
        self.meta
            .restores
            .iter()
            .find(|r| r.volume == volume && &r.volume_id == id)
    }
}
