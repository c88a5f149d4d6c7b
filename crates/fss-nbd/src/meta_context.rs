//! Metadata contexts: which ones an export offers, how queries select them, and the extents
//! `NBD_CMD_BLOCK_STATUS` reports for each.
//!
//! - `base:allocation` (every export): `NBD_STATE_HOLE | NBD_STATE_ZERO` for holes of the
//!   volume's device ([`Export::allocation`]); a snapshot reports all data.
//! - `fss:preserved` (snapshots only): flag 1 on blocks changed on the volume since the
//!   snapshot was taken ([`fss_core::Snapshot::changed`]), exact to 4 KiB.
//!
//! Queries: `base:` and `fss:` (empty leaf) are wildcards for listing and select nothing when
//! setting; the full names select; unknown namespaces and leaves are ignored.

use crate::protocol::{STATE_HOLE, STATE_PRESERVED, STATE_ZERO};
use fss_core::device::Extent;
use fss_core::export::Export;

/// Most descriptors in one block status chunk (the protocol says at most 2^20; fewer keeps a
/// reply small, and clients ask again from where it stopped).
pub const MAX_DESCRIPTORS: usize = 1 << 16;

/// Most bytes one block status request looks at (the request's length is a hint: a shorter
/// answer is allowed, and bounds the engine's work and memory for one request).
pub const MAX_STATUS_LEN: u32 = 1 << 30;

/// A metadata context this server offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaContext {
    /// `base:allocation`.
    BaseAllocation,
    /// `fss:preserved`.
    FssPreserved,
}

/// Every context, in a stable order.
const ALL: [MetaContext; 2] = [MetaContext::BaseAllocation, MetaContext::FssPreserved];

impl MetaContext {
    /// Its name on the wire.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            MetaContext::BaseAllocation => "base:allocation",
            MetaContext::FssPreserved => "fss:preserved",
        }
    }

    /// Its id in `NBD_REP_META_CONTEXT` and block status chunks (stable, nonzero).
    #[must_use]
    pub fn id(self) -> u32 {
        match self {
            MetaContext::BaseAllocation => 1,
            MetaContext::FssPreserved => 2,
        }
    }

    fn namespace(self) -> &'static str {
        match self {
            MetaContext::BaseAllocation => "base",
            MetaContext::FssPreserved => "fss",
        }
    }

    /// Whether `export` offers it.
    #[must_use]
    pub fn offered_by(self, export: &Export) -> bool {
        match self {
            MetaContext::BaseAllocation => true,
            MetaContext::FssPreserved => matches!(export, Export::Snapshot(_)),
        }
    }
}

/// A query without the `namespace:` form the protocol requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadQuery(pub String);

/// The contexts `export` offers that match `queries` for `NBD_OPT_LIST_META_CONTEXT` (no
/// queries: all of them; an empty leaf is a wildcard over its namespace).
///
/// # Errors
/// A query lacks the colon after its namespace.
pub fn list(export: &Export, queries: &[String]) -> Result<Vec<MetaContext>, BadQuery> {
    let offered = ALL.iter().copied().filter(|c| c.offered_by(export));
    if queries.is_empty() {
        return Ok(offered.collect());
    }
    let mut out = Vec::new();
    for q in queries {
        let (ns, leaf) = split(q)?;
        for c in offered.clone() {
            let hit = c.namespace() == ns && (leaf.is_empty() || c.name() == q);
            if hit && !out.contains(&c) {
                out.push(c);
            }
        }
    }
    Ok(out)
}

/// The contexts `export` offers that `queries` name exactly, for `NBD_OPT_SET_META_CONTEXT`.
///
/// # Errors
/// A query lacks the colon after its namespace.
pub fn select(export: &Export, queries: &[String]) -> Result<Vec<MetaContext>, BadQuery> {
    let mut out = Vec::new();
    for q in queries {
        split(q)?;
        for c in ALL.iter().copied().filter(|c| c.offered_by(export)) {
            if c.name() == q && !out.contains(&c) {
                out.push(c);
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
    ctx: MetaContext,
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
    };
    let flags = |e: &Extent| match ctx {
        MetaContext::BaseAllocation if !e.data => STATE_HOLE | STATE_ZERO,
        MetaContext::BaseAllocation => 0,
        MetaContext::FssPreserved if e.data => STATE_PRESERVED,
        MetaContext::FssPreserved => 0,
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
    use fss_core::device::MemDevice;
    use fss_core::store::DeviceStore;
    use fss_core::{SnapshotOptions, Volume};
    use std::sync::Arc;

    fn exports() -> (Export, Export) {
        let vol = Volume::new("v", Arc::new(MemDevice::new(1 << 20)));
        let snap = vol
            .create_snapshot("s", &SnapshotOptions::default(), DeviceStore::in_memory)
            .unwrap();
        vol.write(&[1; 8192], 4096).unwrap();
        (Export::Volume(vol), Export::Snapshot(snap))
    }

    fn q(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn listing_and_selecting() {
        let (vol, snap) = exports();
        assert_eq!(list(&vol, &[]).unwrap(), vec![MetaContext::BaseAllocation]);
        assert_eq!(
            list(&snap, &[]).unwrap(),
            vec![MetaContext::BaseAllocation, MetaContext::FssPreserved]
        );
        assert_eq!(
            list(&snap, &q(&["fss:", "x-other:thing"])).unwrap(),
            vec![MetaContext::FssPreserved]
        );
        assert!(list(&vol, &q(&["fss:"])).unwrap().is_empty());
        assert!(list(&vol, &q(&["nocolon"])).is_err());
        assert!(select(&snap, &q(&["base:", "fss:"])).unwrap().is_empty());
        assert_eq!(
            select(
                &snap,
                &q(&["fss:preserved", "base:allocation", "fss:preserved"])
            )
            .unwrap(),
            vec![MetaContext::FssPreserved, MetaContext::BaseAllocation]
        );
        assert!(select(&vol, &q(&["fss:preserved"])).unwrap().is_empty());
    }

    #[test]
    fn preserved_extents_are_exact() {
        let (_, snap) = exports();
        let d = extents(MetaContext::FssPreserved, &snap, 0, 1 << 20, 100).unwrap();
        assert_eq!(
            d,
            vec![(4096, 0), (8192, STATE_PRESERVED), ((1 << 20) - 12288, 0)]
        );
        let one = extents(MetaContext::FssPreserved, &snap, 4096, 4096, 1).unwrap();
        assert_eq!(one, vec![(4096, STATE_PRESERVED)]);
        let capped = extents(MetaContext::FssPreserved, &snap, 0, 1 << 20, 2).unwrap();
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
