//! The local cache of indexes and manifests: used when it matches the listing, and never able
//! to make a backup reuse a pack that a prune elsewhere deleted.

mod common;

use common::{backup, file_repo, restore};
use fss_repo::cache::DocCache;
use fss_repo::{prune, verify, KeepPolicy, PruneOptions, Repository};

const MIB: usize = 1 << 20;

fn image(size: usize, seed: u8) -> Vec<u8> {
    (0..size)
        .map(|i| {
            let x = (i as u64 ^ u64::from(seed) << 40).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            (x >> 56) as u8
        })
        .collect()
}

fn files(dir: &std::path::Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn a_stale_cache_cannot_make_a_backup_reuse_a_deleted_pack() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cache_dir = dir.path().join("cache");
    let (url, repo) = file_repo(&dir, None);
    let repo = repo.with_cache(Some(DocCache::at(cache_dir.clone())));
    let one = image(2 * MIB, 1);
    let two = image(2 * MIB, 2);
    let a = backup(&repo, "vol", "s1", 1, &one, None).unwrap_or_else(|e| panic!("{e}"));
    let b = backup(&repo, "vol", "s2", 2, &two, None).unwrap_or_else(|e| panic!("{e}"));
    // Loading the index fills the cache with what the listing holds, sealed as stored.
    repo.load_index().unwrap_or_else(|e| panic!("{e}"));
    let listed: Vec<String> = repo
        .backend()
        .list("index/")
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|(n, _)| n.trim_start_matches("index/").to_string())
        .collect();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(files(&cache_dir.join("index")), sorted);
    let before = files(&cache_dir.join("index"));

    // Another host, without this cache, prunes backup a and deletes its pack at once.
    let other = Repository::open(&url, None)
        .unwrap_or_else(|e| panic!("{e}"))
        .with_cache(None);
    let keep1 = KeepPolicy {
        last: 1,
        ..KeepPolicy::default()
    };
    let now = PruneOptions {
        dry_run: false,
        grace_secs: 0,
    };
    prune(&other, &keep1, now).unwrap_or_else(|e| panic!("{e}"));
    let r = prune(&other, &keep1, now).unwrap_or_else(|e| panic!("{e}"));
    assert!(!r.deleted.is_empty(), "the pack of backup a is deleted");
    assert!(other.backup(&a.id).is_err(), "backup a was pruned");

    // This host's cache still holds the deleted pack's index; a backup of the same data must
    // store the chunks again, and the cache forgets the index.
    let c = backup(&repo, "vol", "s3", 3, &one, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.new_bytes, 2 * MIB as u64, "the chunks are stored again");
    let after = files(&cache_dir.join("index"));
    assert!(
        before.iter().any(|n| !after.contains(n)),
        "the deleted index left the cache"
    );
    for (id, img) in [(&b.id, &two), (&c.id, &one)] {
        assert_eq!(restore(&repo, id).unwrap_or_else(|e| panic!("{e}")), *img);
    }
    assert!(verify(&other, true, &mut |_, _| {})
        .unwrap_or_else(|e| panic!("{e}"))
        .problems
        .is_empty());
}

#[test]
fn a_damaged_cache_file_is_fetched_again() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cache_dir = dir.path().join("cache");
    let (_, repo) = file_repo(&dir, None);
    let repo = repo.with_cache(Some(DocCache::at(cache_dir.clone())));
    let one = image(2 * MIB, 3);
    let a = backup(&repo, "vol", "s1", 1, &one, None).unwrap_or_else(|e| panic!("{e}"));
    let index = repo.load_index().unwrap_or_else(|e| panic!("{e}"));
    // Same size, other bytes: it does not open, so the store's copy is used and re-cached.
    for name in files(&cache_dir.join("index")) {
        let p = cache_dir.join("index").join(&name);
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        std::fs::write(&p, vec![0x5a; usize::try_from(len).unwrap_or(0)])
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let again = repo.load_index().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.chunks, index.chunks);
    assert_eq!(restore(&repo, &a.id).unwrap_or_else(|e| panic!("{e}")), one);
    for name in files(&cache_dir.join("index")) {
        let cached = std::fs::read(cache_dir.join("index").join(&name)).unwrap_or_default();
        let stored = repo
            .backend()
            .get(&format!("index/{name}"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cached, stored, "the cache holds the object as stored");
    }
}
