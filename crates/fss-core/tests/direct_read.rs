//! Direct reads (`fss_core::direct_read`): the reads a front-end issues itself from the file
//! the engine names. They give the bytes `Export::read` gives, are refused where the engine's
//! own path is needed, and a snapshot's second look after the read finds what a write
//! preserved meanwhile.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::pattern;
use fss_core::device::{BlockDevice, FileDevice, MemDevice, OpenOptions};
use fss_core::direct_read::DirectRead;
use fss_core::export::Export;
use fss_core::store::DeviceStore;
use fss_core::{ErrorKind, SnapshotOptions, Volume};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

const LEN: u64 = 4 << 20;

/// A volume on a file (pattern 1), and the directory that holds it.
fn file_volume() -> (tempfile::TempDir, Volume) {
    let dir = tempfile::tempdir().unwrap();
    let opts = OpenOptions {
        create_len: Some(LEN),
        direct_large: true,
        ..OpenOptions::default()
    };
    let dev = FileDevice::open(&dir.path().join("v.img"), &opts).unwrap();
    let vol = Volume::new("vol", Arc::new(dev));
    vol.write(&pattern(1, 0, LEN as usize), 0).unwrap();
    (dir, vol)
}

/// Do the read `d` asks for as a front-end would (a positional read of its file; here through
/// `/proc/self/fd`, which opens the same file), into `buf`.
fn pread(d: &DirectRead, buf: &mut [u8]) -> std::io::Result<usize> {
    let f = std::fs::File::open(format!("/proc/self/fd/{}", d.fd())).unwrap();
    f.read_at(buf, d.offset())
}

#[test]
fn volume_direct_reads_give_what_read_gives() {
    let (_dir, vol) = file_volume();
    let export = Export::Volume(vol.clone());
    for (off, len) in [
        (0, 4096),
        (12_345, 1000),
        (LEN - 4096, 4096),
        (65_536, 61_440),
    ] {
        let mut buf = vec![0u8; len];
        let d = export.direct_read(off, &buf).expect("a direct read");
        assert_eq!((d.offset(), d.len()), (off, len));
        let n = pread(&d, &mut buf);
        d.finish(&mut buf, n).unwrap();
        assert!(buf == pattern(1, off, len), "bytes at {off}");
    }
    // A short read is completed the engine's way.
    let mut buf = vec![0u8; 4096];
    let d = export.direct_read(8192, &buf).unwrap();
    d.finish(&mut buf, Ok(100)).unwrap();
    assert!(buf == pattern(1, 8192, 4096));
    // An I/O error names the export and the offset.
    let d = export.direct_read(8192, &buf).unwrap();
    let e = d
        .finish(&mut buf, Err(std::io::Error::from_raw_os_error(5)))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(e.to_string().contains("volume 'vol'"), "{e}");
    // Out of range, empty, or a device with no file: the engine's path.
    assert!(export.direct_read(LEN - 4096, &[0u8; 8192]).is_none());
    assert!(export.direct_read(0, &[]).is_none());
    let mem = Volume::new("m", Arc::new(MemDevice::new(LEN)) as Arc<dyn BlockDevice>);
    assert!(Export::Volume(mem).direct_read(0, &[0u8; 4096]).is_none());
}

#[test]
fn snapshot_direct_reads_take_the_second_look() {
    let (_dir, vol) = file_volume();
    let opts = SnapshotOptions {
        cluster_size: Some(64 << 10),
        ..SnapshotOptions::default()
    };
    let snap = vol
        .create_snapshot("s", &opts, DeviceStore::in_memory)
        .unwrap();
    let export = Export::Snapshot(snap.clone());
    let off = 20_480;
    let mut buf = vec![0u8; 4096];
    // Nothing preserved yet: the snapshot's bytes are on the volume.
    let d = export.direct_read(off, &buf).expect("a direct read");
    // A write lands between the plan and the read: the read sees the new bytes...
    vol.write(&pattern(2, off, 4096), off).unwrap();
    let n = pread(&d, &mut buf);
    assert!(
        buf == pattern(2, off, 4096),
        "the read saw the volume's new bytes"
    );
    // ...and the second look puts back the pre-image the write preserved.
    d.finish(&mut buf, n).unwrap();
    assert!(buf == pattern(1, off, 4096), "the snapshot's bytes");
    // Preserved blocks, reads longer than a block: the engine's path.
    assert!(export.direct_read(off, &buf).is_none());
    assert!(export.direct_read(off + 4096, &[0u8; 4096]).is_some());
    assert!(export.direct_read(off + 4096, &[0u8; 8192]).is_none());
    // Deleted between the plan and the finish: NotFound, as a read.
    let d = export.direct_read(off + 8192, &buf).unwrap();
    let n = pread(&d, &mut buf);
    vol.delete_snapshot("s").unwrap();
    let e = d.finish(&mut buf, n).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(export.direct_read(off + 8192, &buf).is_none());
}

/// A snapshot whose store is a file in `dir` (so its blocks can be read directly).
fn file_store_snapshot(vol: &Volume, dir: &std::path::Path, name: &str) -> fss_core::Snapshot {
    let opts = SnapshotOptions {
        cluster_size: Some(64 << 10),
        ..SnapshotOptions::default()
    };
    let path = dir.join(format!("{name}.store"));
    vol.create_snapshot(name, &opts, move |p| {
        let opts = OpenOptions {
            create_len: Some(0),
            direct_large: true,
            ..OpenOptions::default()
        };
        let dev = FileDevice::open(&path, &opts).unwrap();
        Ok(Box::new(DeviceStore::new(Arc::new(dev), p, false)) as Box<dyn fss_core::store::Store>)
    })
    .unwrap()
}

#[test]
fn snapshot_direct_reads_of_preserved_blocks_read_the_store_and_survive_a_move() {
    let (dir, vol) = file_volume();
    let s1 = file_store_snapshot(&vol, dir.path(), "s1");
    let (a, b) = (3 * 65_536 + 20_480, 1 << 20);
    vol.write(&pattern(2, a, 4096), a).unwrap();
    let s2 = file_store_snapshot(&vol, dir.path(), "s2");
    vol.write(&pattern(3, b, 4096), b).unwrap();
    let export = Export::Snapshot(s1.clone());
    // A block s1's own store holds, whole and in part: read from that store's file.
    for (off, len) in [(a, 4096), (a + 100, 1000)] {
        let mut buf = vec![0u8; len];
        let d = export
            .direct_read(off, &buf)
            .expect("a direct read of a store block");
        assert_ne!(d.offset(), off, "read at the block's place in the store");
        let n = pread(&d, &mut buf);
        d.finish(&mut buf, n).unwrap();
        assert!(buf == pattern(1, off, len), "bytes at {off}");
    }
    // Across a preserved and an unpreserved block: the engine's path.
    assert!(export.direct_read(a + 2048, &[0u8; 4096]).is_none());
    // A block s2 holds for s1 too. s2 is deleted after the plan: its entry moves into s1's
    // store and s2's store gives back its space, so the read of the plan's place finds
    // zeros; finish sees the block resolves elsewhere now and reads again.
    let mut buf = vec![0u8; 4096];
    let d = export
        .direct_read(b, &buf)
        .expect("a direct read of s2's block");
    vol.delete_snapshot("s2").unwrap();
    drop(s2);
    let n = pread(&d, &mut buf);
    assert!(buf.iter().all(|&x| x == 0), "the plan's place was released");
    d.finish(&mut buf, n).unwrap();
    assert!(buf == pattern(1, b, 4096), "s1's bytes after the move");
}
