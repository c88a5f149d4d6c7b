//! The copy-on-write write path: every write, discard and write-zeroes plans which blocks each
//! chain's target still lacks, claims them, reads their pre-images, stores them, applies the
//! failure policy, and only then changes the origin (directly, or held until the persistent
//! stores are durable).

use super::pre_images::{take_buffer, PreImages};
use crate::busy::Claims;
use crate::chain::{losing_blocks, uncovered, ChainKind, Chains, PerChain, SnapState};
use crate::cluster_map::{mask_add, mask_is_empty, mask_keep, mask_runs};
use crate::core::VolumeCore;
use crate::device::DIRECT_WRITE_MIN;
use crate::error::{Error, Result};
use crate::geometry::{block_span, Cluster, Geometry, Span, BLOCK_SIZE};
use crate::held_writes::{Held, HeldChange, StoreSync, MAX_HELD_LEN};
use crate::snapshot_types::OnStoreError;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The most bytes one step of a write, discard or zeroing preserves and applies at once.
const MAX_PIECE: u64 = MAX_HELD_LEN;

/// Whether a first overwrite of `len` bytes reads its pre-images and writes the new data
/// through the page cache. Small ones do: a page-cache write over pages just read costs a copy,
/// and on ext4 a direct read holds the inode lock shared while a page-cache write takes it
/// exclusively, so small direct reads and cached writes queue behind each other. Large ones
/// go as plain reads and writes (O_DIRECT under `--volume-io direct-large`): through the page
/// cache they pile up dirty pages, and once writeback starts a sustained first overwrite runs
/// at the page cache's writeback rate instead of the disk's.
pub(crate) fn cached_transfer(len: u64) -> bool {
    len < DIRECT_WRITE_MIN as u64
}

/// A change to the origin that needs pre-images first.
#[derive(Clone, Copy)]
pub(super) enum Change<'a> {
    Write(&'a [u8]),
    Discard,
    Zeroes,
}

/// What one request must preserve in one cluster, per chain.
struct ClusterPlan {
    cluster: Cluster,
    need: PerChain<Vec<u16>>,
}

/// What [`VolumeCore::preserve`] leaves the origin write: the claims on the blocks it
/// preserved, and the persistent stores that must be durable before the write reaches the
/// device.
type Preserved<'a> = (Option<Claims<'a>>, Vec<StoreSync>);

/// A failure to preserve into one chain's target, and the snapshots it would invalidate (the
/// target and the older ones that resolve the blocks to it).
struct Failure {
    error: Error,
    affected: Vec<Arc<SnapState>>,
}

/// Each chain's target: the index of its newest valid snapshot.
type Targets = PerChain<Option<usize>>;

impl VolumeCore {
    /// Apply `change` to `[offset, offset + len)` of the origin, preserving pre-images first.
    pub(super) fn modify(&self, offset: u64, len: u64, change: Change<'_>) -> Result<()> {
        let op = match change {
            Change::Write(_) => "write",
            Change::Discard => "discard",
            Change::Zeroes => "write zeroes to",
        };
        self.check_range(op, &self.object(), offset, len)?;
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        if len == 0 {
            return Ok(());
        }
        // Held until the origin write is done: a snapshot is either wholly before or after it.
        let chains = self.chains();
        // Large discards and zeroings go in pieces, so pre-images in memory stay bounded.
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let n = (end - pos).min(MAX_PIECE);
            let (claims, syncs) = match chains.geometry {
                Some(g) => self.preserve(&chains, g, pos, n)?,
                None => (None, Vec::new()),
            };
            let piece = Span {
                start: pos,
                end: pos + n,
            }
            .in_buf(offset);
            if syncs.is_empty() {
                // Behind any held write of the same blocks, which the client sent earlier.
                // Blocks, not bytes: a held write that shares a block with this one preserved
                // its pre-image, which may not be durable yet (the held write is applied only
                // after it is), and this one must not reach the block before that either.
                let (b0, b1) = block_span(pos, n);
                self.held
                    .wait_clear(b0 * BLOCK_SIZE, (b1 - b0) * BLOCK_SIZE);
                let r = match change {
                    // Over pre-images just read through the page cache: overwrite them there.
                    Change::Write(buf) if claims.is_some() && cached_transfer(n) => {
                        self.dev.write_at_cached(&buf[piece], pos)
                    }
                    Change::Write(buf) => self.dev.write_at(&buf[piece], pos),
                    Change::Discard => self.dev.discard(pos, n),
                    Change::Zeroes => self.dev.write_zeroes(pos, n),
                };
                r.map_err(|e| Error::io(op, self.object(), e).at(pos))?;
            } else {
                // Held while the claims are: a later writer of these blocks finds it held.
                self.held.hold(Held {
                    offset: pos,
                    len: n,
                    change: match change {
                        Change::Write(buf) => {
                            HeldChange::write(&buf[piece], pos, self.held.journaled())
                        }
                        Change::Discard => HeldChange::Discard,
                        Change::Zeroes => HeldChange::Zeroes,
                    },
                    syncs,
                })?;
            }
            drop(claims);
            pos += n;
        }
        drop(chains);
        self.counters
            .bytes_written
            .fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// Preserve, in each chain's target, every block of the range it does not cover yet.
    /// Returns the claims on the preserved blocks (to be dropped once the origin write is
    /// done or held) and the persistent stores that must be durable before it reaches the
    /// device.
    fn preserve(
        &self,
        chains: &Chains,
        g: Geometry,
        offset: u64,
        len: u64,
    ) -> Result<Preserved<'_>> {
        let targets = PerChain::new(
            chains.target(ChainKind::Persistent),
            chains.target(ChainKind::Transient),
        );
        if targets.iter().all(Option::is_none) {
            return Ok((None, Vec::new()));
        }
        let mut plan = Self::plan(chains, &targets, &g, offset, len);
        if plan.is_empty() {
            return Ok((None, Vec::new()));
        }
        let claims = self.claim(chains, &targets, &g, &mut plan);
        plan.retain(|p| p.need.iter().any(|m| !mask_is_empty(m)));
        if plan.is_empty() {
            return Ok((Some(claims), Vec::new()));
        }

        // A held write of these blocks (sent earlier) holds the bytes they must keep.
        self.held.wait_clear(offset, len);
        let pre = self.read_pre_images(&g, &plan)?;
        let mut failures = Vec::new();
        let mut syncs = Vec::new();
        for (c, t) in targets.each() {
            let Some(t) = *t else { continue };
            match self.preserve_chain(chains, c, t, &g, &plan, &pre) {
                Ok(Some(sync)) => syncs.push(sync),
                Ok(None) => {}
                Err(f) => failures.push(f),
            }
        }
        if failures.is_empty() {
            self.counters.cow_calls.fetch_add(1, Ordering::Relaxed);
            return Ok((Some(claims), syncs));
        }
        if let Err(e) = self.apply_failure_policy(failures, offset) {
            // Refused, so the volume keeps its bytes; but what the other chain preserved is
            // mapped, and a later write of these blocks relies on it without preserving again:
            // it must be as durable as if this write had gone on.
            crate::held_writes::make_durable(&syncs.iter().collect::<Vec<_>>());
            return Err(e);
        }
        Ok((Some(claims), syncs))
    }

    /// What each chain's target lacks of blocks `[offset, offset + len)`, per cluster; marks
    /// the clusters a target already holds whole as fast.
    fn plan(
        chains: &Chains,
        targets: &Targets,
        g: &Geometry,
        offset: u64,
        len: u64,
    ) -> Vec<ClusterPlan> {
        let (b0, b1) = block_span(offset, len);
        let mut plan = Vec::new();
        for cluster in g.clusters_of(b0, b1) {
            let mut need: PerChain<Vec<u16>> = PerChain::default();
            let mut any = false;
            for (c, t) in targets.each() {
                let Some(t) = *t else { continue };
                if chains.fast[c].get(cluster) {
                    continue;
                }
                let (full, in_range) = g.cluster_masks(cluster, b0, b1);
                let mut open = uncovered(&chains.chain[c][t..], cluster, &full);
                if mask_is_empty(&open) {
                    chains.fast[c].set(cluster);
                    continue;
                }
                mask_keep(&mut open, &in_range);
                if !mask_is_empty(&open) {
                    any = true;
                    need[c] = open;
                }
            }
            if any {
                plan.push(ClusterPlan { cluster, need });
            }
        }
        plan
    }

    /// Claim every candidate block of `plan` in ascending order, then look again (always:
    /// someone may have preserved a block, and then overwritten it on the volume, between our
    /// look and our claim, even if we did not have to wait).
    fn claim(
        &self,
        chains: &Chains,
        targets: &Targets,
        g: &Geometry,
        plan: &mut [ClusterPlan],
    ) -> Claims<'_> {
        let mut claims = Claims::new(&self.busy);
        let mut waits = 0u64;
        for p in plan.iter_mut() {
            let first = g.first_block_of(p.cluster);
            for (s, n) in union_runs(&p.need) {
                for i in s..s + n {
                    if claims.claim(first + u64::from(i)) {
                        waits += 1;
                    }
                }
            }
            for (c, t) in targets.each() {
                if let (Some(t), false) = (t, p.need[c].is_empty()) {
                    p.need[c] = uncovered(&chains.chain[c][*t..], p.cluster, &p.need[c]);
                }
            }
        }
        if waits > 0 {
            self.counters.busy_waits.fetch_add(waits, Ordering::Relaxed);
            for (c, t) in targets.each() {
                if let Some(t) = t {
                    chains.chain[c][*t]
                        .busy_waits
                        .fetch_add(waits, Ordering::Relaxed);
                }
            }
        }
        claims
    }

    /// The failure policy: with fail-write on any snapshot that would lose a pre-image, the
    /// origin write is refused and nobody is invalidated; otherwise the affected snapshots are
    /// invalidated before the origin changes, and the write goes on.
    fn apply_failure_policy(&self, failures: Vec<Failure>, offset: u64) -> Result<()> {
        if let Some(f) = failures.iter().find(|f| {
            f.affected
                .iter()
                .any(|s| s.on_store_error == OnStoreError::FailWrite)
        }) {
            return Err(Error::new(
                f.error.kind(),
                "write",
                self.object(),
                format!(
                    "a pre-image could not be preserved and a snapshot is set to fail writes \
                     then ({}); the volume is unchanged",
                    f.error
                ),
            )
            .at(offset));
        }
        for f in failures {
            for s in &f.affected {
                s.invalidate(&f.error.to_string());
            }
        }
        Ok(())
    }

    /// Read the pre-images of every block any chain needs, in maximal runs.
    fn read_pre_images(&self, g: &Geometry, plan: &[ClusterPlan]) -> Result<PreImages> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for p in plan {
            let first = g.first_block_of(p.cluster);
            for (s, n) in union_runs(&p.need) {
                let b = first + u64::from(s);
                match runs.last_mut() {
                    Some((f, len)) if *f + *len == b => *len += u64::from(n),
                    _ => runs.push((b, u64::from(n))),
                }
            }
        }
        let mut out = Vec::with_capacity(runs.len());
        for (f, n) in runs {
            let mut data = take_buffer((n * BLOCK_SIZE) as usize);
            let run = Span {
                start: f * BLOCK_SIZE,
                end: ((f + n) * BLOCK_SIZE).min(self.len),
            };
            // Past the volume's end a pre-image reads as zeroes; a kept buffer holds old bytes.
            let past =
                usize::try_from(run.end - run.start).map_or(data.len(), |p| p.min(data.len()));
            data[past..].fill(0);
            let piece = &mut data[run.in_buf(run.start)];
            let r = if cached_transfer(n * BLOCK_SIZE) {
                self.dev.read_at_cached(piece, run.start)
            } else {
                self.dev.read_at(piece, run.start)
            };
            r.map_err(|e| Error::io("read pre-image from", self.object(), e).at(run.start))?;
            out.push((f, data));
        }
        Ok(PreImages(out))
    }

    /// Store the blocks chain `c` needs in its target `t` and map them. A persistent store is
    /// made durable here when a failure must fail the write; otherwise the store is returned,
    /// to be made durable before the origin write reaches the device.
    fn preserve_chain(
        &self,
        chains: &Chains,
        c: ChainKind,
        t: usize,
        g: &Geometry,
        plan: &[ClusterPlan],
        pre: &PreImages,
    ) -> std::result::Result<Option<StoreSync>, Failure> {
        let snap = &chains.chain[c][t];
        let mut written = Vec::new();
        let mut later = None;
        if snap.store.is_persistent() {
            let affected = Self::resolving_to(chains, c, t, plan);
            if snap.on_store_error == OnStoreError::Invalidate
                && affected
                    .iter()
                    .all(|a| a.on_store_error == OnStoreError::Invalidate)
            {
                later = Some(StoreSync {
                    snap: Arc::clone(snap),
                    affected,
                });
            }
        }
        let result = (|| {
            let todo: Vec<&ClusterPlan> =
                plan.iter().filter(|p| !mask_is_empty(&p.need[c])).collect();
            let clusters: Vec<Cluster> = todo.iter().map(|p| p.cluster).collect();
            // Pre-images go to the clusters that got a slot, as one by one they would.
            let (slots, allocated) = snap.slots_for(&clusters);
            let todo = &todo[..slots.len()];
            let pieces = pieces(g, c, todo, &slots);
            let mut done = 0;
            let outcome = slot_runs(&pieces, g).try_for_each(|run| {
                let (first, last) = (&pieces[run.start], &pieces[run.end - 1]);
                let keys: Vec<u32> = pieces[run.clone()].iter().map(|x| x.cluster).collect();
                let blocks = last.vol_block + u64::from(last.blocks) - first.vol_block;
                let data = pre.blocks(first.vol_block, blocks);
                let cluster_size = u64::from(g.blocks_per_cluster()) * BLOCK_SIZE;
                snap.store
                    .write_slot_run(&keys, first.slot, first.first, data, cluster_size)?;
                done = run.end;
                Ok(())
            });
            // A cluster counts as written once every one of its pieces is (pieces are in plan
            // order, so those before the first unwritten piece's cluster).
            let whole = pieces.get(done).map_or(todo.len(), |x| x.todo);
            written.extend(&todo[..whole]);
            outcome?;
            allocated?;
            if later.is_some() {
                return Ok(());
            }
            snap.store.sync()
        })();
        match result {
            Ok(()) => {
                self.map_preserved(chains, c, snap, g, &written);
                Ok(later)
            }
            Err(error) => {
                // What did reach the store is mapped (a restart's replay maps it too), so its
                // counts are right at once and older snapshots resolve the same before and
                // after a restart. Made durable first: when the write is refused, nobody is
                // invalidated, and a later write of these blocks finds them mapped and goes
                // to the volume without preserving again (found by the model test: after a
                // restart the snapshot had lost a block its map had shown).
                if !written.is_empty() && snap.store.sync().is_ok() {
                    self.map_preserved(chains, c, snap, g, &written);
                }
                let mut affected: Vec<Arc<SnapState>> = vec![Arc::clone(snap)];
                for older in Self::resolving_to(chains, c, t, plan) {
                    if !affected.iter().any(|a| Arc::ptr_eq(a, &older)) {
                        affected.push(older);
                    }
                }
                Err(Failure { error, affected })
            }
        }
    }

    /// Map the blocks just stored in `snap` (chain `c`'s target), and count them.
    fn map_preserved(
        &self,
        chains: &Chains,
        c: ChainKind,
        snap: &SnapState,
        g: &Geometry,
        written: &[&ClusterPlan],
    ) {
        let mut blocks = 0u64;
        let mut map = snap.map_mut();
        for p in written {
            blocks += u64::from(map.add_blocks(p.cluster.key(), &p.need[c]));
            // A cluster the target now holds whole: later rewrites skip every lookup.
            let first = g.first_block_of(p.cluster);
            let (full, _) = g.cluster_masks(p.cluster, first, first);
            if map
                .get(p.cluster.key())
                .is_some_and(|(_, m)| m == full.as_slice())
            {
                chains.fast[c].set(p.cluster);
            }
        }
        drop(map);
        snap.cow_calls.fetch_add(1, Ordering::Relaxed);
        self.counters
            .blocks_preserved
            .fetch_add(blocks, Ordering::Relaxed);
        snap.check_low_space();
    }

    /// The snapshots older than target `t` of chain `c` whose chain would resolve a block the
    /// plan preserves there to the target: the ones that lose it if the target does.
    fn resolving_to(
        chains: &Chains,
        c: ChainKind,
        t: usize,
        plan: &[ClusterPlan],
    ) -> Vec<Arc<SnapState>> {
        let mut affected: Vec<Arc<SnapState>> = Vec::new();
        for p in plan.iter().filter(|p| !mask_is_empty(&p.need[c])) {
            losing_blocks(&chains.chain[c][..t], p.cluster, &p.need[c], |older| {
                if !affected.iter().any(|a| Arc::ptr_eq(a, older)) {
                    affected.push(Arc::clone(older));
                }
            });
        }
        affected
    }
}

/// The union of both chains' needs in a cluster, as runs.
fn union_runs(need: &PerChain<Vec<u16>>) -> Vec<(u32, u32)> {
    let words = need.iter().map(Vec::len).max().unwrap_or(0);
    let mut u = vec![0u16; words];
    for m in need.iter() {
        mask_add(&mut u, m);
    }
    mask_runs(&u)
}

/// One run of blocks a chain preserves in one slot: from block `first` of `slot`, `blocks`
/// long, volume block `vol_block` on; `todo` is its cluster's index in the plan.
struct Piece {
    todo: usize,
    cluster: u32,
    slot: u32,
    first: u32,
    blocks: u32,
    vol_block: u64,
}

/// The pieces chain `c` preserves for `todo` (whose slots are `slots`), in order.
fn pieces(g: &Geometry, c: ChainKind, todo: &[&ClusterPlan], slots: &[u32]) -> Vec<Piece> {
    let mut out = Vec::new();
    for (i, (p, &slot)) in todo.iter().zip(slots).enumerate() {
        for (s, n) in mask_runs(&p.need[c]) {
            out.push(Piece {
                todo: i,
                cluster: p.cluster.key(),
                slot,
                first: s,
                blocks: n,
                vol_block: g.first_block_of(p.cluster) + u64::from(s),
            });
        }
    }
    out
}

/// Group `pieces` into runs that one [`Store::write_slot_run`] writes: each piece after the
/// first starts its slot, follows the last one's slot and volume blocks, and the one before
/// it ends its slot.
///
/// [`Store::write_slot_run`]: crate::store::Store::write_slot_run
fn slot_runs<'a>(
    pieces: &'a [Piece],
    g: &'a Geometry,
) -> impl Iterator<Item = std::ops::Range<usize>> + 'a {
    let bpc = g.blocks_per_cluster();
    let mut start = 0;
    (1..=pieces.len()).filter_map(move |i| {
        let joins = i < pieces.len() && {
            let (a, b) = (&pieces[i - 1], &pieces[i]);
            a.first + a.blocks == bpc
                && b.first == 0
                && b.slot == a.slot.wrapping_add(1)
                && b.vol_block == a.vol_block + u64::from(a.blocks)
        };
        if joins {
            return None;
        }
        let r = start..i;
        start = i;
        Some(r)
    })
}
