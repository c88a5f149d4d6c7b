//! Change lists: which blocks changed on the volume since a snapshot (or between two), and
//! the check of an older/newer snapshot pair that diffs and incremental backups share.

use super::Snapshot;
use crate::chain::{Chains, SnapState};
use crate::cluster_map::{mask_keep, mask_remove, mask_runs};
use crate::core::VolumeCore;
use crate::device::{push_extent, Extent};
use crate::error::{Error, ErrorKind, Result};
use crate::geometry::{block_span, clip, Cluster, Geometry};
use std::ops::Range;
use std::sync::Arc;

/// What a pair of snapshots is checked for by [`Snapshot::check_older_than`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairUse {
    /// An exact change list between them ([`Snapshot::changed_until`]): both must also be of
    /// one kind (persistent or transient), since each kind forms its own chain.
    Diff,
    /// An incremental backup from the older to the newer: any older snapshot of the same
    /// volume will do.
    IncrementalBackup,
}

impl Snapshot {
    /// Check that `self` is an older snapshot of the same volume as `newer`, as a change list
    /// or an incremental backup from `self` to `newer` needs (see [`PairUse`]).
    ///
    /// # Errors
    /// `InvalidArgument`, saying which condition fails and what to give instead.
    pub fn check_older_than(&self, newer: &Snapshot, purpose: PairUse) -> Result<()> {
        let (a, b) = (&self.snap, &newer.snap);
        let (op, object) = match purpose {
            PairUse::Diff => ("diff", format!("snapshot '{}'", a.name)),
            PairUse::IncrementalBackup => ("back up", format!("snapshot '{}'", b.name)),
        };
        let invalid =
            |detail: String| Err(Error::new(ErrorKind::InvalidArgument, op, &object, detail));
        if !self.same_volume(newer) {
            return invalid(format!(
                "'{}' is a snapshot of volume '{}', not of '{}': {} needs an older snapshot of \
                 the same volume",
                a.name,
                self.vol.name,
                newer.vol.name,
                what(purpose)
            ));
        }
        if purpose == PairUse::Diff && Arc::ptr_eq(a, b) {
            return invalid(format!(
                "'{}' and '{}' are the same snapshot",
                a.name, b.name
            ));
        }
        if a.id >= b.id {
            return invalid(format!(
                "'{}' (id {}) is not older than '{}' (id {}): {} goes from an older snapshot \
                 to a newer one",
                a.name,
                a.id,
                b.name,
                b.id,
                what(purpose)
            ));
        }
        if purpose == PairUse::Diff && a.chain != b.chain {
            return invalid(format!(
                "'{}' and '{}' are not both persistent or both transient: persistent and \
                 transient snapshots form separate chains, and exact change lists exist only \
                 between snapshots of one chain",
                a.name, b.name
            ));
        }
        Ok(())
    }
}

fn what(purpose: PairUse) -> &'static str {
    match purpose {
        PairUse::Diff => "a diff",
        PairUse::IncrementalBackup => "an incremental backup",
    }
}

/// The blocks of `[offset, offset + len)` changed on the volume since snapshot `snap` was
/// taken (until `until` if given; exact to 4 KiB): those some map of its chain holds, from it
/// up to (not including) `until`, or to the newest.
pub(super) fn changed_since(
    core: &VolumeCore,
    snap: &Arc<SnapState>,
    until: Option<&Arc<SnapState>>,
    offset: u64,
    len: u64,
) -> Result<Vec<Extent>> {
    let object = format!("snapshot '{}'", snap.name);
    core.check_range("map changes of", &object, offset, len)?;
    let chains = core.chains();
    let (g, span) = chain_span(&chains, snap, until, &object)?;
    if !snap.is_valid() {
        return Err(snap.invalid_error());
    }
    if let Some(u) = until.filter(|u| !u.is_valid()) {
        return Err(u.invalid_error());
    }
    let mut out = Vec::new();
    if len == 0 {
        return Ok(out);
    }
    let later = &chains.chain[snap.chain][span];
    let (b0, b1) = block_span(offset, len);
    for cluster in g.clusters_of(b0, b1) {
        cluster_changes(&g, later, cluster, (b0, b1), (offset, len), &mut out);
    }
    Ok(out)
}

/// The geometry, and the snapshots of `snap`'s chain whose maps hold the blocks first written
/// after `snap` and before `until`: those from `snap` up to, not including, `until`.
fn chain_span(
    chains: &Chains,
    snap: &Arc<SnapState>,
    until: Option<&Arc<SnapState>>,
    object: &str,
) -> Result<(Geometry, Range<usize>)> {
    let (g, idx) = chains.live(snap, "map changes of", object)?;
    let chain = &chains.chain[snap.chain];
    let end = match until {
        None => chain.len(),
        Some(u) => match chain.iter().position(|s| Arc::ptr_eq(s, u)) {
            Some(e) if e > idx => e,
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    "map changes of",
                    object,
                    format!(
                        "'{}' is not a newer snapshot of the same volume and kind (persistent or transient)",
                        u.name
                    ),
                ))
            }
        },
    };
    Ok((g, idx..end))
}

/// Append to `out` the extents of `cluster` inside blocks `[b0, b1)` and bytes
/// `[offset, offset + len)`, marked changed where a map of `later` holds them.
fn cluster_changes(
    g: &Geometry,
    later: &[Arc<SnapState>],
    cluster: Cluster,
    (b0, b1): (u64, u64),
    (offset, len): (u64, u64),
    out: &mut Vec<Extent>,
) {
    let in_range = g.blocks_in_range(cluster, b0, b1);
    let mut changed = vec![0u16; in_range.len()];
    for s in later {
        s.map().or_mask_into(cluster.key(), &mut changed);
    }
    mask_keep(&mut changed, &in_range);
    let mut unchanged = in_range.clone();
    mask_remove(&mut unchanged, &changed);
    let mut runs: Vec<(u32, u32, bool)> = mask_runs(&changed)
        .into_iter()
        .map(|(a, n)| (a, n, true))
        .chain(
            mask_runs(&unchanged)
                .into_iter()
                .map(|(a, n)| (a, n, false)),
        )
        .collect();
    runs.sort_unstable();
    let first = g.first_block_of(cluster);
    for (a, n, data) in runs {
        let run = clip(first + u64::from(a), u64::from(n), offset, len);
        push_extent(
            out,
            Extent {
                offset: run.start,
                len: run.len(),
                data,
            },
        );
    }
}
