//! A measurement, not an assertion: direct writes to a loop device over a FUSE file of a volume
//! against a loop device over a plain file on the same disk. Sequential 1 MiB writes and 4 KiB
//! random writes (fio, queue depth > 1); the figures are printed and written to
//! `$CARGO_TARGET_TMPDIR/fss-fuse-throughput.txt`. Run with `--nocapture` to see them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{disk_tempdir, output, require_commands, serial, LoopDev, TestCatalog};
use fss_core::device::{FileDevice, OpenOptions};
use fss_core::export::Export;
use fss_core::store::DeviceStore;
use fss_core::{SnapshotOptions, Volume};
use fss_fuse::{FuseFrontEnd, Hooks};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

const LEN: u64 = 1 << 30;
const REGION: &str = "256M";
const SECONDS: &str = "5";

/// Throughput in MiB/s and IOPS of one fio job.
#[derive(Debug, Clone, Copy)]
struct Figures {
    mib_s: f64,
    iops: f64,
}

fn fio(dev: &str, rw: &str, bs: &str, depth: &str) -> Figures {
    let mut args = vec![
        "--name=m".to_string(),
        format!("--filename={dev}"),
        format!("--rw={rw}"),
        format!("--bs={bs}"),
        "--direct=1".into(),
        "--ioengine=libaio".into(),
        format!("--iodepth={depth}"),
        format!("--size={REGION}"),
        "--output-format=json".into(),
    ];
    if rw.starts_with("rand") {
        args.push(format!("--runtime={SECONDS}"));
        args.push("--time_based".into());
        args.push("--randrepeat=0".into());
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = output("fio", &a);
    assert!(
        out.status.success(),
        "fio failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let w = &v["jobs"][0]["write"];
    Figures {
        mib_s: w["bw"].as_f64().unwrap() / 1024.0,
        iops: w["iops"].as_f64().unwrap(),
    }
}

/// Sequential 1 MiB (depth 8) then random 4 KiB (depth 16) direct writes on `dev`.
fn measure(dev: &str) -> (Figures, Figures) {
    let seq = fio(dev, "write", "1M", "8");
    let rand = fio(dev, "randwrite", "4k", "16");
    (seq, rand)
}

fn volume(path: &Path, direct: bool) -> Volume {
    let dev = FileDevice::open(
        path,
        &OpenOptions {
            create_len: Some(LEN),
            exclusive: true,
            direct,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    Volume::new("vol", Arc::new(dev))
}

#[test]
fn loop_over_fuse_against_loop_over_a_plain_file() {
    let _g = serial();
    require_commands(&["losetup", "fio"]);
    let tmp = disk_tempdir();
    let mut rows: Vec<(String, Figures, Figures)> = Vec::new();

    // Baseline: loop (direct I/O) over a plain sparse file on the same disk.
    let plain = tmp.path().join("plain.img");
    std::fs::File::create(&plain).unwrap().set_len(LEN).unwrap();
    {
        let lo = LoopDev::attach(&plain, &["--direct-io=on"]);
        let (s, r) = measure(&lo.dev);
        rows.push(("loop over a plain file".into(), s, r));
    }

    for (label, direct) in [
        ("loop over FUSE, volume O_DIRECT", true),
        ("loop over FUSE, volume buffered", false),
    ] {
        let img = tmp.path().join(format!("vol-{direct}.img"));
        let vol = volume(&img, direct);
        let catalog = Arc::new(TestCatalog::default());
        catalog.add(Export::Volume(vol.clone()));
        let dir = tmp.path().join(format!("dev-{direct}"));
        let fuse = FuseFrontEnd::mount(&dir, catalog.clone(), Hooks::default()).unwrap();
        {
            let lo = LoopDev::attach(&dir.join("vol"), &["--direct-io=on"]);
            assert!(lo.direct_io(), "loop must do direct I/O on the FUSE file");
            let (s, r) = measure(&lo.dev);
            rows.push((label.into(), s, r));
            if direct {
                // First overwrites after a snapshot preserve pre-images (transient store).
                let snap = vol
                    .create_snapshot("s", &SnapshotOptions::default(), DeviceStore::in_memory)
                    .unwrap();
                let rand = fio(&lo.dev, "randwrite", "4k", "16");
                let seq = fio(&lo.dev, "write", "1M", "8");
                rows.push((format!("{label}, snapshot live"), seq, rand));
                drop(snap);
            }
        }
        assert!(common::wait_until(
            std::time::Duration::from_secs(10),
            || fuse.open_files().is_empty()
        ));
        fuse.unmount().unwrap();
    }

    let (base_seq, base_rand) = (rows[0].1, rows[0].2);
    let mut report = String::new();
    writeln!(
        report,
        "fio, direct=1, libaio, {REGION} region of a {} GiB device; seq: 1 MiB depth 8, \
         rand: 4 KiB depth 16 for {SECONDS} s",
        LEN >> 30
    )
    .unwrap();
    writeln!(
        report,
        "{:<48} {:>10} {:>7} {:>10} {:>7}",
        "", "seq MiB/s", "ratio", "rand IOPS", "ratio"
    )
    .unwrap();
    for (label, s, r) in &rows {
        writeln!(
            report,
            "{label:<48} {:>10.1} {:>6.2}x {:>10.0} {:>6.2}x",
            s.mib_s,
            s.mib_s / base_seq.mib_s,
            r.iops,
            r.iops / base_rand.iops
        )
        .unwrap();
    }
    println!("{report}");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fss-fuse-throughput.txt");
    std::fs::write(&out, &report).unwrap();
}
