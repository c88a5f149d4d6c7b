//! The ring against the engine's own reads: every completion gets the bytes `Export::read`
//! gives, from several submitting threads at once, and `finish` returns only after every read
//! queued was completed, more than the ring holds at once included.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use super::{LocalRing, ReadRing, RingRead};
use crate::device::{AlignedBuf, FileDevice, OpenOptions};
use crate::export::Export;
use crate::Volume;
use std::sync::mpsc;
use std::sync::Arc;

const LEN: u64 = 4 << 20;

fn byte(at: u64) -> u8 {
    (at % 251) as u8
}

/// A volume on a file whose byte at `i` is `i % 251`.
fn file_volume() -> (tempfile::TempDir, Export) {
    let dir = tempfile::tempdir().unwrap();
    let opts = OpenOptions {
        create_len: Some(LEN),
        direct_large: true,
        ..OpenOptions::default()
    };
    let dev = FileDevice::open(&dir.path().join("v.img"), &opts).unwrap();
    let vol = Volume::new("vol", Arc::new(dev));
    let data: Vec<u8> = (0..LEN).map(byte).collect();
    vol.write(&data, 0).unwrap();
    (dir, Export::Volume(vol))
}

/// Queue a read of `len` bytes at `at`; its completion sends what it got.
fn queue(ring: &ReadRing, e: &Export, at: u64, len: usize, tx: &mpsc::Sender<(u64, Vec<u8>)>) {
    ring.submit(ring_read(e, at, len, tx));
}

#[test]
fn reads_from_many_threads_complete_with_the_right_bytes() {
    let (_dir, e) = file_volume();
    let ring = Arc::new(ReadRing::start("test-ring".into()).expect("io_uring is available here"));
    let (tx, rx) = mpsc::channel();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (ring, e, tx) = (Arc::clone(&ring), e.clone(), tx.clone());
            std::thread::spawn(move || {
                for i in 0..100u64 {
                    let at = (t * 100 + i) * 9973 % (LEN - 8192);
                    queue(&ring, &e, at, 1 + (i as usize * 37) % 8192, &tx);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(tx);
    let got: Vec<(u64, Vec<u8>)> = rx.iter().take(400).collect();
    assert_eq!(got.len(), 400);
    for (at, data) in got {
        let want: Vec<u8> = (at..at + data.len() as u64).map(byte).collect();
        assert!(data == want, "bytes at {at}");
    }
}

#[test]
fn finish_completes_every_read_it_took_then_refuses() {
    let (_dir, e) = file_volume();
    let ring = ReadRing::start("test-ring".into()).expect("io_uring is available here");
    let (tx, rx) = mpsc::channel();
    // More than the ring's entries: the rest wait in the queue.
    for i in 0..600u64 {
        queue(&ring, &e, i * 4096, 4096, &tx);
    }
    ring.finish();
    assert_eq!(rx.try_iter().count(), 600, "reads left behind by finish");
    let buf = AlignedBuf::new(4096);
    let read = e.direct_read(0, &buf).unwrap();
    let (tx, rx) = mpsc::channel();
    let r = RingRead {
        read,
        buf,
        done: Box::new(move |_, outcome| tx.send(outcome.map_err(|e| e.kind())).unwrap()),
    };
    ring.submit(r);
    assert_eq!(rx.try_recv().unwrap(), Err(crate::ErrorKind::Busy));
}

/// A read of `len` bytes at `at` whose completion sends what it got.
fn ring_read(e: &Export, at: u64, len: usize, tx: &mpsc::Sender<(u64, Vec<u8>)>) -> RingRead {
    let buf = AlignedBuf::new(len);
    let read = e.direct_read(at, &buf).expect("a direct read");
    let tx = tx.clone();
    RingRead {
        read,
        buf,
        done: Box::new(move |buf, outcome| {
            outcome.unwrap();
            tx.send((at, buf.to_vec())).unwrap();
        }),
    }
}

#[test]
fn a_local_ring_completes_more_reads_than_it_holds_on_its_own_thread() {
    let (_dir, e) = file_volume();
    let mut ring = LocalRing::new().expect("io_uring is available here");
    let (tx, rx) = mpsc::channel();
    for i in 0..600u64 {
        ring.push(ring_read(
            &e,
            i * 4099 % (LEN - 8192),
            1 + (i as usize * 37) % 8192,
            &tx,
        ));
    }
    assert_eq!(ring.in_flight(), 600);
    // Nothing runs a completion but this thread's calls into the ring.
    assert_eq!(rx.try_iter().count(), 0);
    ring.wait_any();
    let first = rx.try_iter().count();
    assert!(first > 0 && ring.in_flight() == 600 - first);
    ring.finish();
    assert!(!ring.busy());
    let got: Vec<(u64, Vec<u8>)> = rx.try_iter().collect();
    assert_eq!(got.len() + first, 600);
    for (at, data) in got {
        let want: Vec<u8> = (at..at + data.len() as u64).map(byte).collect();
        assert!(data == want, "bytes at {at}");
    }
}

#[test]
fn a_local_ring_waits_for_a_socket_and_completes_reads_meanwhile() {
    use std::io::Write;
    let (_dir, e) = file_volume();
    let mut ring = LocalRing::new().expect("io_uring is available here");
    let (mut peer, ours) = std::os::unix::net::UnixStream::pair().unwrap();
    let (tx, rx) = mpsc::channel();
    for i in 0..8u64 {
        ring.push(ring_read(&e, i * 4096, 4096, &tx));
    }
    // The peer speaks only once it has every reply: the wait must complete the reads (and
    // run `after_reap`, where a caller hands their replies on) before the socket is readable.
    let writer = std::thread::spawn(move || {
        let got: Vec<(u64, Vec<u8>)> = rx.iter().take(8).collect();
        peer.write_all(b"x").unwrap();
        (got, peer)
    });
    let mut after = 0;
    ring.wait_readable(std::os::fd::AsFd::as_fd(&ours), || after += 1);
    assert!(after > 0);
    assert!(!ring.busy());
    let (got, _peer) = writer.join().unwrap();
    assert_eq!(got.len(), 8);
    // Readable already: the wait returns at once.
    ring.wait_readable(std::os::fd::AsFd::as_fd(&ours), || {});
}
