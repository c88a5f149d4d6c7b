//! Many clients at once: raw pipelined clients on disjoint regions, checked against a model,
//! with a snapshot taken in the middle; and fio (ioengine=nbd) writing and verifying with
//! several jobs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::client::Client;
use common::{require, run_ok, Harness, Rng};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

const MIB: u64 = 1 << 20;
const CLIENTS: u64 = 8;
const REGION: u64 = 2 * MIB;
/// Each batch has one request in flight per slot of the client's region.
const SLOTS: u64 = 8;
const SLOT: u64 = REGION / SLOTS;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;
/// The longest wait at the midway pause: a client that failed or hangs before it then fails
/// the test instead of leaving the others waiting forever (as a `Barrier` would).
const MIDWAY_LIMIT: Duration = Duration::from_secs(120);

/// A client's side of the midway pause: it says it has paused, then waits to go on.
struct Midway {
    paused: mpsc::Sender<()>,
    go: mpsc::Receiver<()>,
}

enum Op {
    Write(u64, Vec<u8>, bool),
    Read(u64, u32),
    Zero(u64, u32),
    Trim(u64, u32),
}

/// One client's life: batches of pipelined requests on its own region, each checked against
/// the model of that region. Returns the region's final model.
fn client(h_socket: &std::path::Path, id: u64, batches: usize, mid: &Midway) -> Vec<u8> {
    let mut c = Client::open(h_socket, "default", true, &[]);
    let mut rng = Rng::new(1000 + id);
    let base = id * REGION;
    let mut model = vec![0u8; REGION as usize];
    for batch in 0..batches {
        if batch == batches / 2 {
            // Everyone pauses while the test takes a snapshot, then goes on.
            mid.paused.send(()).unwrap();
            mid.go
                .recv_timeout(MIDWAY_LIMIT)
                .expect("the test did not resume the clients");
        }
        let mut ops = Vec::new();
        for slot in 0..SLOTS {
            let start = slot * SLOT + rng.below(SLOT / 2);
            let len = 1 + rng.below(SLOT / 2) as u32;
            let op = match rng.below(10) {
                0..=4 => {
                    let mut d = vec![0u8; len as usize];
                    rng.fill(&mut d);
                    Op::Write(start, d, rng.below(8) == 0)
                }
                5..=7 => Op::Read(start, len),
                8 => Op::Zero(start, len),
                _ => Op::Trim(start, len),
            };
            let cookie = match &op {
                Op::Write(o, d, fua) => {
                    let f = if *fua {
                        fss_nbd::protocol::CMD_FLAG_FUA
                    } else {
                        0
                    };
                    c.send(f, CMD_WRITE, base + o, d.len() as u32, d)
                }
                Op::Read(o, l) => c.send(0, CMD_READ, base + o, *l, &[]),
                Op::Zero(o, l) => c.send(0, CMD_WRITE_ZEROES, base + o, *l, &[]),
                Op::Trim(o, l) => c.send(0, CMD_TRIM, base + o, *l, &[]),
            };
            ops.push((cookie, op));
        }
        // Collect the replies in reverse order of sending (the server may answer in any).
        for (cookie, op) in ops.into_iter().rev() {
            let r = c.reply(cookie);
            assert_eq!(r.error, 0, "client {id}: {}", r.message);
            match op {
                Op::Write(o, d, _) => model[o as usize..o as usize + d.len()].copy_from_slice(&d),
                Op::Read(o, l) => assert!(
                    r.data == model[o as usize..o as usize + l as usize],
                    "client {id} batch {batch}: read at {o} differs from the model"
                ),
                // Trim reads back as zeroes on a sparse file volume.
                Op::Zero(o, l) | Op::Trim(o, l) => {
                    model[o as usize..o as usize + l as usize].fill(0);
                }
            }
        }
        if batch % 10 == 0 {
            assert_eq!(c.call(0, CMD_FLUSH, 0, 0, &[]).error, 0);
        }
    }
    let r = c.read(base, REGION as u32);
    assert!(r.data == model, "client {id}: region differs at the end");
    c.disconnect();
    model
}

#[test]
fn eight_clients_on_disjoint_regions_with_a_snapshot_midway() {
    let h = Harness::new(CLIENTS * REGION);
    let (paused, paused_rx) = mpsc::channel();
    let mut go = Vec::new();
    let socket = h.socket.clone();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let socket = socket.clone();
            let (go_tx, go_rx) = mpsc::channel();
            go.push(go_tx);
            let mid = Midway {
                paused: paused.clone(),
                go: go_rx,
            };
            std::thread::spawn(move || client(&socket, id, 60, &mid))
        })
        .collect();
    // Midway: every client is paused between batches; snapshot the volume.
    for _ in 0..CLIENTS {
        paused_rx
            .recv_timeout(MIDWAY_LIMIT)
            .expect("a client did not reach midway: it failed (its panic is above) or hangs");
    }
    let at_snapshot = h.volume_bytes();
    let snap = h.snapshot("mid");
    for g in &go {
        // A client that is gone reports its panic at the join.
        let _ = g.send(());
    }
    let models: Vec<Vec<u8>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(h.volume_bytes() == models.concat());

    // The snapshot still reads the midpoint, over NBD too.
    let mut c = Client::open(&h.socket, "mid", true, &[]);
    let mut got = Vec::new();
    for i in 0..CLIENTS {
        got.extend(c.read(i * REGION, REGION as u32).data);
    }
    assert!(got == at_snapshot, "the snapshot changed");
    c.disconnect();
    drop(snap);
}

#[test]
fn fio_jobs_write_and_verify_over_nbd() {
    require("fio", "fio");
    let h = Harness::new(64 * MIB);
    // fio writes verify state files into its working directory: keep them in the test's.
    let out = run_ok(Command::new("fio").current_dir(h.dir.path()).args([
        "--name=fss-nbd",
        "--ioengine=nbd",
        &format!("--uri={}", h.uri("default")),
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=16",
        "--numjobs=4",
        "--size=8M",
        "--offset_increment=16M",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--verify_state_save=0",
        "--group_reporting",
    ]));
    assert!(out.contains("fss-nbd"), "{out}");
    assert!(!out.contains("verify: bad"), "{out}");
}

/// A client with a blocking socket that sends a batch and only then reads the replies: read
/// requests spaced out (so that each finds the server idle, which then runs them on its reader
/// thread), whose replies it leaves unread until they fill the socket, then writes whose
/// payloads fill the server's side. The server must go on reading requests; before the reader
/// checked that a reply fits, it blocked on one and both sides waited for ever.
#[test]
fn a_client_that_sends_a_batch_before_reading_replies_is_served() {
    const READS: u64 = 12;
    const READ_LEN: u32 = 64 << 10;
    const WRITES: u64 = 8;
    const WRITE_LEN: usize = 256 << 10;
    let h = Harness::new(4 * MIB);
    let mut c = Client::open(&h.socket, "default", true, &[]);
    c.s.set_write_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    // Data to read (a hole would be answered with a few bytes).
    let mut rng = Rng::new(7);
    let mut model = vec![0u8; 4 * MIB as usize];
    rng.fill(&mut model[..2 * MIB as usize]);
    assert_eq!(c.write(0, &model[..2 * MIB as usize]).error, 0);
    let mut cookies = Vec::new();
    for i in 0..READS {
        cookies.push(c.send(0, CMD_READ, i * u64::from(READ_LEN), READ_LEN, &[]));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for i in 0..WRITES {
        let mut d = vec![0u8; WRITE_LEN];
        rng.fill(&mut d);
        let at = 2 * MIB as usize + i as usize * WRITE_LEN;
        model[at..at + WRITE_LEN].copy_from_slice(&d);
        cookies.push(c.send(0, CMD_WRITE, at as u64, WRITE_LEN as u32, &d));
    }
    for (i, cookie) in cookies.into_iter().enumerate() {
        let r = c.reply(cookie);
        assert_eq!(r.error, 0);
        if (i as u64) < READS {
            let at = i * READ_LEN as usize;
            assert!(r.data == model[at..at + READ_LEN as usize]);
        }
    }
    assert!(c.read(0, 4 * MIB as u32).data == model);
    c.disconnect();
}
