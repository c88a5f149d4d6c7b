//! The FUSE file system: a root directory with one regular file per export of the catalog.
//!
//! Names and attributes come from the catalog on every lookup (TTL zero); reads and writes go
//! to the export bound to the open file handle. Every file is opened with `FOPEN_DIRECT_IO`,
//! so the page cache never holds a second copy of data a loop device or file system above
//! already caches. Requests are answered on the thread that received them; several threads
//! receive (see [`crate::FuseOptions::threads`]).

use crate::attr::{self, Owner, TTL};
use crate::file_io;
use crate::handles::{Handles, OpenFile};
use crate::inodes::{InodeTable, ROOT_INO};
use fss_core::device::AlignedBuf;
use fss_core::export::{Catalog, Export};
use fuser::{
    Errno, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};
use std::cell::RefCell;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

/// Longest name reported by statfs (the daemon's names are at most 64 bytes).
const NAME_MAX: u32 = 255;

thread_local! {
    /// Each serving thread's read buffer, reused so large reads do not fault in fresh pages,
    /// and page-aligned so a volume opened with O_DIRECT reads straight into it instead of
    /// through a bounce buffer and a copy.
    static READ_BUF: RefCell<AlignedBuf> = RefCell::new(AlignedBuf::default());
}

/// The file system served on the mount point.
pub struct FssFs {
    catalog: Arc<dyn Catalog>,
    inodes: Mutex<InodeTable>,
    handles: Arc<Handles>,
    owner: Owner,
    mounted: SystemTime,
    max_background: u16,
}

impl FssFs {
    /// A file system over `catalog` that records open files in `handles`.
    pub fn new(catalog: Arc<dyn Catalog>, handles: Arc<Handles>, max_background: u16) -> Self {
        FssFs {
            catalog,
            inodes: Mutex::new(InodeTable::default()),
            handles,
            owner: Owner::current(),
            mounted: SystemTime::now(),
            max_background,
        }
    }

    fn inodes(&self) -> MutexGuard<'_, InodeTable> {
        self.inodes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The export behind inode `ino` and its name, asking the catalog now. A name the catalog
    /// no longer has is forgotten.
    fn export_of(&self, ino: INodeNo) -> Option<(String, Export)> {
        let name = self.inodes().name(ino.0)?.to_string();
        match self.catalog.lookup(&name) {
            Some(e) => Some((name, e)),
            None => {
                self.inodes().remove(&name);
                None
            }
        }
    }

    fn attr_of(&self, name: &str, export: &Export) -> fuser::FileAttr {
        let entry = self.inodes().entry(name);
        attr::export(self.owner, entry, export.len(), export.is_read_only())
    }

    fn open_file(&self, fh: FileHandle) -> Result<Arc<OpenFile>, Errno> {
        self.handles.get(fh.0).ok_or(Errno::EBADF)
    }
}

/// The largest write the kernel sends in one request: below
/// [`fss_core::device::DIRECT_WRITE_MIN`].
const FUSE_MAX_WRITE: u32 = 128 << 10;

impl fuser::Filesystem for FssFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Asynchronous direct I/O lets a loop device keep several requests in flight.
        if config.add_capabilities(InitFlags::FUSE_ASYNC_DIO).is_err() {
            tracing::warn!("the kernel lacks FUSE_ASYNC_DIO: loop I/O will be serialised");
        }
        let _ = config.set_max_background(self.max_background);
        // Writes arrive in pieces below the volume's direct-write size, so they land in the
        // page cache (a loop device's writes complete at copy speed, as over a plain file);
        // pieces go in parallel with FUSE_ASYNC_DIO.
        let _ = config.set_max_write(FUSE_MAX_WRITE);
        let _ = config.set_congestion_threshold(self.max_background.saturating_mul(3) / 4);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 != ROOT_INO {
            return reply.error(Errno::ENOTDIR);
        }
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENOENT);
        };
        match self.catalog.lookup(name) {
            Some(export) => {
                let attr = self.attr_of(name, &export);
                reply.entry(&TTL, &attr, Generation(0));
            }
            None => {
                self.inodes().remove(name);
                reply.error(Errno::ENOENT);
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino.0 == ROOT_INO {
            return reply.attr(&TTL, &attr::root(self.owner, self.mounted));
        }
        if let Some((name, export)) = self.export_of(ino) {
            return reply.attr(&TTL, &self.attr_of(&name, &export));
        }
        // Gone from the catalog but still open through this handle: describe what is open.
        match fh.and_then(|fh| self.handles.get(fh.0)) {
            Some(f) => {
                let entry = crate::inodes::Entry {
                    ino: ino.0,
                    born: self.mounted,
                };
                let attr = attr::export(self.owner, entry, f.export.len(), f.export.is_read_only());
                reply.attr(&TTL, &attr);
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if ino.0 == ROOT_INO {
            return reply.error(Errno::EPERM);
        }
        let Some((name, export)) = self.export_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let attr = self.attr_of(&name, &export);
        if size.is_some_and(|s| s != export.len()) {
            // A device's size is fixed (this is also what `> file` and O_TRUNC meet).
            return reply.error(if export.is_read_only() {
                Errno::EROFS
            } else {
                Errno::EPERM
            });
        }
        let mode_changes = mode.is_some_and(|m| (m & 0o7777) as u16 != attr.perm);
        if mode_changes || uid.is_some_and(|u| u != attr.uid) || gid.is_some_and(|g| g != attr.gid)
        {
            return reply.error(Errno::EPERM);
        }
        // Times are accepted and not kept (touch succeeds).
        reply.attr(&TTL, &attr);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EPERM);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EPERM);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EPERM);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EPERM);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 == ROOT_INO {
            return reply.error(Errno::EISDIR);
        }
        let Some((name, export)) = self.export_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let writable = !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY);
        if writable && export.is_read_only() {
            // Root passes the 0400 mode check; the snapshot itself refuses.
            return reply.error(Errno::EROFS);
        }
        let fh = self.handles.open(OpenFile {
            name,
            export,
            writable,
        });
        reply.opened(
            FileHandle(fh),
            FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES,
        );
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let file = match self.open_file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let Ok(size) = usize::try_from(size) else {
            return reply.error(Errno::EINVAL);
        };
        READ_BUF.with_borrow_mut(|buf| {
            buf.resize(size);
            match file_io::read(&file.export, offset, &mut buf[..size]) {
                Ok(n) => reply.data(&buf[..n]),
                Err(e) => {
                    tracing::debug!(name = %file.name, offset, size, errno = e.code(), "read failed");
                    reply.error(e);
                }
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let file = match self.open_file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        if !file.writable {
            return reply.error(if file.export.is_read_only() {
                Errno::EROFS
            } else {
                Errno::EBADF
            });
        }
        match file_io::write(&file.export, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => {
                tracing::debug!(name = %file.name, offset, len = data.len(), errno = e.code(),
                    "write failed");
                reply.error(e);
            }
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) does not imply durability on a block device either; fsync does.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.open_file(fh).and_then(|f| file_io::fsync(&f.export)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 == ROOT_INO {
            reply.opened(FileHandle(0), FopenFlags::empty());
        } else {
            reply.error(Errno::ENOTDIR);
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino.0 != ROOT_INO {
            return reply.error(Errno::ENOTDIR);
        }
        let list = self.catalog.list();
        let mut entries: Vec<(u64, FileType, String)> = Vec::with_capacity(list.len() + 2);
        entries.push((ROOT_INO, FileType::Directory, ".".into()));
        entries.push((ROOT_INO, FileType::Directory, "..".into()));
        {
            let mut inodes = self.inodes();
            inodes.retain(list.iter().map(|i| i.name.as_str()));
            for info in list {
                let ino = inodes.entry(&info.name).ino;
                entries.push((ino, FileType::RegularFile, info.name));
            }
        }
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(skip) {
            if reply.add(INodeNo(ino), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let list = self.catalog.list();
        let bytes: u64 = list.iter().map(|i| i.len).fold(0, u64::saturating_add);
        let bs = u64::from(attr::BLOCK_SIZE);
        reply.statfs(
            bytes.div_ceil(bs),
            0,
            0,
            list.len() as u64,
            0,
            attr::BLOCK_SIZE,
            NAME_MAX,
            attr::BLOCK_SIZE,
        );
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let result = self.open_file(fh).and_then(|f| {
            if f.writable || f.export.is_read_only() {
                file_io::fallocate(&f.export, offset, length, mode)
            } else {
                Err(Errno::EBADF)
            }
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self
            .open_file(fh)
            .and_then(|f| file_io::seek(&f.export, offset, whence))
        {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(e),
        }
    }
}
