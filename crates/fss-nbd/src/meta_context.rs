//! Metadata contexts: which ones an export offers, how queries select them, and the extents
//! `NBD_CMD_BLOCK_STATUS` reports for each.
//!
//! - `base:allocation` (every export): `NBD_STATE_HOLE | NBD_STATE_ZERO` for holes of the
//!   volume's device ([`Export::allocation`]); a snapshot reports all data.
//! - `fss:preserved` (snapshots only): flag 1 on blocks changed on the volume since the
//!   snapshot was taken ([`fss_core::Snapshot::changed`]), exact to 4 KiB.
//! - `qemu:dirty-bitmap:A`, the form QEMU's backup tools read (flag 1, "dirty"): on a
//!   snapshot export B, for every older snapshot A of the same volume and kind (persistent or
//!   transient), the blocks changed between A and B ([`fss_core::Snapshot::changed_until`],
//!   what `fss diff A B` lists); on a volume export, for every snapshot A of it, the blocks
//!   changed since A (`fss diff A`).
//!
//! Queries: `base:`, `fss:`, `qemu:` and `qemu:dirty-bitmap:` are wildcards for listing and
//! select nothing when setting; the full names select; unknown namespaces and leaves are
//! ignored.

use crate::protocol::{STATE_HOLE, STATE_PRESERVED, STATE_ZERO};
use fss_core::device::Extent;
use fss_core::export::{Catalog, Export};
use fss_core::snapshot::PairUse;
use fss_core::Snapshot;

/// Most descriptors in one block status chunk (the protocol says at most 2^20; fewer keeps a
/// reply small, and clients ask again from where it stopped).
pub const MAX_DESCRIPTORS: usize = 1 << 16;

/// Most bytes one block status request looks at (the request's length is a hint: a shorter
/// answer is allowed, and bounds the engine's work and memory for one request).
pub const MAX_STATUS_LEN: u32 = 1 << 30;

/// The prefix of QEMU's dirty bitmap contexts.
pub const DIRTY_BITMAP: &str = "qemu:dirty-bitmap:";

/// A metadata context this server offers.
#[derive(Debug, Clone)]
pub enum MetaContext {
    /// `base:allocation`.
    BaseAllocation,
    /// `fss:preserved`.
    FssPreserved,
    /// `qemu:dirty-bitmap:NAME`: the blocks changed since the snapshot NAME.
    DirtyBitmap {
        /// The full context name.
        name: String,
        /// The snapshot the changes are counted from.
        since: Snapshot,
        /// Its id once selected (0 in a listing).
        id: u32,
    },
}

impl PartialEq for MetaContext {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl MetaContext {
    /// Its name on the wire.
    #[must_use]
    pub fn name(&self) -> &str {
        match self {
            MetaContext::BaseAllocation => "base:allocation",
            MetaContext::FssPreserved => "fss:preserved",
            MetaContext::DirtyBitmap { name, .. } => name,
        }
    }

    /// Its id in `NBD_REP_META_CONTEXT` and block status chunks (stable, nonzero).
    #[must_use]
    pub fn id(&self) -> u32 {
        match self {
            MetaContext::BaseAllocation => 1,
            MetaContext::FssPreserved => 2,
            MetaContext::DirtyBitmap { id, .. } => *id,
        }
    }

    fn namespace(&self) -> &'static str {
        match self {
            MetaContext::BaseAllocation => "base",
            MetaContext::FssPreserved => "fss",
            MetaContext::DirtyBitmap { .. } => "qemu",
        }
    }
}

/// Every context `export` offers, in a stable order: base, fss, then the dirty bitmaps oldest
/// snapshot first (ids from 3 on).
fn offered(catalog: &dyn Catalog, export: &Export) -> Vec<MetaContext> {
    let mut out = vec![MetaContext::BaseAllocation];
    if matches!(export, Export::Snapshot(_)) {
        out.push(MetaContext::FssPreserved);
    }
    let mut older: Vec<(u64, Snapshot)> = catalog
        .list()
        .iter()
        .filter(|e| e.read_only && e.name != export.name())
        .filter_map(|e| match catalog.lookup(&e.name) {
            Some(Export::Snapshot(a)) if bitmap_of(export, &a) => Some((a.info().id, a)),
            _ => None,
        })
        .collect();
    older.sort_by_key(|(id, _)| *id);
    for (k, (_, since)) in older.into_iter().enumerate() {
        out.push(MetaContext::DirtyBitmap {
            name: format!("{DIRTY_BITMAP}{}", since.name()),
            since,
            id: 3 + k as u32,
        });
    }
    out
}

/// Whether `export` offers a dirty bitmap since the snapshot `a`.
fn bitmap_of(export: &Export, a: &Snapshot) -> bool {
    match export {
        Export::Volume(v) => a.volume_identity() == v.identity(),
        Export::Snapshot(b) => a.check_older_than(b, PairUse::Diff).is_ok(),
    }
}

/// A query without the `namespace:` form the protocol requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadQuery(pub String);

/// The contexts `export` offers that match `queries` for `NBD_OPT_LIST_META_CONTEXT` (no
/// queries: all of them; an empty leaf, or `qemu:dirty-bitmap:`, is a wildcard).
///
/// # Errors
/// A query lacks the colon after its namespace.
pub fn list(
    catalog: &dyn Catalog,
    export: &Export,
    queries: &[String],
) -> Result<Vec<MetaContext>, BadQuery> {
    let offered = offered(catalog, export);
    if queries.is_empty() {
        return Ok(offered);
    }
    let mut out: Vec<MetaContext> = Vec::new();
    for q in queries {
        let (ns, leaf) = split(q)?;
        for c in &offered {
            let hit = c.namespace() == ns
                && (leaf.is_empty()
                    || c.name() == q
                    || (q == DIRTY_BITMAP && c.name().starts_with(DIRTY_BITMAP)));
            if hit && !out.contains(c) {
                out.push(c.clone());
            }
        }
    }
    Ok(out)
}

/// The contexts `export` offers that `queries` name exactly, for `NBD_OPT_SET_META_CONTEXT`.
///
/// # Errors
/// A query lacks the colon after its namespace.
pub fn select(
    catalog: &dyn Catalog,
    export: &Export,
    queries: &[String],
) -> Result<Vec<MetaContext>, BadQuery> {
    let offered = offered(catalog, export);
    let mut out: Vec<MetaContext> = Vec::new();
    for q in queries {
        split(q)?;
        for c in &offered {
            if c.name() == q && !out.contains(c) {
                out.push(c.clone());
            }
        }
    }
    Ok(out)
}

fn split(q: &str) -> Result<(&str, &str), BadQuery> {
    match q.split_once(':') {
        Some((ns, leaf)) if !ns.is_empty() => Ok((ns, leaf)),
        _ => Err(BadQuery(q.to_string())),
    }
}

/// Block status descriptors (length, flags) for `ctx` over `[offset, offset + len)` of
/// `export`: consecutive from `offset`, merged where flags agree, at most `max` of them (the
/// reply may then cover less than asked, as the protocol allows).
///
/// # Errors
/// The engine could not tell (out of range, I/O, an invalid or deleted snapshot).
pub fn extents(
    ctx: &MetaContext,
    export: &Export,
    offset: u64,
    len: u32,
    max: usize,
) -> fss_core::Result<Vec<(u32, u32)>> {
    let len64 = u64::from(len);
    let raw = match (ctx, export) {
        (MetaContext::BaseAllocation, _) => export.allocation(offset, len64)?,
        (MetaContext::FssPreserved, Export::Snapshot(s)) => s.changed(offset, len64)?,
        // Never selected on a volume; report "unchanged" rather than fail.
        (MetaContext::FssPreserved, Export::Volume(_)) => vec![Extent {
            offset,
            len: len64,
            data: false,
        }],
        (MetaContext::DirtyBitmap { since, .. }, Export::Volume(_)) => {
            since.changed(offset, len64)?
        }
        (MetaContext::DirtyBitmap { since, .. }, Export::Snapshot(b)) => {
            since.changed_until(b, offset, len64)?
        }
    };
    let flags = |e: &Extent| match ctx {
        MetaContext::BaseAllocation if !e.data => STATE_HOLE | STATE_ZERO,
        MetaContext::BaseAllocation => 0,
        // Changed blocks: "preserved" for fss, "dirty" for QEMU (both flag 1).
        _ if e.data => STATE_PRESERVED,
        _ => 0,
    };
    Ok(descriptors(&raw, offset, len, max, flags))
}

/// Turn engine extents into descriptors: clipped to the request, merged, capped, never empty.
fn descriptors(
    raw: &[Extent],
    offset: u64,
    len: u32,
    max: usize,
    flags: impl Fn(&Extent) -> u32,
) -> Vec<(u32, u32)> {
    let end = offset + u64::from(len);
    let mut out: Vec<(u32, u32)> = Vec::new();
    let mut pos = offset;
    for e in raw {
        let e_end = e.offset.saturating_add(e.len).min(end);
        // Trust only extents that continue where the last one stopped.
        if e.offset > pos || e_end <= pos {
            if e.offset > pos {
                break;
            }
            continue;
        }
        let n = (e_end - pos) as u32;
        let f = flags(e);
        let full = out.len() >= max.max(1);
        match out.last_mut() {
            Some((l, lf)) if *lf == f => *l += n,
            _ if full => break,
            _ => out.push((n, f)),
        }
        pos = e_end;
        if pos >= end {
            break;
        }
    }
    if out.is_empty() {
        // The engine said nothing usable: "status unknown" (0) is always a safe answer.
        out.push((len, 0));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::StaticCatalog;
    use fss_core::device::MemDevice;
    use fss_core::store::DeviceStore;
    use fss_core::{SnapshotOptions, Volume};
    use std::sync::Arc;

    fn exports() -> (StaticCatalog, Export, Export) {
        let vol = Volume::new("v", Arc::new(MemDevice::new(1 << 20)));
        let snap = vol
            .create_snapshot("s", &SnapshotOptions::default(), DeviceStore::in_memory)
            .unwrap();
        vol.write(&[1; 8192], 4096).unwrap();
        let catalog = StaticCatalog::new();
        catalog.insert(Export::Volume(vol.clone()));
        catalog.insert(Export::Snapshot(snap.clone()));
        (catalog, Export::Volume(vol), Export::Snapshot(snap))
    }

    fn q(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_string()).collect()
    }

    fn names(v: &[MetaContext]) -> Vec<&str> {
        v.iter().map(MetaContext::name).collect()
    }

    #[test]
    fn listing_and_selecting() {
        let (c, vol, snap) = exports();
        let c = &c;
        assert_eq!(
            names(&list(c, &vol, &[]).unwrap()),
            ["base:allocation", "qemu:dirty-bitmap:s"]
        );
        assert_eq!(
            list(c, &snap, &[]).unwrap(),
            vec![MetaContext::BaseAllocation, MetaContext::FssPreserved]
        );
        assert_eq!(
            list(c, &snap, &q(&["fss:", "x-other:thing"])).unwrap(),
            vec![MetaContext::FssPreserved]
        );
        assert!(list(c, &vol, &q(&["fss:"])).unwrap().is_empty());
        assert!(list(c, &vol, &q(&["nocolon"])).is_err());
        assert!(select(c, &snap, &q(&["base:", "fss:"])).unwrap().is_empty());
        assert_eq!(
            select(
                c,
                &snap,
                &q(&["fss:preserved", "base:allocation", "fss:preserved"])
            )
            .unwrap(),
            vec![MetaContext::FssPreserved, MetaContext::BaseAllocation]
        );
        assert!(select(c, &vol, &q(&["fss:preserved"])).unwrap().is_empty());
    }

    #[test]
    fn dirty_bitmaps_are_offered_from_older_snapshots_and_exact() {
        let (c, vol, s) = exports();
        let Export::Volume(v) = &vol else { panic!() };
        let opts = SnapshotOptions::default();
        let s2 = v
            .create_snapshot("s2", &opts, DeviceStore::in_memory)
            .unwrap();
        v.write(&[2; 4096], 65536).unwrap();
        let s3 = Export::Snapshot(
            v.create_snapshot("s3", &opts, DeviceStore::in_memory)
                .unwrap(),
        );
        c.insert(Export::Snapshot(s2.clone()));
        c.insert(s3.clone());
        let s2 = Export::Snapshot(s2);
        // Another volume's snapshot is never offered.
        let other = Volume::new("w", Arc::new(MemDevice::new(1 << 20)));
        let w1 = other
            .create_snapshot("w1", &opts, DeviceStore::in_memory)
            .unwrap();
        c.insert(Export::Snapshot(w1));
        let c = &c;
        assert!(
            list(c, &s, &q(&["qemu:"])).unwrap().is_empty(),
            "the oldest"
        );
        assert_eq!(
            names(&list(c, &s3, &q(&["qemu:dirty-bitmap:"])).unwrap()),
            ["qemu:dirty-bitmap:s", "qemu:dirty-bitmap:s2"]
        );
        assert_eq!(
            names(&list(c, &vol, &q(&["qemu:dirty-bitmap:s2"])).unwrap()),
            ["qemu:dirty-bitmap:s2"]
        );
        let sel = select(c, &s3, &q(&["qemu:dirty-bitmap:s2", "qemu:dirty-bitmap:"])).unwrap();
        assert_eq!(names(&sel), ["qemu:dirty-bitmap:s2"]);
        assert!(sel[0].id() > 2);
        // s..s3: both writes; s2..s3: the second; s2..now: the second too.
        let d = extents(&sel[0], &s3, 0, 1 << 20, 100).unwrap();
        assert_eq!(d, vec![(65536, 0), (4096, 1), ((1 << 20) - 69632, 0)]);
        let all = select(c, &s3, &q(&["qemu:dirty-bitmap:s"])).unwrap();
        let d = extents(&all[0], &s3, 0, 131_072, 100).unwrap();
        assert_eq!(
            d,
            vec![(4096, 0), (8192, 1), (53248, 0), (4096, 1), (61440, 0)]
        );
        let on_vol = select(c, &vol, &q(&["qemu:dirty-bitmap:s2"])).unwrap();
        let d = extents(&on_vol[0], &vol, 0, 131_072, 100).unwrap();
        assert_eq!(d, vec![(65536, 0), (4096, 1), (61440, 0)]);
        assert!(select(c, &s2, &q(&["qemu:dirty-bitmap:s3"]))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn preserved_extents_are_exact() {
        let (_, _, snap) = exports();
        let d = extents(&MetaContext::FssPreserved, &snap, 0, 1 << 20, 100).unwrap();
        assert_eq!(
            d,
            vec![(4096, 0), (8192, STATE_PRESERVED), ((1 << 20) - 12288, 0)]
        );
        let one = extents(&MetaContext::FssPreserved, &snap, 4096, 4096, 1).unwrap();
        assert_eq!(one, vec![(4096, STATE_PRESERVED)]);
        let capped = extents(&MetaContext::FssPreserved, &snap, 0, 1 << 20, 2).unwrap();
        assert_eq!(capped, vec![(4096, 0), (8192, STATE_PRESERVED)]);
    }

    #[test]
    fn descriptors_clip_merge_and_never_come_back_empty() {
        let raw = [
            Extent {
                offset: 0,
                len: 100,
                data: true,
            },
            Extent {
                offset: 100,
                len: 100,
                data: true,
            },
            Extent {
                offset: 200,
                len: 1000,
                data: false,
            },
        ];
        let f = |e: &Extent| u32::from(!e.data);
        assert_eq!(descriptors(&raw, 50, 300, 10, f), vec![(150, 0), (150, 1)]);
        assert_eq!(descriptors(&[], 0, 7, 10, f), vec![(7, 0)]);
        let gap = [Extent {
            offset: 10,
            len: 10,
            data: true,
        }];
        assert_eq!(descriptors(&gap, 0, 20, 10, f), vec![(20, 0)]);
    }
}
