#![allow(clippy::unwrap_used)]

use super::*;
use crate::persist::{self, SessionFiles};
use fss_core::device::MemDevice;
use fss_core::export::ExportInfo;
use fss_core::Volume;

struct One(Export);

impl Catalog for One {
    fn lookup(&self, name: &str) -> Option<Export> {
        (name == self.0.name()).then(|| self.0.clone())
    }
    fn list(&self) -> Vec<ExportInfo> {
        vec![ExportInfo {
            name: self.0.name().into(),
            description: String::new(),
            read_only: false,
            len: self.0.len(),
        }]
    }
}

fn header(unique: u64, nodeid: u64) -> InHeader {
    InHeader {
        len: 0,
        opcode: abi::opcode::OPEN,
        unique,
        nodeid,
        uid: 0,
        gid: 0,
        pid: 1,
        total_extlen: 0,
    }
}

fn fh_of(open_out: &[u8]) -> u64 {
    u64::from_ne_bytes(open_out[..8].try_into().unwrap())
}

fn fs_with_table(files: &SessionFiles) -> (FssFs, Arc<Handles>) {
    let vol = Volume::new("vol", Arc::new(MemDevice::new(1 << 20)));
    let handles = Arc::new(Handles::new(None));
    let fs = FssFs::new(
        Arc::new(One(Export::Volume(vol))),
        Arc::clone(&handles),
        InodeTable::default(),
        SystemTime::now(),
        Some(TableFile::new(files.table.clone())),
    );
    (fs, handles)
}

#[test]
fn a_resent_open_gets_the_handle_the_first_answer_had() {
    let dir = tempfile::tempdir().unwrap();
    let files = SessionFiles::new(&dir.path().join("s.json"));
    let (fs, handles) = fs_with_table(&files);
    fs.lookup(ROOT_INO, b"vol").unwrap();
    let ino = persist::load_tables(&files.table).unwrap().inodes[0].ino;
    let first = fh_of(&fs.open(&header(10, ino), 2).unwrap());
    // The process died after saving the handle, before the kernel heard of it: the kernel
    // resends the OPEN with bit 63 set.
    let again = fh_of(&fs.open(&header(10 | abi::UNIQUE_RESEND, ino), 2).unwrap());
    assert_eq!(again, first);
    assert_eq!(handles.open_files(), vec![("vol".to_string(), 1)]);
    // A new OPEN is a new handle; the table file has both.
    let other = fh_of(&fs.open(&header(12, ino), 0).unwrap());
    assert_ne!(other, first);
    let saved = persist::load_tables(&files.table).unwrap();
    let fhs: Vec<u64> = saved.handles.iter().map(|h| h.fh).collect();
    assert_eq!(fhs, [first, other]);
    assert_eq!(saved.handles[0].unique, 10);
    assert!(saved.handles[0].writable && !saved.handles[1].writable);
    // RELEASE saves too; a RELEASE of an unknown handle is harmless.
    fs.release(first);
    fs.release(first);
    fs.release(999);
    let saved = persist::load_tables(&files.table).unwrap();
    assert_eq!(saved.handles.len(), 1);
}

#[test]
fn an_open_that_cannot_be_saved_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // The table's directory does not exist: every save fails.
    let files = SessionFiles::new(&dir.path().join("missing/s.json"));
    let (fs, handles) = fs_with_table(&files);
    fs.lookup(ROOT_INO, b"vol").unwrap();
    assert_eq!(fs.open(&header(10, 2), 2), Err(Errno::IO));
    assert!(handles.open_files().is_empty());
    // Lookups still work (a lost inode number only costs a new lookup after a restart).
    fs.lookup(ROOT_INO, b"vol").unwrap();
    assert_eq!(fs.lookup(ROOT_INO, b"nope"), Err(Errno::NOENT));
    assert_eq!(fs.lookup(5, b"vol"), Err(Errno::NOTDIR));
}
