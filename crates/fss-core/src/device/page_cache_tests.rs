//! What `FileDevice` leaves in the page cache: with `direct_large`, small reads read nothing
//! ahead (large ones go O_DIRECT, small ones are random in practice).

use super::{BlockDevice, FileDevice, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

const PAGE: u64 = 4096;

/// Bytes of `path` in the page cache, by util-linux's `fincore` (a read with `RWF_NOWAIT`
/// would start the readahead it looks for).
fn cached(path: &Path) -> u64 {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--raw", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .expect("fincore (util-linux) must be installed: it is in .ci/run");
    assert!(out.status.success(), "fincore: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Read pages 256..264 one by one (a sequential stream the kernel would read ahead of) through
/// a device opened with `opts`, from a file whose pages were all dropped from the cache, and
/// return how many bytes of the file are cached then.
fn cached_after_reads(opts: OpenOptions) -> u64 {
    // O_DIRECT and page-cache eviction need a real file system (not tmpfs): fail loudly
    // rather than skip, as `file.rs`'s direct tests do.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.img");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    f.write_all_at(&vec![7u8; 4 << 20], 0).unwrap();
    f.sync_all().unwrap();
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
    assert_eq!(cached(&path), 0, "the pages were not dropped");
    let d = FileDevice::open(&path, &opts).unwrap();
    let mut b = [0u8; PAGE as usize];
    for page in 256..264 {
        d.read_at(&mut b, page * PAGE).unwrap();
        assert_eq!(b, [7u8; PAGE as usize]);
    }
    cached(&path)
}

#[test]
fn direct_large_reads_nothing_ahead_but_buffered_devices_do() {
    let direct_large = OpenOptions {
        direct_large: true,
        ..OpenOptions::default()
    };
    assert_eq!(
        cached_after_reads(direct_large),
        8 * PAGE,
        "small reads of a direct_large device brought in pages nobody asked for"
    );
    // The control: the same reads through the page cache alone do read ahead here, so the
    // check above can fail.
    assert!(cached_after_reads(OpenOptions::default()) > 8 * PAGE);
}
