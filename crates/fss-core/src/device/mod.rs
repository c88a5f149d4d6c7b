//! The one narrow I/O seam between the engine and storage.
//!
//! Everything the engine reads or writes (the origin volume and every store) goes through
//! [`BlockDevice`]: a length, positional reads and writes, flush, discard. Implementations:
//!
//! ```text
//!                 BlockDevice (len / read_at / write_at / flush / discard / write_zeroes)
//!                /                      |                         \
//!   FileDevice (regular file or    MemDevice (sparse, in       FaultDevice (wraps another;
//!   raw block device; pread/       memory; counts I/O for      fails on a countdown with
//!   pwrite, optional O_DIRECT)     tests and benchmarks)       EIO or ENOSPC, for tests)
//!
//!   CrashDevice (sparse, in memory; remembers the writes since the last flush and builds the
//!   image a power cut would leave with any subset of them surviving, for crash tests)
//! ```

mod aligned;
mod crash;
mod create;
mod fault;
mod file;
mod holes;
mod memory;
mod reserve;
mod uring;

pub use aligned::{is_aligned, AlignedBuf, DIRECT_ALIGN};
pub use crash::{CrashDevice, CrashHook, CrashOp, CrashPoint, Piece};
pub use fault::{Fault, FaultDevice};
pub use file::{FileDevice, OpenOptions, DIRECT_READ_MIN, DIRECT_WRITE_MIN, FILE_MODE};
pub use memory::{IoCounters, MemDevice};
pub use uring::{read_all, BatchError, BatchRead};

use std::io;
use std::os::fd::BorrowedFd;

/// A byte-addressed device with positional I/O. Implementations must be safe to use from many
/// threads at once; writes to disjoint ranges must not interfere.
pub trait BlockDevice: Send + Sync {
    /// The device's current length in bytes.
    fn len(&self) -> u64;

    /// Whether the device has no bytes at all.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fill `buf` from `offset`. Fails (never short-reads) if the range is not all there.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// As [`BlockDevice::read_at`], but through the page cache where the device can choose:
    /// for reads whose pages are about to be written (pre-images) or that stream beside reads
    /// of other files (the volume's part of a snapshot read), where cached pages and readahead
    /// pay. The default is `read_at`.
    fn read_at_cached(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_at(buf, offset)
    }

    /// As [`BlockDevice::write_at`], but through the page cache where the device can choose:
    /// for writes over pages just read into it (the pre-images of a first overwrite). The
    /// default is `write_at`.
    fn write_at_cached(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_at(buf, offset)
    }

    /// Write all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Make every completed write durable.
    fn flush(&self) -> io::Result<()>;

    /// Tell the device `len` bytes at `offset` are no longer needed; they read as zeroes after.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;

    /// Make `len` bytes at `offset` read as zeroes. The default writes zero buffers.
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        write_zero_buffers(self, offset, len)
    }

    /// A short description for messages: a path, or "memory".
    fn describe(&self) -> String;

    /// A descriptor from which one positional read of `buf.len()` bytes at `offset`, into
    /// `buf` itself, gives the bytes [`BlockDevice::read_at`] would: for callers that put many
    /// reads in flight at once ([`read_all`]). `None` (the default, and for wrappers that must
    /// see every read): use `read_at`.
    fn read_source(&self, _offset: u64, _buf: &[u8]) -> Option<BorrowedFd<'_>> {
        None
    }

    /// Which parts of `[offset, offset + len)` hold data (true) or are holes that read as zeroes
    /// (false), as consecutive extents covering the range. The default: all data.
    ///
    /// # Errors
    /// The device could not be asked.
    fn allocation(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        Ok(vec![Extent {
            offset,
            len,
            data: true,
        }])
    }

    /// Bytes the device can still grow by: the free space of the file system holding a
    /// regular file. `None` when growth is not bounded that way (a raw device, memory).
    ///
    /// # Errors
    /// The device could not be asked.
    fn space_available(&self) -> io::Result<Option<u64>> {
        Ok(None)
    }

    /// Writes up to byte `end` are coming: a growable device that can allocates room now, up
    /// to `end` and ahead of it but never past `cap`, so that those writes land on allocated
    /// space instead of filling holes (on ext4 a direct write into a hole holds the file's
    /// inode lock exclusively until the disk is done, so writers queue; into allocated space
    /// they go in parallel). Advisory: the default, and any failure, changes nothing.
    fn reserve(&self, _end: u64, _cap: u64) {}
}

/// A run of bytes with one allocation state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Start, in bytes.
    pub offset: u64,
    /// Length, in bytes.
    pub len: u64,
    /// Whether it holds data (or, for change maps, whether it changed).
    pub data: bool,
}

/// Append an extent, merging it with the last one if they touch and agree.
pub fn push_extent(v: &mut Vec<Extent>, e: Extent) {
    if e.len == 0 {
        return;
    }
    match v.last_mut() {
        Some(last) if last.data == e.data && last.offset + last.len == e.offset => {
            last.len += e.len;
        }
        _ => v.push(e),
    }
}

/// Zero a range by writing zero-filled buffers; the fallback for devices without a zeroing call.
pub(crate) fn write_zero_buffers<D: BlockDevice + ?Sized>(
    dev: &D,
    mut offset: u64,
    len: u64,
) -> io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeroes = vec![0u8; usize::try_from(len.min(CHUNK)).unwrap_or(1 << 20)];
    let end = offset + len;
    while offset < end {
        let n = (end - offset).min(zeroes.len() as u64);
        dev.write_at(&zeroes[..n as usize], offset)?;
        offset += n;
    }
    Ok(())
}

// Every method is forwarded, including those with defaults: a default here would silently
// replace the inner device's override (an `Arc<dyn BlockDevice>` resolves to this impl), as
// happened to `read_at_cached`/`write_at_cached`. The lint makes a forgotten one a build error.
#[deny(clippy::missing_trait_methods)]
impl<T: BlockDevice + ?Sized> BlockDevice for std::sync::Arc<T> {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn is_empty(&self) -> bool {
        (**self).is_empty()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_at(buf, offset)
    }
    fn read_at_cached(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_at_cached(buf, offset)
    }
    fn write_at_cached(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_at_cached(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        (**self).flush()
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        (**self).discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        (**self).write_zeroes(offset, len)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn read_source(&self, offset: u64, buf: &[u8]) -> Option<BorrowedFd<'_>> {
        (**self).read_source(offset, buf)
    }
    fn allocation(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        (**self).allocation(offset, len)
    }
    fn space_available(&self) -> io::Result<Option<u64>> {
        (**self).space_available()
    }
    fn reserve(&self, end: u64, cap: u64) {
        (**self).reserve(end, cap);
    }
}

#[cfg(test)]
mod page_cache_tests;
#[cfg(test)]
mod tests;
