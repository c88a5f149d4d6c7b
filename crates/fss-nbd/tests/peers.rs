//! The server against real NBD clients: nbdinfo and nbdcopy (libnbd-bin), qemu-io
//! (qemu-utils). Each test fails, never skips, when its client is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{require, run, run_ok, Harness, Rng};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

const MIB: u64 = 1 << 20;

fn nbdinfo(args: &[&str]) -> Value {
    require("nbdinfo", "libnbd-bin");
    let out = run_ok(Command::new("nbdinfo").args(args));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("nbdinfo {args:?}: {e}\n{out}"))
}

fn qemu_io(uri: &str, read_only: bool, cmds: &[&str]) -> std::process::Output {
    require("qemu-io", "qemu-utils");
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    if read_only {
        c.arg("-r");
    }
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c.arg(uri);
    run(&mut c, Duration::from_secs(120))
}

fn qemu_io_ok(uri: &str, read_only: bool, cmds: &[&str]) -> String {
    let out = qemu_io(uri, read_only, cmds);
    common::qemu_stdout_ok(&format!("qemu-io {cmds:?} on {uri}"), &out)
}

/// (offset, length, type) of an `nbdinfo --map --json` listing.
fn map(v: &Value) -> Vec<(u64, u64, u64)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["offset"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["type"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn nbdinfo_describes_volume_and_snapshot() {
    let h = Harness::new(16 * MIB);
    h.volume.write(&[7; 4096], 0).unwrap();
    h.snapshot("snap");

    for uri in [h.uri("default"), h.uri("")] {
        let v = nbdinfo(&["--json", "--no-content", &uri]);
        assert_eq!(v["protocol"], "newstyle-fixed", "{v}");
        assert_eq!(v["TLS"], false);
        assert_eq!(v["structured"], true);
        let e = &v["exports"][0];
        assert_eq!(e["export-name"], "default", "{v}");
        assert_eq!(e["export-size"], 16 * MIB);
        assert_eq!(e["is_read_only"], false);
        for cap in [
            "can_flush",
            "can_fua",
            "can_trim",
            "can_zero",
            "can_multi_conn",
        ] {
            assert_eq!(e[cap], true, "{cap} on the volume: {v}");
        }
        assert_eq!(e["block_size_minimum"], 1);
        assert_eq!(e["block_size_preferred"], 4096);
        assert_eq!(e["block_size_maximum"], 32 * MIB);
        // The volume offers QEMU's dirty bitmap since each of its snapshots.
        assert_eq!(
            e["contexts"],
            serde_json::json!(["base:allocation", "qemu:dirty-bitmap:snap"])
        );
    }

    let v = nbdinfo(&["--json", "--no-content", &h.uri("snap")]);
    assert_eq!(v["protocol"], "newstyle-fixed");
    assert_eq!(v["structured"], true);
    let e = &v["exports"][0];
    assert_eq!(e["export-name"], "snap");
    assert_eq!(e["is_read_only"], true, "{v}");
    assert_eq!(e["can_multi_conn"], true);
    assert_eq!(e["can_flush"], true);
    assert_eq!(e["can_trim"], false);
    assert_eq!(e["can_zero"], false);
    assert_eq!(
        e["contexts"],
        serde_json::json!(["base:allocation", "fss:preserved"])
    );
}

#[test]
fn nbdinfo_lists_every_export() {
    let h = Harness::new(4 * MIB);
    h.snapshot("snap");
    h.snapshot("snap.2");
    let v = nbdinfo(&["--list", "--json", &h.uri("")]);
    let names: Vec<&str> = v["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["export-name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "snap", "snap.2"], "{v}");
    let ro: Vec<bool> = v["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["is_read_only"].as_bool().unwrap())
        .collect();
    assert_eq!(ro, [false, true, true]);
}

#[test]
fn nbdinfo_map_shows_the_holes_of_a_sparse_volume() {
    let size = 16 * MIB;
    let h = Harness::new(size);
    h.volume.write(&[1; 65536], 0).unwrap();
    h.volume.write(&[2; 131_072], 8 * MIB).unwrap();
    let got = map(&nbdinfo(&["--map", "--json", &h.uri("default")]));
    // Exactly what the file system says (SEEK_DATA / SEEK_HOLE), as hole|zero (3) or data (0).
    let want: Vec<(u64, u64, u64)> = h
        .volume
        .allocation(0, size)
        .unwrap()
        .iter()
        .map(|e| (e.offset, e.len, if e.data { 0 } else { 3 }))
        .collect();
    assert_eq!(got, want);
    assert_eq!(got.iter().map(|e| e.1).sum::<u64>(), size);
    let holes: u64 = got.iter().filter(|e| e.2 == 3).map(|e| e.1).sum();
    assert!(
        holes >= size - 2 * MIB,
        "a sparse volume must show holes: {got:?}"
    );
    let covers = |off: u64, len: u64| {
        got.iter()
            .any(|e| e.2 == 0 && e.0 <= off && e.0 + e.1 >= off + len)
    };
    assert!(covers(0, 65536) && covers(8 * MIB, 131_072), "{got:?}");
}

#[test]
fn nbdinfo_map_of_fss_preserved_is_exactly_the_changed_blocks() {
    let size = 8 * MIB;
    let h = Harness::new(size);
    h.volume.write(&[9; 4096 * 8], 0).unwrap();
    h.snapshot("snap");
    // Changed since the snapshot: block 3; blocks 256..258 (an unaligned 8 KiB write touches
    // three blocks); block 1280 (one byte); 4 MiB..4.5 MiB (write-zeroes); and a discard of
    // the last 64 KiB.
    h.volume.write(&[1; 4096], 3 * 4096).unwrap();
    h.volume.write(&[2; 8192], MIB + 100).unwrap();
    h.volume.write(&[3], 5 * MIB + 7).unwrap();
    h.volume.write_zeroes(4 * MIB, MIB / 2).unwrap();
    h.volume.discard(size - 65536, 65536).unwrap();

    let got = map(&nbdinfo(&["--map=fss:preserved", "--json", &h.uri("snap")]));
    let want = vec![
        (0, 3 * 4096, 0),
        (3 * 4096, 4096, 1),
        (4 * 4096, MIB - 4 * 4096, 0),
        (MIB, 3 * 4096, 1),
        (MIB + 3 * 4096, 3 * MIB - 3 * 4096, 0),
        (4 * MIB, MIB / 2, 1),
        (4 * MIB + MIB / 2, MIB / 2, 0),
        (5 * MIB, 4096, 1),
        (5 * MIB + 4096, 3 * MIB - 4096 - 65536, 0),
        (size - 65536, 65536, 1),
    ];
    assert_eq!(got, want);

    // The volume does not offer the context.
    let out = run(
        Command::new("nbdinfo").args(["--map=fss:preserved", &h.uri("default")]),
        Duration::from_secs(60),
    );
    assert!(!out.status.success());
}

#[test]
fn qemu_io_patterns_on_the_volume_and_the_snapshot() {
    let h = Harness::new(8 * MIB);
    let vol = h.uri("default");
    qemu_io_ok(
        &vol,
        false,
        &[
            "write -P 0xab 0 1M",
            "write -P 0x11 1M 1M",
            "write -z 1M 512k",
            "discard 2M 1M",
            "flush",
            "write -f -P 0xcd 3M 64k",
            "write -P 0x77 5000 3000",
            "read -P 0xab 0 5000",
            "read -P 0x77 5000 3000",
            "read -P 0xab 8000 1040576",
            "read -P 0 1M 512k",
            "read -P 0x11 1536k 512k",
            "read -P 0xcd 3M 64k",
        ],
    );
    // What the engine holds agrees with what the client wrote.
    let b = h.volume_bytes();
    assert!(b[..5000].iter().all(|&x| x == 0xab));
    assert!(b[5000..8000].iter().all(|&x| x == 0x77));
    assert!(b[MIB as usize..(MIB + MIB / 2) as usize]
        .iter()
        .all(|&x| x == 0));
    assert!(b[3 * MIB as usize..(3 * MIB + 65536) as usize]
        .iter()
        .all(|&x| x == 0xcd));

    h.snapshot("snap");
    qemu_io_ok(&vol, false, &["write -P 0xee 0 4M", "flush"]);
    let snap = h.uri("snap");
    // The snapshot still reads what the volume held when it was taken.
    qemu_io_ok(
        &snap,
        true,
        &[
            "read -P 0xab 0 5000",
            "read -P 0x77 5000 3000",
            "read -P 0 1M 512k",
            "read -P 0x11 1536k 512k",
            "read -P 0xcd 3M 64k",
        ],
    );
    qemu_io_ok(&vol, true, &["read -P 0xee 0 4M"]);

    // Writing to the snapshot fails: qemu cannot even open it read-write ...
    let out = qemu_io(&snap, false, &["write -P 1 0 4k"]);
    assert!(!out.status.success(), "a write to a snapshot succeeded");
    // ... and nothing changed.
    qemu_io_ok(&snap, true, &["read -P 0xab 0 4k"]);
}

#[test]
fn nbdcopy_of_a_snapshot_equals_the_volume_at_that_instant() {
    require("nbdcopy", "libnbd-bin");
    let size = 32 * MIB;
    let h = Harness::new(size);
    let mut rng = Rng::new(42);
    // Random data in scattered regions, holes elsewhere.
    for i in 0..24u64 {
        let mut b = vec![0u8; (4096 * (1 + rng.below(64))) as usize];
        rng.fill(&mut b);
        let off = i * MIB + rng.below(MIB / 4096 / 2) * 4096;
        h.volume.write(&b, off).unwrap();
    }
    let expected = h.volume_bytes();
    h.snapshot("snap");
    // Overwrite a lot of it afterwards.
    for _ in 0..200 {
        let mut b = vec![0u8; 4096 * (1 + rng.below(16)) as usize];
        rng.fill(&mut b);
        let off = rng.below((size - b.len() as u64) / 512) * 512;
        h.volume.write(&b, off).unwrap();
    }
    h.volume.discard(0, MIB).unwrap();

    let out = h.path("snap.img");
    // nbdcopy uses several connections at once here: the export offers multi-conn.
    run_ok(Command::new("nbdcopy").args([&h.uri("snap"), out.to_str().unwrap()]));
    let got = common::file_bytes(&out);
    assert_eq!(got.len(), expected.len());
    assert!(
        got == expected,
        "nbdcopy of the snapshot differs: digest {:#x} != {:#x}",
        digest(&got),
        digest(&expected)
    );

    // And the other way: a file copied onto the volume lands byte for byte.
    let mut src = vec![0u8; size as usize];
    rng.fill(&mut src[..(8 * MIB) as usize]);
    src[(20 * MIB) as usize..(21 * MIB) as usize].fill(0x3c);
    let src_path = h.path("src.img");
    std::fs::write(&src_path, &src).unwrap();
    run_ok(Command::new("nbdcopy").args([src_path.to_str().unwrap(), &h.uri("default")]));
    assert!(h.volume_bytes() == src, "nbdcopy onto the volume differs");
    // The snapshot is unaffected by all that.
    let mut again = vec![0u8; size as usize];
    h.catalog_snapshot("snap").read(&mut again, 0).unwrap();
    assert!(again == expected);
}

fn digest(b: &[u8]) -> u64 {
    // FNV-1a, enough to tell two images apart in a message.
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
    })
}

trait SnapshotByName {
    fn catalog_snapshot(&self, name: &str) -> fss_core::Snapshot;
}

impl SnapshotByName for Harness {
    fn catalog_snapshot(&self, name: &str) -> fss_core::Snapshot {
        self.volume.snapshot(name).unwrap()
    }
}

#[test]
fn tcp_on_loopback_serves_the_same_exports() {
    use fss_core::device::MemDevice;
    use fss_core::export::Export;
    use fss_core::Volume;
    use fss_nbd::{Server, ServerOptions, StaticCatalog};
    use std::sync::Arc;

    let catalog = Arc::new(StaticCatalog::new());
    let vol = Volume::new("default", Arc::new(MemDevice::new(MIB)));
    vol.write(&[0x61; 4096], 0).unwrap();
    catalog.insert(Export::Volume(vol));
    let server = Server::new(catalog, ServerOptions::default());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let s = server.clone();
    let t = std::thread::spawn(move || s.serve_tcp(listener));
    let uri = format!("nbd://127.0.0.1:{port}/default");
    let v = nbdinfo(&["--json", "--no-content", &uri]);
    assert_eq!(v["exports"][0]["export-size"], MIB);
    qemu_io_ok(
        &uri,
        false,
        &[
            "read -P 0x61 0 4k",
            "write -P 0x62 4k 4k",
            "read -P 0x62 4k 4k",
        ],
    );
    let stop = server.shutdown_handle();
    stop.shutdown();
    t.join().unwrap().unwrap();
    assert!(server.wait_idle(Duration::from_secs(10)));
}
