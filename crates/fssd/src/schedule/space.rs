//! `--min-free`: each store file fss makes is wrapped in a [`Watched`] device that, before
//! every write, compares the free space of its file system with the floor schedules ask for
//! there, and wakes the reclaimer thread ([`super::timer`]) when it is below. The engine knows
//! nothing of it: it sees a block device.
//!
//! The write does not wait for the reclaimer: it runs under the engine's shared chains lock,
//! and deleting a snapshot takes that lock exclusively, so a wait would only end in its
//! timeout. The floor itself is the margin the reclaimer works in; it deletes the schedule's
//! oldest snapshots (taking the lock once the writes in flight are done) while later writes
//! use the margin.

use fss_core::device::{BlockDevice, Extent};
use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::time::Duration;

/// The floors by file system, and the reclaimer's wake-up.
#[derive(Debug, Default)]
pub struct SpaceWatch {
    /// File system (`st_dev`) -> the largest `--min-free` asked on it.
    floors: RwLock<HashMap<u64, u64>>,
    /// Set by a write that found too little space, cleared by the reclaimer.
    pending: Mutex<bool>,
    wake: Condvar,
    /// Volumes whose schedule is below its floor with only its newest snapshot left, said
    /// once until that changes.
    stuck: Mutex<std::collections::HashSet<String>>,
}

impl SpaceWatch {
    /// Replace the floors (after schedules change).
    pub fn set_floors(&self, floors: HashMap<u64, u64>) {
        *self.floors.write().unwrap_or_else(PoisonError::into_inner) = floors;
    }

    /// The floor on file system `fs`, if a schedule set one.
    #[must_use]
    pub fn floor(&self, fs: u64) -> Option<u64> {
        self.floors
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&fs)
            .copied()
    }

    /// Wake the reclaimer.
    pub fn signal(&self) {
        *self.pending.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.wake.notify_all();
    }

    /// Wait up to `timeout` for [`SpaceWatch::signal`]; whether it came.
    pub fn wait(&self, timeout: Duration) -> bool {
        let guard = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut guard, _) = self
            .wake
            .wait_timeout_while(guard, timeout, |p| !*p)
            .unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *guard, false)
    }

    /// Whether to say that `volume`'s schedule is stuck below its floor (`true` once, until
    /// [`SpaceWatch::unstuck`]).
    pub fn stuck(&self, volume: &str) -> bool {
        self.stuck
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(volume.to_string())
    }

    /// `volume`'s schedule is no longer stuck.
    pub fn unstuck(&self, volume: &str) {
        self.stuck
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(volume);
    }

    /// `dev`, the store file at `path`, watched.
    pub fn wrap(self: &Arc<Self>, dev: Arc<dyn BlockDevice>, path: &Path) -> Arc<dyn BlockDevice> {
        match file_system_of(path) {
            Some(fs) => Arc::new(Watched {
                inner: dev,
                watch: Arc::clone(self),
                fs,
            }),
            None => dev,
        }
    }
}

/// The file system (`st_dev`) holding `path`, or its directory when it does not exist yet.
#[must_use]
pub fn file_system_of(path: &Path) -> Option<u64> {
    std::fs::metadata(path)
        .ok()
        .or_else(|| std::fs::metadata(path.parent()?).ok())
        .map(|m| m.dev())
}

/// Bytes an unprivileged user may still write on the file system holding `dir`.
///
/// # Errors
/// `statvfs` failed.
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// A store's device whose writes check the floor of its file system first.
struct Watched {
    inner: Arc<dyn BlockDevice>,
    watch: Arc<SpaceWatch>,
    fs: u64,
}

impl Watched {
    fn check(&self, bytes: usize) {
        let Some(floor) = self.watch.floor(self.fs) else {
            return;
        };
        if let Ok(Some(free)) = self.inner.space_available() {
            if free < floor.saturating_add(bytes as u64) {
                self.watch.signal();
            }
        }
    }
}

// Every method is forwarded (see the `Arc` impl in fss-core for why defaults must not be
// left in place).
#[deny(clippy::missing_trait_methods)]
impl BlockDevice for Watched {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn read_at_cached(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at_cached(buf, offset)
    }
    fn write_at_cached(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check(buf.len());
        self.inner.write_at_cached(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check(buf.len());
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.write_zeroes(offset, len)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn read_source(&self, offset: u64, buf: &[u8]) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.inner.read_source(offset, buf)
    }
    fn allocation(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        self.inner.allocation(offset, len)
    }
    fn space_available(&self) -> io::Result<Option<u64>> {
        self.inner.space_available()
    }
    fn reserve(&self, end: u64, cap: u64) {
        self.inner.reserve(end, cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fss_core::device::MemDevice;

    /// A device that reports a fixed amount of free space.
    struct Free(MemDevice, u64);

    impl BlockDevice for Free {
        fn len(&self) -> u64 {
            self.0.len()
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            self.0.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            self.0.write_at(buf, offset)
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
        fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
            self.0.discard(offset, len)
        }
        fn describe(&self) -> String {
            "free".into()
        }
        fn space_available(&self) -> io::Result<Option<u64>> {
            Ok(Some(self.1))
        }
    }

    #[test]
    fn a_write_below_the_floor_wakes_the_reclaimer() {
        let dir = tempfile::tempdir().unwrap();
        let fs = file_system_of(dir.path()).unwrap();
        let watch = Arc::new(SpaceWatch::default());
        let dev = watch.wrap(Arc::new(Free(MemDevice::new(1 << 20), 10_000)), dir.path());
        dev.write_at(&[1; 4096], 0).unwrap();
        assert!(!watch.wait(Duration::ZERO), "no floor: no signal");
        watch.set_floors(HashMap::from([(fs, 4096)]));
        dev.write_at(&[1; 4096], 0).unwrap();
        assert!(
            !watch.wait(Duration::ZERO),
            "4 KiB above a 4 KiB floor: no signal"
        );
        watch.set_floors(HashMap::from([(fs, 8192)]));
        dev.write_at(&[1; 4096], 4096).unwrap();
        assert!(watch.wait(Duration::ZERO), "below the floor: signalled");
        assert!(!watch.wait(Duration::ZERO), "taken once");
        let mut back = [0u8; 4096];
        dev.read_at(&mut back, 4096).unwrap();
        assert_eq!(back, [1; 4096]);
    }
}
