//! A FUSE connection outlives the session serving it: a second session resumes it, and files
//! opened under the first keep working, including a read the first session had taken and
//! never answered because its process was killed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::child::{catalog_over, serve_if_helper, AbortOnPanic, DetachLast, Helper, Serving};
use common::{
    disk_tempdir, is_mount_point, recording_hooks, serial, wait_until, Pattern, TestCatalog,
};
use fss_core::device::MemDevice;
use fss_core::export::{Catalog, Export};
use fss_core::Volume;
use fss_fuse::{FuseError, FuseFrontEnd, Hooks, Start};
use std::fs::{File, OpenOptions};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// Not a test of its own: the serving process that other tests kill.
#[test]
fn helper_child() {
    serve_if_helper();
}

/// Serve (a copy of) the connection `fd` mounted on `dir`.
fn serve(
    fd: &OwnedFd,
    dir: &Path,
    catalog: Arc<dyn Catalog>,
    hooks: Hooks,
    session: &Path,
    start: Start,
) -> fss_fuse::Result<FuseFrontEnd> {
    let fd = fd.try_clone().unwrap();
    FuseFrontEnd::serve_connection(fd, dir, catalog, hooks, session, start)
}

/// A connection mounted and not yet served, and a memory volume "vol" to serve on it. Fields
/// drop in order: abort (if failing), detach, then the rest.
struct Rig {
    _abort: AbortOnPanic,
    _detach: DetachLast,
    fd: OwnedFd,
    vol: Volume,
    catalog: Arc<TestCatalog>,
    dir: PathBuf,
    session: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Rig {
    fn new(len: u64) -> Rig {
        let tmp = disk_tempdir();
        let dir = tmp.path().join("dev");
        let vol = Volume::new("vol", Arc::new(MemDevice::new(len)));
        let catalog = Arc::new(TestCatalog::default());
        catalog.add(Export::Volume(vol.clone()));
        let fd = fss_fuse::mount_connection(&dir).unwrap();
        Rig {
            _abort: AbortOnPanic(dir.clone()),
            _detach: DetachLast(dir.clone()),
            fd,
            vol,
            catalog,
            session: tmp.path().join("fuse-session.json"),
            dir,
            _tmp: tmp,
        }
    }

    fn serve(&self, hooks: Hooks, start: Start) -> fss_fuse::Result<FuseFrontEnd> {
        let catalog = Arc::clone(&self.catalog) as Arc<dyn Catalog>;
        serve(&self.fd, &self.dir, catalog, hooks, &self.session, start)
    }
}

fn rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

#[test]
fn an_open_file_survives_a_session_switch_in_process() {
    let _g = serial();
    let rig = Rig::new(8 * MIB);
    let (dir, session, vol) = (&rig.dir, &rig.session, &rig.vol);
    let (hooks, first_events) = recording_hooks();
    let first = rig.serve(hooks, Start::Fresh).unwrap();
    let f = rw(&dir.join("vol"));
    let ino = f.metadata().unwrap().ino();
    let mut p = Pattern::new(1);
    let a = p.bytes(10_000);
    f.write_all_at(&a, 4096).unwrap();
    assert_eq!(first.open_files(), vec![("vol".to_string(), 1)]);
    assert_eq!(
        *first_events.lock().unwrap(),
        vec![("vol".to_string(), true)]
    );
    first.detach().unwrap();
    // (Nothing may stat the directory now: it would wait for the next session.)
    assert!(
        fss_fuse::connection_id(dir).is_ok(),
        "detaching leaves the mount"
    );
    for file in [session, &session.with_extension("table.json")] {
        let mode = std::fs::metadata(file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    }

    // Nobody serves now: a read waits in the kernel's queue for the next session.
    let reader = {
        let f = f.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut b = vec![0u8; 10_000];
            f.read_exact_at(&mut b, 4096).map(|()| b)
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !reader.is_finished(),
        "a read was answered with no session serving"
    );

    let (hooks, events) = recording_hooks();
    let second = rig.serve(hooks, Start::Resume).unwrap();
    assert_eq!(reader.join().unwrap().unwrap(), a);
    // The open count was rebuilt from the table file.
    assert_eq!(*events.lock().unwrap(), vec![("vol".to_string(), true)]);
    assert_eq!(second.open_files(), vec![("vol".to_string(), 1)]);
    // The file opened under the first session: writes land, fstat works, same inode.
    let b = p.bytes(70_000);
    f.write_all_at(&b, 3 * MIB + 1).unwrap();
    f.sync_all().unwrap();
    let mut check = vec![0u8; b.len()];
    vol.read(&mut check, 3 * MIB + 1).unwrap();
    assert_eq!(check, b);
    let m = f.metadata().unwrap();
    assert_eq!((m.ino(), m.len()), (ino, 8 * MIB));
    assert_eq!(std::fs::metadata(dir.join("vol")).unwrap().ino(), ino);
    // A new open gets a handle of its own; closing both ends the count.
    let g = File::open(dir.join("vol")).unwrap();
    assert_eq!(second.open_files(), vec![("vol".to_string(), 2)]);
    drop(g);
    drop(f);
    assert!(wait_until(Duration::from_secs(5), || second
        .open_files()
        .is_empty()));
    assert_eq!(
        *events.lock().unwrap(),
        vec![("vol".to_string(), true), ("vol".to_string(), false)]
    );
    second.detach().unwrap();
    fss_fuse::unmount(dir).unwrap();
    assert!(!is_mount_point(dir));
}

#[test]
fn a_fresh_session_on_an_initialised_connection_leaves_the_request_for_a_resume() {
    let _g = serial();
    let rig = Rig::new(MIB);
    let dir = &rig.dir;
    let first = rig.serve(Hooks::default(), Start::Fresh).unwrap();
    first.detach().unwrap();
    let stat = {
        let p = dir.join("vol");
        std::thread::spawn(move || std::fs::metadata(p).map(|m| m.len()))
    };
    std::thread::sleep(Duration::from_millis(100));
    // A mistaken fresh start reads the stat's request, refuses to go on, and leaves it
    // unanswered ...
    match rig.serve(Hooks::default(), Start::Fresh) {
        Err(FuseError::Handshake { reason }) => assert!(reason.contains("resume"), "{reason}"),
        other => panic!("a fresh start on a used connection: {other:?}"),
    }
    assert!(!stat.is_finished());
    // ... and the kernel resends it to the resumed session.
    let second = rig.serve(Hooks::default(), Start::Resume).unwrap();
    assert_eq!(stat.join().unwrap().unwrap(), MIB);
    second.detach().unwrap();
    fss_fuse::unmount(dir).unwrap();
}

/// Reads here hang in the first (killed) helper.
const STALL: u64 = 5 * MIB;

#[test]
fn a_read_left_unanswered_by_a_killed_server_is_answered_by_the_next() {
    let _g = serial();
    let tmp = disk_tempdir();
    let s = Serving {
        dir: tmp.path().join("dev"),
        image: tmp.path().join("vol.img"),
        session: tmp.path().join("fuse-session.json"),
    };
    let mut p = Pattern::new(7);
    let content = p.bytes(8 * MIB as usize);
    std::fs::write(&s.image, &content).unwrap();
    let marker = tmp.path().join("stalled");

    let fd = fss_fuse::mount_connection(&s.dir).unwrap();
    let _detach = DetachLast(s.dir.clone());
    let _abort = AbortOnPanic(s.dir.clone());
    let helper = Helper::spawn(
        "helper_child",
        &fd,
        &s,
        Start::Fresh,
        Some((STALL, &marker)),
    );
    let f = rw(&s.dir.join("vol"));
    let w = p.bytes(5000);
    f.write_all_at(&w, 12_345).unwrap();
    let reader = {
        let f = f.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut b = vec![0u8; 4096];
            f.read_exact_at(&mut b, STALL).map(|()| b)
        })
    };
    assert!(
        wait_until(Duration::from_secs(10), || marker.exists()),
        "the helper never took the read"
    );
    helper.kill();
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !reader.is_finished(),
        "the read was answered by a dead server"
    );

    // This process takes over, over the same image, without the stall.
    let catalog = catalog_over(&s.image, None);
    let next = serve(
        &fd,
        &s.dir,
        catalog,
        Hooks::default(),
        &s.session,
        Start::Resume,
    )
    .unwrap();
    let got = reader.join().unwrap().expect("the resent read succeeds");
    let at = usize::try_from(STALL).unwrap();
    assert_eq!(got, content[at..at + 4096]);
    // The write made under the first server is there; the file keeps working.
    let mut b = vec![0u8; w.len()];
    f.read_exact_at(&mut b, 12_345).unwrap();
    assert_eq!(b, w);
    f.write_all_at(&w, 6 * MIB).unwrap();
    f.sync_all().unwrap();
    assert_eq!(f.metadata().unwrap().len(), 8 * MIB);
    assert_eq!(next.open_files(), vec![("vol".to_string(), 1)]);
    drop(f);
    assert!(wait_until(Duration::from_secs(5), || next
        .open_files()
        .is_empty()));
    next.detach().unwrap();
    fss_fuse::unmount(&s.dir).unwrap();
    let on_disk = std::fs::read(&s.image).unwrap();
    assert_eq!(
        &on_disk[6 * MIB as usize..6 * MIB as usize + w.len()],
        &w[..]
    );
}

#[test]
fn an_aborted_connection_fails_requests_instead_of_hanging() {
    let _g = serial();
    let rig = Rig::new(MIB);
    let dir = &rig.dir;
    let fuse = rig.serve(Hooks::default(), Start::Fresh).unwrap();
    let f = File::open(dir.join("vol")).unwrap();
    let dev = std::fs::metadata(dir).unwrap().dev();
    fuse.detach().unwrap();
    let reader = std::thread::spawn(move || {
        let mut b = [0u8; 512];
        f.read_exact_at(&mut b, 0)
    });
    std::thread::sleep(Duration::from_millis(100));
    assert!(!reader.is_finished());
    assert_eq!(fss_fuse::connection_id(dir).unwrap(), dev);
    fss_fuse::abort_connection(dir).unwrap();
    assert!(
        reader.join().unwrap().is_err(),
        "an aborted connection answers with an error"
    );
    // The descriptor still held here sees the end of the connection too.
    let e = std::fs::metadata(dir.join("vol")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(107), "ENOTCONN: {e}");
    fss_fuse::unmount(dir).unwrap();
    assert!(!is_mount_point(dir));
}
