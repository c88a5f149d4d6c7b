//! Forgetting backups by a keep policy, and the two-phase garbage collection of packs
//! (`docs/REPOSITORY.md` section "Garbage collection").

use crate::calendar::Period;
use crate::error::Result;
use crate::format::{
    backup_object, index_object, new_id, now_secs, pack_object, Manifest, Mark, MARKS, PACKS,
};
use crate::repo::Repository;
use std::collections::{BTreeMap, HashSet};

/// Which backups of each volume to keep (a backup kept by any rule is kept).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    /// The newest N.
    pub last: usize,
    /// The newest of each of the last N UTC hours that have a backup.
    pub hourly: usize,
    /// Likewise for UTC days.
    pub daily: usize,
    /// Likewise for weeks (Monday to Sunday, UTC).
    pub weekly: usize,
    /// Likewise for UTC calendar months.
    pub monthly: usize,
}

/// The ids to keep among `backups`: grouped per volume, newest first within each.
#[must_use]
pub fn select(backups: &[Manifest], policy: &KeepPolicy) -> HashSet<String> {
    let mut per_volume: BTreeMap<&str, Vec<&Manifest>> = BTreeMap::new();
    for b in backups {
        per_volume.entry(&b.volume).or_default().push(b);
    }
    let mut keep = HashSet::new();
    for list in per_volume.values_mut() {
        list.sort_by(|a, b| crate::repo::order(b).cmp(&crate::repo::order(a)));
        keep.extend(list.iter().take(policy.last).map(|b| b.id.clone()));
        for (period, n) in [
            (Period::Hour, policy.hourly),
            (Period::Day, policy.daily),
            (Period::Week, policy.weekly),
            (Period::Month, policy.monthly),
        ] {
            let mut last_bucket = None;
            let mut count = 0;
            for b in list.iter() {
                if count >= n {
                    break;
                }
                let bucket = period.bucket(b.created);
                if last_bucket != Some(bucket) {
                    last_bucket = Some(bucket);
                    keep.insert(b.id.clone());
                    count += 1;
                }
            }
        }
    }
    keep
}

/// What a prune does besides the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneOptions {
    /// Report only; change nothing.
    pub dry_run: bool,
    /// Seconds a pack stays marked before it may be deleted. It must be longer than any backup
    /// runs, since a backup that started before the mark may still come to need the pack.
    pub grace_secs: u64,
}

/// What a prune did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Backups kept.
    pub kept: Vec<String>,
    /// Backups forgotten.
    pub removed: Vec<String>,
    /// Packs newly marked as unused.
    pub marked: Vec<String>,
    /// Packs deleted (marked more than the grace period ago and still unused).
    pub deleted: Vec<String>,
    /// Bytes of the deleted packs.
    pub deleted_bytes: u64,
}

/// Forget the backups `policy` does not keep, then collect garbage.
///
/// # Errors
/// The store refused or a document is damaged (a prune stopped midway is safe to run again).
pub fn prune(repo: &Repository, policy: &KeepPolicy, opts: PruneOptions) -> Result<PruneReport> {
    let backups = repo.backups()?;
    let keep = select(&backups, policy);
    let mut report = PruneReport::default();
    for b in &backups {
        if keep.contains(&b.id) {
            report.kept.push(b.id.clone());
        } else {
            report.removed.push(b.id.clone());
            if !opts.dry_run {
                repo.backend().delete(&backup_object(&b.id))?;
            }
        }
    }
    collect_garbage(repo, opts, &mut report)?;
    Ok(report)
}

/// The packs that hold a chunk some backup needs (by the index's choice of location), and
/// every pack in the store, with sizes.
fn pack_usage(repo: &Repository) -> Result<(HashSet<String>, BTreeMap<String, u64>)> {
    let index = repo.load_index()?;
    let mut used = HashSet::new();
    for m in repo.backups()? {
        for id in m.chunks.iter().flatten() {
            if let Some(loc) = crate::crypto::unhex::<32>(id).and_then(|id| index.chunks.get(&id)) {
                used.insert(loc.pack.clone());
            }
        }
    }
    let mut all: BTreeMap<String, u64> = repo
        .backend()
        .list(PACKS)?
        .into_iter()
        .filter_map(|(name, size)| name.strip_prefix(PACKS).map(|n| (n.to_string(), size)))
        .collect();
    for p in &index.packs {
        all.entry(p.clone()).or_insert(0);
    }
    Ok((used, all))
}

fn collect_garbage(repo: &Repository, opts: PruneOptions, report: &mut PruneReport) -> Result<()> {
    let (used, all) = pack_usage(repo)?;
    let now = now_secs();
    let mut still_marked = HashSet::new();
    for (object, mark) in repo.marks()? {
        if now.saturating_sub(mark.marked) < opts.grace_secs {
            still_marked.extend(mark.packs);
            continue;
        }
        for pack in mark.packs.iter().filter(|p| !used.contains(*p)) {
            report.deleted.push(pack.clone());
            report.deleted_bytes += all.get(pack).copied().unwrap_or(0);
            if !opts.dry_run {
                // The index first: from then on no backup can choose to reuse the pack.
                repo.backend().delete(&index_object(pack))?;
                repo.backend().delete(&pack_object(pack))?;
            }
        }
        if !opts.dry_run {
            repo.backend().delete(&object)?;
        }
    }
    let deleted: HashSet<&String> = report.deleted.iter().collect();
    report.marked = all
        .keys()
        .filter(|p| !used.contains(*p) && !still_marked.contains(*p) && !deleted.contains(p))
        .cloned()
        .collect();
    if !opts.dry_run && !report.marked.is_empty() {
        let mark = Mark {
            marked: now,
            packs: report.marked.clone(),
        };
        repo.write_doc(&format!("{MARKS}{}", new_id(now)), &mark)?;
    }
    Ok(())
}
