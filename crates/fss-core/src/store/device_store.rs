//! A transient store on any [`BlockDevice`]: slot `n` at byte `n * cluster_size`, records kept
//! in memory only (fss(4)'s own semantics). Fast, and gone after a restart.

use super::slots::Slots;
use super::{Store, StoreParams};
use crate::device::BlockDevice;
use crate::error::{Error, Result};
use std::sync::Arc;

/// A transient store on a device (memory, a file, a raw device).
pub struct DeviceStore {
    dev: Arc<dyn BlockDevice>,
    cluster_size: u64,
    slots: Slots,
    /// A file made for this store, removed when the snapshot is deleted.
    owned_path: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for DeviceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceStore")
            .field("dev", &self.dev.describe())
            .finish_non_exhaustive()
    }
}

impl DeviceStore {
    /// A store on `dev` for `params`. `fixed_size` says the device cannot grow (a raw device),
    /// so its length bounds the store.
    #[must_use]
    pub fn new(dev: Arc<dyn BlockDevice>, params: &StoreParams, fixed_size: bool) -> Self {
        let medium_max = fixed_size.then(|| dev.len());
        DeviceStore {
            dev,
            cluster_size: params.cluster_size,
            slots: Slots::new(0, params.max_bytes, medium_max),
            owned_path: None,
        }
    }

    /// The same store, whose file at `path` is removed when the snapshot is deleted.
    #[must_use]
    pub fn with_owned_path(mut self, path: std::path::PathBuf) -> Self {
        self.owned_path = Some(path);
        self
    }

    /// A factory for [`Volume::create_snapshot`](crate::Volume::create_snapshot): each
    /// snapshot gets a fresh growable memory device, limited by its `max_bytes`.
    pub fn in_memory(params: &StoreParams) -> Result<Box<dyn Store>> {
        let dev = Arc::new(crate::device::MemDevice::growable(u64::MAX));
        Ok(Box::new(DeviceStore::new(dev, params, false)))
    }

    fn slot_offset(&self, slot: u32, offset: u64) -> u64 {
        u64::from(slot) * self.cluster_size + offset
    }
}

impl Store for DeviceStore {
    fn describe(&self) -> String {
        format!("store on {}", self.dev.describe())
    }

    fn allocate_slot(&self, _cluster: u32) -> Result<u32> {
        let cs = self.cluster_size;
        self.slots.allocate(&self.describe(), |n| n * cs)
    }

    fn write_blocks(&self, _cluster: u32, slot: u32, first_block: u32, data: &[u8]) -> Result<()> {
        let off = self.slot_offset(slot, u64::from(first_block) * crate::geometry::BLOCK_SIZE);
        self.dev
            .write_at(data, off)
            .map_err(|e| Error::io("write pre-image to", self.describe(), e).at(off))
    }

    fn write_slot_run(
        &self,
        _clusters: &[u32],
        first_slot: u32,
        first_block: u32,
        data: &[u8],
        _cluster_size: u64,
    ) -> Result<()> {
        // Slots lie end to end here: one write (a 1 MiB first overwrite was 16 writes of
        // 64 KiB through the page cache: a copy each, and dirty pages that writeback and the
        // snapshot's deletion pay for later). A large one goes direct, into room allocated
        // ahead, so that direct writers do not queue on the inode lock. Small ones (a 4 KiB
        // pre-image in each of many clusters) leave the file sparse: unwritten extents split
        // around each of them would make the file slower to free.
        let off = self.slot_offset(
            first_slot,
            u64::from(first_block) * crate::geometry::BLOCK_SIZE,
        );
        if data.len() >= crate::device::DIRECT_WRITE_MIN {
            let cap = self.slots.limit().unwrap_or(u64::MAX);
            self.dev.reserve(off + data.len() as u64, cap);
        }
        self.dev
            .write_at(data, off)
            .map_err(|e| Error::io("write pre-image to", self.describe(), e).at(off))
    }

    fn read(&self, slot: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        let off = self.slot_offset(slot, offset);
        self.dev
            .read_at(buf, off)
            .map_err(|e| Error::io("read pre-image from", self.describe(), e).at(off))
    }

    fn read_slots(&self, slot: u32, offset: u64, buf: &mut [u8], _cluster_size: u64) -> Result<()> {
        // Slots lie end to end on the device: one read.
        self.read(slot, offset, buf)
    }

    fn read_source(
        &self,
        slot: u32,
        offset: u64,
        buf: &[u8],
    ) -> Option<(std::os::fd::BorrowedFd<'_>, u64)> {
        let off = self.slot_offset(slot, offset);
        Some((self.dev.read_source(off, buf)?, off))
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn used_bytes(&self) -> u64 {
        u64::from(self.slots.count()) * self.cluster_size
    }

    fn max_bytes(&self) -> Option<u64> {
        self.slots.limit()
    }

    fn check_room(&self, new_slots: u64, new_blocks: u64) -> Result<()> {
        let free = self
            .dev
            .space_available()
            .map_err(|e| Error::io("make room in", self.describe(), e))?;
        let cluster = self.cluster_size;
        self.slots.check_room(
            &self.describe(),
            |n| n * cluster,
            new_slots,
            new_blocks * crate::geometry::BLOCK_SIZE,
            free,
        )
    }

    fn set_max_bytes(&self, max: Option<u64>) -> Result<()> {
        self.slots.set_max(&self.describe(), max, self.used_bytes())
    }

    fn is_persistent(&self) -> bool {
        false
    }

    fn destroy(&self) -> Result<()> {
        if let Some(p) = &self.owned_path {
            match std::fs::remove_file(p) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(Error::io("remove", self.describe(), e)),
            }
        }
        let len = self.dev.len();
        self.dev
            .discard(0, len)
            .map_err(|e| Error::io("release", self.describe(), e))
    }
}
