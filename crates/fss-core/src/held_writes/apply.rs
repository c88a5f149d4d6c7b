//! Applying one batch of held changes to the volume (the committer's second step, after the
//! group commit made their pre-images durable).
//!
//! Why in parallel: a batch of large held writes went to the volume one direct write at a
//! time, so the committer kept one I/O in flight while sixteen clients' writes waited behind
//! the held-bytes limit (persistent 1 MiB first overwrites at queue depth 16). Changes of one
//! batch that share no byte may reach the volume in any order, so such a batch is spread over
//! a few threads; a batch with any overlap keeps arrival order, applied one by one.

use super::{Held, HeldChange};
use crate::device::BlockDevice;
use crate::error::Error;
use std::io;

/// The most threads that apply one batch.
const LANES: usize = 4;

/// Apply every change of `batch` (arrival number, change) to `dev`; returns the first
/// failure (in arrival order), after logging each.
pub(crate) fn apply_batch(
    dev: &dyn BlockDevice,
    object: &str,
    batch: &[(u64, Held)],
) -> Option<Error> {
    let lanes = lanes_for(batch);
    let mut failures: Vec<(usize, io::Error)> = if lanes < 2 {
        apply_lane(dev, batch, 0, 1)
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..lanes)
                .map(|lane| s.spawn(move || apply_lane(dev, batch, lane, lanes)))
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    };
    failures.sort_by_key(|(i, _)| *i);
    let mut first = None;
    for (i, e) in failures {
        let h = &batch[i].1;
        tracing::error!(volume = %object, offset = h.offset, error = %e,
            "a write acknowledged earlier could not be applied to the volume");
        first.get_or_insert_with(|| {
            Error::io("apply an acknowledged write to", object.to_string(), e).at(h.offset)
        });
    }
    first
}

/// How many threads `batch` is applied by: one unless it holds at least two large writes
/// (small ones land in the page cache, where a thread costs more than it saves) and no two
/// changes share a byte.
fn lanes_for(batch: &[(u64, Held)]) -> usize {
    let large = batch
        .iter()
        .filter(|(_, h)| {
            matches!(h.change, HeldChange::Write { .. }) && !crate::volume::cached_transfer(h.len)
        })
        .count();
    if large < 2 {
        return 1;
    }
    let mut spans: Vec<(u64, u64)> = batch
        .iter()
        .map(|(_, h)| (h.offset, h.offset.saturating_add(h.len)))
        .collect();
    spans.sort_unstable();
    if spans.windows(2).any(|w| w[1].0 < w[0].1) {
        return 1;
    }
    large.min(LANES)
}

/// Apply the changes of `batch` whose index is `lane` modulo `lanes`, in order; returns the
/// failures with their indices.
fn apply_lane(
    dev: &dyn BlockDevice,
    batch: &[(u64, Held)],
    lane: usize,
    lanes: usize,
) -> Vec<(usize, io::Error)> {
    let mut failed = Vec::new();
    for (i, (_, h)) in batch.iter().enumerate().skip(lane).step_by(lanes) {
        if let Err(e) = apply_one(dev, h) {
            failed.push((i, e));
        }
    }
    failed
}

/// Apply one held change.
fn apply_one(dev: &dyn BlockDevice, h: &Held) -> io::Result<()> {
    match &h.change {
        // A small one's pre-images were just read through the page cache; a large one goes
        // as the volume's large writes do (`volume::cached_transfer`).
        HeldChange::Write { buf, data_at, .. } if crate::volume::cached_transfer(h.len) => {
            dev.write_at_cached(&buf[*data_at..], h.offset)
        }
        HeldChange::Write { buf, data_at, .. } => dev.write_at(&buf[*data_at..], h.offset),
        HeldChange::Discard => dev.discard(h.offset, h.len),
        HeldChange::Zeroes => dev.write_zeroes(h.offset, h.len),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::MemDevice;

    fn write(offset: u64, data: Vec<u8>) -> (u64, Held) {
        let len = data.len() as u64;
        (
            offset,
            Held {
                offset,
                len,
                change: HeldChange::Write {
                    buf: data,
                    rec_at: 0,
                    data_at: 0,
                },
                syncs: Vec::new(),
            },
        )
    }

    #[test]
    fn disjoint_large_writes_spread_and_overlapping_ones_keep_order() {
        let big = 1 << 20;
        let disjoint = vec![write(0, vec![1; big]), write(big as u64, vec![2; big])];
        assert_eq!(lanes_for(&disjoint), 2);
        // The second overlaps the first: arrival order decides, so one lane.
        let overlapping = vec![write(0, vec![1; big]), write(4096, vec![2; big])];
        assert_eq!(lanes_for(&overlapping), 1);
        let small = vec![write(0, vec![1; 4096]), write(8192, vec![2; 4096])];
        assert_eq!(lanes_for(&small), 1);

        for (batch, last) in [(disjoint, 2u8), (overlapping, 2u8)] {
            let dev = MemDevice::new(4 << 20);
            assert!(apply_batch(&dev, "test", &batch).is_none());
            let mut got = vec![0u8; 4096];
            dev.read_at(&mut got, big as u64).unwrap();
            assert!(got.iter().all(|&b| b == last), "the later write wins");
            dev.read_at(&mut got, 0).unwrap();
            assert!(got.iter().all(|&b| b == 1));
        }
    }

    #[test]
    fn a_failed_change_is_reported_and_the_others_still_apply() {
        let big = 1 << 20;
        // The third write ends past the device: it fails, the others land.
        let batch = vec![
            write(0, vec![1; big]),
            write(big as u64, vec![2; big]),
            write(3 * big as u64 + 4096, vec![3; big]),
        ];
        let dev = MemDevice::new(4 << 20);
        let e = apply_batch(&dev, "vol", &batch).expect("the write past the end fails");
        assert!(e.to_string().contains("vol"), "{e}");
        let mut got = vec![0u8; 4096];
        dev.read_at(&mut got, big as u64).unwrap();
        assert!(got.iter().all(|&b| b == 2));
    }
}
