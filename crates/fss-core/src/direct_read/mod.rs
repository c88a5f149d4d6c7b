//! Small reads that a front-end issues itself, many in flight from one thread (io_uring),
//! instead of calling [`Export::read`] on a thread per read. The engine says which file and
//! offset hold the bytes now ([`Export::direct_read`]), and afterwards checks what the read
//! could not see ([`DirectRead::finish`]).
//!
//! Why: at queue depth 16, a 4 KiB read on a thread of its own cost about four context switches
//! (the hand-off, the wait for the disk, the wake-up, the return to idle), and those switches,
//! not the reads, were what kept NBD below qemu-nbd (docs/PERFORMANCE.md).
//!
//! Which reads qualify: a volume range that no held write overlaps (a held write's bytes are
//! not on the device yet); a snapshot read of at most one block that no map of the chain
//! holds (its bytes are on the volume, and a map looked at after the read tells whether they
//! still were: the second look of DESIGN decision 5); and a snapshot read inside one block a
//! map holds, from the store that holds it (preserved bytes never change; `finish` checks the
//! block was not moved to another store by a delete meanwhile, and reads again if it was).
//! Everything else returns `None` and goes through [`Export::read`], which also gives the
//! errors.
//!
//! [`ring::ReadRing`] runs such reads for front-ends, many at once from one thread.

pub mod ring;

use crate::error::Result;
use crate::export::Export;
use crate::snapshot::StoreBlock;
use std::io;
use std::os::fd::RawFd;

/// A read the caller does itself: fill the buffer given to [`Export::direct_read`] with one
/// positional read of [`DirectRead::fd`] at [`DirectRead::offset`], then call
/// [`DirectRead::finish`].
#[derive(Debug)]
pub struct DirectRead {
    export: Export,
    fd: RawFd,
    /// The offset in `fd`.
    offset: u64,
    /// The export's offset.
    export_offset: u64,
    len: usize,
    /// The store block read, if the read is of one (its holder keeps `fd` open).
    from: Option<StoreBlock>,
}

impl Export {
    /// A read of `buf.len()` bytes at `offset` that the caller may issue itself into `buf`
    /// (the buffer it will read into: alignment decides between the device's direct and cached
    /// files). `None`: use [`Export::read`].
    #[must_use]
    pub fn direct_read(&self, offset: u64, buf: &[u8]) -> Option<DirectRead> {
        let (fd, at, from) = match self {
            Export::Volume(v) => (v.direct_read(offset, buf)?, offset, None),
            Export::Snapshot(s) => s.direct_read(offset, buf)?,
        };
        Some(DirectRead {
            export: self.clone(),
            fd,
            offset: at,
            export_offset: offset,
            len: buf.len(),
            from,
        })
    }
}

impl DirectRead {
    /// The file to read from. It stays open while this value lives (it holds the export).
    #[must_use]
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// The byte offset in that file (the export's offset for a volume, which is read in
    /// place; a store block's place for a preserved block of a snapshot).
    #[must_use]
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes to read.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is nothing to read.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Complete the read once `read` (the positional read's outcome: bytes read, or its error)
    /// filled `buf` (the same buffer). A short read is done again the engine's way; a
    /// snapshot read takes its second look, and reads from stores what was preserved meanwhile.
    ///
    /// # Errors
    /// As [`Export::read`]; an I/O error of `read` as `Io` on the export at its offset.
    pub fn finish(self, buf: &mut [u8], read: io::Result<usize>) -> Result<()> {
        let whole = matches!(read, Ok(n) if n == self.len) && buf.len() == self.len;
        match (&self.export, read) {
            (_, Err(e)) => {
                Err(crate::Error::io("read", self.export.object(), e).at(self.export_offset))
            }
            (e, Ok(_)) if !whole => e.read(buf, self.export_offset),
            (Export::Volume(v), Ok(_)) => {
                v.count_direct_read(self.len);
                Ok(())
            }
            (Export::Snapshot(s), Ok(_)) => {
                s.finish_direct_read(buf, self.export_offset, self.from.as_ref())
            }
        }
    }
}
