//! The store side of a snapshot read: find, for every cluster of the request, which snapshot's
//! store holds which of its blocks, then read them with as few store I/Os as possible.
//!
//! Why batch: first overwrites in volume order give neighbouring clusters consecutive slots,
//! so a sequential snapshot read would otherwise make one small store read per cluster (16
//! reads of 32 KiB for a 1 MiB request with half of every 64 KiB cluster preserved, one after
//! another, with no readahead). Reads of one store whose slots follow each other are merged
//! into one I/O, reading the small gaps between the wanted bytes and throwing them away.

use crate::chain::SnapState;
use crate::cluster_map::{mask_is_empty, mask_keep, mask_remove, mask_runs};
use crate::error::Result;
use crate::geometry::{clip, Cluster, Geometry, BLOCK_SIZE};
use std::cell::RefCell;
use std::ops::Range;
use std::sync::Arc;

/// The most unwanted bytes a merged store read may carry between two wanted ranges: below
/// it, one larger I/O costs less than two (a seek or a round trip is worth well over 64 KiB
/// of transfer on disks and SSDs alike).
const MERGE_GAP: u64 = 64 << 10;
/// The largest merged store read.
const MERGE_MAX: u64 = 8 << 20;

/// Bytes of one snapshot's store that go into the request's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Segment {
    /// Index of the snapshot in the chain slice the read resolves through.
    pub snap: usize,
    /// The slot in that store.
    pub slot: u32,
    /// Byte offset inside the slot.
    pub in_slot: u64,
    /// Where the bytes go in the request's buffer.
    pub to: Range<usize>,
}

impl Segment {
    /// Its position in the store as if slots were laid end to end (what merging compares).
    pub(super) fn store_start(&self, cluster_size: u64) -> u64 {
        u64::from(self.slot) * cluster_size + self.in_slot
    }

    pub(super) fn store_end(&self, cluster_size: u64) -> u64 {
        self.store_start(cluster_size) + self.to.len() as u64
    }
}

/// The most scratch space a thread keeps between requests (bigger merged reads allocate
/// their own): request threads are many, and each keeps its scratch while it lives.
const KEEP_SCRATCH: usize = 1 << 20;

thread_local! {
    /// Reused scratch space for merged reads with gaps: grown (and zeroed) once per thread,
    /// not once per request.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Fill the parts of `buf` (the volume's bytes from `offset` on) that the maps of `snaps` hold
/// for the blocks `open` of each cluster (the newest holder wins: the first in `snaps`).
/// Returns, per cluster and in the same order, the blocks found in no map.
pub(super) fn read_from_stores(
    g: &Geometry,
    snaps: &[Arc<SnapState>],
    clusters: impl Iterator<Item = (Cluster, Vec<u16>)>,
    buf: &mut [u8],
    offset: u64,
) -> Result<Vec<Vec<u16>>> {
    let mut segments = Vec::new();
    let open: Vec<Vec<u16>> = clusters
        .map(|(cluster, open)| {
            plan_cluster(g, snaps, cluster, open, buf.len(), offset, &mut segments)
        })
        .collect();
    read_segments(g.cluster_size(), snaps, segments, buf)?;
    Ok(open)
}

/// The segments of `cluster`'s blocks `open` that `snaps` hold, appended to `out`; returns the
/// blocks none holds.
pub(super) fn plan_cluster(
    g: &Geometry,
    snaps: &[Arc<SnapState>],
    cluster: Cluster,
    mut open: Vec<u16>,
    len: usize,
    offset: u64,
    out: &mut Vec<Segment>,
) -> Vec<u16> {
    let first = g.first_block_of(cluster);
    for (i, s) in snaps.iter().enumerate() {
        if mask_is_empty(&open) {
            break;
        }
        let (slot, hit) = {
            let map = s.map();
            let Some((slot, have)) = map.get(cluster.key()) else {
                continue;
            };
            let mut hit = open.clone();
            mask_keep(&mut hit, have);
            (slot, hit)
        };
        for (b, n) in mask_runs(&hit) {
            let span = clip(first + u64::from(b), u64::from(n), offset, len as u64);
            out.push(Segment {
                snap: i,
                slot,
                in_slot: span.start - first * BLOCK_SIZE,
                to: span.in_buf(offset),
            });
        }
        mask_remove(&mut open, &hit);
    }
    open
}

/// Read `segments` into `buf`, merging those of one store that lie close together in it.
pub(super) fn read_segments(
    cluster_size: u64,
    snaps: &[Arc<SnapState>],
    mut segments: Vec<Segment>,
    buf: &mut [u8],
) -> Result<()> {
    segments.sort_by_key(|s| (s.snap, s.slot, s.in_slot));
    let mut rest = segments.as_slice();
    while let Some(head) = rest.first() {
        let n = 1 + rest
            .windows(2)
            .take_while(|w| mergeable(&w[0], &w[1], head, cluster_size))
            .count();
        let (group, tail) = rest.split_at(n);
        read_group(snaps[head.snap].store.as_ref(), cluster_size, group, buf)?;
        rest = tail;
    }
    Ok(())
}

/// Whether `b` may join the merged read that starts with `head` and so far ends with `a`.
fn mergeable(a: &Segment, b: &Segment, head: &Segment, cluster_size: u64) -> bool {
    let (a_end, b_start) = (a.store_end(cluster_size), b.store_start(cluster_size));
    b.snap == a.snap
        && b_start >= a_end
        && b_start - a_end <= MERGE_GAP
        && b.store_end(cluster_size) - head.store_start(cluster_size) <= MERGE_MAX
}

/// One store read for `group` (segments of one store, in store order): straight into `buf`
/// when the group is one run in the store and in `buf`, else through the scratch space.
fn read_group(
    store: &dyn crate::store::Store,
    cluster_size: u64,
    group: &[Segment],
    buf: &mut [u8],
) -> Result<()> {
    let (Some(head), Some(last)) = (group.first(), group.last()) else {
        return Ok(());
    };
    let start = head.store_start(cluster_size);
    let len = last.store_end(cluster_size) - start;
    let dense = group.windows(2).all(|w| {
        w[1].store_start(cluster_size) == w[0].store_end(cluster_size)
            && w[1].to.start == w[0].to.end
    });
    if dense {
        let to = head.to.start..last.to.end;
        return store.read_slots(head.slot, head.in_slot, &mut buf[to], cluster_size);
    }
    let want = usize::try_from(len).unwrap_or(usize::MAX);
    let mut scatter = |space: &mut [u8]| -> Result<()> {
        store.read_slots(head.slot, head.in_slot, space, cluster_size)?;
        for s in group {
            let at = (s.store_start(cluster_size) - start) as usize;
            buf[s.to.clone()].copy_from_slice(&space[at..at + s.to.len()]);
        }
        Ok(())
    };
    if want > KEEP_SCRATCH {
        return scatter(&mut vec![0u8; want]);
    }
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        if scratch.len() < want {
            scratch.resize(want, 0);
        }
        scatter(&mut scratch[..want])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(snap: usize, slot: u32, in_slot: u64, to: Range<usize>) -> Segment {
        Segment {
            snap,
            slot,
            in_slot,
            to,
        }
    }

    #[test]
    fn merging_rules() {
        let cs = 64 << 10;
        let head = seg(0, 3, 0, 0..32768);
        // The next slot's first half: a 32 KiB gap, merged.
        assert!(mergeable(&head, &seg(0, 4, 0, 65536..98304), &head, cs));
        // Another store, never.
        assert!(!mergeable(&head, &seg(1, 4, 0, 65536..98304), &head, cs));
        // Two slots on: a 96 KiB gap, not merged.
        assert!(!mergeable(&head, &seg(0, 5, 0, 0..4096), &head, cs));
        // Beyond the largest merged read.
        let far = seg(0, 3 + 128, 0, 0..4096);
        let before = seg(0, 3 + 127, 32768, 0..32768);
        assert!(!mergeable(&before, &far, &head, cs));
    }
}
