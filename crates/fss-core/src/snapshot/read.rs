//! The snapshot read path: resolve each block through the maps of the snapshot's chain from
//! itself to the newest, then the volume, then check again (DESIGN decision 5).

use super::batch_read;
use super::store_reads::{plan_cluster, read_from_stores, Segment};
use crate::chain::{Chains, SnapState};
use crate::cluster_map::{mask_is_empty, mask_remove, mask_runs};
use crate::core::VolumeCore;
use crate::error::{Error, ErrorKind, Result};
use crate::geometry::{block_span, clip, Geometry};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Snapshot reads longer than this go through `batch_read` (all pieces in flight at once);
/// a one-block read is one piece anyway.
const BATCHED_SNAPSHOT_READ: u64 = crate::geometry::BLOCK_SIZE;

/// Read `buf` at `offset` from snapshot `snap` of the volume `core`.
pub(super) fn read(
    core: &VolumeCore,
    snap: &Arc<SnapState>,
    buf: &mut [u8],
    offset: u64,
) -> Result<()> {
    let object = snap.label.as_str();
    core.check_range("read", object, offset, buf.len() as u64)?;
    if buf.is_empty() {
        return Ok(());
    }
    let chains = core.chains();
    let (g, later) = live_chain(&chains, snap)?;
    let len = buf.len() as u64;
    let (b0, b1) = block_span(offset, len);
    if len > BATCHED_SNAPSHOT_READ {
        batch_read::read(core, &g, later, buf, offset, object)?;
        if !snap.is_valid() {
            return Err(snap.invalid_error());
        }
        return Ok(());
    }
    let (unmapped, any_mapped) = unmapped_span(&g, later, b0, b1);
    if let Some((lo, hi)) = unmapped {
        // Read that span from the volume first, in one I/O, and only then consult the
        // maps: a block not mapped at that later moment had not been preserved, so it had
        // not been overwritten either (a volume write waits for its pre-image), and the
        // volume read saw the snapshot's bytes. Mapped blocks are overlaid from stores.
        let span = clip(lo, hi - lo, offset, len);
        let piece = &mut buf[span.in_buf(offset)];
        // Nothing preserved in range: a volume read. Otherwise the pre-image reads of
        // writes beside it profit from the cache.
        let done = if any_mapped {
            core.dev.read_at_cached(piece, span.start)
        } else {
            core.dev.read_at(piece, span.start)
        };
        done.map_err(|e| Error::io("read", object, e).at(span.start))?;
    }
    overlay_stores(snap, &g, later, buf, offset)
}

/// The snapshot's geometry and the chain from it to the newest snapshot, if it is live and
/// valid.
fn live_chain<'c>(
    chains: &'c Chains,
    snap: &Arc<SnapState>,
) -> Result<(Geometry, &'c [Arc<SnapState>])> {
    let object = snap.label.as_str();
    if snap.deleted.load(Ordering::Acquire) {
        return Err(Error::new(
            ErrorKind::NotFound,
            "read",
            object,
            "the snapshot was deleted",
        ));
    }
    if !snap.is_valid() {
        return Err(snap.invalid_error());
    }
    let (g, idx) = chains.live(snap, "read", object)?;
    Ok((g, &chains.chain[snap.chain][idx..]))
}

/// After the volume's bytes of `buf` were read: put over them every block of the range that
/// a map of `later` holds now (the second look), and check the snapshot is still valid.
fn overlay_stores(
    snap: &SnapState,
    g: &Geometry,
    later: &[Arc<SnapState>],
    buf: &mut [u8],
    offset: u64,
) -> Result<()> {
    let (b0, b1) = block_span(offset, buf.len() as u64);
    let wanted = g
        .clusters_of(b0, b1)
        .map(|c| (c, g.blocks_in_range(c, b0, b1)));
    read_from_stores(g, later, wanted, buf, offset)?;
    if !snap.is_valid() {
        return Err(snap.invalid_error());
    }
    Ok(())
}

/// One store block a direct read reads: the snapshot whose store holds it (kept alive, and
/// with it the descriptor the read uses) and where in that store.
pub(crate) struct StoreBlock {
    holder: Arc<SnapState>,
    slot: u32,
    in_slot: u64,
}

impl std::fmt::Debug for StoreBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreBlock")
            .field("holder", &self.holder.name)
            .field("slot", &self.slot)
            .field("in_slot", &self.in_slot)
            .finish()
    }
}

/// Where a direct read (`crate::direct_read`) of `buf.len()` bytes at `offset` reads: the
/// descriptor, the offset in it, and the store block when it is one. Two cases:
/// - a read of at most one block (or two, unaligned) of which no map of the chain holds any:
///   the volume's file (its bytes are on the volume now; the second look follows);
/// - a read inside one block that a map holds: that store's file, at the block's place
///   (preserved bytes never change; `finish_direct` checks the block still resolves there).
///
/// `None`: read with [`read`].
pub(super) fn direct(
    core: &VolumeCore,
    snap: &Arc<SnapState>,
    offset: u64,
    buf: &[u8],
) -> Option<(RawFd, u64, Option<StoreBlock>)> {
    let len = buf.len() as u64;
    if len == 0 || len > BATCHED_SNAPSHOT_READ || offset.checked_add(len)? > core.len {
        return None;
    }
    let chains = core.chains();
    let (g, later) = live_chain(&chains, snap).ok()?;
    let (b0, b1) = block_span(offset, len);
    // At most two blocks: the unmapped span is the whole range exactly when no block of it is
    // mapped (there is no room for a mapped block between two unmapped ones).
    match unmapped_span(&g, later, b0, b1).0 {
        Some(span) if span == (b0, b1) => core
            .dev
            .read_source(offset, buf)
            .map(|fd| (fd.as_raw_fd(), offset, None)),
        Some(_) => None,
        None => {
            let seg = one_store_segment(&g, later, offset, buf.len())?;
            let holder = &later[seg.snap];
            let (fd, at) = holder.store.read_source(seg.slot, seg.in_slot, buf)?;
            let block = StoreBlock {
                holder: Arc::clone(holder),
                slot: seg.slot,
                in_slot: seg.in_slot,
            };
            Some((fd.as_raw_fd(), at, Some(block)))
        }
    }
}

/// The one store segment that holds all of `[offset, offset + len)`, a range inside one block
/// every byte of which some map of `later` holds; `None` otherwise.
fn one_store_segment(
    g: &Geometry,
    later: &[Arc<SnapState>],
    offset: u64,
    len: usize,
) -> Option<Segment> {
    let (b0, b1) = block_span(offset, len as u64);
    if b1 - b0 != 1 {
        return None;
    }
    let cluster = g.clusters_of(b0, b1).next()?;
    let mut segments = Vec::new();
    let open = g.blocks_in_range(cluster, b0, b1);
    let open = plan_cluster(g, later, cluster, open, len, offset, &mut segments);
    match segments.as_slice() {
        [seg] if mask_is_empty(&open) && seg.to == (0..len) => segments.pop(),
        _ => None,
    }
}

/// Complete a direct read once its bytes are in `buf`: from the volume, as [`read`] does after
/// its volume read; from a store block, nothing to add if the block still resolves to the
/// same place (it was not moved by a delete meanwhile), else the read is done again.
pub(super) fn finish_direct(
    core: &VolumeCore,
    snap: &Arc<SnapState>,
    buf: &mut [u8],
    offset: u64,
    from: Option<&StoreBlock>,
) -> Result<()> {
    let chains = core.chains();
    let (g, later) = live_chain(&chains, snap)?;
    let Some(block) = from else {
        return overlay_stores(snap, &g, later, buf, offset);
    };
    let same = one_store_segment(&g, later, offset, buf.len()).is_some_and(|seg| {
        Arc::ptr_eq(&later[seg.snap], &block.holder)
            && (seg.slot, seg.in_slot) == (block.slot, block.in_slot)
    });
    drop(chains);
    if same {
        Ok(())
    } else {
        read(core, snap, buf, offset)
    }
}

/// The span of blocks of `[b0, b1)` that no map of `later` holds yet (only those need the
/// volume; `None` if every block is in a map), and whether any block is mapped.
fn unmapped_span(
    g: &Geometry,
    later: &[Arc<SnapState>],
    b0: u64,
    b1: u64,
) -> (Option<(u64, u64)>, bool) {
    let mut unmapped: Option<(u64, u64)> = None;
    let mut any_mapped = false;
    for cluster in g.clusters_of(b0, b1) {
        let mut open = g.blocks_in_range(cluster, b0, b1);
        for s in later {
            if let Some((_, have)) = s.map().get(cluster.key()) {
                mask_remove(&mut open, have);
                any_mapped = true;
            }
        }
        let runs = mask_runs(&open);
        if let (Some(&(lo, _)), Some(&(hl, hn))) = (runs.first(), runs.last()) {
            let first = g.first_block_of(cluster);
            let (lo, hi) = (first + u64::from(lo), first + u64::from(hl + hn));
            unmapped = Some(unmapped.map_or((lo, hi), |(a, _)| (a, hi)));
        }
    }
    (unmapped, any_mapped)
}
