//! A volume as a block device, so that a restore writes onto it through the engine; it counts
//! what it writes (a failed restore that wrote nothing left the volume as it was).

use fss_core::device::BlockDevice;
use fss_core::Volume;
use std::sync::atomic::{AtomicU64, Ordering};

/// A volume seen as a block device, for restoring onto it through the engine.
pub(crate) struct VolumeTarget {
    volume: Volume,
    /// Calls that changed the volume (writes, zeroes, discards).
    changes: AtomicU64,
    /// Data writes.
    data_writes: AtomicU64,
    /// Test hook `FSS_TEST_RESTORE_HALT_AFTER`: stop for good after this many data writes.
    halt_after: Option<u64>,
}

impl VolumeTarget {
    /// `volume` as a restore target; `halt_after` is the test hook (`None` in production).
    pub(crate) fn new(volume: Volume, halt_after: Option<u64>) -> Self {
        VolumeTarget {
            volume,
            changes: AtomicU64::new(0),
            data_writes: AtomicU64::new(0),
            halt_after,
        }
    }

    /// Whether anything was written to the volume.
    pub(crate) fn changed(&self) -> bool {
        self.changes.load(Ordering::Relaxed) > 0
    }

    fn count(&self) {
        self.changes.fetch_add(1, Ordering::Relaxed);
    }

    /// The test hook: after the chosen data write, wait until the daemon is killed.
    fn after_data_write(&self) {
        let Some(n) = self.halt_after else {
            return;
        };
        if self.data_writes.fetch_add(1, Ordering::Relaxed) + 1 == n {
            tracing::warn!(volume = %self.volume.name(), writes = n,
                "test hook: restore halted after {n} data writes; waiting to be killed");
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
    }
}

fn core_io(e: fss_core::Error) -> std::io::Error {
    let kind = std::io::Error::from_raw_os_error(e.errno()).kind();
    std::io::Error::new(kind, e)
}

impl BlockDevice for VolumeTarget {
    fn len(&self) -> u64 {
        self.volume.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.volume.read(buf, offset).map_err(core_io)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.count();
        self.volume.write(buf, offset).map_err(core_io)?;
        self.after_data_write();
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        self.volume.flush().map_err(core_io)
    }
    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.count();
        self.volume.discard(offset, len).map_err(core_io)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.count();
        self.volume.write_zeroes(offset, len).map_err(core_io)
    }
    fn describe(&self) -> String {
        format!("volume {}", self.volume.name())
    }
    fn allocation(&self, offset: u64, len: u64) -> std::io::Result<Vec<fss_core::device::Extent>> {
        self.volume.allocation(offset, len).map_err(core_io)
    }
}
