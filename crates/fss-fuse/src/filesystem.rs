//! The FUSE file system: a root directory with one regular file per export of the catalog.
//! Each method answers one operation with the encoded reply body or an errno.
//!
//! Names and attributes come from the catalog on every lookup (TTL zero); reads and writes go
//! to the export bound to the open file handle. Every file is opened with `FOPEN_DIRECT_IO`,
//! so the page cache never holds a second copy of data a loop device or file system above
//! already caches. Inode numbers and open handles are written to the session's table file
//! (when there is one) before the reply that hands them to the kernel.

use crate::attr::{self, Owner};
use crate::file_io;
use crate::handles::{Handles, OpenFile};
use crate::inodes::{Entry, InodeTable, ROOT_INO};
use crate::persist::{PersistError, TableFile, Tables};
use crate::wire::abi::{self, DT_DIR, DT_REG};
use crate::wire::reply::{self, DirBuf};
use crate::wire::{Attr, InHeader, SetAttrIn, StatFs};
use fss_core::device::{AlignedBuf, DIRECT_READ_MIN};
use fss_core::direct_read::DirectRead;
use fss_core::export::{Catalog, Export};
use rustix::io::Errno;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

/// Longest name reported by statfs (the daemon's names are at most 64 bytes).
const NAME_MAX: u32 = 255;

/// The file system served on the mount point.
pub struct FssFs {
    catalog: Arc<dyn Catalog>,
    inodes: Mutex<InodeTable>,
    handles: Arc<Handles>,
    owner: Owner,
    mounted: SystemTime,
    table: Option<TableFile>,
}

impl std::fmt::Debug for FssFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FssFs")
            .field("handles", &self.handles)
            .field("owner", &self.owner)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl FssFs {
    /// A file system over `catalog` with these tables, mounted at `mounted` (the root's
    /// times), persisting its tables to `table` if given.
    pub fn new(
        catalog: Arc<dyn Catalog>,
        handles: Arc<Handles>,
        inodes: InodeTable,
        mounted: SystemTime,
        table: Option<TableFile>,
    ) -> Self {
        FssFs {
            catalog,
            inodes: Mutex::new(inodes),
            handles,
            owner: Owner::current(),
            mounted,
            table,
        }
    }

    /// Who may use the file system.
    pub fn owner(&self) -> Owner {
        self.owner
    }

    fn inodes(&self) -> MutexGuard<'_, InodeTable> {
        self.inodes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Write the tables to the table file, if there is one.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn save(&self) -> Result<(), PersistError> {
        let Some(table) = &self.table else {
            return Ok(());
        };
        table.save(|| {
            let (next_ino, inodes) = self.inodes().records();
            let (last_fh, handles) = self.handles.records();
            Tables {
                format: 0,
                next_ino,
                inodes,
                last_fh,
                handles,
            }
        })
    }

    fn save_or_warn(&self) {
        if let Err(e) = self.save() {
            tracing::warn!(error = %e, "cannot save the FUSE table file; a restart of the \
                serving process may not find this change");
        }
    }

    /// The entry of `name`, saving the tables if it is new.
    fn entry(&self, name: &str) -> Entry {
        let (entry, new) = self.inodes().entry(name);
        if new {
            self.save_or_warn();
        }
        entry
    }

    /// Forget `name` (gone from the catalog), saving the tables if it was known.
    fn forget(&self, name: &str) {
        let removed = self.inodes().remove(name);
        if removed {
            self.save_or_warn();
        }
    }

    /// The export behind inode `ino` and its name, asking the catalog now. A name the catalog
    /// no longer has is forgotten.
    fn export_of(&self, ino: u64) -> Option<(String, Export)> {
        let name = self.inodes().name(ino)?.to_string();
        match self.catalog.lookup(&name) {
            Some(e) => Some((name, e)),
            None => {
                self.forget(&name);
                None
            }
        }
    }

    fn attr_of(&self, name: &str, export: &Export) -> Attr {
        let entry = self.entry(name);
        attr::export(self.owner, entry, export.len(), export.is_read_only())
    }

    fn open_file(&self, fh: u64) -> Result<Arc<OpenFile>, Errno> {
        self.handles.get(fh).ok_or(Errno::BADF)
    }

    /// LOOKUP `name` in the directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Vec<u8>, Errno> {
        if parent != ROOT_INO {
            return Err(Errno::NOTDIR);
        }
        let name = std::str::from_utf8(name).map_err(|_| Errno::NOENT)?;
        match self.catalog.lookup(name) {
            Some(export) => Ok(reply::entry_out(&self.attr_of(name, &export))),
            None => {
                self.forget(name);
                Err(Errno::NOENT)
            }
        }
    }

    /// GETATTR of `ino`, through the open handle `fh` if the kernel gave one.
    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> Result<Vec<u8>, Errno> {
        if ino == ROOT_INO {
            return Ok(reply::attr_out(&attr::root(self.owner, self.mounted)));
        }
        if let Some((name, export)) = self.export_of(ino) {
            return Ok(reply::attr_out(&self.attr_of(&name, &export)));
        }
        // Gone from the catalog but still open through this handle: describe what is open.
        let file = fh.and_then(|fh| self.handles.get(fh)).ok_or(Errno::NOENT)?;
        let export = file.export().map_err(|_| Errno::NOENT)?;
        let entry = Entry {
            ino,
            born: self.mounted,
        };
        let a = attr::export(self.owner, entry, export.len(), export.is_read_only());
        Ok(reply::attr_out(&a))
    }

    /// SETATTR: nothing can change but times, which are accepted and not kept.
    pub fn setattr(&self, ino: u64, s: &SetAttrIn) -> Result<Vec<u8>, Errno> {
        if ino == ROOT_INO {
            return Err(Errno::PERM);
        }
        let (name, export) = self.export_of(ino).ok_or(Errno::NOENT)?;
        let a = self.attr_of(&name, &export);
        let has = |bit| s.valid & bit != 0;
        if has(abi::fattr::SIZE) && s.size != export.len() {
            // A device's size is fixed (this is also what `> file` and O_TRUNC meet).
            return Err(if export.is_read_only() {
                Errno::ROFS
            } else {
                Errno::PERM
            });
        }
        let mode_changes = has(abi::fattr::MODE) && s.mode & 0o7777 != attr::perm(&a);
        let uid_changes = has(abi::fattr::UID) && s.uid != a.uid;
        let gid_changes = has(abi::fattr::GID) && s.gid != a.gid;
        if mode_changes || uid_changes || gid_changes {
            return Err(Errno::PERM);
        }
        Ok(reply::attr_out(&a))
    }

    /// OPEN `ino`. A resent OPEN that an earlier process already registered gets the same
    /// handle; a new handle is saved to the table file before it is returned.
    pub fn open(&self, header: &InHeader, flags: u32) -> Result<Vec<u8>, Errno> {
        const OPEN_FLAGS: u32 = abi::FOPEN_DIRECT_IO | abi::FOPEN_PARALLEL_DIRECT_WRITES;
        let ino = header.nodeid;
        if ino == ROOT_INO {
            return Err(Errno::ISDIR);
        }
        let unique = header.unique & !abi::UNIQUE_RESEND;
        if header.is_resend() {
            if let Some(fh) = self.handles.opened_by(unique) {
                return Ok(reply::open_out(fh, OPEN_FLAGS));
            }
        }
        let (name, export) = self.export_of(ino).ok_or(Errno::NOENT)?;
        let writable = flags & abi::O_ACCMODE != abi::O_RDONLY;
        if writable && export.is_read_only() {
            // Root passes the 0400 mode check; the snapshot itself refuses.
            return Err(Errno::ROFS);
        }
        let fh = self.handles.open(OpenFile {
            name,
            export: Some(export),
            writable,
            unique,
        });
        if let Err(e) = self.save() {
            // A handle the next process would not know: refuse the open now rather than fail
            // its I/O after a restart.
            tracing::error!(error = %e, "cannot save the FUSE table file; refusing an open");
            self.handles.release(fh);
            return Err(Errno::IO);
        }
        Ok(reply::open_out(fh, OPEN_FLAGS))
    }

    /// READ into `buf`; returns how many bytes of it are the answer.
    pub fn read(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        buf: &mut AlignedBuf,
    ) -> Result<usize, Errno> {
        let file = self.open_file(fh)?;
        let size = usize::try_from(size).map_err(|_| Errno::INVAL)?;
        buf.resize(size);
        file_io::read(file.export()?, offset, &mut buf[..size]).inspect_err(|e| {
            tracing::debug!(name = %file.name, offset, size, errno = e.raw_os_error(), "read failed");
        })
    }

    /// A READ of `size` bytes at `offset` of `fh` that a read ring may run instead of
    /// [`FssFs::read`] (`fss_core::direct_read`): its direct read and the buffer it fills.
    /// `None` (a bad handle, the end of the file, a large read, or one the engine must do
    /// itself): serve it with [`FssFs::read`].
    pub fn direct_read(&self, fh: u64, offset: u64, size: u32) -> Option<(DirectRead, AlignedBuf)> {
        let file = self.open_file(fh).ok()?;
        let export = file.export().ok()?;
        let n = file_io::readable(export, offset, usize::try_from(size).ok()?);
        if n == 0 || n >= DIRECT_READ_MIN {
            return None;
        }
        let buf = AlignedBuf::new(n);
        let read = export.direct_read(offset, &buf)?;
        Some((read, buf))
    }

    /// WRITE `data` at `offset`.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<Vec<u8>, Errno> {
        let file = self.open_file(fh)?;
        let export = file.export()?;
        if !file.writable {
            return Err(if export.is_read_only() {
                Errno::ROFS
            } else {
                Errno::BADF
            });
        }
        match file_io::write(export, offset, data) {
            Ok(n) => Ok(reply::write_out(n)),
            Err(e) => {
                tracing::debug!(name = %file.name, offset, len = data.len(),
                    errno = e.raw_os_error(), "write failed");
                Err(e)
            }
        }
    }

    /// RELEASE `fh`. An unknown handle (released already, or by a resent RELEASE) is fine.
    pub fn release(&self, fh: u64) {
        if self.handles.release(fh) {
            self.save_or_warn();
        }
    }

    /// FSYNC: the device's FLUSH.
    pub fn fsync(&self, fh: u64) -> Result<(), Errno> {
        file_io::fsync(self.open_file(fh)?.export()?)
    }

    /// OPENDIR: only the root is a directory.
    pub fn opendir(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        if ino == ROOT_INO {
            Ok(reply::open_out(0, 0))
        } else {
            Err(Errno::NOTDIR)
        }
    }

    /// READDIR from entry `offset`, at most `size` bytes of entries.
    pub fn readdir(&self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        if ino != ROOT_INO {
            return Err(Errno::NOTDIR);
        }
        let list = self.catalog.list();
        let mut entries: Vec<(u64, u32, String)> = Vec::with_capacity(list.len() + 2);
        entries.push((ROOT_INO, DT_DIR, ".".into()));
        entries.push((ROOT_INO, DT_DIR, "..".into()));
        let mut changed;
        {
            let mut inodes = self.inodes();
            changed = inodes.retain(list.iter().map(|i| i.name.as_str()));
            for info in list {
                let (entry, new) = inodes.entry(&info.name);
                changed |= new;
                entries.push((entry.ino, DT_REG, info.name));
            }
        }
        if changed {
            self.save_or_warn();
        }
        let mut out = DirBuf::new(usize::try_from(size).unwrap_or(usize::MAX));
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(skip) {
            if !out.add(ino, i as u64 + 1, kind, name.as_bytes()) {
                break;
            }
        }
        Ok(out.into_bytes())
    }

    /// STATFS: blocks = sum of export sizes, nothing free.
    pub fn statfs(&self) -> Vec<u8> {
        let list = self.catalog.list();
        let bytes: u64 = list.iter().map(|i| i.len).fold(0, u64::saturating_add);
        reply::statfs_out(&StatFs {
            blocks: bytes.div_ceil(u64::from(attr::BLOCK_SIZE)),
            files: list.len() as u64,
            bsize: attr::BLOCK_SIZE,
            namelen: NAME_MAX,
            frsize: attr::BLOCK_SIZE,
        })
    }

    /// FALLOCATE: punch and zero ranges, allocation within the size.
    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> Result<(), Errno> {
        let f = self.open_file(fh)?;
        let export = f.export()?;
        if f.writable || export.is_read_only() {
            file_io::fallocate(export, offset, length, mode)
        } else {
            Err(Errno::BADF)
        }
    }

    /// LSEEK with SEEK_DATA or SEEK_HOLE.
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<Vec<u8>, Errno> {
        let f = self.open_file(fh)?;
        file_io::seek(f.export()?, offset, whence).map(reply::lseek_out)
    }
}

#[cfg(test)]
mod tests;
