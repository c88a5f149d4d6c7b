//! A volume seen as a block device, so that a restore writes onto it through the engine.

use fss_core::device::BlockDevice;
use fss_core::Volume;

/// A volume seen as a block device, for restoring onto it through the engine.
pub(crate) struct VolumeTarget(pub(crate) Volume);

fn core_io(e: fss_core::Error) -> std::io::Error {
    let kind = std::io::Error::from_raw_os_error(e.errno()).kind();
    std::io::Error::new(kind, e)
}

impl BlockDevice for VolumeTarget {
    fn len(&self) -> u64 {
        self.0.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.read(buf, offset).map_err(core_io)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.0.write(buf, offset).map_err(core_io)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.0.flush().map_err(core_io)
    }
    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.0.discard(offset, len).map_err(core_io)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.0.write_zeroes(offset, len).map_err(core_io)
    }
    fn describe(&self) -> String {
        format!("volume {}", self.0.name())
    }
    fn allocation(&self, offset: u64, len: u64) -> std::io::Result<Vec<fss_core::device::Extent>> {
        self.0.allocation(offset, len).map_err(core_io)
    }
}
