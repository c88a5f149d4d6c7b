//! Engine benchmarks on real files: the origin volume and every snapshot store are
//! [`FileDevice`]s in a temporary directory on local disk (`$FSS_BENCH_DIR`, default
//! `/var/tmp`; tmpfs would make the figures meaningless, and a warning says so).
//!
//! Criterion groups:
//! - `write_64k`: 64 KiB writes with no snapshot; first overwrites (every write hits a cluster
//!   the newest snapshot has not preserved yet) with 1 and with 16 live snapshots; rewrites of
//!   clusters already preserved, with 1 snapshot.
//! - `write_4k`: 4 KiB writes with no snapshot; 4 KiB first overwrites, each into a fresh
//!   64 KiB cluster (one block preserved, not sixteen: DESIGN decision 2).
//! - `read_64k`: volume reads; snapshot reads with every other 4 KiB block preserved.
//! - `persistent_vs_transient`: first overwrites (64 KiB, and 4 KiB into fresh clusters) with
//!   1 snapshot whose store is a persistent [`FileStore`] (format v1, durable before the write
//!   is acknowledged) or a transient [`DeviceStore`], from 1 writer thread and from 4 at once
//!   (each thread takes every fourth cluster; with 4 writers, group commit lets one flush of a
//!   persistent store cover several writers' records). With 4 threads, "per op" is wall time
//!   divided by the operations of all threads. The transient 1-thread baselines are the
//!   `write_64k` and `write_4k` first-overwrite cases.
//!
//! Then a table of ratios from one more run, timed with [`Instant`]: three interleaved passes of
//! about half a second per case, the median of each case kept.
//! Set `FSS_BENCH_DIRECT=1` to open the volume and the stores with O_DIRECT.
//!
//! Setup (creating and deleting snapshots when the fresh clusters run out, preserving blocks
//! before the rewrite and read cases) is never timed: cases use `iter_custom` and time only
//! the operations themselves.

use criterion::{Criterion, SamplingMode, Throughput};
use fss_core::device::{FileDevice, OpenOptions};
use fss_core::store::{DeviceStore, FileStore, Store};
use fss_core::{Snapshot, SnapshotOptions, Volume};
use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

type BoxResult<T> = Result<T, Box<dyn Error>>;

/// The volume's size.
const VOLUME_LEN: u64 = 256 << 20;
/// The cluster size every snapshot uses (the default, asked for explicitly).
const CLUSTER: u64 = 64 << 10;
/// Clusters in the volume: how many fresh first overwrites one set of snapshots allows.
const CLUSTERS: u64 = VOLUME_LEN / CLUSTER;
/// Blocks per cluster.
const BLOCKS_PER_CLUSTER: u64 = CLUSTER / 4096;
/// Large and small request sizes.
const BIG: usize = 64 << 10;
const SMALL: usize = 4 << 10;

/// The volume file, and the store files of the live snapshots.
struct Bench {
    dir: TempDir,
    vol: Volume,
    direct: bool,
    /// Live snapshots, oldest first, with their store files.
    snaps: Vec<(Snapshot, PathBuf)>,
    next_id: u64,
}

impl Bench {
    fn new() -> BoxResult<Self> {
        let base =
            std::env::var_os("FSS_BENCH_DIR").map_or_else(|| "/var/tmp".into(), PathBuf::from);
        let dir = tempfile::Builder::new()
            .prefix("fss-bench-")
            .tempdir_in(&base)?;
        if on_tmpfs(dir.path()) {
            eprintln!(
                "warning: {} is on tmpfs; the figures will not mean much (set FSS_BENCH_DIR)",
                dir.path().display()
            );
        }
        let direct = std::env::var("FSS_BENCH_DIRECT").is_ok_and(|v| v == "1");
        let opts = OpenOptions {
            create_len: Some(VOLUME_LEN),
            direct,
            ..OpenOptions::default()
        };
        let dev = FileDevice::open(&dir.path().join("volume.img"), &opts)?;
        let vol = Volume::new("bench", Arc::new(dev));
        // Fill the volume so that every pre-image is real data, not a hole.
        let mut buf = vec![0u8; 1 << 20];
        let mut fill = 0x40u8;
        for at in (0..VOLUME_LEN).step_by(buf.len()) {
            buf.fill(fill);
            fill = fill.wrapping_add(1).max(0x40);
            vol.write(&buf, at)?;
        }
        vol.flush()?;
        Ok(Bench {
            dir,
            vol,
            direct,
            snaps: Vec::new(),
            next_id: 0,
        })
    }

    /// Take a snapshot whose store is a fresh file next to the volume: a persistent
    /// [`FileStore`] or a transient [`DeviceStore`].
    fn snapshot(&mut self, persistent: bool) -> BoxResult<Snapshot> {
        self.next_id += 1;
        let name = format!("s{}", self.next_id);
        let path = self.dir.path().join(format!("{name}.store"));
        let opts = OpenOptions {
            create_len: Some(0),
            direct: self.direct,
            ..OpenOptions::default()
        };
        let snap_opts = SnapshotOptions {
            cluster_size: Some(CLUSTER),
            persistent,
            ..SnapshotOptions::default()
        };
        let snap = self.vol.create_snapshot(&name, &snap_opts, |params| {
            let dev = FileDevice::open(&path, &opts)
                .map_err(|e| fss_core::Error::io("create store", path.display().to_string(), e))?;
            let store: Box<dyn Store> = if persistent {
                Box::new(FileStore::create(Arc::new(dev), params, false, None)?)
            } else {
                Box::new(DeviceStore::new(Arc::new(dev), params, false))
            };
            Ok(store)
        })?;
        self.snaps.push((snap.clone(), path));
        Ok(snap)
    }

    /// Delete every live snapshot, oldest first (which moves nothing), and its store file.
    fn delete_all(&mut self) -> BoxResult<()> {
        for (snap, path) in self.snaps.drain(..) {
            self.vol.delete_snapshot(snap.name())?;
            std::fs::remove_file(&path)?;
        }
        Ok(())
    }

    /// Blocks preserved in the newest snapshot's store.
    fn newest_preserved(&self) -> u64 {
        self.snaps
            .last()
            .map_or(0, |(s, _)| s.info().stats.blocks_preserved)
    }
}

fn on_tmpfs(path: &Path) -> bool {
    const TMPFS_MAGIC: i128 = 0x0102_1994;
    rustix::fs::statfs(path).is_ok_and(|st| i128::from(st.f_type) == TMPFS_MAGIC)
}

/// What one benchmark case does per operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    /// 64 KiB writes, no snapshot.
    Write64k,
    /// 64 KiB first overwrites of fresh clusters with this many live snapshots.
    FirstOverwrite64k(usize),
    /// 64 KiB rewrites of clusters already preserved, 1 snapshot.
    Rewrite64k,
    /// 4 KiB writes, no snapshot.
    Write4k,
    /// 4 KiB first overwrites, each into a fresh 64 KiB cluster, 1 snapshot.
    FreshCluster4k,
    /// 64 KiB volume reads.
    VolumeRead64k,
    /// 64 KiB snapshot reads, every other block preserved.
    SnapshotRead64k,
    /// First overwrites of fresh clusters (64 KiB, or 4 KiB if `small`) with 1 snapshot whose
    /// store is persistent or transient, from `threads` writer threads at once.
    Fresh {
        small: bool,
        persistent: bool,
        threads: usize,
    },
}

impl Case {
    fn bytes(self) -> usize {
        match self {
            Case::Write4k | Case::FreshCluster4k | Case::Fresh { small: true, .. } => SMALL,
            _ => BIG,
        }
    }

    /// Whether each operation must hit a cluster the newest snapshot has not preserved yet.
    fn needs_fresh(self) -> Option<usize> {
        match self {
            Case::FirstOverwrite64k(n) => Some(n),
            Case::FreshCluster4k | Case::Fresh { .. } => Some(1),
            _ => None,
        }
    }

    /// Whether the case's snapshots are persistent.
    fn persistent(self) -> bool {
        matches!(
            self,
            Case::Fresh {
                persistent: true,
                ..
            }
        )
    }

    /// Blocks each operation preserves in a fresh cluster.
    fn blocks_per_op(self) -> u64 {
        if self.bytes() == SMALL {
            1
        } else {
            BLOCKS_PER_CLUSTER
        }
    }

    /// Writer threads.
    fn threads(self) -> usize {
        match self {
            Case::Fresh { threads, .. } => threads.max(1),
            _ => 1,
        }
    }
}

/// Write `buf` into cluster `c`: the whole cluster, or (4 KiB) a different block of each
/// cluster, so that it is not always the first.
fn write_cluster(vol: &Volume, buf: &[u8], c: u64) -> BoxResult<()> {
    let at = c * CLUSTER;
    if buf.len() == SMALL {
        vol.write(buf, at + (c % BLOCKS_PER_CLUSTER) * 4096)?;
    } else {
        vol.write(buf, at)?;
    }
    Ok(())
}

/// Write clusters `from..to` from `threads` threads at once, thread `t` taking every
/// `threads`-th cluster starting at `from + t`.
fn write_parallel(vol: &Volume, buf: &[u8], from: u64, to: u64, threads: usize) -> BoxResult<()> {
    let step = threads as u64;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..step)
            .map(|t| {
                s.spawn(move || -> Result<(), String> {
                    for c in (from + t..to).step_by(threads) {
                        write_cluster(vol, buf, c).map_err(|e| e.to_string())?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| "a writer thread panicked")??;
        }
        Ok(())
    })
}

/// A case in progress: its position in the volume and the snapshot it reads.
struct Runner {
    case: Case,
    cursor: u64,
    buf: Vec<u8>,
    snap: Option<Snapshot>,
}

impl Runner {
    /// Set up `case` on `b` (untimed).
    fn new(b: &mut Bench, case: Case) -> BoxResult<Self> {
        b.delete_all()?;
        let mut snap = None;
        match case {
            Case::Rewrite64k => {
                b.snapshot(false)?;
                let buf = vec![0x5a; BIG];
                for c in 0..CLUSTERS {
                    b.vol.write(&buf, c * CLUSTER)?;
                }
                check(
                    b.newest_preserved() == CLUSTERS * BLOCKS_PER_CLUSTER,
                    "rewrite setup",
                )?;
            }
            Case::SnapshotRead64k => {
                let s = b.snapshot(false)?;
                let buf = vec![0x6b; SMALL];
                for block in (0..VOLUME_LEN / 4096).step_by(2) {
                    b.vol.write(&buf, block * 4096)?;
                }
                check(b.newest_preserved() == VOLUME_LEN / 4096 / 2, "read setup")?;
                snap = Some(s);
            }
            _ => {}
        }
        // Fresh-cluster cases start with the cursor at the end: the first batch takes the
        // snapshots.
        let cursor = if case.needs_fresh().is_some() {
            CLUSTERS
        } else {
            0
        };
        Ok(Runner {
            case,
            cursor,
            buf: vec![0x33; case.bytes()],
            snap,
        })
    }

    /// Do `n` operations; return the time they took, setup excluded.
    fn run(&mut self, b: &mut Bench, n: u64) -> BoxResult<Duration> {
        let mut total = Duration::ZERO;
        let mut left = n;
        while left > 0 {
            if self.cursor == CLUSTERS {
                self.cursor = 0;
                if let Some(count) = self.case.needs_fresh() {
                    self.renew(b, count)?;
                }
            }
            let batch = left.min(CLUSTERS - self.cursor);
            let threads = self.case.threads();
            let start = Instant::now();
            if threads > 1 {
                write_parallel(&b.vol, &self.buf, self.cursor, self.cursor + batch, threads)?;
            } else {
                for c in self.cursor..self.cursor + batch {
                    self.op(b, c)?;
                }
            }
            total += start.elapsed();
            self.cursor += batch;
            left -= batch;
        }
        Ok(total)
    }

    /// One operation on cluster `c`.
    fn op(&mut self, b: &Bench, c: u64) -> BoxResult<()> {
        let at = c * CLUSTER;
        match self.case {
            Case::Write64k | Case::FirstOverwrite64k(_) | Case::Rewrite64k => {
                b.vol.write(&self.buf, at)?;
            }
            // A different block of each cluster, so that it is not always the first.
            Case::Write4k | Case::FreshCluster4k | Case::Fresh { .. } => {
                write_cluster(&b.vol, &self.buf, c)?;
            }
            Case::VolumeRead64k => b.vol.read(&mut self.buf, at)?,
            Case::SnapshotRead64k => match &self.snap {
                Some(s) => s.read(&mut self.buf, at)?,
                None => return Err("snapshot read without a snapshot".into()),
            },
        }
        Ok(())
    }

    /// Check that the last round really preserved what it should have, then replace the
    /// snapshots with `count` new ones, so every cluster is fresh again.
    fn renew(&mut self, b: &mut Bench, count: usize) -> BoxResult<()> {
        if !b.snaps.is_empty() {
            check(
                b.newest_preserved() == CLUSTERS * self.case.blocks_per_op(),
                "a round of first overwrites",
            )?;
        }
        b.delete_all()?;
        for _ in 0..count {
            b.snapshot(self.case.persistent())?;
        }
        Ok(())
    }

    /// Delete the case's snapshots.
    fn finish(self, b: &mut Bench) -> BoxResult<()> {
        drop(self.snap);
        b.delete_all()
    }
}

fn check(ok: bool, what: &str) -> BoxResult<()> {
    if ok {
        Ok(())
    } else {
        Err(format!("{what} did not preserve the expected number of blocks").into())
    }
}

/// Benchmark closures cannot return errors: report and stop.
fn or_exit<T>(r: BoxResult<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            std::process::exit(1);
        }
    }
}

/// The criterion groups: (group, [(benchmark id, case)]).
const GROUPS: &[(&str, &[(&str, Case)])] = &[
    (
        "write_64k",
        &[
            ("no_snapshot", Case::Write64k),
            ("first_overwrite/1_snapshot", Case::FirstOverwrite64k(1)),
            ("first_overwrite/16_snapshots", Case::FirstOverwrite64k(16)),
            ("rewrite_preserved/1_snapshot", Case::Rewrite64k),
        ],
    ),
    (
        "write_4k",
        &[
            ("no_snapshot", Case::Write4k),
            (
                "first_overwrite_fresh_cluster/1_snapshot",
                Case::FreshCluster4k,
            ),
        ],
    ),
    (
        "read_64k",
        &[
            ("volume", Case::VolumeRead64k),
            ("snapshot_half_preserved", Case::SnapshotRead64k),
        ],
    ),
    (
        "persistent_vs_transient",
        &[
            ("64k/persistent/1_thread", FRESH_64K_P1),
            ("64k/transient/4_threads", FRESH_64K_T4),
            ("64k/persistent/4_threads", FRESH_64K_P4),
            ("4k_fresh_cluster/persistent/1_thread", FRESH_4K_P1),
            ("4k_fresh_cluster/transient/4_threads", FRESH_4K_T4),
            ("4k_fresh_cluster/persistent/4_threads", FRESH_4K_P4),
        ],
    ),
];

/// First overwrites with 1 snapshot: size, persistence, writer threads.
const fn fresh(small: bool, persistent: bool, threads: usize) -> Case {
    Case::Fresh {
        small,
        persistent,
        threads,
    }
}
/// Transient, 1 thread: the same as the `write_64k` and `write_4k` first-overwrite cases.
const FRESH_64K_T1: Case = Case::FirstOverwrite64k(1);
const FRESH_64K_P1: Case = fresh(false, true, 1);
const FRESH_64K_T4: Case = fresh(false, false, 4);
const FRESH_64K_P4: Case = fresh(false, true, 4);
const FRESH_4K_T1: Case = Case::FreshCluster4k;
const FRESH_4K_P1: Case = fresh(true, true, 1);
const FRESH_4K_T4: Case = fresh(true, false, 4);
const FRESH_4K_P4: Case = fresh(true, true, 4);

fn criterion_groups(c: &mut Criterion, b: &mut Bench) -> BoxResult<()> {
    for &(group_name, cases) in GROUPS {
        let mut group = c.benchmark_group(group_name);
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_millis(1500))
            .sampling_mode(SamplingMode::Flat);
        for &(id, case) in cases {
            let mut runner = Runner::new(b, case)?;
            group.throughput(Throughput::Bytes(case.bytes() as u64));
            group.bench_function(id, |bencher| {
                bencher.iter_custom(|iters| or_exit(runner.run(b, iters)));
            });
            runner.finish(b)?;
        }
        group.finish();
    }
    Ok(())
}

/// Time per operation of `case`, from about `budget` of operations after a short warm-up.
fn measure(b: &mut Bench, case: Case, budget: Duration) -> BoxResult<Duration> {
    let mut runner = Runner::new(b, case)?;
    // Persistent first overwrites wait for a flush each (milliseconds): smaller chunks keep
    // them near the budget.
    let chunk = if case.persistent() { 32 } else { 256 };
    let mut warm = Duration::ZERO;
    while warm < Duration::from_millis(100) {
        warm += runner.run(b, chunk)?;
    }
    let (mut total, mut ops) = (Duration::ZERO, 0u64);
    while total < budget {
        total += runner.run(b, chunk)?;
        ops += chunk;
    }
    runner.finish(b)?;
    Ok(total / u32::try_from(ops)?)
}

/// Passes over all cases in the ratio table; each case's figure is its median pass.
const PASSES: usize = 3;

/// Measure every case (in [`PASSES`] interleaved passes of about half a second each, so that
/// slow drifts of the page cache and the file system hit every case alike) and print the
/// ratios between them.
fn ratios(b: &mut Bench) -> BoxResult<()> {
    let cases = [
        ("write 64K, no snapshot", Case::Write64k),
        (
            "first overwrite 64K, 1 snapshot",
            Case::FirstOverwrite64k(1),
        ),
        (
            "first overwrite 64K, 16 snapshots",
            Case::FirstOverwrite64k(16),
        ),
        ("rewrite 64K, preserved, 1 snapshot", Case::Rewrite64k),
        ("write 4K, no snapshot", Case::Write4k),
        (
            "write 4K into a fresh cluster, 1 snap",
            Case::FreshCluster4k,
        ),
        ("read 64K, volume", Case::VolumeRead64k),
        ("read 64K, snapshot, half preserved", Case::SnapshotRead64k),
        ("first overwrite 64K, persistent, 1 thr", FRESH_64K_P1),
        ("first overwrite 64K, transient, 4 thr", FRESH_64K_T4),
        ("first overwrite 64K, persistent, 4 thr", FRESH_64K_P4),
        ("4K fresh cluster, persistent, 1 thr", FRESH_4K_P1),
        ("4K fresh cluster, transient, 4 thr", FRESH_4K_T4),
        ("4K fresh cluster, persistent, 4 thr", FRESH_4K_P4),
    ];
    let mut runs: Vec<Vec<Duration>> = vec![Vec::with_capacity(PASSES); cases.len()];
    for _ in 0..PASSES {
        for (&(_, case), r) in cases.iter().zip(&mut runs) {
            r.push(measure(b, case, Duration::from_millis(500))?);
        }
    }
    for r in &mut runs {
        r.sort();
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let median = |case: Case| {
        cases
            .iter()
            .position(|&(_, c)| c == case)
            .map_or(0.0, |i| us(runs[i][PASSES / 2]))
    };
    println!();
    println!(
        "fss-core engine, one run: files in {}{}, {} MiB volume, {} KiB clusters",
        b.dir.path().display(),
        if b.direct {
            " (O_DIRECT)"
        } else {
            " (page cache)"
        },
        VOLUME_LEN >> 20,
        CLUSTER >> 10
    );
    println!("median of {PASSES} interleaved passes of 0.5 s per case");
    println!(
        "{:<40} {:>10} {:>17} {:>8}",
        "case", "per op", "(min - max)", "MiB/s"
    );
    for (&(name, case), r) in cases.iter().zip(&runs) {
        let mid = us(r[PASSES / 2]);
        let mib_s = case.bytes() as f64 / mid / 1e-6 / f64::from(1 << 20);
        let spread = format!("({:.1} - {:.1})", us(r[0]), us(r[PASSES - 1]));
        println!("{name:<40} {mid:>7.1} us {spread:>17} {mib_s:>8.0}");
    }
    println!();
    println!("{:<42} {:>10} {:>8}", "ratio", "throughput", "time");
    let pairs = [
        (
            "first-overwrite(1) / no-snapshot",
            Case::FirstOverwrite64k(1),
            Case::Write64k,
        ),
        (
            "first-overwrite(16) / first-overwrite(1)",
            Case::FirstOverwrite64k(16),
            Case::FirstOverwrite64k(1),
        ),
        (
            "4K-fresh / no-snapshot-4K",
            Case::FreshCluster4k,
            Case::Write4k,
        ),
        ("rewrite / no-snapshot", Case::Rewrite64k, Case::Write64k),
        (
            "snapshot-read / volume-read",
            Case::SnapshotRead64k,
            Case::VolumeRead64k,
        ),
        (
            "persistent / transient, 64K, 1 thread",
            FRESH_64K_P1,
            FRESH_64K_T1,
        ),
        (
            "persistent / transient, 64K, 4 threads",
            FRESH_64K_P4,
            FRESH_64K_T4,
        ),
        (
            "persistent / transient, 4K fresh, 1 thread",
            FRESH_4K_P1,
            FRESH_4K_T1,
        ),
        (
            "persistent / transient, 4K fresh, 4 threads",
            FRESH_4K_P4,
            FRESH_4K_T4,
        ),
    ];
    for (name, case, base) in pairs {
        let t = median(case) / median(base);
        println!("{name:<42} {:>9.2}x {t:>7.2}x", 1.0 / t);
    }
    println!("(throughput: case / baseline, higher is better; time per op: lower is better)");
    Ok(())
}

fn run(c: &mut Criterion) -> BoxResult<()> {
    let mut b = Bench::new()?;
    criterion_groups(c, &mut b)?;
    // `cargo bench` passes --bench; without it (cargo test --benches) criterion runs each
    // benchmark once as a test, and the ratio pass would only waste time.
    if std::env::args().any(|a| a == "--bench") {
        ratios(&mut b)?;
    }
    Ok(())
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    or_exit(run(&mut c));
    c.final_summary();
}
