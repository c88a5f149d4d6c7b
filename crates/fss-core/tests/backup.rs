//! Backups and restores (docs/BACKUP.md): round trips of full and incremental backups through
//! writes, discards and zeroes, chains refused for a wrong order, a gap or another volume,
//! damaged and truncated streams refused with a typed error and never applied silently, a
//! sparse volume's small backup, a property test over random histories, and random bytes fed to
//! the reader.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::{pattern, StoreFactory};
use fss_core::backup::{
    restore, restore_readers, write_full, write_incremental, BackupKind, BackupReader,
    BackupSummary, RestoreSummary,
};
use fss_core::device::{BlockDevice, MemDevice};
use fss_core::snapshot::PairUse;
use fss_core::store::DeviceStore;
use fss_core::{Error, ErrorKind, Snapshot, SnapshotOptions, Volume};
use proptest::prelude::*;
use std::io::Read;
use std::sync::Arc;

const MIB: u64 = 1 << 20;
const VOL_ID: [u8; 16] = *b"backup-volume-01";

fn volume(name: &str, len: u64, id: [u8; 16]) -> Volume {
    Volume::with_identity(name, Arc::new(MemDevice::new(len)), id)
}

fn snap(vol: &Volume, name: &str) -> Snapshot {
    vol.create_snapshot(name, &SnapshotOptions::default(), DeviceStore::in_memory)
        .unwrap()
}

fn persistent_snap(vol: &Volume, name: &str, f: &StoreFactory) -> Snapshot {
    let opts = SnapshotOptions {
        persistent: true,
        ..SnapshotOptions::default()
    };
    vol.create_snapshot(name, &opts, |p| f.make(p)).unwrap()
}

fn image(s: &Snapshot) -> Vec<u8> {
    let mut buf = vec![0u8; s.len() as usize];
    s.read(&mut buf, 0).unwrap();
    buf
}

fn contents(d: &dyn BlockDevice) -> Vec<u8> {
    let mut buf = vec![0u8; d.len() as usize];
    d.read_at(&mut buf, 0).unwrap();
    buf
}

fn full(s: &Snapshot) -> (Vec<u8>, BackupSummary) {
    let mut out = Vec::new();
    let sum = write_full(s, &mut out, &mut |_, _| {}).unwrap();
    assert_eq!(sum.stream_bytes, out.len() as u64);
    (out, sum)
}

fn incr(older: &Snapshot, newer: &Snapshot) -> (Vec<u8>, BackupSummary) {
    let mut out = Vec::new();
    let sum = write_incremental(older, newer, &mut out, &mut |_, _| {}).unwrap();
    assert_eq!(sum.stream_bytes, out.len() as u64);
    (out, sum)
}

fn inputs(files: &[(&str, &[u8])]) -> Vec<(String, Box<dyn Read>)> {
    files
        .iter()
        .map(|(n, b)| {
            let r: Box<dyn Read> = Box::new(std::io::Cursor::new(b.to_vec()));
            (n.to_string(), r)
        })
        .collect()
}

type Files<'a> = Vec<(&'a str, &'a [u8])>;

fn restore_onto(
    files: &[(&str, &[u8])],
    target: &dyn BlockDevice,
) -> fss_core::Result<RestoreSummary> {
    restore(inputs(files), target, &mut |_, _| {})
}

/// A target of `len` bytes already full of junk, so that a restore must overwrite everything.
fn junk_target(len: u64) -> MemDevice {
    let d = MemDevice::new(len);
    d.write_at(&vec![0xa5; len as usize], 0).unwrap();
    d
}

/// A volume of 8 MiB and a bit, with history: A, then writes, discards and zeroes, B, more,
/// C, and more writes after C (the volume moves on; backups hold the snapshots).
struct History {
    vol: Volume,
    a: Snapshot,
    b: Snapshot,
    c: Snapshot,
}

fn history() -> History {
    let len = 8 * MIB + 1234;
    let vol = volume("vol0", len, VOL_ID);
    vol.write(&pattern(1, 0, (3 * MIB) as usize), 0).unwrap();
    vol.write(&pattern(2, 5 * MIB, MIB as usize), 5 * MIB)
        .unwrap();
    vol.write(&pattern(3, len - 5000, 5000), len - 5000)
        .unwrap();
    let a = snap(&vol, "a");
    vol.write(&pattern(4, 100, 20_000), 100).unwrap();
    vol.discard(MIB, 256 * 1024).unwrap();
    vol.write_zeroes(2 * MIB + 4096, 8192).unwrap();
    vol.write(&pattern(5, 7 * MIB, 4096), 7 * MIB).unwrap();
    let b = snap(&vol, "b");
    vol.write(&pattern(6, 5 * MIB + 3, 300_000), 5 * MIB + 3)
        .unwrap();
    vol.discard(0, 4096).unwrap();
    vol.write(&pattern(7, len - 10, 10), len - 10).unwrap();
    vol.write_zeroes(6 * MIB, MIB).unwrap();
    let c = snap(&vol, "c");
    vol.write(&pattern(8, 0, (8 * MIB) as usize), 0).unwrap();
    History { vol, a, b, c }
}

#[test]
fn full_and_incrementals_restore_each_snapshot_byte_for_byte() {
    let h = history();
    let (fa, sa) = full(&h.a);
    let (ab, sab) = incr(&h.a, &h.b);
    let (bc, sbc) = incr(&h.b, &h.c);
    assert_eq!(sa.header.kind(), BackupKind::Full);
    assert_eq!(sab.header.kind(), BackupKind::Incremental);
    assert_eq!(sab.header.base.as_ref().unwrap(), &sa.header.snapshot);
    assert_eq!(sbc.header.base.as_ref().unwrap(), &sab.header.snapshot);
    assert_eq!(sa.header.volume_id, VOL_ID);
    assert_eq!(sa.header.volume_name, "vol0");
    assert_ne!(sa.header.backup_id, sab.header.backup_id);
    // Incrementals hold the changes only.
    assert!(sab.data_bytes + sab.zero_bytes < MIB, "{sab:?}");
    assert!(sbc.data_bytes + sbc.zero_bytes < 2 * MIB, "{sbc:?}");
    assert!(ab.len() < fa.len() / 4);

    let len = h.vol.len();
    for (files, want) in [
        (vec![("a.fss", &fa[..])], image(&h.a)),
        (vec![("a.fss", &fa[..]), ("ab.fss", &ab[..])], image(&h.b)),
        (
            vec![("a.fss", &fa[..]), ("ab.fss", &ab[..]), ("bc.fss", &bc[..])],
            image(&h.c),
        ),
    ] {
        // Onto a fresh device and onto one full of junk.
        for target in [MemDevice::new(len), junk_target(len)] {
            let sum = restore_onto(&files, &target).unwrap();
            assert_eq!(sum.backups, files.len());
            assert_eq!(sum.volume_len, len);
            assert!(
                contents(&target) == want,
                "restore of {} files",
                files.len()
            );
        }
    }
    // Each backup verifies on its own and reports what the writer wrote.
    for (bytes, sum) in [(&fa, &sa), (&ab, &sab), (&bc, &sbc)] {
        let r = BackupReader::open("x", Box::new(std::io::Cursor::new(bytes.clone()))).unwrap();
        assert_eq!(&r.verify(&mut |_, _| {}).unwrap(), sum);
    }
}

#[test]
fn the_pair_check_of_diffs_and_incremental_backups() {
    let f = StoreFactory::default();
    let vol = volume("vol0", MIB, VOL_ID);
    let p1 = persistent_snap(&vol, "p1", &f);
    let t1 = snap(&vol, "t1");
    let t2 = snap(&vol, "t2");
    let other = volume("vol1", MIB, *b"backup-volume-02");
    let o1 = snap(&other, "o1");
    let refused = |older: &Snapshot, newer: &Snapshot, purpose, words: &[&str]| {
        let e = older.check_older_than(newer, purpose).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        for w in words {
            assert!(e.to_string().contains(w), "'{w}' not in: {e}");
        }
    };
    for purpose in [PairUse::Diff, PairUse::IncrementalBackup] {
        t1.check_older_than(&t2, purpose).unwrap();
        refused(
            &t2,
            &t1,
            purpose,
            &["'t2' (id 3) is not older than 't1' (id 2)"],
        );
        refused(&t1, &o1, purpose, &["volume 'vol0', not of 'vol1'"]);
    }
    refused(&t1, &t1, PairUse::Diff, &["the same snapshot"]);
    refused(&t1, &t1, PairUse::IncrementalBackup, &["not older"]);
    // Across the persistent and transient chains: an incremental backup, not an exact diff.
    p1.check_older_than(&t2, PairUse::IncrementalBackup)
        .unwrap();
    refused(
        &p1,
        &t2,
        PairUse::Diff,
        &["not both persistent or both transient"],
    );
}

#[test]
fn progress_counts_up_to_the_total() {
    let h = history();
    let mut seen = Vec::new();
    let mut out = Vec::new();
    write_full(&h.a, &mut out, &mut |d, t| seen.push((d, t))).unwrap();
    assert_eq!(seen.first(), Some(&(0, h.vol.len())));
    assert_eq!(seen.last(), Some(&(h.vol.len(), h.vol.len())));
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0));
    let (ab, sab) = incr(&h.a, &h.b);
    let mut last = (0, 0);
    restore(
        inputs(&[("a", &out), ("ab", &ab)]),
        &MemDevice::new(h.vol.len()),
        &mut |d, t| last = (d, t),
    )
    .unwrap();
    let total = h.vol.len() + sab.data_bytes + sab.zero_bytes;
    assert_eq!(last, (total, total));
}

#[test]
fn an_incremental_may_skip_snapshots_and_survive_deletions() {
    let h = history();
    let (fa, _) = full(&h.a);
    let (ac, _) = incr(&h.a, &h.c);
    h.vol.delete_snapshot("b").unwrap();
    let (ac2, _) = incr(&h.a, &h.c);
    for f in [&ac, &ac2] {
        let t = junk_target(h.vol.len());
        restore_onto(&[("a", &fa), ("ac", f)], &t).unwrap();
        assert!(contents(&t) == image(&h.c));
    }
}

#[test]
fn an_incremental_across_the_persistent_and_transient_chains() {
    let vol = volume("vol0", 4 * MIB, VOL_ID);
    let f = StoreFactory::default();
    vol.write(&pattern(1, 0, (2 * MIB) as usize), 0).unwrap();
    let p = persistent_snap(&vol, "p", &f);
    vol.write(&pattern(2, MIB, 8192), MIB).unwrap();
    let t = snap(&vol, "t");
    vol.write(&pattern(3, 0, (4 * MIB) as usize), 0).unwrap();
    let (fp, _) = full(&p);
    let (pt, _) = incr(&p, &t);
    let target = MemDevice::new(4 * MIB);
    restore_onto(&[("p", &fp), ("pt", &pt)], &target).unwrap();
    assert!(contents(&target) == image(&t));
}

#[test]
fn a_sparse_volume_makes_a_small_full_backup_and_a_sparse_restore() {
    let len = 1 << 30;
    let vol = volume("big", len, VOL_ID);
    vol.write(&pattern(1, 0, 4096), 0).unwrap();
    vol.write(&pattern(2, 300 * MIB, 3 * 4096), 300 * MIB + 8192)
        .unwrap();
    vol.write(&pattern(3, len - 4096, 4096), len - 4096)
        .unwrap();
    let s = snap(&vol, "s");
    let (bytes, sum) = full(&s);
    assert_eq!(sum.data_bytes, 5 * 4096);
    assert_eq!(sum.zero_bytes, len - 5 * 4096);
    assert!(bytes.len() < 32 * 1024, "{} bytes", bytes.len());
    let target = MemDevice::new(len);
    restore_onto(&[("s", &bytes)], &target).unwrap();
    assert!(
        target.allocated_bytes() <= 3 * 64 * 1024,
        "memory pages of 64 KiB"
    );
    let mut buf = vec![0u8; 5 * 4096];
    target.read_at(&mut buf[..4096], 0).unwrap();
    target
        .read_at(&mut buf[4096..4 * 4096], 300 * MIB + 8192)
        .unwrap();
    target.read_at(&mut buf[4 * 4096..], len - 4096).unwrap();
    let mut want = pattern(1, 0, 4096);
    want.extend(pattern(2, 300 * MIB, 3 * 4096));
    want.extend(pattern(3, len - 4096, 4096));
    assert!(buf == want);
}

#[test]
fn restore_onto_image_files_new_and_existing() {
    use fss_core::device::{FileDevice, OpenOptions};
    use std::os::unix::fs::MetadataExt;
    let h = history();
    let (fa, _) = full(&h.a);
    let (ab, _) = incr(&h.a, &h.b);
    let (bc, _) = incr(&h.b, &h.c);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("restored.img");
    let open = || {
        FileDevice::open(
            &path,
            &OpenOptions {
                create_len: Some(h.vol.len()),
                ..OpenOptions::default()
            },
        )
        .unwrap()
    };
    // A new sparse image: the restore keeps the volume's holes as holes.
    let img = open();
    restore_onto(&[("a", &fa)], &img).unwrap();
    assert!(contents(&img) == image(&h.a));
    let used = std::fs::metadata(&path).unwrap().blocks() * 512;
    assert!(
        used < 6 * MIB,
        "{used} bytes allocated for about 4 MiB of data"
    );
    drop(img);
    // The existing image, now holding A: restore C from scratch over it.
    let img = open();
    restore_onto(&[("a", &fa), ("ab", &ab), ("bc", &bc)], &img).unwrap();
    assert!(contents(&img) == image(&h.c));
}

#[test]
fn backups_stream_through_a_socket() {
    let h = history();
    let (mut tx, rx) = std::os::unix::net::UnixStream::pair().unwrap();
    let a = h.a.clone();
    let writer = std::thread::spawn(move || write_full(&a, &mut tx, &mut |_, _| {}).unwrap());
    let target = MemDevice::new(h.vol.len());
    let sum = restore(
        vec![("-".to_string(), Box::new(rx) as Box<dyn Read>)],
        &target,
        &mut |_, _| {},
    )
    .unwrap();
    let written = writer.join().unwrap();
    assert_eq!(sum.snapshot, written.header.snapshot);
    assert!(contents(&target) == image(&h.a));
}

fn assert_err(r: fss_core::Result<RestoreSummary>, kind: ErrorKind, words: &[&str]) -> Error {
    let e = r.expect_err("the restore must fail");
    let msg = e.to_string();
    assert_eq!(e.kind(), kind, "{msg}");
    for w in words {
        assert!(msg.contains(w), "{msg:?} lacks {w:?}");
    }
    e
}

#[test]
fn wrong_chains_are_refused_before_anything_is_written() {
    let h = history();
    let (fa, _) = full(&h.a);
    let (fb, _) = full(&h.b);
    let (ab, _) = incr(&h.a, &h.b);
    let (bc, _) = incr(&h.b, &h.c);
    let other = volume("vol1", h.vol.len(), *b"another-volume-1");
    other.write(&pattern(1, 0, 4096), 0).unwrap();
    let oa = snap(&other, "a");
    other.write(&pattern(2, 0, 4096), 0).unwrap();
    let ob = snap(&other, "b");
    let (oab, _) = incr(&oa, &ob);
    let shorter = volume("vol0", h.vol.len() - 4096, VOL_ID);
    let (short_full, _) = full(&snap(&shorter, "a"));

    let target = junk_target(h.vol.len());
    let before = contents(&target);
    let inv = ErrorKind::InvalidArgument;
    let cases: Vec<(Files, Vec<&str>)> = vec![
        (vec![], vec!["no backup"]),
        (
            vec![("ab.fss", &ab), ("a.fss", &fa)],
            vec![
                "'ab.fss' is an incremental",
                "starts with a full",
                "put the full backup 'a.fss' first",
            ],
        ),
        (
            vec![("a.fss", &fa), ("bc.fss", &bc), ("ab.fss", &ab)],
            vec!["wrong order", "'bc.fss'", "'ab.fss'"],
        ),
        (
            vec![("a.fss", &fa), ("bc.fss", &bc)],
            vec!["gap", "'bc.fss'", "'a.fss'", "'b' (id 2)", "'a' (id 1)"],
        ),
        (
            vec![("a.fss", &fa), ("ab.fss", &ab), ("ab2.fss", &ab)],
            vec!["repeated", "'ab2.fss'"],
        ),
        (
            vec![("a.fss", &fa), ("b.fss", &fb)],
            vec!["'b.fss' is a full backup", "only the first"],
        ),
        (
            vec![("a.fss", &fa), ("other.fss", &oab)],
            vec!["'other.fss'", "volume 'vol1'", "not of volume 'vol0'"],
        ),
        (
            vec![("a.fss", &fa), ("short.fss", &short_full)],
            vec!["'short.fss'", "byte volume"],
        ),
    ];
    for (files, words) in cases {
        assert_err(restore_onto(&files, &target), inv, &words);
        assert!(
            contents(&target) == before,
            "{words:?}: the target was touched"
        );
    }
    // A target of the wrong size.
    let small = MemDevice::new(h.vol.len() - 1);
    assert_err(
        restore_onto(&[("a.fss", &fa)], &small),
        inv,
        &["exactly", "bytes"],
    );
    // A damaged header in the last input is found before the first input is applied.
    let mut bad = bc.clone();
    bad[100] ^= 1;
    assert_err(
        restore_onto(
            &[("a.fss", &fa), ("ab.fss", &ab), ("bc.fss", &bad)],
            &target,
        ),
        ErrorKind::CorruptStore,
        &["'bc.fss'", "header"],
    );
    assert!(contents(&target) == before);
}

#[test]
fn incremental_backups_need_an_older_snapshot_of_the_same_volume() {
    let h = history();
    let other = volume("vol1", MIB, VOL_ID);
    let o = snap(&other, "o");
    let mut out = Vec::new();
    for (older, newer, words) in [
        (&h.b, &h.a, "not older"),
        (&h.a, &h.a, "not older"),
        (&o, &h.a, "same volume"),
    ] {
        let e = write_incremental(older, newer, &mut out, &mut |_, _| {}).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains(words), "{e}");
    }
    assert!(out.is_empty(), "nothing is written for a refused backup");
    h.vol.delete_snapshot("a").unwrap();
    let e = write_full(&h.a, &mut out, &mut |_, _| {}).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

#[test]
fn an_invalid_snapshot_is_not_backed_up() {
    let vol = volume("vol0", 4 * MIB, VOL_ID);
    let opts = SnapshotOptions {
        max_store_bytes: Some(64 * 1024),
        ..SnapshotOptions::default()
    };
    let s = vol
        .create_snapshot("s", &opts, DeviceStore::in_memory)
        .unwrap();
    vol.write(&pattern(1, 0, (2 * MIB) as usize), 0).unwrap();
    assert!(!s.is_valid());
    let mut out = Vec::new();
    let e = write_full(&s, &mut out, &mut |_, _| {}).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidSnapshot);
    assert!(out.is_empty());
}

/// A small volume's backups: full of A (three data extents, zero extents between, an unaligned
/// end) and an incremental A->B.
fn small() -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
    let len = 64 * 1024 + 100;
    let vol = volume("small", len, VOL_ID);
    vol.write(&pattern(1, 4096, 4096), 4096).unwrap();
    vol.write(&pattern(2, 5 * 4096, 2 * 4096), 5 * 4096)
        .unwrap();
    vol.write(&pattern(3, len - 50, 50), len - 50).unwrap();
    let a = snap(&vol, "a");
    vol.write(&pattern(4, 0, 4096), 0).unwrap();
    vol.discard(5 * 4096, 4096).unwrap();
    let b = snap(&vol, "b");
    (full(&a).0, incr(&a, &b).0, image(&a), image(&b))
}

/// Where each record (and the trailer) starts, and the end.
fn record_boundaries(bytes: &[u8]) -> Vec<usize> {
    let mut r = BackupReader::open("x", Box::new(std::io::Cursor::new(bytes.to_vec()))).unwrap();
    let mut v = vec![r.position() as usize];
    while r.next_extent().unwrap().is_some() {
        v.push(r.position() as usize);
    }
    v.push(bytes.len());
    v
}

#[test]
fn truncation_anywhere_is_refused_naming_the_file() {
    let (fa, ab, img_a, _) = small();
    let bounds = record_boundaries(&fa);
    assert!(bounds.len() >= 7, "{bounds:?}");
    for cut in 0..fa.len() {
        let target = MemDevice::new(img_a.len() as u64);
        let e = restore_onto(&[("a.fss", &fa[..cut])], &target).unwrap_err();
        let msg = e.to_string();
        assert_eq!(e.kind(), ErrorKind::CorruptStore, "cut {cut}: {msg}");
        assert!(msg.contains("'a.fss'"), "{msg}");
        assert!(msg.contains("truncated"), "cut {cut}: {msg}");
        if bounds.contains(&cut) && cut > 0 {
            assert!(msg.contains("without its trailer"), "cut {cut}: {msg}");
            assert_eq!(e.offset(), Some(cut as u64));
        }
        // Partial exactly when a record was applied before the cut.
        assert_eq!(
            msg.contains("partially restored"),
            cut >= bounds[1],
            "cut {cut}: {msg}"
        );
    }
    // The same for the incremental, after a good full backup: the error says the target is
    // partially restored once anything was written.
    for &cut in &record_boundaries(&ab)[..record_boundaries(&ab).len() - 1] {
        let target = MemDevice::new(img_a.len() as u64);
        let e = restore_onto(&[("a.fss", &fa), ("ab.fss", &ab[..cut])], &target).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("'ab.fss'") && msg.contains("truncated"),
            "{msg}"
        );
        if cut > 512 {
            assert!(msg.contains("partially restored"), "{msg}");
        }
    }
}

#[test]
fn every_flipped_byte_is_refused_never_applied_silently() {
    let (fa, ab, img_a, img_b) = small();
    for (name, bytes, prefix) in [("a.fss", &fa, None), ("ab.fss", &ab, Some(&fa))] {
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut d = bytes.clone();
                d[i] ^= bit;
                let target = MemDevice::new(img_a.len() as u64);
                let files: Vec<(&str, &[u8])> = match prefix {
                    None => vec![(name, &d)],
                    Some(p) => vec![("a.fss", p), (name, &d)],
                };
                let e = restore_onto(&files, &target).unwrap_err();
                let msg = e.to_string();
                assert!(
                    matches!(
                        e.kind(),
                        ErrorKind::CorruptStore
                            | ErrorKind::InvalidArgument
                            | ErrorKind::UnsupportedFormat
                    ),
                    "{name} byte {i}: {msg}"
                );
                assert!(msg.contains(name), "{name} byte {i}: {msg}");
                let want = match i {
                    0..8 => "not an fss backup",
                    8..12 => "version",
                    12..512 => "header",
                    _ if i >= bytes.len() - 40 => "checksum",
                    _ => "record",
                };
                assert!(msg.contains(want), "{name} byte {i}: {msg}");
            }
        }
    }
    // Sanity: unflipped, both restore.
    let t = MemDevice::new(img_a.len() as u64);
    restore_onto(&[("a.fss", &fa), ("ab.fss", &ab)], &t).unwrap();
    assert!(contents(&t) == img_b);
}

#[test]
fn damage_in_a_payload_names_the_record_and_is_never_written() {
    let (fa, _, img_a, _) = small();
    let bounds = record_boundaries(&fa);
    // The second record: find a DATA one by its type tag.
    let data_at = bounds
        .iter()
        .copied()
        .find(|&b| b + 4 <= fa.len() && &fa[b..b + 4] == b"DATA")
        .unwrap();
    let mut d = fa.clone();
    d[data_at + 40 + 17] ^= 0x20;
    let target = MemDevice::new(img_a.len() as u64);
    let e = assert_err(
        restore_onto(&[("a.fss", &d)], &target),
        ErrorKind::CorruptStore,
        &["'a.fss'", "payload checksum mismatch", "DATA record"],
    );
    assert_eq!(e.offset(), Some(data_at as u64 + 40));
    // The damaged extent was not written.
    let mut blk = vec![0u8; 4096];
    let ext_off = u64::from_le_bytes(fa[data_at + 16..data_at + 24].try_into().unwrap());
    target.read_at(&mut blk, ext_off).unwrap();
    assert!(blk.iter().all(|&b| b == 0));
}

#[test]
fn spliced_and_extended_streams_are_refused() {
    let (fa, _, img_a, _) = small();
    let (fa2, _, _, _) = small(); // same contents, another backup id
    let bounds = record_boundaries(&fa);
    let mid = bounds[3];
    let mut spliced = fa[..mid].to_vec();
    spliced.extend_from_slice(&fa2[mid..]);
    let target = MemDevice::new(img_a.len() as u64);
    assert_err(
        restore_onto(&[("a.fss", &spliced)], &target),
        ErrorKind::CorruptStore,
        &["another backup"],
    );
    let mut longer = fa.clone();
    longer.extend_from_slice(&fa2);
    assert_err(
        restore_onto(&[("a.fss", &longer)], &target),
        ErrorKind::CorruptStore,
        &["follow the trailer"],
    );
    // Records swapped: sequence numbers give it away.
    let (r1, r2) = (bounds[1]..bounds[2], bounds[2]..bounds[3]);
    let mut swapped = fa[..r1.start].to_vec();
    swapped.extend_from_slice(&fa[r2.clone()]);
    swapped.extend_from_slice(&fa[r1]);
    swapped.extend_from_slice(&fa[r2.end..]);
    assert_err(
        restore_onto(&[("a.fss", &swapped)], &target),
        ErrorKind::CorruptStore,
        &["sequence"],
    );
    // A record dropped.
    let mut dropped = fa[..bounds[1]].to_vec();
    dropped.extend_from_slice(&fa[bounds[2]..]);
    assert_err(
        restore_onto(&[("a.fss", &dropped)], &target),
        ErrorKind::CorruptStore,
        &["sequence"],
    );
}

#[test]
fn non_backups_are_refused() {
    let t = MemDevice::new(4096);
    assert_err(
        restore_onto(&[("x", b"hello, this is not a backup")], &t),
        ErrorKind::InvalidArgument,
        &["'x'", "not an fss backup"],
    );
    assert_err(
        restore_onto(&[("empty", b"")], &t),
        ErrorKind::CorruptStore,
        &["'empty'", "empty"],
    );
    let (fa, _, _, _) = small();
    let mut v2 = fa.clone();
    v2[8] = 2;
    assert_err(
        restore_onto(&[("v2", &v2)], &t),
        ErrorKind::UnsupportedFormat,
        &["version 2"],
    );
}

// ---- property tests ----

#[derive(Debug, Clone)]
enum Op {
    Write {
        off: u64,
        len: u64,
        seed: u64,
    },
    Discard {
        off: u64,
        len: u64,
    },
    Zeroes {
        off: u64,
        len: u64,
    },
    Snapshot {
        persistent: bool,
    },
    /// Take the next backup due (the full one, or the incremental to the next snapshot).
    Backup,
    /// Delete the oldest snapshot that no backup still to be taken needs.
    Delete,
}

const PVOL: u64 = 2 * MIB + 3000;

fn op() -> impl Strategy<Value = Op> {
    let range = (0..PVOL).prop_flat_map(|off| (Just(off), 1..=(PVOL - off).min(300_000)));
    prop_oneof![
        4 => (range.clone(), any::<u64>()).prop_map(|((off, len), seed)| Op::Write { off, len, seed }),
        1 => range.clone().prop_map(|(off, len)| Op::Discard { off, len }),
        1 => range.prop_map(|(off, len)| Op::Zeroes { off, len }),
        2 => any::<bool>().prop_map(|persistent| Op::Snapshot { persistent }),
        2 => Just(Op::Backup),
        1 => Just(Op::Delete),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn restored_chains_equal_their_snapshots(ops in prop::collection::vec(op(), 1..40)) {
        let vol = volume("pvol", PVOL, VOL_ID);
        let f = StoreFactory::default();
        let mut model = vec![0u8; PVOL as usize];
        // Snapshots in creation order, with their expected images; None once deleted.
        let mut snaps: Vec<(Option<Snapshot>, Vec<u8>)> = Vec::new();
        let mut backups: Vec<Vec<u8>> = Vec::new();
        let take = |snaps: &Vec<(Option<Snapshot>, Vec<u8>)>, backups: &mut Vec<Vec<u8>>| {
            let k = backups.len();
            if k >= snaps.len() {
                return;
            }
            let s = snaps[k].0.as_ref().unwrap();
            let b = if k == 0 { full(s).0 } else { incr(snaps[k - 1].0.as_ref().unwrap(), s).0 };
            backups.push(b);
        };
        for op in ops {
            match op {
                Op::Write { off, len, seed } => {
                    let data = pattern(seed, off, len as usize);
                    vol.write(&data, off).unwrap();
                    model[off as usize..(off + len) as usize].copy_from_slice(&data);
                }
                Op::Discard { off, len } => {
                    vol.discard(off, len).unwrap();
                    model[off as usize..(off + len) as usize].fill(0);
                }
                Op::Zeroes { off, len } => {
                    vol.write_zeroes(off, len).unwrap();
                    model[off as usize..(off + len) as usize].fill(0);
                }
                Op::Snapshot { persistent } => {
                    let name = format!("s{}", snaps.len());
                    let s = if persistent { persistent_snap(&vol, &name, &f) } else { snap(&vol, &name) };
                    snaps.push((Some(s), model.clone()));
                }
                Op::Backup => take(&snaps, &mut backups),
                Op::Delete => {
                    // Snapshot i is still needed by backups i and i + 1.
                    if let Some(i) = (0..snaps.len())
                        .find(|&i| snaps[i].0.is_some() && backups.len() >= i + 2)
                    {
                        let s = snaps[i].0.take().unwrap();
                        vol.delete_snapshot(s.name()).unwrap();
                    }
                }
            }
        }
        while backups.len() < snaps.len() {
            take(&snaps, &mut backups);
        }
        let names: Vec<String> = (0..backups.len()).map(|i| format!("b{i}")).collect();
        for (k, (_, want)) in snaps.iter().enumerate() {
            let files: Files = names
                .iter()
                .zip(&backups)
                .take(k + 1)
                .map(|(n, b)| (n.as_str(), &b[..]))
                .collect();
            let target = junk_target(PVOL);
            let sum = restore_onto(&files, &target).unwrap();
            prop_assert_eq!(sum.backups, k + 1);
            prop_assert!(&contents(&target) == want, "restore up to snapshot {}", k);
        }
        // A chain with a gap is refused, whatever the history.
        if backups.len() >= 3 {
            let target = MemDevice::new(PVOL);
            let e = restore_onto(&[("b0", &backups[0]), ("b2", &backups[2])], &target).unwrap_err();
            prop_assert_eq!(e.kind(), ErrorKind::InvalidArgument);
            prop_assert!(e.to_string().contains("gap"));
        }
    }

    /// Random bytes, and random damage to a valid backup, never panic the reader and never
    /// pass as a backup.
    #[test]
    fn the_reader_refuses_random_bytes_cleanly(
        junk in prop::collection::vec(any::<u8>(), 0..2000),
        keep in 0usize..700,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let target = MemDevice::new(64 * 1024 + 100);
        // Pure junk.
        prop_assert!(restore_onto(&[("junk", &junk)], &target).is_err());
        let (fa, _, _, _) = small();
        // A valid prefix (magic, maybe the header, maybe records) followed by junk.
        let mut mixed = fa[..keep.min(fa.len())].to_vec();
        mixed.extend_from_slice(&junk);
        let r = BackupReader::open("mixed", Box::new(std::io::Cursor::new(mixed)));
        if let Ok(r) = r {
            let verified = r.verify(&mut |_, _| {});
            prop_assert!(verified.is_err());
        }
        // Random byte edits that change something, then maybe a truncation.
        let mut d = fa.clone();
        for (at, v) in &edits {
            let i = at.index(d.len());
            d[i] = d[i].wrapping_add(v | 1);
        }
        if d != fa {
            prop_assert!(restore_onto(&[("edited", &d)], &target).is_err());
        }
        let mut t = fa.clone();
        t.truncate(cut.index(fa.len()));
        if let Ok(r) = BackupReader::open("cut", Box::new(std::io::Cursor::new(t))) {
            let restored = restore_readers(vec![r], &target, &mut |_, _| {});
            prop_assert!(restored.is_err());
        }
    }
}
