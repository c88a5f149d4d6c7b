//! The file system never notices the daemon: ext4 and XFS mounted on a loop device over a
//! volume's FUSE file, a writer that writes and fsyncs new files throughout, readers that read
//! a file's 4 KiB blocks with O_DIRECT from 8 threads at once (so the FUSE session's read ring
//! has reads in flight), and meanwhile `kill -9` of the serving process (at least 8) and
//! `fss restart` (at least 3) at random moments. Neither the writer nor the readers see an
//! error or a wrong byte, the kernel logs no I/O error for the loop device,
//! every fsynced file reads back, the file system checks clean after unmount, and a persistent
//! snapshot taken by mount point before the kills stays byte-exact.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::loopdev::{run, Cleanup};
use common::Daemon;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Loop devices and mounts are machine-wide: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// kill -9 the serving process and wait until a new one answers; how long that took.
fn kill_serving(d: &Daemon) -> Duration {
    let old = d.kill9_serving();
    d.wait_for_successor(old).1
}

/// What the writer did: fsynced files (name -> bytes' checksum), errors, worst latency.
#[derive(Default)]
struct Written {
    files: BTreeMap<String, u64>,
    errors: Vec<String>,
    worst: Duration,
}

fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Write and fsync new files under `root` until `stop`.
fn writer(root: PathBuf, stop: Arc<AtomicBool>, out: Arc<Mutex<Written>>) {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x % (128 << 10)) as usize + 4096;
        let data: Vec<u8> = (0..len).map(|j| (j as u64 ^ x) as u8).collect();
        let name = format!("d{}/f{i}", i % 8);
        let t = Instant::now();
        let r = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(root.join(format!("d{}", i % 8)))?;
            let mut f = std::fs::File::create(root.join(&name))?;
            f.write_all(&data)?;
            f.sync_all()
        })();
        let took = t.elapsed();
        let mut w = out.lock().unwrap();
        w.worst = w.worst.max(took);
        match r {
            Ok(()) => {
                w.files.insert(name, checksum(&data));
                // Bounded space: the oldest file goes once 1000 newer ones exist.
                if let Some(old) = i.checked_sub(1000) {
                    let old = format!("d{}/f{old}", old % 8);
                    if let Err(e) = std::fs::remove_file(root.join(&old)) {
                        w.errors.push(format!("remove {old}: {e}"));
                        return;
                    }
                    w.files.remove(&old);
                }
            }
            Err(e) => {
                w.errors.push(format!("{name}: {e}"));
                return;
            }
        }
        drop(w);
        i += 1;
    }
}

/// Kernel log lines about I/O errors on `dev`.
/// Eight threads reading random 4 KiB blocks of `path` (every byte 3) with O_DIRECT until
/// `stop`; each returns how many reads it made, or the first error or wrong byte.
fn readers(path: &std::path::Path, stop: &Arc<AtomicBool>) -> Vec<JoinHandle<Result<u64, String>>> {
    (0..8u64)
        .map(|t| {
            let (path, stop) = (path.to_path_buf(), Arc::clone(stop));
            std::thread::spawn(move || {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc_o_direct())
                    .open(&path)
                    .map_err(|e| format!("open: {e}"))?;
                let blocks = f.metadata().map_err(|e| e.to_string())?.len() / 4096;
                let mut v = vec![0u8; 8192];
                let at = v.as_ptr().align_offset(4096);
                let buf = &mut v[at..at + 4096];
                let (mut rng, mut n) = (0x9e37_79b9_7f4a_7c15u64 ^ t, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let off = rng % blocks * 4096;
                    f.read_exact_at(buf, off)
                        .map_err(|e| format!("read at {off}: {e}"))?;
                    if buf.iter().any(|&b| b != 3) {
                        return Err(format!("wrong bytes at {off}"));
                    }
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect()
}

fn libc_o_direct() -> i32 {
    i32::try_from(rustix::fs::OFlags::DIRECT.bits()).unwrap_or(0)
}

fn io_errors(dev: &str) -> Vec<String> {
    let name = dev.trim_start_matches("/dev/");
    run("dmesg", &[])
        .lines()
        .filter(|l| l.contains(name) && (l.contains("I/O error") || l.contains("error")))
        .map(ToString::to_string)
        .collect()
}

fn live(fs: &str) {
    let _g = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(&tmp.path().join("state"));
    d.ok(&["volume", "create", "vol", "--size", "512M"]);
    let mut c = Cleanup::default();
    let dev = c.attach(&tmp.path().join("state/dev/vol"), false);
    run(
        if fs == "xfs" { "mkfs.xfs" } else { "mkfs.ext4" },
        &["-q", &dev],
    );
    let mnt = tmp.path().join("mnt");
    c.mount(&dev, &mnt, "rw");
    let errors_before = io_errors(&dev);
    std::fs::write(mnt.join("before"), vec![3u8; 5 << 20]).unwrap();
    d.ok(&["snapshot", "create", mnt.to_str().unwrap(), "before"]);
    let snap_sum = d.ok(&["checksum", "before"]);

    let stop = Arc::new(AtomicBool::new(false));
    let out = Arc::new(Mutex::new(Written::default()));
    let w = {
        let (root, stop, out) = (mnt.clone(), Arc::clone(&stop), Arc::clone(&out));
        std::thread::spawn(move || writer(root, stop, out))
    };
    let reads = readers(&mnt.join("before"), &stop);
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut kills = Vec::new();
    let mut restarts = Vec::new();
    // 9 kills and 3 restarts, interleaved, at random moments.
    for round in 0..12 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(200 + rng % 600));
        if round % 4 == 3 {
            let t = Instant::now();
            d.ok(&["restart"]);
            restarts.push(t.elapsed());
        } else {
            kills.push(kill_serving(&d));
        }
        assert!(
            out.lock().unwrap().errors.is_empty(),
            "writer: {:?}",
            out.lock().unwrap().errors
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    let reads: Vec<u64> = reads
        .into_iter()
        .map(|r| {
            r.join()
                .unwrap()
                .unwrap_or_else(|e| panic!("a reader: {e}"))
        })
        .collect();
    assert!(
        reads.iter().all(|&n| n > 100),
        "reads per reader: {reads:?}"
    );
    let written = std::mem::take(&mut *out.lock().unwrap());
    assert!(
        written.errors.is_empty(),
        "the writer saw errors: {:?}",
        written.errors
    );
    assert!(
        written.files.len() > 20,
        "the writer wrote {} files",
        written.files.len()
    );
    eprintln!(
        "{fs}: {} files, {reads:?} O_DIRECT 4 KiB reads per reader; worst fsynced-file latency {:?}; kill -9 -> serving again {:?}; restarts {:?}",
        written.files.len(),
        written.worst,
        kills,
        restarts
    );
    for (name, sum) in &written.files {
        let data = std::fs::read(mnt.join(name)).unwrap();
        assert_eq!(checksum(&data), *sum, "{name} reads back different");
    }
    let errors_after = io_errors(&dev);
    assert_eq!(
        errors_after, errors_before,
        "the kernel logged errors for {dev}"
    );
    c.umount(&mnt);
    if fs == "xfs" {
        run("xfs_repair", &["-n", &dev]);
    } else {
        run("e2fsck", &["-fn", &dev]);
    }
    assert_eq!(
        d.ok(&["checksum", "before"]),
        snap_sum,
        "the snapshot changed"
    );
    c.release_all();
    assert_eq!(d.stop(), 0);
}

#[test]
fn ext4_never_notices_kills_and_restarts() {
    live("ext4");
}

#[test]
fn xfs_never_notices_kills_and_restarts() {
    live("xfs");
}
