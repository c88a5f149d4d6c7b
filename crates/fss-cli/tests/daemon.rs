//! The daemon and CLI end to end: volumes, snapshots, listings, restarts after kill -9.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::Daemon;

#[test]
fn volumes_and_snapshots_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let mut d = Daemon::start(&dir);
    // The built-in default volume.
    let vols = d.json(&["volume", "list"]);
    assert_eq!(vols[0]["name"], "default");
    assert_eq!(vols[0]["size"], 1u64 << 30);

    // A volume from an existing image with recognisable bytes, and a created one.
    let image = tmp.path().join("data.img");
    let data: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&image, &data).unwrap();
    d.ok(&["volume", "add", "data", "--device", image.to_str().unwrap()]);
    let out = d.ok(&["volume", "create", "scratch", "--size", "64M"]);
    assert!(out.contains("created volume 'scratch' (64 MiB)"), "{out}");
    let list = d.ok(&["volume", "list"]);
    assert!(list.starts_with("NAME"), "{list}");
    assert!(
        list.lines()
            .any(|l| l.starts_with("data") && l.contains("8 MiB")),
        "{list}"
    );

    d.ok(&["snapshot", "create", "data", "p1"]);
    d.ok(&["snapshot", "create", "data", "t1", "--transient"]);
    d.ok(&[
        "snapshot",
        "create",
        "data",
        "p2",
        "--cluster-size",
        "64K",
        "--max-store-size",
        "1G",
    ]);
    let e = d.fss(&["snapshot", "create", "data", "p3", "--cluster-size", "16K"]);
    assert_eq!(e.status, 1);
    assert!(
        e.stderr
            .contains("cluster size can only be chosen for its first snapshot"),
        "{}",
        e.stderr
    );

    let snaps = d.json(&["snapshot", "list"]);
    let names: Vec<&str> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["p1", "t1", "p2"]);
    assert_eq!(snaps[1]["kind"], "transient");
    assert_eq!(snaps[0]["state"], "valid");
    let table = d.ok(&["snapshot", "list"]);
    assert!(
        table.lines().next().unwrap().contains("STORE USED"),
        "{table}"
    );
    let info = d.json(&["snapshot", "info", "p2"]);
    assert_eq!(info["store_max"], 1u64 << 30);
    assert_eq!(info["cluster_size"], 65536);
    let v = d.json(&["snapshot", "verify", "p1"]);
    assert_eq!(v["checksummed"], true);
    assert_eq!(v["damaged"].as_array().unwrap().len(), 0);

    let sum = |d: &Daemon, n: &str| d.ok(&["checksum", n]).trim().to_string();
    let original = sum(&d, "data");
    assert_eq!(sum(&d, "p1"), original);
    // Overwrite the volume through NBD: the snapshots keep the old bytes.
    let nbd = |name: &str| {
        format!(
            "nbd+unix:///{name}?socket={}",
            dir.join("nbd.sock").display()
        )
    };
    let qemu_io = |args: &[&str]| {
        let o = std::process::Command::new("qemu-io")
            .args(["-f", "raw"])
            .args(args)
            .output()
            .expect("qemu-io (apt install qemu-utils)");
        let text =
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        (o.status.success() && !text.contains("failed"), text)
    };
    let (ok, out) = qemu_io(&[
        "-c",
        "write -P 0x55 4096 1M",
        "-c",
        "write -z 3M 64k",
        &nbd("data"),
    ]);
    assert!(ok, "{out}");
    let changed = sum(&d, "data");
    assert_ne!(changed, original);
    assert_eq!(sum(&d, "p1"), original);
    assert_eq!(sum(&d, "p2"), original);
    let (ok, out) = qemu_io(&["-c", "write -P 0x66 0 4k", &nbd("p1")]);
    assert!(!ok, "a snapshot export refuses writes: {out}");
    let info = d.json(&["snapshot", "info", "p2"]);
    assert_eq!(info["blocks_preserved"], 256 + 16, "{info}");

    // fssconfig sees them too.
    let l = d.fssconfig(&["-lv"]);
    assert_eq!(l.status, 0, "{}", l.stderr);
    assert!(l.stdout.contains("fss0: not in use"), "{}", l.stdout);
    assert!(l.stdout.contains("p1: data, taken "), "{}", l.stdout);
    assert!(l.stdout.contains("128 clusters of 65536"), "{}", l.stdout);

    d.restart();
    let snaps = d.json(&["snapshot", "list"]);
    let names: Vec<&str> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["p1", "p2"],
        "transient t1 is gone after the restart"
    );
    assert!(
        d.log().contains("dropped transient snapshot t1"),
        "{}",
        d.log()
    );
    assert_eq!(sum(&d, "p1"), original);
    assert_eq!(sum(&d, "p2"), original);
    assert_eq!(sum(&d, "data"), changed);
    let v = d.json(&["snapshot", "verify", "p2"]);
    assert_eq!(v["blocks_checked"], 256 + 16);
    let status = d.json(&["status"]);
    assert_eq!(status["recovered_from_crash"], true);

    // Delete in any order: the middle first.
    d.ok(&["snapshot", "delete", "p1"]);
    assert_eq!(sum(&d, "p2"), original);
    d.ok(&["snapshot", "delete", "p2"]);
    assert_eq!(d.json(&["snapshot", "list"]).as_array().unwrap().len(), 0);
    d.ok(&["volume", "remove", "scratch"]);
    assert_eq!(d.stop(), 0);
    assert!(
        !dir.join("control.sock").exists(),
        "control.sock removed at a clean exit"
    );
}
