//! Unit tests of the map and the mask helpers.

use super::*;

#[test]
fn slots_and_masks() {
    let mut m = ClusterMap::new(16);
    assert!(m.get(5).is_none());
    m.insert_slot(5, 0);
    assert_eq!(m.get(5).unwrap().1, &[0]);
    assert_eq!(m.add_blocks(5, &[0b101]), 2);
    assert_eq!(m.add_blocks(5, &[0b111]), 1);
    assert!(m.has_block(5, 1) && !m.has_block(5, 3) && !m.has_block(6, 0));
    m.insert_slot(9, 1);
    m.add_blocks(9, &[0x8000]);
    let mut out = [0u16; 1];
    m.or_mask_into(9, &mut out);
    m.or_mask_into(5, &mut out);
    assert_eq!(out, [0x8007]);
    assert_eq!((m.clusters(), m.blocks()), (2, 4));
}

#[test]
fn runs_and_set_ops() {
    let mut m = mask_range(2, 3, 20);
    assert_eq!(mask_runs(&m), vec![(3, 17)]);
    mask_remove(&mut m, &mask_range(2, 5, 7));
    assert_eq!(mask_runs(&m), vec![(3, 2), (7, 13)]);
    mask_keep(&mut m, &mask_range(2, 0, 8));
    assert_eq!(mask_runs(&m), vec![(3, 2), (7, 1)]);
    mask_add(&mut m, &mask_range(2, 31, 32));
    assert_eq!(mask_runs(&m), vec![(3, 2), (7, 1), (31, 1)]);
    assert!(!mask_is_empty(&m) && mask_is_empty(&[0, 0]));
}

#[test]
fn wide_masks_for_big_clusters() {
    let mut m = ClusterMap::new(4096);
    m.insert_slot(0, 0);
    let mut add = vec![0u16; mask_words(4096)];
    mask_set(&mut add, 4095);
    mask_set(&mut add, 17);
    m.add_blocks(0, &add);
    assert!(m.has_block(0, 4095) && m.has_block(0, 17) && !m.has_block(0, 16));
    assert_eq!(mask_count(m.get(0).unwrap().1), 2);
}

mod model {
    //! The map against a `BTreeMap` model, over random inserts, `add_blocks` and lookups, with
    //! cluster numbers dense, at leaf edges, sparse over the whole `u32` range, and huge; and
    //! its memory against the bound the module documents.

    use super::super::leaf::LEAF_CLUSTERS;
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Op {
        /// Give the cluster the next fresh slot (a cluster with a slot moves to it).
        Insert(u32),
        AddBlocks(u32, Vec<u16>),
        Get(u32),
    }

    fn cluster() -> impl Strategy<Value = u32> {
        prop_oneof![
            0u32..20_000,
            (0u32..8, 0u32..3).prop_map(|(k, d)| (k * LEAF_CLUSTERS + d).wrapping_sub(1)),
            any::<u32>(),
            (u32::MAX - 5000)..=u32::MAX,
        ]
    }

    fn op(words: usize) -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => cluster().prop_map(Op::Insert),
            3 => (cluster(), proptest::collection::vec(any::<u16>(), words))
                .prop_map(|(c, m)| Op::AddBlocks(c, m)),
            2 => cluster().prop_map(Op::Get),
        ]
    }

    /// The most heap the module doc allows for `model` (slots 0..`slots`, `words` per mask).
    fn bound(model: &BTreeMap<u32, (u32, Vec<u16>)>, slots: u32, words: usize) -> u64 {
        let Some(&top) = model.keys().next_back() else {
            return 0;
        };
        let ranges = model
            .keys()
            .map(|c| c / LEAF_CLUSTERS)
            .collect::<BTreeSet<_>>();
        // A Vec holds at least 4 elements once it holds one (8- and 16-byte elements here),
        // and at most twice what it holds after growing.
        let table = 8 * (2 * (u64::from(top / LEAF_CLUSTERS) + 1)).max(4);
        let leaves = ranges.len() as u64 * (700 + 16 * 4);
        let slot_bytes = model.len() as u64 * 9 / 2;
        let chunks = u64::from(slots / 4096 + 1);
        let masks = chunks * (4096 * words as u64 * 2) + 16 * (2 * chunks).max(4);
        table + leaves + slot_bytes + masks
    }

    use std::collections::BTreeSet;

    fn check(words: usize, ops: &[Op]) {
        let mut m = ClusterMap::new(words as u32 * 16);
        let mut model: BTreeMap<u32, (u32, Vec<u16>)> = BTreeMap::new();
        let mut next_slot = 0u32;
        for op in ops {
            match op {
                Op::Insert(c) => {
                    m.insert_slot(*c, next_slot);
                    model.insert(*c, (next_slot, vec![0; words]));
                    next_slot += 1;
                }
                Op::AddBlocks(c, add) => {
                    let want = model.get_mut(c).map_or(0, |(_, mask)| {
                        let before = mask_count(mask);
                        mask_add(mask, add);
                        mask_count(mask) - before
                    });
                    assert_eq!(m.add_blocks(*c, add), want, "{op:?}");
                }
                Op::Get(c) => {
                    let want = model.get(c).map(|(s, mask)| (*s, mask.as_slice()));
                    assert_eq!(m.get(*c), want, "{op:?}");
                    assert_eq!(m.slot(*c), want.map(|w| w.0));
                }
            }
        }
        let want: Vec<(u32, u32, &[u16])> = model
            .iter()
            .map(|(c, (s, k))| (*c, *s, k.as_slice()))
            .collect();
        assert_eq!(m.iter().collect::<Vec<_>>(), want);
        assert_eq!(m.clusters(), model.len() as u64);
        let blocks: u64 = model.values().map(|(_, k)| u64::from(mask_count(k))).sum();
        assert_eq!(m.blocks(), blocks);
        let ranges: BTreeSet<u32> = model.keys().map(|c| c / LEAF_CLUSTERS).collect();
        assert_eq!(m.leaf_count(), ranges.len());
        assert!(m.heap_bytes() <= bound(&model, next_slot, words));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn matches_a_btreemap(words in prop_oneof![Just(1usize), Just(2), Just(256)],
                              ops in proptest::collection::vec(op(1), 1..400)) {
            let ops: Vec<Op> = ops
                .into_iter()
                .map(|o| match o {
                    Op::AddBlocks(c, m) => Op::AddBlocks(c, m.repeat(words)),
                    o => o,
                })
                .collect();
            check(words, &ops);
        }
    }

    /// A fill of every cluster of a range in a scattered order: every leaf ends up full.
    #[test]
    fn full_leaves_in_any_order() {
        let n = 3 * LEAF_CLUSTERS + 17;
        let ops: Vec<Op> = (0..n)
            .map(|i| Op::Insert(i.wrapping_mul(2_654_435_761) % n))
            .chain((0..n).map(|c| Op::AddBlocks(c, vec![1 << (c % 16)])))
            .chain((0..n + 5).map(Op::Get))
            .collect();
        check(1, &ops);
    }

    /// The worst pattern per cluster, one cluster per 4096: bounded by the volume's size.
    #[test]
    fn one_cluster_per_leaf_costs_what_the_doc_says() {
        let mut m = ClusterMap::new(16);
        let leaves = 4096u32; // 2^24 clusters, the most a volume has
        for k in 0..leaves {
            m.insert_slot(k * LEAF_CLUSTERS + 7, k);
        }
        let per_volume_cluster_bits = m.heap_bytes() as f64 * 8.0 / f64::from(1u32 << 24);
        assert!(
            per_volume_cluster_bits < 1.5,
            "{per_volume_cluster_bits} bits"
        );
    }
}
