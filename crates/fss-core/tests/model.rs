//! Property test: random sequences of volume writes, discards and write-zeroes (unaligned,
//! spanning clusters, up to several MiB), snapshot creates (persistent and transient chains,
//! limited stores, fail-write), deletes in any order, limit raises, and reads, every byte
//! compared with a naive model that keeps a full copy of the volume per snapshot. Persistent
//! snapshots live on durable `FileStore`s; a restart drops everything and reopens from the
//! devices: persistent snapshots come back exact, transient ones are gone.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::pattern;
use fss_core::device::{BlockDevice, MemDevice};
use fss_core::store::{DeviceStore, FileStore, Store, StoreIdentity, StoreParams};
use fss_core::{ErrorKind, OnStoreError, SnapshotOptions, Volume};
use proptest::prelude::*;
use std::sync::{Arc, Mutex};

const VOL_ID: [u8; 16] = *b"model-volume-id!";

const VOL_LEN: u64 = (6 << 20) + 1234;

#[derive(Debug, Clone)]
enum Op {
    Write {
        off: u64,
        len: u64,
        seed: u64,
    },
    Discard {
        off: u64,
        len: u64,
    },
    Zeroes {
        off: u64,
        len: u64,
    },
    Create {
        persistent: bool,
        cluster_shift: u32,
        limit_clusters: Option<u64>,
        fail_write: bool,
    },
    Delete {
        pick: usize,
    },
    RaiseLimit {
        pick: usize,
    },
    ReadVolume {
        off: u64,
        len: u64,
    },
    ReadSnapshot {
        pick: usize,
        off: u64,
        len: u64,
    },
    Restart,
}

fn range() -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![
        // Small, unaligned.
        4 => (0..VOL_LEN, 1..20_000u64),
        // Block-aligned.
        3 => (0..VOL_LEN / 4096, 1..40u64).prop_map(|(b, n)| (b * 4096, n * 4096)),
        // Large, up to several MiB.
        1 => (0..VOL_LEN, 1..(5u64 << 20)),
        // The tail, with its partial block.
        1 => (VOL_LEN - 20_000..VOL_LEN, 1..20_000u64),
    ]
    .prop_map(|(off, len)| (off, len.min(VOL_LEN - off)))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (range(), any::<u64>()).prop_map(|((off, len), seed)| Op::Write { off, len, seed }),
        1 => range().prop_map(|(off, len)| Op::Discard { off, len }),
        1 => range().prop_map(|(off, len)| Op::Zeroes { off, len }),
        3 => (any::<bool>(), 12..17u32, prop::option::weighted(0.25, 1..24u64), prop::bool::weighted(0.3))
            .prop_map(|(persistent, cluster_shift, limit_clusters, fail_write)| Op::Create {
                persistent, cluster_shift, limit_clusters, fail_write
            }),
        2 => any::<usize>().prop_map(|pick| Op::Delete { pick }),
        1 => any::<usize>().prop_map(|pick| Op::RaiseLimit { pick }),
        2 => range().prop_map(|(off, len)| Op::ReadVolume { off, len }),
        4 => (any::<usize>(), range()).prop_map(|(pick, (off, len))| Op::ReadSnapshot { pick, off, len }),
        1 => Just(Op::Restart),
    ]
}

struct ModelSnap {
    name: String,
    id: u64,
    persistent: bool,
    fail_write: bool,
    bytes: Vec<u8>,
    /// Blocks written (or attempted) since the snapshot.
    written: Vec<bool>,
    /// The write clock when it was taken.
    time: u64,
}

/// Store devices of persistent snapshots by id, to reopen after a restart.
type Durable = Arc<Mutex<Vec<(u64, Arc<MemDevice>)>>>;

fn make_store(durable: &Durable, p: &StoreParams) -> fss_core::Result<Box<dyn Store>> {
    let dev = Arc::new(MemDevice::growable(u64::MAX));
    if p.persistent {
        durable
            .lock()
            .unwrap()
            .push((p.snapshot_id, Arc::clone(&dev)));
        Ok(Box::new(FileStore::create(dev, p, false, None)?))
    } else {
        Ok(Box::new(DeviceStore::new(dev, p, false)))
    }
}

struct Harness {
    vol: Volume,
    vol_dev: Arc<MemDevice>,
    durable: Durable,
    model: Vec<u8>,
    snaps: Vec<ModelSnap>,
    /// (chain, id) of every snapshot ever created with a limited store.
    limited: Vec<(bool, u64)>,
    /// Whether any fail-write snapshot was ever created.
    fail_write_any: bool,
    next: u64,
    /// When each block was written (write clock ticks).
    block_writes: Vec<Vec<u64>>,
    clock: u64,
}

impl Harness {
    fn new() -> Self {
        let vol_dev = Arc::new(MemDevice::new(VOL_LEN));
        let d: Arc<dyn BlockDevice> = vol_dev.clone();
        Harness {
            vol: Volume::with_identity("vol", d, VOL_ID),
            vol_dev,
            durable: Arc::default(),
            model: vec![0; VOL_LEN as usize],
            snaps: Vec::new(),
            limited: Vec::new(),
            fail_write_any: false,
            next: 0,
            block_writes: vec![Vec::new(); VOL_LEN.div_ceil(4096) as usize],
            clock: 0,
        }
    }

    /// Apply a change to the model if the engine accepted it; check errors are the allowed kind.
    fn change(&mut self, r: fss_core::Result<()>, off: u64, new: &[u8]) {
        // Blocks a write touched (or tried to: a refused write may have preserved blocks for
        // the other chain) count as written since every live snapshot.
        if !new.is_empty() {
            self.clock += 1;
            for b in off / 4096..=(off + new.len() as u64 - 1) / 4096 {
                self.block_writes[b as usize].push(self.clock);
            }
            for m in &mut self.snaps {
                for b in off / 4096..=(off + new.len() as u64 - 1) / 4096 {
                    m.written[b as usize] = true;
                }
            }
        }
        match r {
            Ok(()) => self.model[off as usize..off as usize + new.len()].copy_from_slice(new),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::NoSpace, "unexpected write error: {e}");
                assert!(
                    self.fail_write_any && !self.limited.is_empty(),
                    "write refused without a fail-write snapshot: {e}"
                );
            }
        }
    }

    /// A snapshot read must equal the model, or fail because a limited store in its chain
    /// (at or after it) filled up.
    /// The change map of a snapshot holds every block whose bytes differ from the volume now,
    /// and no block that was not written since the snapshot.
    fn check_changes(&self, i: usize, off: u64, len: u64) {
        let m = &self.snaps[i];
        let snap = self.vol.snapshot(&m.name).expect("live snapshot");
        let Ok(extents) = snap.changed(off, len) else {
            assert!(!snap.is_valid(), "changes of a valid snapshot are known");
            return;
        };
        assert_eq!(extents.first().map(|e| e.offset), (len > 0).then_some(off));
        assert_eq!(extents.iter().map(|e| e.len).sum::<u64>(), len);
        for e in extents {
            for b in e.offset / 4096..(e.offset + e.len).div_ceil(4096) {
                let (lo, hi) = (
                    (b * 4096).max(e.offset),
                    ((b + 1) * 4096).min(e.offset + e.len),
                );
                let differs =
                    m.bytes[lo as usize..hi as usize] != self.model[lo as usize..hi as usize];
                if e.data {
                    assert!(
                        m.written[b as usize],
                        "block {b} reported changed but never written since {}",
                        m.name
                    );
                } else {
                    assert!(
                        !differs,
                        "block {b} differs from {} but is not reported changed",
                        m.name
                    );
                }
            }
        }
    }

    /// Changes between two snapshots of a chain: every block whose bytes differ between them,
    /// and only blocks written between them.
    fn check_changes_between(&self, i: usize, j: usize) {
        let (a, b) = (&self.snaps[i], &self.snaps[j]);
        let sa = self.vol.snapshot(&a.name).unwrap();
        let sb = self.vol.snapshot(&b.name).unwrap();
        let r = sa.changed_until(&sb, 0, VOL_LEN);
        if a.persistent != b.persistent || a.id >= b.id {
            assert_eq!(r.unwrap_err().kind(), ErrorKind::InvalidArgument);
            return;
        }
        let Ok(extents) = r else {
            assert!(
                !sa.is_valid() || !sb.is_valid(),
                "changes between valid snapshots are known"
            );
            return;
        };
        for e in extents {
            for blk in e.offset / 4096..(e.offset + e.len).div_ceil(4096) {
                let (lo, hi) = (
                    (blk * 4096).max(e.offset) as usize,
                    ((blk + 1) * 4096).min(e.offset + e.len) as usize,
                );
                let written = self.block_writes[blk as usize]
                    .iter()
                    .any(|&t| t > a.time && t <= b.time);
                if e.data {
                    assert!(
                        written,
                        "block {blk} reported changed between {} and {} but not written",
                        a.name, b.name
                    );
                } else {
                    assert!(
                        a.bytes[lo..hi] == b.bytes[lo..hi],
                        "block {blk} differs between {} and {}",
                        a.name,
                        b.name
                    );
                }
            }
        }
    }

    fn check_snapshot(&self, i: usize, off: u64, len: u64) {
        self.check_changes(i, off, len);
        let m = &self.snaps[i];
        let snap = self.vol.snapshot(&m.name).expect("live snapshot");
        let mut buf = vec![0u8; len as usize];
        match snap.read(&mut buf, off) {
            Ok(()) => {
                if buf != m.bytes[off as usize..(off + len) as usize] {
                    let at = buf
                        .iter()
                        .zip(&m.bytes[off as usize..])
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                    panic!(
                        "snapshot {} (id {}) differs from the model at byte {}",
                        m.name,
                        m.id,
                        off + at as u64
                    );
                }
            }
            Err(e) => {
                assert_eq!(
                    e.kind(),
                    ErrorKind::InvalidSnapshot,
                    "unexpected read error: {e}"
                );
                assert!(
                    self.limited
                        .iter()
                        .any(|&(p, id)| p == m.persistent && id >= m.id),
                    "snapshot {} invalid without a limited store after it: {e}",
                    m.name
                );
                assert!(e.to_string().contains("full"), "the cause is named: {e}");
                assert!(!snap.is_valid());
            }
        }
    }

    fn run(&mut self, op: &Op) {
        match *op {
            Op::Write { off, len, seed } => {
                let data = pattern(seed, off, len as usize);
                let r = self.vol.write(&data, off);
                self.change(r, off, &data);
            }
            Op::Discard { off, len } => {
                let r = self.vol.discard(off, len);
                self.change(r, off, &vec![0; len as usize]);
            }
            Op::Zeroes { off, len } => {
                let r = self.vol.write_zeroes(off, len);
                self.change(r, off, &vec![0; len as usize]);
            }
            Op::Create {
                persistent,
                cluster_shift,
                limit_clusters,
                fail_write,
            } => {
                self.next += 1;
                let name = format!("s{}", self.next);
                let cluster = self.vol.cluster_size().unwrap_or(1 << cluster_shift);
                let opts = SnapshotOptions {
                    cluster_size: Some(cluster),
                    persistent,
                    on_store_error: if fail_write {
                        OnStoreError::FailWrite
                    } else {
                        OnStoreError::Invalidate
                    },
                    max_store_bytes: limit_clusters.map(|n| n * cluster),
                    ..Default::default()
                };
                let d = Arc::clone(&self.durable);
                let snap = self
                    .vol
                    .create_snapshot(&name, &opts, |p| make_store(&d, p))
                    .unwrap();
                let id = snap.info().id;
                if limit_clusters.is_some() {
                    self.limited.push((persistent, id));
                }
                self.fail_write_any |= fail_write;
                self.snaps.push(ModelSnap {
                    name,
                    id,
                    persistent,
                    fail_write,
                    bytes: self.model.clone(),
                    written: vec![false; VOL_LEN.div_ceil(4096) as usize],
                    time: self.clock,
                });
            }
            Op::Delete { pick } => {
                if !self.snaps.is_empty() {
                    let i = pick % self.snaps.len();
                    let name = self.snaps[i].name.clone();
                    match self.vol.delete_snapshot(&name) {
                        Ok(()) => {}
                        // All or nothing: a limited older store without room refuses the
                        // delete and nothing changes. Then do what the error says (lift the
                        // older limits) and delete again, which must now succeed.
                        Err(e) if e.kind() == ErrorKind::NoSpace => {
                            self.refused_delete(i, &e);
                            self.vol.delete_snapshot(&name).unwrap();
                        }
                        Err(e) => panic!("delete {name}: {e}"),
                    }
                    let m = self.snaps.remove(i);
                    self.durable.lock().unwrap().retain(|(id, _)| *id != m.id);
                    assert!(self.vol.snapshot(&m.name).is_none());
                }
            }
            Op::RaiseLimit { pick } => {
                if !self.snaps.is_empty() {
                    let m = &self.snaps[pick % self.snaps.len()];
                    self.vol
                        .snapshot(&m.name)
                        .unwrap()
                        .set_max_store_bytes(None)
                        .unwrap();
                }
            }
            Op::Restart => self.restart(),
            Op::ReadVolume { off, len } => {
                let mut buf = vec![0u8; len as usize];
                self.vol.read(&mut buf, off).unwrap();
                assert!(
                    buf == self.model[off as usize..(off + len) as usize],
                    "volume differs"
                );
            }
            Op::ReadSnapshot { pick, off, len } => {
                if !self.snaps.is_empty() {
                    self.check_snapshot(pick % self.snaps.len(), off, len);
                }
            }
        }
    }

    /// After a delete of `self.snaps[i]` refused for room: it is still there, every snapshot
    /// kept its validity and its bytes, and then the limits of the older snapshots of its
    /// chain are lifted, as the error says to do.
    fn refused_delete(&mut self, i: usize, e: &fss_core::Error) {
        let m = &self.snaps[i];
        assert!(
            self.limited
                .iter()
                .any(|&(p, id)| p == m.persistent && id < m.id),
            "delete of {} refused with no limited older store: {e}",
            m.name
        );
        assert!(e.to_string().contains("nothing was deleted"), "{e}");
        assert!(self.vol.snapshot(&m.name).is_some());
        let before: Vec<bool> = self.snaps.iter().map(|s| self.valid(&s.name)).collect();
        self.check_all();
        let after: Vec<bool> = self.snaps.iter().map(|s| self.valid(&s.name)).collect();
        assert_eq!(
            before, after,
            "a refused delete changes no snapshot's validity"
        );
        let (persistent, id) = (m.persistent, m.id);
        for s in &self.snaps {
            if s.persistent == persistent && s.id < id {
                let snap = self.vol.snapshot(&s.name).unwrap();
                snap.set_max_store_bytes(None).unwrap();
            }
        }
    }

    fn valid(&self, name: &str) -> bool {
        self.vol.snapshot(name).is_some_and(|s| s.is_valid())
    }

    /// Drop the volume and every handle, reopen from the devices: persistent snapshots come
    /// back (with the same contents and validity), transient ones are gone.
    fn restart(&mut self) {
        let was_invalid: Vec<(String, bool)> = self
            .vol
            .snapshots()
            .iter()
            .map(|s| (s.name().to_string(), !s.is_valid()))
            .collect();
        let d: Arc<dyn BlockDevice> = self.vol_dev.clone();
        self.vol = Volume::with_identity("vol", d, VOL_ID);
        self.snaps.retain(|m| m.persistent);
        for m in &self.snaps {
            let dev = {
                let durable = self.durable.lock().unwrap();
                Arc::clone(&durable.iter().find(|(id, _)| *id == m.id).unwrap().1)
            };
            let expect = StoreIdentity {
                volume_id: VOL_ID,
                volume_len: VOL_LEN,
                snapshot_id: m.id,
            };
            let (store, rec) = FileStore::open(dev, &expect, false, None, None).unwrap();
            assert_eq!(rec.name, m.name);
            let opts = SnapshotOptions {
                persistent: true,
                on_store_error: if m.fail_write {
                    OnStoreError::FailWrite
                } else {
                    OnStoreError::Invalidate
                },
                ..Default::default()
            };
            let snap = self
                .vol
                .attach_snapshot(&opts, Box::new(store), rec)
                .unwrap();
            let before = was_invalid.iter().find(|(n, _)| *n == m.name).map(|x| x.1);
            assert_eq!(
                Some(!snap.is_valid()),
                before,
                "validity of {} survives a restart",
                m.name
            );
        }
        assert_eq!(
            self.vol.snapshots().len(),
            self.snaps.len(),
            "transient snapshots are gone"
        );
    }

    fn check_all(&self) {
        let mut buf = vec![0u8; VOL_LEN as usize];
        self.vol.read(&mut buf, 0).unwrap();
        assert!(buf == self.model, "volume differs from the model");
        for i in 0..self.snaps.len() {
            self.check_snapshot(i, 0, VOL_LEN);
            for j in 0..self.snaps.len() {
                if i != j {
                    self.check_changes_between(i, j);
                }
            }
        }
        assert_eq!(self.vol.snapshots().len(), self.snaps.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(debug_assertions) { 24 } else { 300 },
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_matches_full_copy_model(ops in prop::collection::vec(op(), 1..60)) {
        let mut h = Harness::new();
        for op in &ops {
            h.run(op);
        }
        h.check_all();
        // Delete what is left in a random-ish order, checking the rest each time.
        while !h.snaps.is_empty() {
            let i = (h.next as usize * 7) % h.snaps.len();
            h.run(&Op::Delete { pick: i });
            h.check_all();
        }
        prop_assert_eq!(h.vol.cluster_size(), None);
    }
}
