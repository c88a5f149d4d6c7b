//! Property test: random writes to a volume image, snapshots backed up (incrementally from the
//! previous backup), prunes; every backup still in the repository restores to exactly its
//! snapshot's bytes, and the repository verifies.

mod common;

use common::{backup, file_repo, restore};
use fss_repo::{prune, verify, KeepPolicy, Manifest, PruneOptions};
use proptest::prelude::*;
use std::collections::HashMap;

/// 3.5 MiB: three full chunks and a short one.
const SIZE: usize = (7 << 20) / 2;

#[derive(Debug, Clone)]
enum Op {
    Write { offset: usize, len: usize, byte: u8 },
    Backup { full: bool },
    Prune { keep: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..SIZE, 1..300_000usize, any::<u8>()).prop_map(|(offset, len, byte)| Op::Write { offset, len, byte }),
        3 => any::<bool>().prop_map(|full| Op::Backup { full }),
        1 => (0..3usize).prop_map(|keep| Op::Prune { keep }),
    ]
}

fn apply_write(image: &mut [u8], offset: usize, len: usize, byte: u8) {
    let end = (offset + len).min(image.len());
    for (i, b) in image[offset..end].iter_mut().enumerate() {
        // Some runs compress (constant), some do not (varying).
        *b = if byte % 2 == 0 {
            byte
        } else {
            byte.wrapping_add((i * 7 % 251) as u8)
        };
    }
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let (_, repo) = file_repo(&dir, None);
    let mut image = vec![0u8; SIZE];
    let mut images: HashMap<String, Vec<u8>> = HashMap::new();
    let mut last: Option<(Manifest, Vec<u8>)> = None;
    for (n, op) in ops.iter().enumerate() {
        match op {
            Op::Write { offset, len, byte } => apply_write(&mut image, *offset, *len, *byte),
            Op::Backup { full } => {
                let base = if *full {
                    None
                } else {
                    last.as_ref().map(|(m, i)| (m, i.as_slice()))
                };
                let m = backup(&repo, "vol", &format!("s{n}"), n as u64 + 1, &image, base)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                images.insert(m.id.clone(), image.clone());
                last = Some((m, image.clone()));
            }
            Op::Prune { keep } => {
                let policy = KeepPolicy {
                    last: *keep,
                    ..KeepPolicy::default()
                };
                let r = prune(
                    &repo,
                    &policy,
                    PruneOptions {
                        dry_run: false,
                        grace_secs: 0,
                    },
                )
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
                for id in &r.removed {
                    images.remove(id);
                }
                // The base of the next incremental must still be in the repository.
                if last
                    .as_ref()
                    .is_some_and(|(m, _)| r.removed.contains(&m.id))
                {
                    last = None;
                }
            }
        }
    }
    for (id, want) in &images {
        let got = restore(&repo, id).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(
            got == *want,
            "backup {} does not restore to its snapshot",
            id
        );
    }
    prop_assert_eq!(
        repo.backups()
            .map_err(|e| TestCaseError::fail(e.to_string()))?
            .len(),
        images.len()
    );
    let v = verify(&repo, true, &mut |_, _| {}).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(v.problems.is_empty(), "verify: {:?}", v.problems);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn every_backup_restores_to_its_snapshot(ops in proptest::collection::vec(op(), 1..24)) {
        run(&ops)?;
    }
}
