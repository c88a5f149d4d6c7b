//! What front-ends serve: a named block device that is either a volume (read-write) or a
//! snapshot (read-only), and a catalog to find them by name. Front-ends (NBD, FUSE) get these
//! from the daemon and never touch state or stores.

use crate::device::Extent;
use crate::error::{Error, ErrorKind, Result};
use crate::{Snapshot, Volume};

/// A volume or a snapshot, as a block device.
#[derive(Debug, Clone)]
pub enum Export {
    /// Read-write.
    Volume(Volume),
    /// Read-only.
    Snapshot(Snapshot),
}

/// A line of a catalog listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// The name (NBD export name, FUSE file name).
    pub name: String,
    /// A sentence for people ("volume, 1 GiB" / "snapshot of vol0 taken ...").
    pub description: String,
    /// Whether it is a snapshot.
    pub read_only: bool,
    /// Its length in bytes.
    pub len: u64,
}

/// Where front-ends find exports by name.
pub trait Catalog: Send + Sync {
    /// The export named `name`, if any.
    fn lookup(&self, name: &str) -> Option<Export>;
    /// Every export, in a stable order.
    fn list(&self) -> Vec<ExportInfo>;
}

impl Export {
    /// Its name.
    #[must_use]
    pub fn name(&self) -> &str {
        match self {
            Export::Volume(v) => v.name(),
            Export::Snapshot(s) => s.name(),
        }
    }

    /// Its length in bytes.
    #[must_use]
    pub fn len(&self) -> u64 {
        match self {
            Export::Volume(v) => v.len(),
            Export::Snapshot(s) => s.len(),
        }
    }

    /// Whether it has no bytes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether writes are refused.
    #[must_use]
    pub fn is_read_only(&self) -> bool {
        matches!(self, Export::Snapshot(_))
    }

    /// Read `buf` at `offset`.
    ///
    /// # Errors
    /// As [`Volume::read`] / [`Snapshot::read`].
    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match self {
            Export::Volume(v) => v.read(buf, offset),
            Export::Snapshot(s) => s.read(buf, offset),
        }
    }

    /// Its name in error messages ("volume 'NAME'", "snapshot 'NAME'"), as the engine's own.
    pub(crate) fn object(&self) -> String {
        match self {
            Export::Volume(v) => v.object(),
            Export::Snapshot(s) => s.state().label.clone(),
        }
    }

    fn writable(&self, op: &'static str) -> Result<&Volume> {
        match self {
            Export::Volume(v) => Ok(v),
            Export::Snapshot(s) => Err(Error::new(
                ErrorKind::ReadOnly,
                op,
                format!("snapshot '{}'", s.name()),
                "snapshots are read-only; write to the volume instead",
            )),
        }
    }

    /// Write `buf` at `offset` (volumes only).
    ///
    /// # Errors
    /// `ReadOnly` on a snapshot, else as [`Volume::write`].
    pub fn write(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.writable("write")?.write(buf, offset)
    }

    /// Discard a range (volumes only).
    ///
    /// # Errors
    /// `ReadOnly` on a snapshot, else as [`Volume::discard`].
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.writable("discard")?.discard(offset, len)
    }

    /// Zero a range (volumes only).
    ///
    /// # Errors
    /// `ReadOnly` on a snapshot, else as [`Volume::write_zeroes`].
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.writable("write zeroes to")?.write_zeroes(offset, len)
    }

    /// Make completed writes durable (a snapshot has nothing to flush).
    ///
    /// # Errors
    /// As [`Volume::flush`].
    pub fn flush(&self) -> Result<()> {
        match self {
            Export::Volume(v) => v.flush(),
            Export::Snapshot(_) => Ok(()),
        }
    }

    /// Data and holes of a range: the device's for a volume; for a snapshot, everything is
    /// reported as data (its bytes come from several places).
    ///
    /// # Errors
    /// `OutOfRange`, `Io`.
    pub fn allocation(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        match self {
            Export::Volume(v) => v.allocation(offset, len),
            Export::Snapshot(s) => {
                if offset.checked_add(len).is_none_or(|e| e > s.len()) {
                    return Err(Error::new(
                        ErrorKind::OutOfRange,
                        "map",
                        format!("snapshot '{}'", s.name()),
                        "the range ends past the snapshot",
                    ));
                }
                Ok(vec![Extent {
                    offset,
                    len,
                    data: true,
                }])
            }
        }
    }
}
