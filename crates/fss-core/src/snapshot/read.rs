//! The snapshot read path: resolve each block through the maps of the snapshot's chain from
//! itself to the newest, then the volume, then check again (DESIGN decision 5).

use super::store_reads::read_from_stores;
use crate::chain::SnapState;
use crate::cluster_map::{mask_is_empty, mask_remove, mask_runs};
use crate::core::VolumeCore;
use crate::error::{Error, ErrorKind, Result};
use crate::geometry::{block_span, clip, Cluster, Geometry, Span};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Snapshot reads at least this long that need both the volume and a store read the two
/// in parallel (below it, a thread hand-off costs more than the overlap saves).
const PARALLEL_SNAPSHOT_READ: u64 = 256 << 10;

/// Read `buf` at `offset` from snapshot `snap` of the volume `core`.
pub(super) fn read(
    core: &VolumeCore,
    snap: &Arc<SnapState>,
    buf: &mut [u8],
    offset: u64,
) -> Result<()> {
    let object = format!("snapshot '{}'", snap.name);
    core.check_range("read", &object, offset, buf.len() as u64)?;
    if buf.is_empty() {
        return Ok(());
    }
    let chains = core.chains();
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
    let (g, idx) = chains.live(snap, "read", &object)?;
    let later = &chains.chain[snap.chain][idx..];
    let len = buf.len() as u64;
    let (b0, b1) = block_span(offset, len);
    let clusters = g.clusters_of(b0, b1);
    let (unmapped, any_mapped) = unmapped_span(&g, later, b0, b1);
    if let Some((lo, hi)) = unmapped {
        // Read that span from the volume first, in one I/O, and only then consult the
        // maps: a block not mapped at that later moment had not been preserved, so it had
        // not been overwritten either (a volume write waits for its pre-image), and the
        // volume read saw the snapshot's bytes. Mapped blocks are overlaid from stores.
        let span = clip(lo, hi - lo, offset, len);
        if any_mapped && len >= PARALLEL_SNAPSHOT_READ {
            read_parallel(core, &g, later, buf, offset, span, &object)?;
            if !snap.is_valid() {
                return Err(snap.invalid_error());
            }
            return Ok(());
        }
        core.dev
            .read_at_cached(&mut buf[span.in_buf(offset)], span.start)
            .map_err(|e| Error::io("read", object.clone(), e).at(span.start))?;
    }
    let wanted = clusters.map(|c| (c, g.cluster_masks(c, b0, b1).1));
    read_from_stores(&g, later, wanted, buf, offset)?;
    if !snap.is_valid() {
        return Err(snap.invalid_error());
    }
    Ok(())
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
        let (_, mut open) = g.cluster_masks(cluster, b0, b1);
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

/// A large snapshot read that needs both the volume and the stores: the volume span
/// `[start, end)` is read on a second thread into its own buffer while this one reads the
/// stores into `buf`, so the two waits overlap. Then the maps are consulted again: a block
/// still unmapped after the volume read completed was not overwritten before it (decision
/// 5), and is taken from the volume's buffer; one mapped meanwhile is read from its store.
fn read_parallel(
    core: &VolumeCore,
    g: &Geometry,
    later: &[Arc<SnapState>],
    buf: &mut [u8],
    offset: u64,
    span: Span,
    object: &str,
) -> Result<()> {
    let len = buf.len() as u64;
    let (b0, b1) = block_span(offset, len);
    let clusters = g.clusters_of(b0, b1);
    let mut from_volume = vec![0u8; span.in_buf(span.start).len()];
    let (stores, volume) = std::thread::scope(|sc| {
        let reader = sc.spawn(|| core.dev.read_at_cached(&mut from_volume, span.start));
        let wanted = clusters.clone().map(|c| (c, g.cluster_masks(c, b0, b1).1));
        let stores = read_from_stores(g, later, wanted, buf, offset);
        (stores, reader.join())
    });
    let missing = stores?;
    match volume {
        Ok(r) => r.map_err(|e| Error::io("read", object.to_string(), e).at(span.start))?,
        Err(_) => {
            return Err(Error::new(
                ErrorKind::Io,
                "read",
                object.to_string(),
                "the thread reading the volume failed",
            ))
        }
    }
    // Blocks no map held during the volume read: held now, they were preserved meanwhile
    // (read them from the store); still not, the volume read saw them as they were.
    let again: Vec<(Cluster, Vec<u16>)> = clusters
        .zip(missing)
        .filter(|(_, open)| !mask_is_empty(open))
        .collect();
    let firsts: Vec<u64> = again.iter().map(|(c, _)| g.first_block_of(*c)).collect();
    let open = read_from_stores(g, later, again.into_iter(), buf, offset)?;
    for (first, open) in firsts.into_iter().zip(open) {
        for (b, n) in mask_runs(&open) {
            let run = clip(first + u64::from(b), u64::from(n), offset, len);
            buf[run.in_buf(offset)].copy_from_slice(&from_volume[run.in_buf(span.start)]);
        }
    }
    Ok(())
}
