//! A device wrapper that fails on a countdown, for tests of the failure policy.

use super::BlockDevice;
use std::io;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

/// Which error a [`FaultDevice`] injects once its countdown runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// EIO.
    Io,
    /// ENOSPC.
    NoSpace,
}

/// Wraps a device; after `countdown` more writes (or flushes) succeed, every later one fails
/// with the chosen [`Fault`] until [`FaultDevice::heal`] is called. Reads always pass.
#[derive(Debug)]
pub struct FaultDevice<D> {
    inner: D,
    countdown: AtomicI64,
    fault: Mutex<Fault>,
}

impl<D: BlockDevice> FaultDevice<D> {
    /// Wrap `inner` with no fault armed.
    pub fn new(inner: D) -> Self {
        FaultDevice {
            inner,
            countdown: AtomicI64::new(i64::MAX),
            fault: Mutex::new(Fault::Io),
        }
    }

    /// After `after` more successful writes or flushes, fail with `fault`.
    pub fn arm(&self, after: u32, fault: Fault) {
        *self
            .fault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fault;
        self.countdown.store(i64::from(after), Ordering::SeqCst);
    }

    /// Stop failing.
    pub fn heal(&self) {
        self.countdown.store(i64::MAX, Ordering::SeqCst);
    }

    /// The wrapped device.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    fn tick(&self) -> io::Result<()> {
        if self.countdown.fetch_sub(1, Ordering::SeqCst) > 0 {
            return Ok(());
        }
        self.countdown.store(0, Ordering::SeqCst);
        let errno = match *self
            .fault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            Fault::Io => rustix::io::Errno::IO,
            Fault::NoSpace => rustix::io::Errno::NOSPC,
        };
        Err(io::Error::from_raw_os_error(errno.raw_os_error()))
    }
}

impl<D: BlockDevice> BlockDevice for FaultDevice<D> {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.tick()?;
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.tick()?;
        self.inner.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.tick()?;
        self.inner.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.tick()?;
        self.inner.write_zeroes(offset, len)
    }
    fn describe(&self) -> String {
        format!("{} (fault injection)", self.inner.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::MemDevice;

    #[test]
    fn fails_after_countdown_until_healed() {
        let d = FaultDevice::new(MemDevice::new(4096));
        d.arm(2, Fault::NoSpace);
        d.write_at(&[1], 0).unwrap();
        d.flush().unwrap();
        assert_eq!(d.write_at(&[1], 0).unwrap_err().raw_os_error(), Some(28));
        assert_eq!(d.write_at(&[1], 0).unwrap_err().raw_os_error(), Some(28));
        d.heal();
        d.write_at(&[1], 0).unwrap();
    }
}
