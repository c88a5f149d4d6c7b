//! Which of a schedule's snapshots to keep: keep-last plus calendar buckets (hour, day, ISO
//! week, month) in UTC, in Proxmox Backup Server's manner. Options apply in that order; each
//! keeps the newest snapshot of each of its newest N buckets not already covered by a snapshot
//! an earlier option kept; a snapshot an option passed over is not looked at again.

use super::calendar::Utc;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// The bucket a creation time falls in, for one option.
type Bucket = fn(u64) -> i64;

/// How many snapshots (or buckets) each option keeps; all `None`: keep everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// The newest N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<u32>,
    /// The newest of each of the last N hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hourly: Option<u32>,
    /// The newest of each of the last N days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily: Option<u32>,
    /// The newest of each of the last N ISO weeks (Monday to Sunday).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weekly: Option<u32>,
    /// The newest of each of the last N months.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly: Option<u32>,
}

impl Retention {
    /// Whether any option is given (none given: nothing is pruned).
    #[must_use]
    pub fn any(&self) -> bool {
        self.options().iter().any(|(n, _)| n.is_some())
    }

    fn options(&self) -> [(Option<u32>, Bucket); 5] {
        [
            (self.last, |_| 0),
            (self.hourly, |t| i64::try_from(t / 3600).unwrap_or(i64::MAX)),
            (self.daily, |t| Utc::of(t).days),
            (self.weekly, |t| {
                let u = Utc::of(t);
                u.days - i64::from(u.weekday)
            }),
            (self.monthly, |t| {
                let u = Utc::of(t);
                u.year * 12 + i64::from(u.month)
            }),
        ]
    }

    /// For `snaps` (name, creation time), the names to delete, oldest first.
    #[must_use]
    pub fn prune(&self, snaps: &[(String, u64)]) -> Vec<String> {
        if !self.any() {
            return Vec::new();
        }
        let mut order: Vec<usize> = (0..snaps.len()).collect();
        // Newest first; equal times by position (later in the list is newer).
        order.sort_by(|&a, &b| snaps[b].1.cmp(&snaps[a].1).then(b.cmp(&a)));
        let mut keep: HashMap<usize, bool> = HashMap::new();
        for (i, (limit, bucket)) in self.options().into_iter().enumerate() {
            let Some(limit) = limit else { continue };
            // keep-last: every snapshot is its own bucket.
            let id = |k: usize| if i == 0 { k as i64 } else { bucket(snaps[k].1) };
            let covered: HashSet<i64> = order
                .iter()
                .filter(|k| keep.get(k) == Some(&true))
                .map(|&k| id(k))
                .collect();
            let mut taken = HashSet::new();
            for &k in &order {
                if keep.contains_key(&k) || covered.contains(&id(k)) {
                    continue;
                }
                if taken.contains(&id(k)) {
                    keep.insert(k, false);
                } else if taken.len() < limit as usize {
                    taken.insert(id(k));
                    keep.insert(k, true);
                } else {
                    break;
                }
            }
        }
        let mut gone: Vec<usize> = order
            .into_iter()
            .filter(|k| keep.get(k) != Some(&true))
            .collect();
        gone.reverse();
        gone.into_iter().map(|k| snaps[k].0.clone()).collect()
    }
}

#[cfg(test)]
mod tests;
