//! What fss makes is readable by its owner only, whatever the umask, and fss never creates or
//! writes a file through a link someone planted at the name.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::Daemon;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn store_of(d: &Daemon, snap: &str) -> String {
    d.json(&["snapshot", "info", snap])["store"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn files_and_directories_are_private_whatever_the_umask() {
    // The daemon and the CLI inherit this process's umask: the most permissive one.
    rustix::process::umask(rustix::fs::Mode::empty());
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("s");
    // As an older release left them: 0755.
    std::fs::DirBuilder::new()
        .mode(0o755)
        .recursive(true)
        .create(state.join("volumes"))
        .unwrap();
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(state.join("stores"))
        .unwrap();
    let out = tmp.path().join("out");
    std::fs::DirBuilder::new().mode(0o777).create(&out).unwrap();
    let d = Daemon::start(&state);
    d.ok(&["volume", "create", "v2", "--size", "4M"]);
    d.ok(&["snapshot", "create", "default", "s1"]);
    d.ok(&[
        "snapshot",
        "create",
        "v2",
        "s2",
        "--store",
        out.to_str().unwrap(),
    ]);
    let backup = out.join("b.fss");
    let restored = out.join("r.img");
    d.ok(&["backup", "s2", backup.to_str().unwrap()]);
    d.ok(&[
        "restore",
        backup.to_str().unwrap(),
        restored.to_str().unwrap(),
    ]);

    for dir in [state.clone(), state.join("volumes"), state.join("stores")] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    let s1 = store_of(&d, "s1");
    let s2 = store_of(&d, "s2");
    let files = [
        state.join("state.json"),
        state.join("lock"),
        state.join("heartbeat"),
        state.join("control.sock"),
        state.join("nbd.sock"),
        state.join("volumes/default.img"),
        state.join("volumes/v2.img"),
        s1.into(),
        s2.into(),
        backup,
        restored,
    ];
    for f in files {
        assert_eq!(mode(&f) & 0o777, 0o600, "{}", f.display());
    }
}

#[test]
fn a_planted_link_is_never_written_through() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s"));
    // A world-writable directory, as /tmp, where another user planted links.
    let shared = tmp.path().join("shared");
    std::fs::DirBuilder::new()
        .mode(0o1777)
        .create(&shared)
        .unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let precious = tmp.path().join("precious");
    std::fs::write(&precious, b"not yours").unwrap();
    let empty = tmp.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let nowhere = tmp.path().join("nowhere");
    let link = |name: &str, to: &Path| std::os::unix::fs::symlink(to, shared.join(name)).unwrap();
    link("default.s1.fss", &precious);
    link("default.s2.fss", &nowhere);
    link("named-empty.fss", &empty);
    link("named-dangling.fss", &nowhere);
    link("img.img", &nowhere);
    link("b.fss.partial", &nowhere);
    let at = |name: &str| shared.join(name).to_str().unwrap().to_string();

    // A store directory: the taken names are skipped, links included.
    for snap in ["s1", "s2"] {
        d.ok(&["snapshot", "create", "default", snap, "--store", &at("")]);
        let store = store_of(&d, snap);
        let m = std::fs::symlink_metadata(&store).unwrap();
        assert!(
            m.file_type().is_file(),
            "{snap}: store {store} is not a plain file"
        );
        assert!(!store.ends_with(&format!("default.{snap}.fss")), "{store}");
    }
    // A store file named through a link is refused, whatever the link points to.
    for name in ["named-empty.fss", "named-dangling.fss"] {
        let r = d.fss(&["snapshot", "create", "default", "x", "--store", &at(name)]);
        assert_eq!(r.status, 1, "{name}: {}{}", r.stdout, r.stderr);
        assert!(r.stderr.contains("symbolic link"), "{name}: {}", r.stderr);
    }
    // A new image at a link's name is refused.
    let r = d.fss(&[
        "volume",
        "create",
        "img",
        "--size",
        "1M",
        "--image",
        &at("img.img"),
    ]);
    assert_eq!(r.status, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);
    // A backup replaces a planted .partial link instead of writing through it.
    d.ok(&["backup", "s1", &at("b.fss")]);
    assert!(std::fs::symlink_metadata(at("b.fss"))
        .unwrap()
        .file_type()
        .is_file());

    d.ok(&["snapshot", "delete", "s2"]);
    d.ok(&["snapshot", "delete", "s1"]);
    assert_eq!(std::fs::read(&precious).unwrap(), b"not yours");
    assert_eq!(std::fs::read(&empty).unwrap(), b"");
    assert!(!nowhere.exists(), "a dangling link's target was created");
    for name in [
        "default.s1.fss",
        "default.s2.fss",
        "named-empty.fss",
        "img.img",
    ] {
        let m = std::fs::symlink_metadata(shared.join(name)).unwrap();
        assert!(m.file_type().is_symlink(), "{name} was replaced");
    }
}

#[test]
fn a_missing_store_directory_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s"));
    let missing = format!("{}/", tmp.path().join("missing-dir").display());
    let r = d.fss(&["snapshot", "create", "default", "x", "--store", &missing]);
    assert_eq!(r.status, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("store directory") && r.stderr.contains("does not exist"),
        "{}",
        r.stderr
    );
}
