//! Repository backups end to end through the `fss` binary against a real daemon, on a
//! `file://` repository: full then incremental, restores equal to the snapshots, list, verify,
//! prune, a wrong key and a damaged pack.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::{checksum, fails, sha256, Daemon};

const MIB: u64 = 1 << 20;

#[test]
fn repository_backups_restore_to_their_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("state"));
    let url = format!("file://{}/repo", tmp.path().display());
    let key = tmp.path().join("key");
    d.ok(&["repo", "init", &url, "--encrypt", key.to_str().unwrap()]);
    let k = ["--key", key.to_str().unwrap()];
    d.ok(&["volume", "create", "v", "--size", "64M"]);
    d.write_volume("v", 0, 8 << 20, 0x11);
    d.ok(&["snapshot", "create", "v", "s1"]);
    let out = d.ok(&["backup", "s1", &url, k[0], k[1]]);
    assert!(out.contains(": full,"), "{out}");
    d.write_volume("v", 20 * MIB, 4096, 0x22);
    d.write_volume("v", 3 * MIB + 5, 100, 0x33);
    d.ok(&["snapshot", "create", "v", "s2"]);
    let out = d.ok(&["backup", "s2", &url, k[0], k[1], "--connections", "2"]);
    assert!(out.contains("incremental since 's1'"), "{out}");
    assert!(
        out.contains(", 2 MiB new,"),
        "two chunks overlap the change: {out}"
    );

    let list = d.json(&["repo", "list", &url, k[0], k[1]]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["snapshot"], "s1");
    // Eight chunks of 0x11 are one chunk stored once.
    assert_eq!(list[0]["new_bytes"], MIB);
    assert_eq!(list[1]["new_bytes"], 2 * MIB);
    for (i, snap) in ["s1", "s2"].iter().enumerate() {
        let img = tmp.path().join(format!("{snap}.img"));
        let id = list[i]["id"].as_str().unwrap();
        // Into a new file, then onto an existing image of the size (every byte is written,
        // zeroes too).
        for what in ["a new file", "an existing image"] {
            d.ok(&[
                "restore",
                &url,
                "--backup",
                id,
                img.to_str().unwrap(),
                k[0],
                k[1],
            ]);
            assert_eq!(sha256(&img), checksum(&d, snap), "{snap} into {what}");
            if what == "a new file" {
                // The new file stays sparse: only the 8 to 10 MiB of data are allocated.
                use std::os::unix::fs::MetadataExt;
                let allocated = std::fs::metadata(&img).unwrap().blocks() * 512;
                assert!(allocated < 16 << 20, "{snap}: {allocated} bytes allocated");
            }
            std::fs::write(&img, vec![0xee; 64 << 20]).unwrap();
        }
    }
    // Onto an fss volume by name, through the daemon's restore (and its scratch files gone
    // after); refused while the volume has a snapshot, with nothing left behind.
    d.ok(&["volume", "create", "w", "--size", "64M"]);
    d.write_volume("w", 0, 64 << 20, 0xee);
    let restores = tmp.path().join("state").join("restores");
    for (i, snap) in ["s2", "s1"].iter().enumerate() {
        let id = list[1 - i]["id"].as_str().unwrap();
        let out = d.ok(&["restore", &url, "--backup", id, "w", k[0], k[1]]);
        assert!(out.contains("onto volume 'w'"), "{out}");
        assert_eq!(
            checksum(&d, "w"),
            checksum(&d, snap),
            "{snap} onto volume w"
        );
        assert_eq!(std::fs::read_dir(&restores).unwrap().count(), 0);
    }
    // The volume's image itself, held by the daemon, is refused as a target file.
    let held = tmp.path().join("state").join("volumes").join("w.img");
    assert!(held.exists(), "{}", held.display());
    let id = list[0]["id"].as_str().unwrap();
    let err = fails(
        &d,
        &[
            "restore",
            &url,
            "--backup",
            id,
            held.to_str().unwrap(),
            k[0],
            k[1],
        ],
    );
    assert!(err.contains("is in use by another process"), "{err}");
    d.ok(&["snapshot", "create", "w", "keep"]);
    let id = list[1]["id"].as_str().unwrap();
    let err = fails(&d, &["restore", &url, "--backup", id, "w", k[0], k[1]]);
    assert!(err.contains("has snapshots (keep)"), "{err}");
    assert_eq!(std::fs::read_dir(&restores).unwrap().count(), 0);
    assert_eq!(
        checksum(&d, "w"),
        checksum(&d, "s1"),
        "a refused restore wrote nothing"
    );
    d.ok(&["repo", "verify", &url, "--read-data", k[0], k[1]]);

    let other = tmp.path().join("other");
    d.ok(&[
        "repo",
        "init",
        &format!("{url}2"),
        "--encrypt",
        other.to_str().unwrap(),
    ]);
    let err = fails(
        &d,
        &["repo", "list", &url, "--key", other.to_str().unwrap()],
    );
    assert!(
        err.contains("the key does not open this repository"),
        "{err}"
    );

    let out = d.ok(&[
        "repo",
        "prune",
        &url,
        "--keep-last",
        "1",
        "--gc-grace",
        "0",
        k[0],
        k[1],
    ]);
    assert!(out.contains("forgot backup"), "{out}");
    assert_eq!(
        d.json(&["repo", "list", &url, k[0], k[1]])
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Damage the newest pack: verify finds it, a restore into a new file fails and leaves none.
    let packs = tmp.path().join("repo/packs");
    let pack = std::fs::read_dir(&packs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap())
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[40] ^= 1;
    std::fs::write(&pack, bytes).unwrap();
    let err = fails(&d, &["repo", "verify", &url, "--read-data", k[0], k[1]]);
    assert!(err.contains("problem"), "{err}");
    let img = tmp.path().join("damaged.img");
    let id = list[1]["id"].as_str().unwrap();
    let err = fails(
        &d,
        &[
            "restore",
            &url,
            "--backup",
            id,
            img.to_str().unwrap(),
            k[0],
            k[1],
        ],
    );
    assert!(
        err.contains(&format!("backup {id}")) && err.contains("packs/"),
        "{err}"
    );
    assert!(!img.exists() && !tmp.path().join("damaged.img.partial").exists());
}
