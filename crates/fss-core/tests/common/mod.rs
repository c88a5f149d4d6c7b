//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use fss_core::device::{BlockDevice, MemDevice};
use fss_core::store::{DeviceStore, Store, StoreParams};
use fss_core::Result;
use std::sync::{Arc, Mutex};

/// A memory store that claims to be persistent, so tests can drive the persistent chain
/// before durable stores exist. Records its device so tests can count its I/O.
pub struct TestStore {
    inner: DeviceStore,
    persistent: bool,
}

impl Store for TestStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn allocate_slot(&self, cluster: u32) -> Result<u32> {
        self.inner.allocate_slot(cluster)
    }
    fn write_blocks(&self, cluster: u32, slot: u32, first: u32, data: &[u8]) -> Result<()> {
        self.inner.write_blocks(cluster, slot, first, data)
    }
    fn read(&self, slot: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.inner.read(slot, offset, buf)
    }
    fn read_slots(&self, slot: u32, offset: u64, buf: &mut [u8], cluster: u64) -> Result<()> {
        self.inner.read_slots(slot, offset, buf, cluster)
    }
    fn sync(&self) -> Result<()> {
        self.inner.sync()
    }
    fn used_bytes(&self) -> u64 {
        self.inner.used_bytes()
    }
    fn max_bytes(&self) -> Option<u64> {
        self.inner.max_bytes()
    }
    fn set_max_bytes(&self, max: Option<u64>) -> Result<()> {
        self.inner.set_max_bytes(max)
    }
    fn is_persistent(&self) -> bool {
        self.persistent
    }
    fn destroy(&self) -> Result<()> {
        self.inner.destroy()
    }
}

/// Store devices by snapshot name, in creation order.
pub type DeviceLog = Arc<Mutex<Vec<(String, Arc<MemDevice>)>>>;

/// Builds stores on memory devices and remembers each device by snapshot name.
#[derive(Default, Clone)]
pub struct StoreFactory {
    pub devices: DeviceLog,
}

impl StoreFactory {
    pub fn make(&self, params: &StoreParams) -> Result<Box<dyn Store>> {
        let dev = Arc::new(MemDevice::growable(u64::MAX));
        self.devices
            .lock()
            .unwrap()
            .push((params.snapshot.clone(), Arc::clone(&dev)));
        let dyn_dev: Arc<dyn BlockDevice> = dev;
        Ok(Box::new(TestStore {
            inner: DeviceStore::new(dyn_dev, params, false),
            persistent: params.persistent,
        }))
    }

    /// Bytes written so far to the store of `snapshot`.
    pub fn bytes_written(&self, snapshot: &str) -> u64 {
        self.device(snapshot).counters().bytes_written
    }

    pub fn device(&self, snapshot: &str) -> Arc<MemDevice> {
        let d = self.devices.lock().unwrap();
        Arc::clone(&d.iter().rev().find(|(n, _)| n == snapshot).unwrap().1)
    }

    /// Bytes written to all stores.
    pub fn total_bytes_written(&self) -> u64 {
        self.devices
            .lock()
            .unwrap()
            .iter()
            .map(|(_, d)| d.counters().bytes_written)
            .sum()
    }
}

/// Deterministic bytes for a write: depends on the seed and the absolute offset, never all zero.
pub fn pattern(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| {
            let x = (offset + i).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ seed.wrapping_mul(0xD6E8_FEB8_6659_FD93);
            ((x >> 29) as u8) | 1
        })
        .collect()
}
