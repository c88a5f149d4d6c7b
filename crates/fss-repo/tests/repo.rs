//! Repository behaviours on `file://`: encryption and wrong keys, damage detection, dedup,
//! interrupted backups, and the two-phase garbage collection.

mod common;

use common::{backup, file_repo, restore};
use fss_repo::{prune, verify, KeepPolicy, PruneOptions, RepoError, Repository};

const MIB: usize = 1 << 20;

/// Distinct, incompressible bytes for each (seed, offset).
fn image(size: usize, seed: u8) -> Vec<u8> {
    (0..size as u64)
        .map(|i| {
            let x = (i ^ (u64::from(seed) << 40)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            (x ^ (x >> 29))
                .wrapping_mul(0xbf58_476d_1ce4_e5b9)
                .to_le_bytes()[7]
        })
        .collect()
}

fn all_files(dir: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in walk(dir) {
        out.extend(std::fs::read(entry).unwrap_or_default());
    }
    out
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn encrypted_repository_hides_data_and_refuses_a_wrong_key() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let key = dir.path().join("key");
    let (url, repo) = file_repo(&dir, Some(&key));
    let known = b"the plaintext of a known block, repeated so it is easy to find".repeat(64);
    let mut img = image(2 * MIB, 1);
    img[4096..4096 + known.len()].copy_from_slice(&known);
    let volume = "a-volume-name-long-enough-to-never-occur-by-chance";
    let m = backup(&repo, volume, "s1", 1, &img, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(restore(&repo, &m.id).unwrap_or_else(|e| panic!("{e}")), img);
    let stored = all_files(&dir.path().join("repo"));
    assert!(
        !stored.windows(64).any(|w| w == &known[..64]),
        "plaintext found in the repository"
    );
    assert!(
        !stored.windows(volume.len()).any(|w| w == volume.as_bytes()),
        "the volume name is readable"
    );

    let other = dir.path().join("other");
    fss_repo::crypto::read_or_create_key_file(&other).unwrap_or_else(|e| panic!("{e}"));
    match Repository::open(&url, Some(&other)) {
        Err(RepoError::WrongKey { .. }) => {}
        r => panic!("a wrong key must be refused, got {r:?}"),
    }
    assert!(matches!(
        Repository::open(&url, None),
        Err(RepoError::KeyRequired)
    ));
}

#[test]
fn damaged_pack_is_found_by_verify_and_refused_by_restore() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (_, repo) = file_repo(&dir, None);
    let img = image(3 * MIB, 2);
    let m = backup(&repo, "vol", "s1", 1, &img, None).unwrap_or_else(|e| panic!("{e}"));
    assert!(verify(&repo, true, &mut |_, _| {})
        .unwrap_or_else(|e| panic!("{e}"))
        .problems
        .is_empty());
    let pack = walk(&dir.path().join("repo/packs"))
        .pop()
        .unwrap_or_else(|| panic!("no pack"));
    let mut bytes = std::fs::read(&pack).unwrap_or_else(|e| panic!("{e}"));
    bytes[100] ^= 0xff;
    std::fs::write(&pack, bytes).unwrap_or_else(|e| panic!("{e}"));
    assert!(verify(&repo, false, &mut |_, _| {})
        .unwrap_or_else(|e| panic!("{e}"))
        .problems
        .is_empty());
    let v = verify(&repo, true, &mut |_, _| {}).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
    assert!(v.problems[0].contains("at offset 0"), "{}", v.problems[0]);
    match restore(&repo, &m.id) {
        Err(RepoError::Damaged {
            backup,
            object,
            offset,
            ..
        }) => {
            assert_eq!(backup, m.id);
            assert!(object.starts_with("packs/"));
            assert_eq!(offset, 0);
        }
        r => panic!(
            "a damaged chunk must fail the restore, got {:?}",
            r.map(|v| v.len())
        ),
    }
}

#[test]
fn dedup_across_volumes_and_incremental_stores_only_changed_chunks() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (_, repo) = file_repo(&dir, None);
    let img = image(8 * MIB, 3);
    let a = backup(&repo, "a", "s1", 1, &img, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.new_bytes, 8 * MIB as u64);
    let b = backup(&repo, "b", "s1", 1, &img, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(b.new_bytes, 0);
    let mut img2 = img.clone();
    img2[5 * MIB + 10] ^= 1;
    img2[7 * MIB + 10] ^= 1;
    let c = backup(&repo, "a", "s2", 2, &img2, Some((&a, &img))).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.new_bytes, 2 * MIB as u64, "two chunks overlap the change");
    assert_eq!(
        restore(&repo, &c.id).unwrap_or_else(|e| panic!("{e}")),
        img2
    );
    assert_eq!(restore(&repo, &a.id).unwrap_or_else(|e| panic!("{e}")), img);
}

#[test]
fn a_rerun_after_an_interrupted_backup_reuses_its_packs() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (_, repo) = file_repo(&dir, None);
    // 40 MiB of incompressible data: more than one pack.
    let img = image(40 * MIB, 6);
    std::thread::scope(|s| {
        let meta = fss_repo::BackupMeta {
            volume: "vol".into(),
            volume_id: "00".into(),
            snapshot: "s1".into(),
            snapshot_id: 1,
            snapshot_created_ns: 1,
            size: img.len() as u64,
        };
        let mut w =
            fss_repo::BackupWriter::new(s, &repo, meta, None, 2).unwrap_or_else(|e| panic!("{e}"));
        w.extent(0, 36 * MIB as u64, Some(&img[..36 * MIB]))
            .unwrap_or_else(|e| panic!("{e}"));
        // Dropped without finish: as if killed after the first pack went out.
    });
    assert!(repo.backups().unwrap_or_else(|e| panic!("{e}")).is_empty());
    let m = backup(&repo, "vol", "s1", 1, &img, None).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        m.new_bytes <= 10 * MIB as u64,
        "the rerun stored {} bytes again",
        m.new_bytes
    );
    assert_eq!(restore(&repo, &m.id).unwrap_or_else(|e| panic!("{e}")), img);
}

#[test]
fn garbage_is_marked_first_and_deleted_only_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (_, repo) = file_repo(&dir, None);
    let one = image(2 * MIB, 4);
    let two = image(2 * MIB, 5);
    let a = backup(&repo, "vol", "s1", 1, &one, None).unwrap_or_else(|e| panic!("{e}"));
    let b = backup(&repo, "vol", "s2", 2, &two, None).unwrap_or_else(|e| panic!("{e}"));
    let keep1 = KeepPolicy {
        last: 1,
        ..KeepPolicy::default()
    };
    let long = PruneOptions {
        dry_run: false,
        grace_secs: 3600,
    };
    let r = prune(&repo, &keep1, long).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.removed, vec![a.id.clone()]);
    assert_eq!(r.marked.len(), 1);
    assert!(r.deleted.is_empty());
    // A backup of the same data while the pack is marked stores it again rather than reuse it.
    let c = backup(&repo, "vol", "s3", 3, &one, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.new_bytes, 2 * MIB as u64);
    let now = PruneOptions {
        dry_run: false,
        grace_secs: 0,
    };
    let r = prune(
        &repo,
        &KeepPolicy {
            last: 2,
            ..KeepPolicy::default()
        },
        now,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.deleted.len(), 1);
    for (id, img) in [(&b.id, &two), (&c.id, &one)] {
        assert_eq!(restore(&repo, id).unwrap_or_else(|e| panic!("{e}")), *img);
    }
    assert!(verify(&repo, true, &mut |_, _| {})
        .unwrap_or_else(|e| panic!("{e}"))
        .problems
        .is_empty());
}

#[test]
fn keep_policies_count_utc_periods_per_volume() {
    let hour = 3600;
    let mk = |vol: &str, created: u64| fss_repo::Manifest {
        id: format!("{vol}-{created}"),
        volume: vol.into(),
        volume_id: String::new(),
        snapshot: String::new(),
        snapshot_id: 0,
        snapshot_created_ns: 0,
        created,
        size: 0,
        chunk_size: 1,
        chunks: Vec::new(),
        new_bytes: 0,
        stored_bytes: 0,
    };
    // 2026-12-01T00:00Z and later; every 6 hours for three days, two volumes.
    let day0 = 20_788 * 86_400;
    let all: Vec<_> = (0..12)
        .flat_map(|i| {
            [
                mk("a", day0 + i * 6 * hour),
                mk("b", day0 + i * 6 * hour + 60),
            ]
        })
        .collect();
    let keep = fss_repo::prune::select(
        &all,
        &KeepPolicy {
            daily: 2,
            ..KeepPolicy::default()
        },
    );
    let mut got: Vec<_> = keep.into_iter().collect();
    got.sort();
    let want = [
        format!("a-{}", day0 + 66 * hour),
        format!("a-{}", day0 + 42 * hour),
        format!("b-{}", day0 + 66 * hour + 60),
        format!("b-{}", day0 + 42 * hour + 60),
    ];
    let mut want = want.to_vec();
    want.sort();
    assert_eq!(got, want);
    let keep = fss_repo::prune::select(
        &all,
        &KeepPolicy {
            last: 1,
            monthly: 3,
            ..KeepPolicy::default()
        },
    );
    assert_eq!(keep.len(), 2, "one month: the newest of each volume");
}
