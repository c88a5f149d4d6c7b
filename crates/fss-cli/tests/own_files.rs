//! fss refuses to serve or store through itself: its own files, its exports (by device and
//! inode, through links and loop devices), and file systems mounted from its volumes. Each of
//! these used to be accepted, and the daemon then hung on its own FUSE connection.
//!
//! Needs root, /dev/fuse, loop devices and mkfs.ext4: CI has them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::loopdev::{run, s, Cleanup};
use common::Daemon;
use std::path::Path;

fn refused(d: &Daemon, args: &[&str], what: &str) {
    let r = d.fss(args);
    assert_eq!(
        r.status, 1,
        "fss {args:?} was accepted: {}{}",
        r.stdout, r.stderr
    );
    assert!(
        r.stderr.contains(&format!("cannot be {what}")),
        "fss {args:?}: {}",
        r.stderr
    );
}

fn refused_volume(d: &Daemon, path: &Path) {
    refused(d, &["volume", "add", "x", "--device", s(path)], "a volume");
}

fn refused_image(d: &Daemon, path: &Path) {
    refused(
        d,
        &["volume", "create", "x", "--size", "1M", "--image", s(path)],
        "a volume",
    );
    assert!(!path.exists(), "{} was created", path.display());
}

#[test]
fn own_files_exports_and_file_systems_on_volumes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let mut d = Daemon::start(&state);
    d.ok(&["snapshot", "create", "default", "s0"]);
    let store = d.json(&["snapshot", "info", "s0"])["store"]
        .as_str()
        .unwrap()
        .to_string();

    // The daemon's own files, and its FUSE file, directly and through a link.
    for p in [
        state.join("state.json"),
        state.join("lock"),
        state.join("heartbeat"),
        state.join("fuse-session.json"),
        state.join("fuse-session.table.json"),
        state.join("serving.pid"),
        state.join("dev/default"),
        state.join("dev/s0"),
        store.clone().into(),
    ] {
        refused_volume(&d, &p);
    }
    let link = tmp.path().join("innocent.img");
    std::os::unix::fs::symlink(state.join("dev/default"), &link).unwrap();
    refused_volume(&d, &link);
    let in_stores = state.join("stores/new.img");
    refused_image(&d, &in_stores);

    // A loop device over the FUSE file, and a file system on it.
    let mut c = Cleanup::default();
    let dev = c.attach(&state.join("dev/default"), false);
    refused_volume(&d, Path::new(&dev));
    run("mkfs.ext4", &["-q", &dev]);
    let mnt = tmp.path().join("mnt");
    c.mount(&dev, &mnt, "rw");
    let on_fs = mnt.join("image.img");
    std::fs::write(&on_fs, vec![0u8; 1 << 20]).unwrap();
    refused_volume(&d, &on_fs);
    refused_image(&d, &mnt.join("new.img"));
    for store in [
        format!("{}/", mnt.display()),
        format!("{}/s.fss", mnt.display()),
    ] {
        refused(
            &d,
            &["snapshot", "create", "default", "s1", "--store", &store],
            "a store",
        );
    }

    // Images in the daemon's volumes directory, and stores elsewhere, stay allowed.
    let other = state.join("volumes/other.img");
    std::fs::write(&other, vec![0u8; 1 << 20]).unwrap();
    d.ok(&["volume", "add", "other", "--device", s(&other)]);
    d.ok(&[
        "snapshot",
        "create",
        "other",
        "s2",
        "--store",
        s(tmp.path()),
    ]);
    assert_eq!(d.json(&["volume", "list"]).as_array().unwrap().len(), 2);

    // A freeze lease names only a file system on an fss volume: the daemon thaws it when the
    // lease expires, so an unrelated file system frozen by hand is never touched.
    let plain = tmp.path().join("plain.img");
    std::fs::File::create(&plain)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let plain_dev = c.attach(&plain, false);
    run("mkfs.ext4", &["-q", &plain_dev]);
    let plain_mnt = tmp.path().join("plain-mnt");
    c.mount(&plain_dev, &plain_mnt, "rw");
    let mut client = fssd::client::Client::connect(&state).unwrap();
    let lease = |c: &mut fssd::client::Client, mp: &Path| {
        c.call(fssd::protocol::Request::LeaseOpen {
            mount_point: mp.display().to_string(),
        })
    };
    let e = lease(&mut client, &plain_mnt).unwrap_err();
    assert!(
        e.message.contains("not a file system on an fss volume"),
        "{}",
        e.message
    );
    let ok = lease(&mut client, &mnt).unwrap();
    let id = ok["lease"].as_u64().unwrap();
    client
        .call(fssd::protocol::Request::LeaseClose { lease: id })
        .unwrap();

    c.release_all();
    assert_eq!(d.stop(), 0, "the daemon did not stop cleanly:\n{}", d.log());
}
