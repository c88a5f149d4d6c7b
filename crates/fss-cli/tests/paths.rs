//! Relative paths on the command line mean the caller's working directory, not the daemon's
//! (which is elsewhere and may change between runs).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::{Daemon, Run, FSS, FSSCONFIG};
use std::path::Path;
use std::process::Command;

/// Run a binary against `d` from the working directory `cwd`.
fn run_in(bin: &str, d: &Daemon, cwd: &Path, args: &[&str]) -> Run {
    Command::new(bin)
        .args(args)
        .current_dir(cwd)
        .env("FSS_STATE_DIR", &d.dir)
        .output()
        .expect("run the CLI")
        .into()
}

fn ok_in(d: &Daemon, cwd: &Path, args: &[&str]) -> String {
    let r = run_in(FSS, d, cwd, args);
    assert_eq!(r.status, 0, "fss {args:?}: {}{}", r.stdout, r.stderr);
    r.stdout
}

#[test]
fn relative_paths_resolve_in_the_callers_directory_and_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let caller = tmp.path().join("caller");
    std::fs::create_dir_all(caller.join("stores")).unwrap();
    let mut d = Daemon::start(&tmp.path().join("s"));

    // A new image, an existing image, a store directory and a store file, all relative.
    ok_in(
        &d,
        &caller,
        &[
            "volume",
            "create",
            "rel1",
            "--size",
            "4M",
            "--image",
            "relnew.img",
        ],
    );
    assert!(
        caller.join("relnew.img").is_file(),
        "image not in the caller's directory"
    );
    std::fs::write(caller.join("rel.img"), vec![7u8; 1 << 20]).unwrap();
    ok_in(
        &d,
        &caller,
        &["volume", "add", "rel2", "--device", "rel.img"],
    );
    ok_in(
        &d,
        &caller,
        &["snapshot", "create", "rel1", "s1", "--store", "stores/"],
    );
    ok_in(
        &d,
        &caller,
        &["snapshot", "create", "rel2", "s2", "--store", "./s2.fss"],
    );
    assert!(
        caller.join("s2.fss").is_file(),
        "store file not in the caller's directory"
    );
    let in_dir = std::fs::read_dir(caller.join("stores")).unwrap().count();
    assert_eq!(
        in_dir, 1,
        "one store file inside the relative store directory"
    );

    // fssconfig's backup argument too.
    let r = run_in(
        FSSCONFIG,
        &d,
        &caller,
        &["-c", "fss0", "rel2", "fss0.store"],
    );
    assert_eq!(r.status, 0, "fssconfig: {}{}", r.stdout, r.stderr);
    assert!(
        caller.join("fss0.store").is_file(),
        "fssconfig store not in the caller's directory"
    );

    // Recorded as absolute paths, so a daemon started elsewhere finds them all again.
    let vols: serde_json::Value =
        serde_json::from_str(&ok_in(&d, &caller, &["volume", "list", "--json"])).unwrap();
    for v in vols.as_array().unwrap() {
        let p = v["path"].as_str().unwrap();
        assert!(p.starts_with('/'), "volume path recorded relative: {p}");
    }
    d.stop_and_start();
    let snaps: serde_json::Value =
        serde_json::from_str(&ok_in(&d, tmp.path(), &["snapshot", "list", "--json"])).unwrap();
    let snaps = snaps.as_array().unwrap();
    assert_eq!(snaps.len(), 3, "{snaps:?}");
    for s in snaps {
        assert_eq!(s["state"], "valid", "{s}");
        assert!(s["store"].as_str().unwrap().starts_with('/'), "{s}");
    }
    let vols: serde_json::Value =
        serde_json::from_str(&ok_in(&d, tmp.path(), &["volume", "list", "--json"])).unwrap();
    for v in vols.as_array().unwrap() {
        assert_eq!(v["state"], "online", "{v}");
    }
}
