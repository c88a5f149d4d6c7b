//! Retention against simple models.

use super::Retention;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn snaps(times: &[u64]) -> Vec<(String, u64)> {
    times.iter().map(|t| (format!("s{t}"), *t)).collect()
}

fn kept(r: &Retention, s: &[(String, u64)]) -> Vec<u64> {
    let gone = r.prune(s);
    s.iter()
        .filter(|(n, _)| !gone.contains(n))
        .map(|(_, t)| *t)
        .collect()
}

#[test]
fn nothing_given_keeps_everything() {
    let s = snaps(&[1, 2, 3]);
    assert!(Retention::default().prune(&s).is_empty());
}

#[test]
fn hourly_and_daily_keep_the_newest_of_each_bucket() {
    // Day 0: 00:10, 00:50, 01:20, 23:00; day 1: 00:30, 05:00.
    let h = 3600;
    let d = 86_400;
    let s = snaps(&[600, 3000, h + 1200, 23 * h, d + 1800, d + 5 * h]);
    let r = Retention {
        last: Some(1),
        hourly: Some(2),
        daily: Some(2),
        ..Retention::default()
    };
    // last: d+5h. hourly: d+0:30, then day 0's 23:00. daily: day 1 is covered (by last and
    // hourly), day 0 by 23:00: nothing more. The rest go, oldest first.
    assert_eq!(kept(&r, &s), vec![23 * h, d + 1800, d + 5 * h]);
    assert_eq!(r.prune(&s), vec!["s600", "s3000", "s4800"]);
}

#[test]
fn weekly_buckets_start_on_monday() {
    // 2026-12-06 (Sunday) 12:00 and 2026-12-07 (Monday) 12:00 are in different weeks; the
    // Monday and Tuesday of the same week share one.
    let sun = 1_796_558_400;
    let d = 86_400;
    let s = snaps(&[sun - d, sun, sun + d, sun + 2 * d]);
    let r = Retention {
        weekly: Some(5),
        ..Retention::default()
    };
    assert_eq!(kept(&r, &s), vec![sun, sun + 2 * d]);
}

proptest! {
    /// keep-last alone keeps exactly the N newest.
    #[test]
    fn keep_last_keeps_the_newest(mut times in proptest::collection::vec(0u64..1_000_000, 0..40), n in 1u32..10) {
        times.sort_unstable();
        times.dedup();
        let s = snaps(&times);
        let r = Retention { last: Some(n), ..Retention::default() };
        let skip = times.len().saturating_sub(n as usize);
        prop_assert_eq!(kept(&r, &s), times[skip..].to_vec());
        // Deleted oldest first.
        let gone: Vec<String> = times[..skip].iter().map(|t| format!("s{t}")).collect();
        prop_assert_eq!(r.prune(&s), gone);
    }

    /// hourly alone keeps the newest snapshot of each of the N newest hours.
    #[test]
    fn hourly_alone_matches_a_model(mut times in proptest::collection::vec(0u64..200_000, 0..60), n in 1u32..8) {
        times.sort_unstable();
        times.dedup();
        let mut newest_per_hour: BTreeMap<u64, u64> = BTreeMap::new();
        for t in &times {
            newest_per_hour.insert(t / 3600, *t);
        }
        let model: Vec<u64> = newest_per_hour.values().rev().take(n as usize).rev().copied().collect();
        let r = Retention { hourly: Some(n), ..Retention::default() };
        prop_assert_eq!(kept(&r, &snaps(&times)), model);
    }

    /// Any mix keeps the newest, keeps at least keep-last, and at most the sum of the limits.
    #[test]
    fn mixes_are_bounded(mut times in proptest::collection::vec(0u64..10_000_000, 1..60),
                         l in 1u32..4, h in 0u32..4, d in 0u32..4, w in 0u32..3, m in 0u32..3) {
        times.sort_unstable();
        times.dedup();
        let nz = |x: u32| (x > 0).then_some(x);
        let r = Retention { last: Some(l), hourly: nz(h), daily: nz(d), weekly: nz(w), monthly: nz(m) };
        let k = kept(&r, &snaps(&times));
        prop_assert_eq!(k.last(), times.last());
        prop_assert!(k.len() >= (l as usize).min(times.len()));
        prop_assert!(k.len() <= (l + h + d + w + m) as usize);
    }
}
