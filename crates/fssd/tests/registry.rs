//! The registry driven in-process, through the control socket's dispatch, on a temporary
//! state directory with image files: no root, no FUSE, no NBD. Every request kind and its
//! error cases.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use fss_core::export::{Catalog, Export};
use fssd::client::Client;
use fssd::config::{TestHooks, VolumeIo};
use fssd::control::{self, Leases};
use fssd::paths::Paths;
use fssd::protocol::{
    BackupKind, Request, SnapshotHealth, SnapshotInfo, SnapshotKind, SnapshotSpec, StatusInfo,
    StorePolicy, VolumeInfo, VolumeKind, VolumeStatus,
};
use fssd::registry::Registry;
use fssd::{DaemonError, ErrorKind};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

const MIB: u64 = 1 << 20;

/// A registry on a temporary directory, its control socket served on a thread.
struct Daemon {
    tmp: Option<tempfile::TempDir>,
    paths: Paths,
    registry: Option<Arc<Registry>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Daemon {
    fn start() -> Daemon {
        Self::start_with(TestHooks::default())
    }

    fn start_with(hooks: TestHooks) -> Daemon {
        let tmp = tempfile::tempdir().unwrap();
        Self::start_in(tmp, hooks)
    }

    fn start_in(tmp: tempfile::TempDir, hooks: TestHooks) -> Daemon {
        let paths = Paths::new(tmp.path().join("state"), None, None);
        std::fs::create_dir_all(&paths.state_dir).unwrap();
        let registry = Arc::new(Registry::open(paths.clone(), VolumeIo::Buffered, hooks).unwrap());
        let _ = std::fs::remove_file(paths.control_socket());
        let listener = UnixListener::bind(paths.control_socket()).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (reg, flag) = (Arc::clone(&registry), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            control::serve(&listener, &reg, &Arc::new(Leases::default()), &flag);
        });
        Daemon {
            tmp: Some(tmp),
            paths,
            registry: Some(registry),
            stop,
            thread: Some(thread),
        }
    }

    /// Stop cleanly (as `fss serve` does) and start again on the same directory.
    fn restart(mut self) -> Daemon {
        self.halt();
        let tmp = self.tmp.take().unwrap();
        Self::start_in(tmp, TestHooks::default())
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        if let Some(r) = self.registry.take() {
            r.shutdown();
        }
    }

    fn reg(&self) -> &Registry {
        self.registry.as_ref().unwrap()
    }

    fn dir(&self) -> &Path {
        self.tmp.as_ref().unwrap().path()
    }

    fn client(&self) -> Client {
        Client::connect(&self.paths.state_dir).unwrap()
    }

    fn call(&self, req: Request) -> Result<Value, DaemonError> {
        self.client().call(req)
    }

    fn ok<T: serde::de::DeserializeOwned>(&self, req: Request) -> T {
        let what = format!("{req:?}");
        let v = self.call(req).unwrap_or_else(|e| panic!("{what}: {e}"));
        serde_json::from_value(v).unwrap()
    }

    /// The kind of the error `req` must fail with.
    fn err(&self, req: Request) -> DaemonError {
        let what = format!("{req:?}");
        match self.call(req) {
            Ok(v) => panic!("{what} succeeded: {v}"),
            Err(e) => e,
        }
    }

    fn volume(&self, name: &str, size: u64) -> VolumeInfo {
        self.ok(Request::VolumeCreate {
            name: name.into(),
            size,
            image: None,
        })
    }

    fn snapshot(&self, volume: &str, name: &str, transient: bool) -> SnapshotInfo {
        self.ok(Request::SnapshotCreate(spec(volume, name, transient)))
    }

    fn write(&self, name: &str, offset: u64, byte: u8) {
        match self.reg().lookup(name) {
            Some(Export::Volume(v)) => v.write(&vec![byte; 4096], offset).unwrap(),
            _ => panic!("no volume {name}"),
        }
    }

    fn checksum(&self, name: &str) -> String {
        self.ok(Request::Checksum { name: name.into() })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.halt();
    }
}

fn spec(volume: &str, name: &str, transient: bool) -> SnapshotSpec {
    SnapshotSpec {
        volume: volume.into(),
        name: name.into(),
        transient,
        ..SnapshotSpec::default()
    }
}

fn assert_kind(e: &DaemonError, kind: ErrorKind, words: &str) {
    assert_eq!(e.kind, kind, "{e}");
    assert!(e.message.contains(words), "'{e}' does not say '{words}'");
}

#[test]
fn status_of_a_fresh_directory_has_the_default_volume() {
    let d = Daemon::start();
    let s: StatusInfo = d.ok(Request::Status);
    assert_eq!((s.volumes, s.snapshots), (1, 0));
    assert!(!s.recovered_from_crash);
    assert_eq!(s.state_dir, d.paths.state_dir);
    let list: Vec<VolumeInfo> = d.ok(Request::VolumeList);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].name, "default");
    assert_eq!(list[0].size, 1 << 30);
    assert_eq!(list[0].kind, VolumeKind::CreatedImage);
    assert_eq!(list[0].state, VolumeStatus::Online);
}

#[test]
fn volume_create_add_list_remove_and_their_errors() {
    let d = Daemon::start();
    let v = d.volume("v1", 8 * MIB);
    assert_eq!((v.size, v.snapshots, v.open), (8 * MIB, 0, 0));
    assert!(v.path.ends_with("volumes/v1.img"));
    let create = |name: &str, size: u64, image: Option<PathBuf>| Request::VolumeCreate {
        name: name.into(),
        size,
        image,
    };
    assert_kind(&d.err(create("v1", MIB, None)), ErrorKind::Exists, "taken");
    assert_kind(
        &d.err(create("bad/name", MIB, None)),
        ErrorKind::InvalidArgument,
        "",
    );
    assert_kind(
        &d.err(create("v2", 0, None)),
        ErrorKind::InvalidArgument,
        "size above 0",
    );
    // Relative paths mean nothing to the daemon: refused, whatever carries them.
    for req in [
        create("v2", MIB, Some(PathBuf::from("rel.img"))),
        Request::VolumeAdd {
            name: "v2".into(),
            device: PathBuf::from("./rel.img"),
        },
    ] {
        assert_kind(&d.err(req), ErrorKind::InvalidArgument, "is relative");
    }
    // Sizes no CLI parse produces, straight on the socket: a clear refusal, no file left.
    for size in [u64::MAX, 1 << 63, (256 << 40) + 1] {
        assert_kind(
            &d.err(create("v2", size, None)),
            ErrorKind::InvalidArgument,
            "too large",
        );
        assert!(!d.dir().join("state/volumes/v2.img").exists());
    }
    let taken = d.dir().join("taken.img");
    std::fs::write(&taken, b"x").unwrap();
    assert_kind(
        &d.err(create("v2", MIB, Some(taken))),
        ErrorKind::Exists,
        "already exists",
    );

    let image = d.dir().join("given.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(4 * MIB)
        .unwrap();
    let add = |name: &str, device: &Path| Request::VolumeAdd {
        name: name.into(),
        device: device.to_path_buf(),
    };
    let added: VolumeInfo = d.ok(add("given", &image));
    assert_eq!((added.kind, added.size), (VolumeKind::Image, 4 * MIB));
    assert_kind(
        &d.err(add("again", &image)),
        ErrorKind::Exists,
        "already served",
    );
    assert_kind(&d.err(add("given", &image)), ErrorKind::Exists, "taken");
    assert_kind(
        &d.err(add("x", &d.dir().join("missing.img"))),
        ErrorKind::Io,
        "check the path",
    );
    assert_kind(
        &d.err(add("x", d.dir())),
        ErrorKind::InvalidArgument,
        "neither",
    );
    let empty = d.dir().join("empty.img");
    std::fs::File::create(&empty).unwrap();
    assert_kind(
        &d.err(add("x", &empty)),
        ErrorKind::InvalidArgument,
        "empty",
    );

    let names: Vec<String> = d
        .ok::<Vec<VolumeInfo>>(Request::VolumeList)
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, ["default", "v1", "given"]);

    d.snapshot("v1", "s1", false);
    let remove = |name: &str| Request::VolumeRemove { name: name.into() };
    assert_kind(&d.err(remove("v1")), ErrorKind::Busy, "has snapshots (s1)");
    assert_kind(
        &d.err(remove("nope")),
        ErrorKind::NotFound,
        "no volume named 'nope'",
    );
    assert_eq!(d.call(remove("given")).unwrap(), Value::Null);
    assert!(image.exists(), "the image is kept");
    let s: StatusInfo = d.ok(Request::Status);
    assert_eq!((s.volumes, s.snapshots), (2, 1));
}

#[test]
fn snapshot_create_list_info_verify_delete_and_their_errors() {
    let d = Daemon::start();
    d.volume("v", 8 * MIB);
    let s = d.snapshot("v", "p1", false);
    assert_eq!(
        (s.kind, s.state, s.on_store_error),
        (
            SnapshotKind::Persistent,
            SnapshotHealth::Valid,
            StorePolicy::Invalidate
        )
    );
    assert_eq!(s.size, 8 * MIB);
    let mut t = spec("v", "t1", true);
    t.on_store_error = Some("fail-write".into());
    let t: SnapshotInfo = d.ok(Request::SnapshotCreate(t));
    assert_eq!(
        (t.kind, t.on_store_error),
        (SnapshotKind::Transient, StorePolicy::FailWrite)
    );

    let create = |s: SnapshotSpec| Request::SnapshotCreate(s);
    assert_kind(
        &d.err(create(spec("nope", "x", false))),
        ErrorKind::NotFound,
        "no volume named 'nope'",
    );
    assert_kind(
        &d.err(create(spec("v", "p1", false))),
        ErrorKind::Exists,
        "taken",
    );
    assert_kind(
        &d.err(create(spec("v", "v", false))),
        ErrorKind::Exists,
        "taken",
    );
    let mut bad = spec("v", "x", false);
    bad.on_store_error = Some("shrug".into());
    assert_kind(
        &d.err(create(bad)),
        ErrorKind::InvalidArgument,
        "unknown --on-store-error 'shrug'",
    );
    let mut unlinked = spec("v", "x", false);
    unlinked.unlink_store = true;
    assert_kind(
        &d.err(create(unlinked)),
        ErrorKind::InvalidArgument,
        "add --transient",
    );

    let list: Vec<SnapshotInfo> = d.ok(Request::SnapshotList);
    let names: Vec<&str> = list.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["p1", "t1"]);
    let info: SnapshotInfo = d.ok(Request::SnapshotInfo { name: "p1".into() });
    assert_eq!(info, list[0]);
    let info = |name: &str| Request::SnapshotInfo { name: name.into() };
    assert_kind(
        &d.err(info("nope")),
        ErrorKind::NotFound,
        "no snapshot named 'nope'",
    );

    d.write("v", 0, 7);
    let verified: fssd::protocol::VerifyInfo = d.ok(Request::SnapshotVerify { name: "p1".into() });
    assert!(verified.damaged.is_empty());
    assert!(verified.blocks_checked > 0, "{verified:?}");
    assert_kind(
        &d.err(Request::SnapshotVerify {
            name: "nope".into(),
        }),
        ErrorKind::NotFound,
        "nope",
    );

    let delete = |name: &str| Request::SnapshotDelete { name: name.into() };
    assert_kind(
        &d.err(delete("nope")),
        ErrorKind::NotFound,
        "no snapshot named 'nope'",
    );
    assert_eq!(d.call(delete("t1")).unwrap(), Value::Null);
    assert_kind(&d.err(info("t1")), ErrorKind::NotFound, "t1");
    let s: StatusInfo = d.ok(Request::Status);
    assert_eq!(s.snapshots, 1);
}

#[test]
fn group_snapshots_and_their_errors() {
    let d = Daemon::start();
    d.volume("a", 4 * MIB);
    d.volume("b", 4 * MIB);
    let group = |members: Vec<SnapshotSpec>| Request::SnapshotCreateGroup { members };
    let made: Vec<SnapshotInfo> = d.ok(group(vec![spec("a", "ga", false), spec("b", "gb", false)]));
    let names: Vec<(&str, &str)> = made
        .iter()
        .map(|s| (s.name.as_str(), s.volume.as_str()))
        .collect();
    assert_eq!(names, [("ga", "a"), ("gb", "b")]);
    assert_kind(
        &d.err(group(vec![])),
        ErrorKind::InvalidArgument,
        "at least one",
    );
    assert_kind(
        &d.err(group(vec![spec("a", "x1", false), spec("a", "x2", false)])),
        ErrorKind::InvalidArgument,
        "one snapshot per volume",
    );
    assert_kind(
        &d.err(group(vec![
            spec("a", "x1", false),
            spec("nope", "x2", false),
        ])),
        ErrorKind::NotFound,
        "nope",
    );
    assert_kind(
        &d.err(group(vec![spec("a", "ga", false)])),
        ErrorKind::Exists,
        "taken",
    );
    let s: StatusInfo = d.ok(Request::Status);
    assert_eq!(s.snapshots, 2, "a refused group makes nothing");
}

#[test]
fn checksum_and_diff_follow_writes() {
    let d = Daemon::start();
    d.volume("v", 4 * MIB);
    d.snapshot("v", "s1", false);
    assert_eq!(d.checksum("v"), d.checksum("s1"));
    d.write("v", MIB, 1);
    assert_ne!(d.checksum("v"), d.checksum("s1"));
    d.snapshot("v", "s2", false);
    d.write("v", 2 * MIB, 2);
    assert_kind(
        &d.err(Request::Checksum {
            name: "nope".into(),
        }),
        ErrorKind::NotFound,
        "nope",
    );

    let diff = |snapshot: &str, until: Option<&str>| Request::Diff {
        snapshot: snapshot.into(),
        until: until.map(str::to_string),
    };
    let extents = |v: Vec<fssd::protocol::DiffExtent>| -> Vec<(u64, u64)> {
        v.into_iter().map(|e| (e.offset, e.length)).collect()
    };
    assert_eq!(extents(d.ok(diff("s1", Some("s2")))), [(MIB, 4096)]);
    assert_eq!(extents(d.ok(diff("s2", None))), [(2 * MIB, 4096)]);
    assert_eq!(
        extents(d.ok(diff("s1", None))),
        [(MIB, 4096), (2 * MIB, 4096)]
    );
    assert_kind(
        &d.err(diff("s2", Some("s1"))),
        ErrorKind::InvalidArgument,
        "older",
    );
    assert_kind(
        &d.err(diff("s1", Some("s1"))),
        ErrorKind::InvalidArgument,
        "same snapshot",
    );
    assert_kind(&d.err(diff("nope", None)), ErrorKind::NotFound, "nope");
    d.snapshot("v", "t", true);
    assert_kind(
        &d.err(diff("s2", Some("t"))),
        ErrorKind::InvalidArgument,
        "separate chains",
    );
    d.volume("w", 4 * MIB);
    d.snapshot("w", "w1", false);
    assert_kind(
        &d.err(diff("s1", Some("w1"))),
        ErrorKind::InvalidArgument,
        "of the same volume",
    );
}

#[test]
fn leases_open_close_and_expire_snapshots() {
    let d = Daemon::start();
    d.volume("v", 4 * MIB);
    let mut c = d.client();
    // Leases are only for file systems on fss volumes (the daemon thaws what they name): a
    // plain directory, or a missing one, is refused. The lease flows with a real frozen file
    // system are in fss-cli's tests/filesystems.rs.
    for mp in [d.dir().to_path_buf(), d.dir().join("missing")] {
        let e = c
            .call(Request::LeaseOpen {
                mount_point: mp.display().to_string(),
            })
            .unwrap_err();
        assert_kind(
            &e,
            ErrorKind::InvalidArgument,
            "not a file system on an fss volume",
        );
    }
    // A lease never opened (or expired) is refused where it is used.
    let lease = 12_345;
    let e = c.call(Request::LeaseClose { lease }).unwrap_err();
    assert_kind(&e, ErrorKind::NotFound, "expired after 10 s");
    let mut with_lease = spec("v", "s2", false);
    with_lease.lease = Some(lease);
    let e = c
        .call(Request::SnapshotCreate(with_lease.clone()))
        .unwrap_err();
    assert_kind(&e, ErrorKind::Busy, "lease expired");
    let e = c
        .call(Request::SnapshotCreateGroup {
            members: vec![with_lease],
        })
        .unwrap_err();
    assert_kind(&e, ErrorKind::Busy, "lease expired");
}

#[test]
fn malformed_lines_and_other_versions_are_invalid_requests() {
    let d = Daemon::start();
    let stream = UnixStream::connect(d.paths.control_socket()).unwrap();
    let mut out = stream.try_clone().unwrap();
    let mut lines = BufReader::new(stream).lines();
    let mut ask = |line: &str| -> Value {
        out.write_all(format!("{line}\n").as_bytes()).unwrap();
        serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap()
    };
    let r = ask(r#"{"v":1,"id":4,"op":"no-such-op"}"#);
    assert_eq!(
        (r["id"].as_u64(), r["ok"].as_bool()),
        (Some(4), Some(false))
    );
    assert_eq!(r["error"]["kind"], "invalid-request");
    let r = ask(r#"{"v":2,"id":5,"op":"status"}"#);
    assert_eq!(r["error"]["kind"], "invalid-request");
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("version 2"));
    let r = ask("not json");
    assert_eq!(
        (r["id"].as_u64(), r["error"]["kind"].as_str()),
        (Some(0), Some("invalid-request"))
    );
    let r = ask(r#"{"v":1,"id":6,"op":"status"}"#);
    assert_eq!((r["id"].as_u64(), r["ok"].as_bool()), (Some(6), Some(true)));
}

#[test]
fn backup_restore_rollback_and_their_errors() {
    let d = Daemon::start();
    d.volume("v", 4 * MIB);
    d.write("v", 0, 5);
    d.snapshot("v", "s1", false);
    let at_s1 = d.checksum("s1");
    d.write("v", MIB, 6);
    d.snapshot("v", "s2", false);

    let mut c = d.client();
    let mut full = Vec::new();
    let (start, done) = c
        .backup(
            Request::Backup {
                snapshot: "s1".into(),
                since: None,
                align: None,
            },
            &mut full,
            &mut |_, _| {},
        )
        .unwrap();
    let start: fssd::protocol::BackupStart = serde_json::from_value(start).unwrap();
    let done: fssd::protocol::BackupDone = serde_json::from_value(done).unwrap();
    assert_eq!(
        (start.kind, start.size, done.kind),
        (BackupKind::Full, 4 * MIB, BackupKind::Full)
    );
    assert_eq!(done.stream_bytes, full.len() as u64);
    let mut incr = Vec::new();
    let (start, _) = c
        .backup(
            Request::Backup {
                snapshot: "s2".into(),
                since: Some("s1".into()),
                align: None,
            },
            &mut incr,
            &mut |_, _| {},
        )
        .unwrap();
    assert_eq!(start["kind"], "incremental");
    let backup_err = |c: &mut Client, snapshot: &str, since: Option<&str>| {
        c.backup(
            Request::Backup {
                snapshot: snapshot.into(),
                since: since.map(str::to_string),
                align: None,
            },
            &mut Vec::new(),
            &mut |_, _| {},
        )
        .unwrap_err()
    };
    assert_kind(
        &backup_err(&mut c, "nope", None),
        ErrorKind::NotFound,
        "nope",
    );
    assert_kind(
        &backup_err(&mut c, "s1", Some("s2")),
        ErrorKind::InvalidArgument,
        "not older",
    );

    let (f1, f2) = (d.dir().join("full.fssb"), d.dir().join("incr.fssb"));
    std::fs::write(&f1, &full).unwrap();
    std::fs::write(&f2, &incr).unwrap();
    d.volume("r", 4 * MIB);
    let restore = |volume: &str, files: Vec<PathBuf>| Request::Restore {
        volume: volume.into(),
        files,
    };
    let mut seen = Vec::new();
    let restored = c
        .call_with_progress(
            restore("r", vec![f1.clone(), f2.clone()]),
            &mut |done, total| seen.push((done, total)),
        )
        .unwrap();
    assert_eq!(
        (restored["snapshot"].as_str(), restored["backups"].as_u64()),
        (Some("s2"), Some(2))
    );
    assert_eq!(seen.last().map(|&(d, t)| d == t), Some(true), "{seen:?}");
    assert_eq!(d.checksum("r"), d.checksum("s2"));
    assert_kind(
        &c.call_with_progress(restore("v", vec![f1.clone()]), &mut |_, _| {})
            .unwrap_err(),
        ErrorKind::Busy,
        "has snapshots",
    );
    assert_kind(
        &c.call_with_progress(restore("nope", vec![f1.clone()]), &mut |_, _| {})
            .unwrap_err(),
        ErrorKind::NotFound,
        "nope",
    );
    assert_kind(
        &c.call_with_progress(restore("r", vec![d.dir().join("missing")]), &mut |_, _| {})
            .unwrap_err(),
        ErrorKind::Io,
        "cannot open backup",
    );
    // Nothing to abandon (interrupted restores: crates/fss-cli/tests/restore_crash.rs).
    let abandon = |volume: &str| Request::RestoreAbandon {
        volume: volume.into(),
    };
    assert_kind(
        &d.err(abandon("r")),
        ErrorKind::InvalidArgument,
        "no unfinished restore",
    );
    assert_kind(&d.err(abandon("nope")), ErrorKind::NotFound, "nope");

    let rollback = |volume: &str, snapshot: &str| Request::Rollback {
        volume: volume.into(),
        snapshot: snapshot.into(),
        force: false,
    };
    let back = c
        .call_with_progress(rollback("v", "s1"), &mut |_, _| {})
        .unwrap();
    assert_eq!(
        (back["extents"].as_u64(), back["bytes"].as_u64()),
        (Some(1), Some(4096))
    );
    assert_eq!(d.checksum("v"), at_s1);
    assert_kind(
        &c.call_with_progress(rollback("nope", "s1"), &mut |_, _| {})
            .unwrap_err(),
        ErrorKind::NotFound,
        "nope",
    );
    assert_kind(
        &c.call_with_progress(rollback("v", "nope"), &mut |_, _| {})
            .unwrap_err(),
        ErrorKind::NotFound,
        "nope",
    );
    d.snapshot("r", "r1", false);
    assert_kind(
        &c.call_with_progress(rollback("v", "r1"), &mut |_, _| {})
            .unwrap_err(),
        ErrorKind::InvalidArgument,
        "not of 'v'",
    );
}

#[test]
fn a_restart_brings_back_persistent_snapshots_and_drops_transient_ones() {
    let d = Daemon::start();
    d.volume("v", 4 * MIB);
    d.write("v", 0, 3);
    d.snapshot("v", "p", false);
    d.snapshot("v", "t", true);
    d.write("v", 0, 4);
    let before = d.checksum("p");
    let d = d.restart();
    let list: Vec<SnapshotInfo> = d.ok(Request::SnapshotList);
    let names: Vec<&str> = list.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["p"]);
    assert_eq!(list[0].state, SnapshotHealth::Valid);
    assert_eq!(d.checksum("p"), before);
    let s: StatusInfo = d.ok(Request::Status);
    assert!(!s.recovered_from_crash, "the stop was clean");
}

#[test]
fn a_volume_that_cannot_be_opened_is_offline_and_its_snapshots_unavailable() {
    let d = Daemon::start();
    let image = d.dir().join("gone.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(4 * MIB)
        .unwrap();
    d.ok::<VolumeInfo>(Request::VolumeAdd {
        name: "g".into(),
        device: image.clone(),
    });
    d.snapshot("g", "gs", false);
    let mut d = d;
    d.halt();
    std::fs::remove_file(&image).unwrap();
    let d = d.restart();
    let v: Vec<VolumeInfo> = d.ok(Request::VolumeList);
    let g = v.iter().find(|v| v.name == "g").unwrap();
    assert!(
        matches!(&g.state, VolumeStatus::Offline(why) if why.contains("gone.img")),
        "{:?}",
        g.state
    );
    let s: SnapshotInfo = d.ok(Request::SnapshotInfo { name: "gs".into() });
    assert_eq!(s.state, SnapshotHealth::Unavailable);
    assert_kind(
        &d.err(Request::Diff {
            snapshot: "gs".into(),
            until: None,
        }),
        ErrorKind::InvalidSnapshot,
        "unavailable",
    );
    assert_kind(
        &d.err(Request::SnapshotCreate(spec("g", "x", false))),
        ErrorKind::Busy,
        "offline",
    );
    assert_eq!(
        d.call(Request::SnapshotDelete { name: "gs".into() })
            .unwrap(),
        Value::Null
    );
    assert_eq!(
        d.call(Request::VolumeRemove { name: "g".into() }).unwrap(),
        Value::Null
    );
}

#[test]
fn open_exports_refuse_what_would_change_them() {
    let d = Daemon::start();
    d.volume("v", 4 * MIB);
    d.volume("w", 4 * MIB);
    d.snapshot("v", "s", false);
    // A front-end that reports users of `w` and `s`.
    d.reg().add_usage_source(
        fssd::catalog::UsageKind::Nbd,
        Box::new(|| {
            [("w".to_string(), 2), ("s".to_string(), 1)]
                .into_iter()
                .collect()
        }),
    );
    let list: Vec<VolumeInfo> = d.ok(Request::VolumeList);
    let open: Vec<(&str, u64)> = list.iter().map(|v| (v.name.as_str(), v.open)).collect();
    assert_eq!(open, [("default", 0), ("v", 0), ("w", 2)]);
    assert_eq!(
        d.reg().open_devices(),
        [("s".to_string(), 1), ("w".to_string(), 2)]
    );
    assert_kind(
        &d.err(Request::VolumeRemove { name: "w".into() }),
        ErrorKind::Busy,
        "open (2 times",
    );
    assert_kind(
        &d.err(Request::SnapshotDelete { name: "s".into() }),
        ErrorKind::Busy,
        "open (1 times",
    );
    assert!(
        d.reg().lookup("s").is_some(),
        "a refused delete serves the snapshot again"
    );
    d.snapshot("w", "ws", false);
    let mut c = d.client();
    let rollback = Request::Rollback {
        volume: "w".into(),
        snapshot: "ws".into(),
        force: false,
    };
    let e = c.call_with_progress(rollback, &mut |_, _| {}).unwrap_err();
    assert_kind(
        &e,
        ErrorKind::Busy,
        "a rollback would change the data beneath them",
    );
    assert!(
        d.reg().lookup("w").is_some(),
        "a refused rollback serves the volume again"
    );
    let forced = Request::Rollback {
        volume: "w".into(),
        snapshot: "ws".into(),
        force: true,
    };
    c.call_with_progress(forced, &mut |_, _| {}).unwrap();
}

#[test]
fn a_running_rollback_holds_its_volume_and_snapshot() {
    let d = Daemon::start_with(TestHooks {
        rollback_pause: Some(std::time::Duration::from_millis(200)),
        ..TestHooks::default()
    });
    d.volume("v", 4 * MIB);
    d.snapshot("v", "s", false);
    d.write("v", 0, 9);
    let state_dir = d.paths.state_dir.clone();
    let running = std::thread::spawn(move || {
        let rollback = Request::Rollback {
            volume: "v".into(),
            snapshot: "s".into(),
            force: false,
        };
        Client::connect(&state_dir)
            .unwrap()
            .call_with_progress(rollback, &mut |_, _| {})
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while d.reg().running_operations().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the rollback did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_kind(
        &d.err(Request::SnapshotCreate(spec("v", "x", false))),
        ErrorKind::Busy,
        "busy with a rollback of 'v' to 's'",
    );
    assert_kind(
        &d.err(Request::SnapshotDelete { name: "s".into() }),
        ErrorKind::Busy,
        "in use by a rollback",
    );
    assert_kind(
        &d.err(Request::VolumeRemove { name: "v".into() }),
        ErrorKind::Busy,
        "busy with a rollback",
    );
    running.join().unwrap().unwrap();
    assert!(d.reg().running_operations().is_empty());
    assert_eq!(d.checksum("v"), d.checksum("s"));
}

#[test]
fn snapshot_set_changes_the_store_maximum_and_keeps_it() {
    let d = Daemon::start();
    d.volume("v", 4 * MIB);
    d.snapshot("v", "s", false);
    let set = |max: Option<u64>| Request::SnapshotSet {
        name: "s".into(),
        max_store_size: max,
    };
    let s: SnapshotInfo = d.ok(set(Some(8 * MIB)));
    assert_eq!(s.store_max, Some(8 * MIB));
    assert_kind(&d.err(set(Some(4096))), ErrorKind::InvalidArgument, "below");
    let missing = Request::SnapshotSet {
        name: "nosuch".into(),
        max_store_size: None,
    };
    assert_kind(&d.err(missing), ErrorKind::NotFound, "no snapshot named");
    let s: SnapshotInfo = d.ok(set(None));
    assert_eq!(s.store_max, None);
    let d = d.restart();
    let s: SnapshotInfo = d.ok(Request::SnapshotInfo { name: "s".into() });
    assert_eq!(s.store_max, None);
}

#[test]
fn schedule_add_list_remove_runs_and_their_errors() {
    use fssd::protocol::{Retention, ScheduleInfo, ScheduleSpec};
    let d = Daemon::start();
    d.volume("v", 4 * MIB);
    let add = |volume: &str, every: u64, store: Option<PathBuf>| {
        Request::ScheduleAdd(ScheduleSpec {
            volume: volume.into(),
            every_seconds: every,
            retention: Retention {
                last: Some(2),
                ..Retention::default()
            },
            store,
            ..ScheduleSpec::default()
        })
    };
    assert_kind(
        &d.err(add("nope", 60, None)),
        ErrorKind::NotFound,
        "no volume",
    );
    assert_kind(&d.err(add("v", 0, None)), ErrorKind::InvalidArgument, "1s");
    let file = d.dir().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    assert_kind(
        &d.err(add("v", 60, Some(file))),
        ErrorKind::InvalidArgument,
        "not a directory",
    );
    let rel = add("v", 60, Some("relative".into()));
    assert_kind(&d.err(rel), ErrorKind::InvalidArgument, "relative");
    let s: ScheduleInfo = d.ok(add("v", 60, None));
    assert_eq!((s.last_run, s.next_run > 0), (None, true));
    assert_kind(
        &d.err(add("v", 30, None)),
        ErrorKind::Exists,
        "remove it first",
    );
    let remove = Request::VolumeRemove { name: "v".into() };
    assert_kind(&d.err(remove), ErrorKind::Busy, "has a snapshot schedule");
    // Runs at made-up times a minute apart: a manual snapshot is never pruned, the schedule
    // keeps its two newest.
    d.ok::<SnapshotInfo>(Request::SnapshotCreate(spec("v", "manual", false)));
    let reg = d.reg();
    for i in 0..4u64 {
        let at = 1_796_416_260 + 60 * i;
        let outcome = reg
            .begin_run("v", at)
            .and_then(|spec| reg.create_snapshot(&spec).map(drop));
        reg.finish_run("v", at, &outcome);
        outcome.unwrap();
    }
    let list: Vec<ScheduleInfo> = d.ok(Request::ScheduleList);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].snapshots, ["v-20261204T2033Z", "v-20261204T2034Z"]);
    assert_eq!(list[0].last_run_ok, Some(true));
    assert_eq!(list[0].next_run, 1_796_416_260 + 60 * 3 + 60);
    // A name already taken: the run fails and says so.
    let taken = reg.begin_run("v", 1_796_416_260 + 60 * 3).unwrap_err();
    assert_kind(&taken, ErrorKind::Exists, "taken");
    let names: Vec<String> = d
        .ok::<Vec<SnapshotInfo>>(Request::SnapshotList)
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["manual", "v-20261204T2033Z", "v-20261204T2034Z"]);
    // The schedule and its members survive a restart.
    let d = d.restart();
    let list: Vec<ScheduleInfo> = d.ok(Request::ScheduleList);
    assert_eq!(list[0].snapshots.len(), 2);
    let gone: ScheduleInfo = d.ok(Request::ScheduleRemove { volume: "v".into() });
    assert_eq!(gone.snapshots.len(), 2);
    let again = Request::ScheduleRemove { volume: "v".into() };
    assert_kind(&d.err(again), ErrorKind::NotFound, "no schedule");
    assert_eq!(d.ok::<Vec<SnapshotInfo>>(Request::SnapshotList).len(), 3);
}
