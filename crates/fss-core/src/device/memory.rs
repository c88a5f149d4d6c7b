//! A sparse in-memory device for tests and benchmarks.

use super::BlockDevice;
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const PAGE: u64 = 64 * 1024;
const SHARDS: usize = 32;

/// Counts of the I/O a [`MemDevice`] has served, for tests that assert how much was written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IoCounters {
    /// Calls to `read_at`.
    pub reads: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Calls to `write_at` (and zeroing writes).
    pub writes: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Calls to `flush`.
    pub flushes: u64,
    /// Calls to `discard`.
    pub discards: u64,
}

/// A sparse device held in memory: pages of 64 KiB allocated on first write, zeroes elsewhere.
/// Sharded locks keep writers on different pages apart. A growable device (for stores) extends
/// its length on writes past the end, up to a maximum.
#[derive(Debug)]
pub struct MemDevice {
    len: AtomicU64,
    max_len: u64,
    shards: Vec<Mutex<HashMap<u64, Box<[u8]>>>>,
    reads: AtomicU64,
    bytes_read: AtomicU64,
    writes: AtomicU64,
    bytes_written: AtomicU64,
    flushes: AtomicU64,
    discards: AtomicU64,
}

impl MemDevice {
    /// A fixed-size device of `len` bytes, all zero.
    #[must_use]
    pub fn new(len: u64) -> Self {
        Self::with_limits(len, len)
    }

    /// An empty device that grows on writes past its end, up to `max_len` bytes.
    #[must_use]
    pub fn growable(max_len: u64) -> Self {
        Self::with_limits(0, max_len)
    }

    fn with_limits(len: u64, max_len: u64) -> Self {
        MemDevice {
            len: AtomicU64::new(len),
            max_len,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            reads: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            discards: AtomicU64::new(0),
        }
    }

    /// The I/O served so far.
    #[must_use]
    pub fn counters(&self) -> IoCounters {
        IoCounters {
            reads: self.reads.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            discards: self.discards.load(Ordering::Relaxed),
        }
    }

    /// Bytes of memory held by allocated pages.
    #[must_use]
    pub fn allocated_bytes(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| lock(s).len() as u64 * PAGE)
            .sum()
    }

    fn shard(&self, page: u64) -> &Mutex<HashMap<u64, Box<[u8]>>> {
        &self.shards[(page % SHARDS as u64) as usize]
    }

    /// Visit each page-bounded piece of `[offset, offset+len)`: (page, offset in page, length,
    /// offset in the caller's buffer).
    fn pieces(offset: u64, len: u64, mut f: impl FnMut(u64, usize, usize, usize)) {
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let page = pos / PAGE;
            let in_page = (pos % PAGE) as usize;
            let n = ((PAGE - pos % PAGE).min(end - pos)) as usize;
            f(page, in_page, n, (pos - offset) as usize);
            pos += n as u64;
        }
    }

    fn check_range(&self, offset: u64, len: u64) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len.load(Ordering::Acquire) => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "range past the end of the memory device",
            )),
        }
    }

    fn zero_range(&self, offset: u64, len: u64) {
        Self::pieces(offset, len, |page, in_page, n, _| {
            let mut shard = lock(self.shard(page));
            if n as u64 == PAGE {
                shard.remove(&page);
            } else if let Some(p) = shard.get_mut(&page) {
                p[in_page..in_page + n].fill(0);
            }
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding a page lock leaves bytes, not invariants, behind.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl BlockDevice for MemDevice {
    fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.bytes_read
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        Self::pieces(offset, buf.len() as u64, |page, in_page, n, at| {
            let dst = &mut buf[at..at + n];
            match lock(self.shard(page)).get(&page) {
                Some(p) => dst.copy_from_slice(&p[in_page..in_page + n]),
                None => dst.fill(0),
            }
        });
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.max_len)
            .ok_or_else(|| io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error()))?;
        self.len.fetch_max(end, Ordering::AcqRel);
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.bytes_written
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        Self::pieces(offset, buf.len() as u64, |page, in_page, n, at| {
            let mut shard = lock(self.shard(page));
            let p = shard
                .entry(page)
                .or_insert_with(|| vec![0u8; PAGE as usize].into_boxed_slice());
            p[in_page..in_page + n].copy_from_slice(&buf[at..at + n]);
        });
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check_range(offset, len)?;
        self.discards.fetch_add(1, Ordering::Relaxed);
        self.zero_range(offset, len);
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check_range(offset, len)?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.zero_range(offset, len);
        Ok(())
    }

    fn describe(&self) -> String {
        "memory device".to_string()
    }

    fn allocation(&self, offset: u64, len: u64) -> io::Result<Vec<super::Extent>> {
        self.check_range(offset, len)?;
        let mut out = Vec::new();
        Self::pieces(offset, len, |page, in_page, n, at| {
            let data = lock(self.shard(page)).contains_key(&page);
            let _ = in_page;
            super::push_extent(
                &mut out,
                super::Extent {
                    offset: offset + at as u64,
                    len: n as u64,
                    data,
                },
            );
        });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_reads_zero_and_writes_cross_pages() {
        let d = MemDevice::new(4 * PAGE);
        let data: Vec<u8> = (0..PAGE + 100).map(|i| (i % 251) as u8).collect();
        d.write_at(&data, PAGE - 50).unwrap();
        let mut back = vec![1u8; data.len()];
        d.read_at(&mut back, PAGE - 50).unwrap();
        assert_eq!(back, data);
        let mut z = vec![1u8; 10];
        d.read_at(&mut z, 3 * PAGE).unwrap();
        assert_eq!(z, vec![0; 10]);
        assert_eq!(d.counters().writes, 1);
    }

    #[test]
    fn out_of_range_fails_and_growable_grows_to_max() {
        let d = MemDevice::new(100);
        assert!(d.write_at(&[1; 10], 95).is_err());
        assert!(d.read_at(&mut [0; 10], 95).is_err());
        let g = MemDevice::growable(8192);
        g.write_at(&[7; 100], 4000).unwrap();
        assert_eq!(g.len(), 4100);
        let e = g.write_at(&[7; 100], 8100).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(28));
    }

    #[test]
    fn discard_and_zeroes_read_back_zero() {
        let d = MemDevice::new(3 * PAGE);
        d.write_at(&vec![9u8; (3 * PAGE) as usize], 0).unwrap();
        d.discard(10, PAGE * 2).unwrap();
        d.write_zeroes(PAGE * 2 + 20, 30).unwrap();
        let mut all = vec![0u8; (3 * PAGE) as usize];
        d.read_at(&mut all, 0).unwrap();
        assert!(all[..10].iter().all(|&b| b == 9));
        assert!(all[10..(2 * PAGE + 10) as usize].iter().all(|&b| b == 0));
        assert!(all[(2 * PAGE + 20) as usize..(2 * PAGE + 50) as usize]
            .iter()
            .all(|&b| b == 0));
        assert_eq!(all[(2 * PAGE + 50) as usize], 9);
    }
}
