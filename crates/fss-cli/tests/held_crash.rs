//! A kill -9 while acknowledged writes are held (their pre-images are in a persistent store,
//! the store flush is pending, the volume does not have them yet): after the restart every
//! acknowledged write is on the volume, and the snapshot is exact. The committer is held back
//! by a test hook so the window is certain.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::Daemon;
use std::os::unix::fs::FileExt;

const HOLD: [(&str, &str); 1] = [("FSS_TEST_HOLD_COMMITS_MS", "4000")];

/// Writes through the FUSE file of `v`, acknowledged, never flushed. From a buffer `skew`
/// bytes past a page boundary: the kernel splits a write at page boundaries of the buffer.
fn write_unflushed(d: &Daemon, writes: &[(u64, usize, u8)], skew: usize) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(d.dir.join("dev/v"))
        .unwrap();
    for &(off, len, byte) in writes {
        // A page-aligned buffer: the kernel then splits the write at offsets of its own.
        let mut buf = vec![byte; len + 8192];
        let skip = (buf.as_ptr().align_offset(4096) + skew) % 4096;
        let data = &mut buf[skip..skip + len];
        f.write_all_at(data, off).unwrap();
    }
}

fn run(writes: &[(u64, usize, u8)], persistent: bool, skew: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("v.img");
    let data: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&img, &data).unwrap();
    let mut expect = data.clone();
    for &(off, len, byte) in writes {
        expect[off as usize..off as usize + len].fill(byte);
    }
    let mut d = Daemon::start_with_env(&tmp.path().join("state"), &HOLD);
    d.ok(&["volume", "add", "v", "--device", img.to_str().unwrap()]);
    let mut create = vec!["snapshot", "create", "v", "s"];
    if !persistent {
        create.push("--transient");
    }
    d.ok(&create);
    let before = d.ok(&["checksum", "s"]);
    write_unflushed(&d, writes, skew);
    d.kill9();
    d.restart();
    let on_volume = std::fs::read(d.dir.join("dev/v")).unwrap();
    if let Some(at) = (0..expect.len()).find(|&i| on_volume[i] != expect[i]) {
        panic!(
            "an acknowledged write was lost: byte {at} is {:#x}, not {:#x}; log:\n{}",
            on_volume[at],
            expect[at],
            d.log()
        );
    }
    if persistent {
        let n: usize = d
            .log()
            .lines()
            .filter_map(|l| {
                l.split("replayed ")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .sum();
        // The last write, at least, was held at the kill (its blocks are its own).
        assert!(n >= 1, "nothing replayed; log:\n{}", d.log());
        let snap = std::fs::read(d.dir.join("dev/s")).unwrap();
        if let Some(at) = (0..data.len()).find(|&i| snap[i] != data[i]) {
            panic!(
                "snapshot differs at byte {at}: {:#x}, not {:#x}; log:\n{}",
                snap[at],
                data[at],
                d.log()
            );
        }
        assert_eq!(d.ok(&["checksum", "s"]), before, "snapshot exact");
    }
    assert_eq!(d.stop(), 0);
    assert!(
        std::fs::read(&img).unwrap() == expect,
        "the image after a clean stop"
    );
}

#[test]
fn held_writes_survive_a_kill_9() {
    // First overwrites of a persistent snapshot's blocks: held. Unaligned, spanning
    // clusters, one large.
    run(
        &[
            (4096, 8192, 0xa1),
            ((1 << 20) + 100, 70_000, 0xa2),
            (5 << 20, 3 << 20, 0xa3),
            ((12 << 20) + 512, 1024, 0xa4),
        ],
        true,
        0,
    );
}

/// Split 16 bytes off page boundaries, a large write ends in a piece that needs no pre-image
/// of its own (the piece before preserved its block): it must not reach the volume before
/// that pre-image is durable, which a replay relies on (this lost the snapshot's bytes).
#[test]
fn an_unaligned_write_split_by_the_kernel_keeps_the_snapshot_exact() {
    run(
        &[(5 << 20, 3 << 20, 0xc1), ((12 << 20) + 512, 1024, 0xc2)],
        true,
        16,
    );
}

#[test]
fn writes_with_only_a_transient_snapshot_were_never_held() {
    run(&[(4096, 8192, 0xb1), (9 << 20, 1 << 20, 0xb2)], false, 0);
}
