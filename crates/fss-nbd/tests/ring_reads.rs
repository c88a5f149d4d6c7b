//! Small reads in flight together on a connection's io_uring (`transmission/by_ring.rs`; on
//! the reader thread itself for a unix socket): pipelined 4 KiB reads of a snapshot while
//! another client overwrites the same blocks read the snapshot's bytes every time (the
//! engine's second look after each ring read; with the snapshot's store on a file, its
//! preserved blocks are read from that file on the ring too), and pipelined reads of the volume
//! read what was written. The ring must exist while they run, or this would test the worker pool instead.
//! A connection allowed fewer requests in flight than the client pipelines must not wait for
//! budget that only its own ring's reads hold.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::client::Client;
use common::{Harness, Rng};
use fss_nbd::ServerOptions;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const MIB: u64 = 1 << 20;
const LEN: u64 = 8 * MIB;
const BS: u32 = 4096;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
/// Reads in flight at once.
const DEPTH: usize = 32;

/// This process's io_uring instances (the test's client uses none).
fn rings() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|f| std::fs::read_link(f.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().contains("io_uring"))
        .count()
}

/// Send `DEPTH` reads of random blocks at once, then check every reply against `want`.
fn read_batch(c: &mut Client, rng: &mut Rng, want: &[u8]) {
    let blocks = LEN / u64::from(BS);
    let sent: Vec<(u64, u64)> = (0..DEPTH)
        .map(|_| {
            let at = rng.below(blocks) * u64::from(BS);
            (c.send(0, CMD_READ, at, BS, &[]), at)
        })
        .collect();
    for (cookie, at) in sent {
        let r = c.reply(cookie);
        assert_eq!(r.error, 0, "read at {at}");
        let at = at as usize;
        assert!(r.data == want[at..at + BS as usize], "bytes at {at}");
    }
}

#[test]
fn ring_reads_of_a_snapshot_under_overwrites_read_the_snapshot() {
    snapshot_reads_under_overwrites(false);
}

/// As above with the snapshot's store on a file: reads of preserved blocks go through the
/// ring too, from the store's file, while the writer keeps preserving more.
#[test]
fn ring_reads_of_a_snapshot_on_a_file_store_read_preserved_blocks_from_it() {
    snapshot_reads_under_overwrites(true);
}

fn snapshot_reads_under_overwrites(store_on_file: bool) {
    // Opened as `fss serve` opens a volume: the ring's reads go O_DIRECT.
    let h = Harness::with_device(LEN, ServerOptions::default(), true);
    let mut rng = Rng::new(11);
    let mut model = vec![0u8; LEN as usize];
    rng.fill(&mut model);
    let mut w = Client::open(&h.socket, "default", true, &[]);
    for (i, chunk) in model.chunks(MIB as usize).enumerate() {
        assert_eq!(w.write(i as u64 * MIB, chunk).error, 0);
    }
    let snap = if store_on_file {
        h.snapshot_on_file("s")
    } else {
        h.snapshot("s")
    };
    // One client overwrites random blocks (pipelined, as a busy file system would) while
    // another reads the snapshot 32 blocks at a time.
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = Arc::clone(&stop);
    let writer = std::thread::spawn(move || {
        let mut rng = Rng::new(12);
        let mut written = 0u32;
        while !s2.load(Ordering::Relaxed) {
            let cookies: Vec<u64> = (0..8)
                .map(|_| {
                    let at = rng.below(LEN / u64::from(BS)) * u64::from(BS);
                    let mut d = vec![0u8; BS as usize];
                    rng.fill(&mut d);
                    w.send(0, CMD_WRITE, at, BS, &d)
                })
                .collect();
            for c in cookies {
                assert_eq!(w.reply(c).error, 0);
                written += 1;
            }
        }
        w.disconnect();
        written
    });
    let mut r = Client::open(&h.socket, "s", true, &[]);
    let mut seen_ring = 0;
    for _ in 0..200 {
        read_batch(&mut r, &mut rng, &model);
        seen_ring = seen_ring.max(rings());
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    assert!(written > 100, "the writer made {written} writes meanwhile");
    assert!(seen_ring > 0, "no io_uring served the snapshot's reads");
    let preserved = snap.info().stats.blocks_preserved;
    assert!(
        preserved > 100,
        "{preserved} blocks preserved: the reads met few of them"
    );
    // The volume's reads go through the ring too, and read what the writer left.
    let now = h.volume_bytes();
    let mut v = Client::open(&h.socket, "default", false, &[]);
    for _ in 0..50 {
        read_batch(&mut v, &mut rng, &now);
    }
    v.disconnect();
    r.disconnect();
}

#[test]
fn a_connection_with_little_budget_completes_its_own_ring_reads_while_it_waits() {
    let opts = ServerOptions {
        max_requests_in_flight: 2,
        ..ServerOptions::default()
    };
    // O_DIRECT reads: they complete only when the reader enters its ring again.
    let h = Harness::with_device(LEN, opts, true);
    let mut rng = Rng::new(21);
    let mut model = vec![0u8; LEN as usize];
    rng.fill(&mut model);
    let mut c = Client::open(&h.socket, "default", true, &[]);
    for (i, chunk) in model.chunks(MIB as usize).enumerate() {
        assert_eq!(c.write(i as u64 * MIB, chunk).error, 0);
    }
    // 32 reads pipelined against a budget of 2: the reader waits for budget with reads of its
    // own in flight, whose completions only it runs.
    for _ in 0..50 {
        read_batch(&mut c, &mut rng, &model);
    }
    c.disconnect();
}
