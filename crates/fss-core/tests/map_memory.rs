//! The resident memory a snapshot's map takes per mapped cluster, read from the kernel
//! (`/proc/self/statm`), over a 1M-cluster fill: decision 4 allows 16 bytes, the map should
//! take under 8. One test in this binary, so nothing else allocates beside it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use fss_core::cluster_map::ClusterMap;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Four writers each filling its own quarter of a 64 GiB volume cluster by cluster, as the
/// bench's fill does; RSS measured after every 125k clusters.
#[test]
fn a_million_clusters_take_under_8_bytes_each() {
    const N: u32 = 1_000_000;
    let mut m = ClusterMap::new(16);
    let base = rss_bytes();
    let mut samples = Vec::new();
    for i in 0..N {
        let cluster = (i % 4) * (N / 4) + i / 4;
        m.insert_slot(cluster, i);
        assert_eq!(m.add_blocks(cluster, &[1]), 1);
        if (i + 1) % 125_000 == 0 {
            samples.push((i + 1, rss_bytes() - base));
        }
    }
    for &(n, grown) in &samples {
        let per = grown as f64 / f64::from(n);
        assert!(
            per < 8.0,
            "{per:.1} B per cluster at {n} clusters: {samples:?}"
        );
    }
    let heap = m.heap_bytes() as f64 / f64::from(N);
    assert!(heap < 8.0, "heap_bytes says {heap:.1} B per cluster");
    assert_eq!((m.clusters(), m.blocks()), (u64::from(N), u64::from(N)));
    assert_eq!(
        m.get(N - 1).map(|(s, k)| (s, k.to_vec())),
        Some((N - 1, vec![1]))
    );
}
