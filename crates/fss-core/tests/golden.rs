//! The golden store: a store made once by format v1, committed under `tests/golden/`, which
//! today's code must open and read exactly (`docs/FORMAT.md` section 7). See
//! `tests/golden/README.md`. The generator is `regenerate` (ignored); it refuses to overwrite a
//! committed golden store.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use fss_core::device::{BlockDevice, MemDevice};
use fss_core::store::{FileStore, MapEntry, Store, StoreIdentity, StoreParams};
use fss_core::{SnapshotOptions, Volume};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

const VOLUME_ID: [u8; 16] = *b"fss-golden-vol-1";
const VOLUME_LEN: u64 = 1 << 20;
const CLUSTER: u64 = 16 << 10;
const SNAPSHOT_ID: u64 = 1;
const SNAPSHOT_NAME: &str = "golden";
const CREATED_SECS: u64 = 1_700_000_000;
const BLOCK: usize = 4096;
/// The last 16 blocks of the volume start as zeroes (so some pre-images are zero blocks).
const ZERO_FROM: u64 = VOLUME_LEN - (64 << 10);

/// A change to the volume after the snapshot.
#[derive(Clone, Copy)]
enum Op {
    /// Write `len` bytes of `fill` at `offset`.
    Write(u64, usize, u8),
    /// Make a range read as zeroes.
    Zeroes(u64, u64),
    /// Discard a range (reads as zeroes on a memory device).
    Discard(u64, u64),
}

/// Session 1: right after the snapshot. Session 2: after a reopen (the log resumes).
const SESSION_1: [Op; 9] = [
    Op::Write(0, 4096, 0x11),
    Op::Write(20480, 8192, 0x22),
    Op::Write(61440, 8192, 0x33),
    Op::Write(100_000, 5000, 0x44),
    Op::Write(524_288, 16384, 0x55),
    Op::Write(0, 4096, 0x66),
    Op::Zeroes(921_600, 8192),
    Op::Write(1_024_000, 4096, 0x77),
    Op::Discard(716_800, 4096),
];
const SESSION_2: [Op; 3] = [
    Op::Write(307_200, 4096, 0x88),
    Op::Write(28672, 4096, 0x99),
    Op::Write(65536, 16384, 0xAA),
];

/// The map the golden store holds: (cluster, slot, preserved blocks as a bit mask).
const MAP: [(u32, u32, u16); 10] = [
    (0, 0, 0b0001),
    (1, 1, 0b1110),
    (3, 2, 0b1000),
    (4, 3, 0b1111),
    (6, 4, 0b0011),
    (32, 5, 0b1111),
    (56, 6, 0b0110),
    (62, 7, 0b0100),
    (43, 8, 0b1000),
    (18, 9, 0b1000),
];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The volume when the snapshot is taken: 8-byte word `w` is `splitmix64(w)` (little-endian),
/// except the last 64 KiB, which are zero.
fn initial_volume() -> Vec<u8> {
    let mut v: Vec<u8> = (0..VOLUME_LEN / 8)
        .flat_map(|w| splitmix64(w).to_le_bytes())
        .collect();
    v[ZERO_FROM as usize..].fill(0);
    v
}

fn apply(v: &mut [u8], op: Op) {
    match op {
        Op::Write(off, len, fill) => v[off as usize..off as usize + len].fill(fill),
        Op::Zeroes(off, len) | Op::Discard(off, len) => {
            v[off as usize..(off + len) as usize].fill(0);
        }
    }
}

/// The volume after both sessions, rebuilt without the engine.
fn final_volume() -> Vec<u8> {
    let mut v = initial_volume();
    for op in SESSION_1.iter().chain(&SESSION_2) {
        apply(&mut v, *op);
    }
    v
}

fn identity() -> StoreIdentity {
    StoreIdentity {
        volume_id: VOLUME_ID,
        volume_len: VOLUME_LEN,
        snapshot_id: SNAPSHOT_ID,
    }
}

fn persistent() -> SnapshotOptions {
    SnapshotOptions {
        persistent: true,
        cluster_size: Some(CLUSTER),
        ..Default::default()
    }
}

// ---- SHA-256 (FIPS 180-4), so the expected contents are pinned by a standard digest.

const K256: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

fn sha256_hex(data: &[u8]) -> String {
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for chunk in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in chunk.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K256[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

// ---- The sparse file: the store's bytes without its holes (see README.md).

const SPARSE_MAGIC: &[u8; 8] = b"FSSPARSE";

/// Encode: magic, length (u64 LE), extent count (u64 LE), then per extent its offset and length
/// (u64 LE each) and its bytes. Extents are the maximal runs of non-zero 4 KiB blocks.
fn sparse_encode(bytes: &[u8]) -> Vec<u8> {
    let mut extents: Vec<(usize, usize)> = Vec::new();
    for (i, b) in bytes.chunks(BLOCK).enumerate() {
        if b.iter().all(|&x| x == 0) {
            continue;
        }
        let (start, end) = (i * BLOCK, i * BLOCK + b.len());
        match extents.last_mut() {
            Some((_, e)) if *e == start => *e = end,
            _ => extents.push((start, end)),
        }
    }
    let mut out = SPARSE_MAGIC.to_vec();
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(&(extents.len() as u64).to_le_bytes());
    for (s, e) in extents {
        out.extend_from_slice(&(s as u64).to_le_bytes());
        out.extend_from_slice(&((e - s) as u64).to_le_bytes());
        out.extend_from_slice(&bytes[s..e]);
    }
    out
}

fn sparse_decode(file: &[u8]) -> Vec<u8> {
    let u64_at = |at: usize| u64::from_le_bytes(file[at..at + 8].try_into().unwrap()) as usize;
    assert_eq!(&file[..8], SPARSE_MAGIC, "not a sparse golden file");
    let mut out = vec![0u8; u64_at(8)];
    let mut at = 24;
    for _ in 0..u64_at(16) {
        let (off, len) = (u64_at(at), u64_at(at + 8));
        out[off..off + len].copy_from_slice(&file[at + 16..at + 16 + len]);
        at += 16 + len;
    }
    assert_eq!(at, file.len(), "trailing bytes in the sparse golden file");
    out
}

fn read_all(d: &MemDevice) -> Vec<u8> {
    let mut v = vec![0u8; d.len() as usize];
    d.read_at(&mut v, 0).unwrap();
    v
}

fn run(vol: &Volume, ops: &[Op]) {
    for op in ops {
        match *op {
            Op::Write(off, len, fill) => vol.write(&vec![fill; len], off).unwrap(),
            Op::Zeroes(off, len) => vol.write_zeroes(off, len).unwrap(),
            Op::Discard(off, len) => vol.discard(off, len).unwrap(),
        }
    }
}

/// Make the golden files. Run once, when a format version is new:
/// `cargo test --release --test golden -- --ignored regenerate`.
#[test]
#[ignore = "generator: run by hand, once per format version"]
fn regenerate() {
    let d = dir();
    let store_path = d.join("v1-store.sparse");
    assert!(
        !store_path.exists(),
        "{} exists: a committed golden store is never regenerated (add v2 files instead)",
        store_path.display()
    );
    std::fs::create_dir_all(&d).unwrap();
    let vol_dev = Arc::new(MemDevice::new(VOLUME_LEN));
    let store_dev = Arc::new(MemDevice::growable(u64::MAX));
    {
        let dv: Arc<dyn BlockDevice> = vol_dev.clone();
        let vol = Volume::with_identity("golden-volume", dv, VOLUME_ID);
        vol.write(&initial_volume(), 0).unwrap();
        let sd = Arc::clone(&store_dev);
        vol.create_snapshot(SNAPSHOT_NAME, &persistent(), move |p: &StoreParams| {
            let mut p = p.clone();
            p.created = UNIX_EPOCH + Duration::from_secs(CREATED_SECS);
            Ok(Box::new(FileStore::create(sd, &p, false, None)?) as Box<dyn Store>)
        })
        .unwrap();
        run(&vol, &SESSION_1);
    }
    {
        let dv: Arc<dyn BlockDevice> = vol_dev.clone();
        let vol = Volume::with_identity("golden-volume", dv, VOLUME_ID);
        let ds: Arc<dyn BlockDevice> = store_dev.clone();
        let (store, rec) = FileStore::open(ds, &identity(), false, None, None).unwrap();
        vol.attach_snapshot(&persistent(), Box::new(store), rec)
            .unwrap();
        run(&vol, &SESSION_2);
        let mut snap = vec![0u8; VOLUME_LEN as usize];
        vol.snapshot(SNAPSHOT_NAME)
            .unwrap()
            .read(&mut snap, 0)
            .unwrap();
        assert!(snap == initial_volume());
    }
    let volume = read_all(&vol_dev);
    assert!(
        volume == final_volume(),
        "the engine and the rebuild disagree"
    );
    let store = read_all(&store_dev);
    let sparse = sparse_encode(&store);
    assert!(sparse_decode(&sparse) == store);
    std::fs::write(&store_path, &sparse).unwrap();
    std::fs::write(
        d.join("v1-snapshot.sha256"),
        format!("{}\n", sha256_hex(&initial_volume())),
    )
    .unwrap();
    std::fs::write(
        d.join("v1-volume.sha256"),
        format!("{}\n", sha256_hex(&volume)),
    )
    .unwrap();
    std::fs::write(
        d.join("v1-store.sha256"),
        format!("{}\n", sha256_hex(&store)),
    )
    .unwrap();
    eprintln!(
        "store: {} bytes, sparse file {} bytes",
        store.len(),
        sparse.len()
    );
}

fn committed_digest(name: &str) -> String {
    std::fs::read_to_string(dir().join(name))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn sha256_is_the_standard_one() {
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        sha256_hex(&[0x61; 1000]),
        "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3"
    );
}

#[test]
fn golden_v1_store_opens_and_reads_the_snapshot() {
    let file = std::fs::read(dir().join("v1-store.sparse")).unwrap();
    let store = sparse_decode(&file);
    assert_eq!(sha256_hex(&store), committed_digest("v1-store.sha256"));
    let volume = final_volume();
    assert_eq!(sha256_hex(&volume), committed_digest("v1-volume.sha256"));
    let expected = initial_volume();
    assert_eq!(
        sha256_hex(&expected),
        committed_digest("v1-snapshot.sha256")
    );

    // A growable device, as a store file: the appends below extend it.
    let store_dev = Arc::new(MemDevice::growable(u64::MAX));
    store_dev.write_at(&store, 0).unwrap();
    let vol_dev = Arc::new(MemDevice::new(VOLUME_LEN));
    vol_dev.write_at(&volume, 0).unwrap();
    let open = || {
        let ds: Arc<dyn BlockDevice> = store_dev.clone();
        FileStore::open(ds, &identity(), false, None, None).unwrap()
    };
    let (fs, rec) = open();
    assert_eq!(rec.name, SNAPSHOT_NAME);
    assert_eq!(rec.snapshot_id, SNAPSHOT_ID);
    assert_eq!(rec.cluster_size, CLUSTER);
    assert_eq!(rec.created, UNIX_EPOCH + Duration::from_secs(CREATED_SECS));
    assert_eq!(rec.invalid, None);
    let mut sorted = MAP;
    sorted.sort_by_key(|e| e.0);
    let map: Vec<MapEntry> = sorted
        .iter()
        .map(|&(cluster, slot, mask)| MapEntry {
            cluster,
            slot,
            mask: vec![mask],
        })
        .collect();
    assert_eq!(rec.entries(), map);
    let report = fs.verify().unwrap();
    assert!(report.checksummed);
    assert_eq!(report.blocks_checked, 20);
    assert!(report.damaged.is_empty(), "{:?}", report.damaged);

    let dv: Arc<dyn BlockDevice> = vol_dev.clone();
    let vol = Volume::with_identity("golden-volume", dv, VOLUME_ID);
    let snap = vol
        .attach_snapshot(&persistent(), Box::new(fs), rec)
        .unwrap();
    let mut buf = vec![0u8; VOLUME_LEN as usize];
    snap.read(&mut buf, 0).unwrap();
    assert_eq!(sha256_hex(&buf), committed_digest("v1-snapshot.sha256"));
    assert!(buf == expected);

    // Today's code continues a v1 log: a first overwrite appends, and the store reopens exact.
    vol.write(&[0xBB; 8192], 400_000).unwrap();
    drop(snap);
    drop(vol);
    let (fs, rec) = open();
    assert_eq!(rec.entries().len(), MAP.len() + 1);
    let dv: Arc<dyn BlockDevice> = vol_dev.clone();
    let vol = Volume::with_identity("golden-volume", dv, VOLUME_ID);
    let snap = vol
        .attach_snapshot(&persistent(), Box::new(fs), rec)
        .unwrap();
    snap.read(&mut buf, 0).unwrap();
    assert!(buf == expected);
}
