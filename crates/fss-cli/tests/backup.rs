//! Change lists, backups, restores, rollbacks and group snapshots end to end, through the `fss`
//! binary against a real daemon; data is written with qemu-io over NBD and compared with
//! `fss checksum` and sha256sum.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::{checksum, fails, qemu_io, sha256, volume, Daemon, FSS};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KIB: u64 = 1024;
const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Wait until a volume's open count is (`open`) or is not (`!open`) above zero.
fn wait_open(d: &Daemon, name: &str, open: bool) {
    let t = Instant::now();
    while (volume(d, name)["open"] != 0) != open {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the open count of {name} did not follow: {}",
            volume(d, name)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn extents(v: &serde_json::Value) -> Vec<(u64, u64)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| (e["offset"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect()
}

#[test]
fn diff_lists_exactly_the_written_extents() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("state"));
    d.ok(&["volume", "create", "v", "--size", "64M"]);
    qemu_io(&d, "v", &["write -P 0x11 0 8M"]);
    d.ok(&["snapshot", "create", "v", "a"]);
    // Aligned, unaligned (rounded out to 4 KiB blocks), and spanning a cluster boundary.
    qemu_io(
        &d,
        "v",
        &[
            "write -P 0x22 0 4k",
            "write -P 0x23 1048676 10",
            "write -P 0x24 8M 64k",
            "write -P 0x25 20476k 8k",
        ],
    );
    d.ok(&["snapshot", "create", "v", "b"]);
    qemu_io(
        &d,
        "v",
        &[
            "write -P 0x26 16M 4k",
            "write -P 0x27 0 512",
            "write -z 32M 12k",
        ],
    );
    let a_b = vec![
        (0, 4 * KIB),
        (MIB, 4 * KIB),
        (8 * MIB, 64 * KIB),
        (20476 * KIB, 8 * KIB),
    ];
    assert_eq!(extents(&d.json(&["diff", "a", "b"])), a_b);
    assert_eq!(
        extents(&d.json(&["diff", "a"])),
        vec![
            (0, 4 * KIB),
            (MIB, 4 * KIB),
            (8 * MIB, 64 * KIB),
            (16 * MIB, 4 * KIB),
            (20476 * KIB, 8 * KIB),
            (32 * MIB, 12 * KIB),
        ]
    );
    assert_eq!(
        extents(&d.json(&["diff", "b"])),
        vec![(0, 4 * KIB), (16 * MIB, 4 * KIB), (32 * MIB, 12 * KIB)]
    );
    let table = d.ok(&["diff", "a", "b"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["OFFSET", "LENGTH"]
    );
    assert_eq!(
        lines[2].split_whitespace().collect::<Vec<_>>(),
        ["1", "MiB", "4", "KiB"]
    );
    assert_eq!(
        lines.last().unwrap(),
        &"total: 4 extents, 80 KiB (81920 bytes) changed between 'a' and 'b'",
        "{table}"
    );

    // Refusals, said plainly.
    d.ok(&["snapshot", "create", "v", "t", "--transient"]);
    let e = fails(&d, &["diff", "a", "t"]);
    assert!(
        e.contains("persistent and transient snapshots form separate chains"),
        "{e}"
    );
    assert!(
        d.json(&["diff", "t"]).as_array().unwrap().is_empty(),
        "nothing written since t"
    );
    let e = fails(&d, &["diff", "b", "a"]);
    assert!(e.contains("give the older snapshot first"), "{e}");
    let e = fails(&d, &["diff", "nosuch"]);
    assert!(e.contains("no snapshot named 'nosuch'"), "{e}");
}

#[test]
fn backups_round_trip_and_restore_refuses_bad_chains() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("state"));
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let f = |n: &str| out.join(n);
    d.ok(&["volume", "create", "v", "--size", "64M"]);
    qemu_io(&d, "v", &["write -P 0x11 0 6M", "write -P 0x12 40M 3M"]);
    d.ok(&["snapshot", "create", "v", "s1"]);
    qemu_io(
        &d,
        "v",
        &[
            "write -P 0x21 1M 2M",
            "write -z 40M 1M",
            "write -P 0x22 60M 4k",
        ],
    );
    d.ok(&["snapshot", "create", "v", "s2"]);
    qemu_io(&d, "v", &["write -P 0x31 5M 2M", "write -P 0x32 63M 1M"]);
    d.ok(&["snapshot", "create", "v", "s3"]);
    qemu_io(&d, "v", &["write -P 0x41 0 64M"]);
    let (c1, c2, c3) = (checksum(&d, "s1"), checksum(&d, "s2"), checksum(&d, "s3"));

    // Full, incremental to a file, incremental to standard output.
    let o = d.ok(&["backup", "s1", s(&f("full.fss"))]);
    assert!(o.contains("full backup of 's1'"), "{o}");
    let o = d.ok(&["backup", "s2", s(&f("incr2.fss")), "--since", "s1"]);
    assert!(o.contains("incremental backup of 's2' since 's1'"), "{o}");
    let piped = std::fs::File::create(f("incr3.fss")).unwrap();
    let r = Command::new(FSS)
        .args(["backup", "s3", "-", "--since", "s2"])
        .env("FSS_STATE_DIR", &d.dir)
        .stdout(piped)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(err.contains("written to standard output"), "{err}");
    assert!(err.contains("backup s3: "), "plain progress lines: {err}");
    assert!(!f("full.fss.partial").exists());
    // Incremental backups hold only what changed: about 3 MiB and 3 MiB, plus headers.
    let size = |n: &str| std::fs::metadata(f(n)).unwrap().len();
    assert!(
        size("incr2.fss") < 3 * MIB + 64 * KIB,
        "{}",
        size("incr2.fss")
    );
    assert!(
        size("incr3.fss") < 3 * MIB + 64 * KIB,
        "{}",
        size("incr3.fss")
    );
    assert!(
        size("full.fss") < 9 * MIB + 64 * KIB,
        "zero blocks take no room"
    );

    // Restores into new images equal the snapshots.
    let o = d.ok(&["restore", s(&f("full.fss")), s(&f("r1.img"))]);
    assert!(o.contains("restored snapshot 's1'"), "{o}");
    assert_eq!(sha256(&f("r1.img")), c1);
    d.ok(&[
        "restore",
        s(&f("full.fss")),
        s(&f("incr2.fss")),
        s(&f("r2.img")),
    ]);
    assert_eq!(sha256(&f("r2.img")), c2);
    d.ok(&[
        "restore",
        s(&f("full.fss")),
        s(&f("incr2.fss")),
        s(&f("incr3.fss")),
        s(&f("r3.img")),
    ]);
    assert_eq!(sha256(&f("r3.img")), c3);
    assert_eq!(std::fs::metadata(f("r3.img")).unwrap().len(), 64 * MIB);
    // Onto an existing image of the right size; refused for another size.
    let existing = f("existing.img");
    std::fs::write(&existing, vec![0xeeu8; (64 * MIB) as usize]).unwrap();
    d.ok(&[
        "restore",
        s(&f("full.fss")),
        s(&f("incr2.fss")),
        s(&existing),
    ]);
    assert_eq!(sha256(&existing), c2);
    let small = f("small.img");
    std::fs::File::create(&small)
        .unwrap()
        .set_len(32 * MIB)
        .unwrap();
    let e = fails(&d, &["restore", s(&f("full.fss")), s(&small)]);
    assert!(
        e.contains("restore onto a device or image of exactly that size"),
        "{e}"
    );

    // A gap, a wrong order, a damaged file: refused, naming the files; no image left behind.
    let e = fails(
        &d,
        &[
            "restore",
            s(&f("full.fss")),
            s(&f("incr3.fss")),
            s(&f("gap.img")),
        ],
    );
    assert!(e.contains("gap in the chain"), "{e}");
    assert!(e.contains("full.fss") && e.contains("incr3.fss"), "{e}");
    assert!(!f("gap.img").exists() && !f("gap.img.partial").exists());
    let e = fails(
        &d,
        &[
            "restore",
            s(&f("full.fss")),
            s(&f("incr3.fss")),
            s(&f("incr2.fss")),
            s(&f("order.img")),
        ],
    );
    assert!(e.contains("incr3.fss"), "{e}");
    assert!(!f("order.img").exists());
    let mut bytes = std::fs::read(f("full.fss")).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(f("damaged.fss"), &bytes).unwrap();
    let e = fails(&d, &["restore", s(&f("damaged.fss")), s(&f("dmg.img"))]);
    assert!(e.contains("damaged.fss"), "{e}");
    assert!(e.contains("checksum"), "{e}");
    assert!(!f("dmg.img").exists() && !f("dmg.img.partial").exists());

    // Backups refuse to overwrite, and leave nothing behind when they fail.
    let e = fails(&d, &["backup", "s1", s(&f("full.fss"))]);
    assert!(e.contains("exists"), "{e}");
    let e = fails(&d, &["backup", "nosuch", s(&f("x.fss"))]);
    assert!(e.contains("no snapshot named 'nosuch'"), "{e}");
    assert!(!f("x.fss").exists() && !f("x.fss.partial").exists());
    let e = fails(&d, &["backup", "s1", s(&f("y.fss")), "--since", "s2"]);
    assert!(e.contains("is not older than"), "{e}");

    // Onto an fss volume by name: no snapshots, not open.
    d.ok(&["volume", "create", "r", "--size", "64M"]);
    let o = d.ok(&["restore", s(&f("full.fss")), s(&f("incr2.fss")), "r"]);
    assert!(o.contains("onto volume 'r'"), "{o}");
    assert_eq!(checksum(&d, "r"), c2);
    let e = fails(&d, &["restore", s(&f("full.fss")), "v"]);
    assert!(e.contains("volume 'v' has snapshots (s1, s2, s3)"), "{e}");
    d.ok(&["snapshot", "create", "r", "rs"]);
    let e = fails(&d, &["restore", s(&f("full.fss")), "r"]);
    assert!(e.contains("has snapshots (rs)"), "{e}");
    d.ok(&["snapshot", "delete", "rs"]);
    let e = fails(&d, &["restore", s(&f("full.fss")), s(&f("incr3.fss")), "r"]);
    assert!(e.contains("gap in the chain"), "{e}");
    assert_eq!(checksum(&d, "r"), c2, "a refused chain writes nothing");
}

#[test]
fn rollback_returns_the_volume_and_keeps_newer_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("state"));
    d.ok(&["volume", "create", "v", "--size", "32M"]);
    qemu_io(&d, "v", &["write -P 0x11 0 32M"]);
    d.ok(&["snapshot", "create", "v", "s1"]);
    qemu_io(&d, "v", &["write -P 0x22 1M 3M", "write -z 20M 1M"]);
    d.ok(&["snapshot", "create", "v", "s2"]);
    qemu_io(&d, "v", &["write -P 0x33 2M 4M", "write -P 0x34 31M 4k"]);
    let (c1, c2, now) = (checksum(&d, "s1"), checksum(&d, "s2"), checksum(&d, "v"));
    assert_ne!(c1, now);

    // Refused while open (a FUSE user), unless --force.
    let fuse_file = d.dir.join("dev").join("v");
    let held = std::fs::File::open(&fuse_file).unwrap();
    wait_open(&d, "v", true);
    let e = fails(&d, &["rollback", "v", "s1"]);
    assert!(e.contains("volume 'v' is open"), "{e}");
    assert!(e.contains("close it first"), "{e}");
    assert_eq!(checksum(&d, "v"), now, "a refused rollback changes nothing");
    drop(held);
    wait_open(&d, "v", false);

    let o = d.ok(&["rollback", "v", "s1"]);
    assert!(o.contains("rolled back volume 'v' to snapshot 's1'"), "{o}");
    assert_eq!(checksum(&d, "v"), c1);
    assert_eq!(checksum(&d, "s1"), c1, "the snapshot is kept");
    assert_eq!(checksum(&d, "s2"), c2, "a newer snapshot stays exact");
    let names: Vec<String> = d
        .json(&["snapshot", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["s1", "s2"]);
    // Served again, and writable.
    qemu_io(&d, "v", &["write -P 0x55 0 4k"]);
    // Forward to s2 with --force while open.
    let held = std::fs::File::open(&fuse_file).unwrap();
    wait_open(&d, "v", true);
    d.ok(&["rollback", "v", "s2", "--force"]);
    drop(held);
    assert_eq!(checksum(&d, "v"), c2);
    assert_eq!(checksum(&d, "s1"), c1);

    let e = fails(&d, &["rollback", "v", "nosuch"]);
    assert!(e.contains("no snapshot named 'nosuch'"), "{e}");
    d.ok(&["volume", "create", "w", "--size", "32M"]);
    let e = fails(&d, &["rollback", "w", "s1"]);
    assert!(
        e.contains("'s1' is a snapshot of volume 'v', not of 'w'"),
        "{e}"
    );
}

#[test]
fn rollback_killed_midway_is_finished_at_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    // 100 ms between 4 MiB chunks: about 6 s for the 240 MiB changed below.
    let mut d = Daemon::start_with_env(&dir, &[("FSS_TEST_ROLLBACK_PAUSE_MS", "100")]);
    d.ok(&["volume", "create", "v", "--size", "256M"]);
    qemu_io(&d, "v", &["write -P 0x11 0 256M"]);
    d.ok(&["snapshot", "create", "v", "s1"]);
    qemu_io(
        &d,
        "v",
        &[
            "write -P 0x22 0 200M",
            "write -P 0x23 216M 40M",
            "write -z 100M 8M",
        ],
    );
    let (c1, changed) = (checksum(&d, "s1"), checksum(&d, "v"));
    assert_ne!(c1, changed);

    let rollback = Command::new(FSS)
        .args(["rollback", "v", "s1"])
        .env("FSS_STATE_DIR", &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the rollback to be recorded, let it run a while, then kill the daemon.
    let state = dir.join("state.json");
    let t = Instant::now();
    while !std::fs::read_to_string(&state)
        .unwrap_or_default()
        .contains("\"rollbacks\"")
    {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no rollback recorded"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    d.kill9();
    let out = rollback.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "the CLI reports the daemon going away"
    );
    // Midway: the image is neither the snapshot nor what it was before.
    let image = sha256(&dir.join("volumes").join("v.img"));
    assert_ne!(image, c1, "the rollback was not interrupted midway");
    assert_ne!(image, changed, "the rollback had not started");
    assert!(std::fs::read_to_string(&state)
        .unwrap()
        .contains("\"snapshot\": \"s1\""));

    d.restart();
    let log = d.log();
    assert!(
        log.contains("resuming the rollback of volume v to snapshot s1"),
        "{log}"
    );
    assert!(
        log.contains("finished the interrupted rollback of volume v to snapshot s1"),
        "{log}"
    );
    assert_eq!(checksum(&d, "v"), c1);
    assert_eq!(checksum(&d, "s1"), c1);
    assert!(!std::fs::read_to_string(&state)
        .unwrap()
        .contains("rollbacks"));
    let v = d.json(&["snapshot", "verify", "s1"]);
    assert_eq!(v["damaged"].as_array().unwrap().len(), 0, "{v}");
    assert_eq!(volume(&d, "v")["state"], "online");
}

#[test]
fn group_snapshot_of_two_volumes_holds_the_contents_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("state"));
    d.ok(&["volume", "create", "data", "--size", "16M"]);
    d.ok(&["volume", "create", "log", "--size", "8M"]);
    qemu_io(&d, "data", &["write -P 0x0d 0 16M"]);
    qemu_io(&d, "log", &["write -P 0x10 0 4M"]);
    let (data0, log0) = (checksum(&d, "data"), checksum(&d, "log"));
    let o = d.ok(&["snapshot", "create-group", "data:g-data", "log:g-log"]);
    assert!(o.contains("'g-data'") && o.contains("'g-log'"), "{o}");
    qemu_io(&d, "data", &["write -P 0xd1 4M 4M"]);
    qemu_io(&d, "log", &["write -P 0x11 0 8M"]);
    assert_ne!(checksum(&d, "data"), data0);
    assert_ne!(checksum(&d, "log"), log0);
    assert_eq!(checksum(&d, "g-data"), data0);
    assert_eq!(checksum(&d, "g-log"), log0);
    // Both changed since the group, exactly as written.
    assert_eq!(
        extents(&d.json(&["diff", "g-data"])),
        vec![(4 * MIB, 4 * MIB)]
    );
    assert_eq!(extents(&d.json(&["diff", "g-log"])), vec![(0, 8 * MIB)]);
}
