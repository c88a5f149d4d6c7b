//! Writes that preserved into a persistent store are acknowledged before the store's flush and
//! held back from the volume until it: the volume never changes before the pre-image is
//! durable, reads and flushes wait for held writes, and a failed store flush invalidates the
//! snapshot before the volume changes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use fss_core::device::{BlockDevice, Extent, Fault, FaultDevice, MemDevice};
use fss_core::store::{FileStore, Store};
use fss_core::{OnStoreError, SnapshotOptions, SnapshotState, Volume};
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

const LEN: u64 = 4 << 20;
const BS: usize = 4096;

/// A memory device whose flushes wait while the gate is closed.
#[derive(Debug)]
struct GatedDevice {
    inner: MemDevice,
    closed: Mutex<bool>,
    opened: Condvar,
    flushes: AtomicU32,
}

impl GatedDevice {
    fn new() -> Self {
        GatedDevice {
            inner: MemDevice::growable(u64::MAX),
            closed: Mutex::new(false),
            opened: Condvar::new(),
            flushes: AtomicU32::new(0),
        }
    }
    fn close(&self) {
        *self.closed.lock().unwrap() = true;
    }
    fn open(&self) {
        *self.closed.lock().unwrap() = false;
        self.opened.notify_all();
    }
}

impl BlockDevice for GatedDevice {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        let mut c = self.closed.lock().unwrap();
        while *c {
            c = self.opened.wait(c).unwrap();
        }
        drop(c);
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.inner.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.write_zeroes(offset, len)
    }
    fn describe(&self) -> String {
        "gated memory device".into()
    }
    fn allocation(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        self.inner.allocation(offset, len)
    }
}

fn persistent(policy: OnStoreError) -> SnapshotOptions {
    SnapshotOptions {
        persistent: true,
        on_store_error: policy,
        ..SnapshotOptions::default()
    }
}

fn setup(store_dev: Arc<dyn BlockDevice>, policy: OnStoreError) -> (Volume, Arc<MemDevice>) {
    let vol_dev = Arc::new(MemDevice::new(LEN));
    let d: Arc<dyn BlockDevice> = vol_dev.clone();
    let vol = Volume::new("vol", d);
    vol.write(&vec![1u8; LEN as usize], 0).unwrap();
    vol.flush().unwrap();
    vol.create_snapshot("s", &persistent(policy), move |p| {
        Ok(Box::new(FileStore::create(store_dev, p, false, None)?) as Box<dyn Store>)
    })
    .unwrap();
    (vol, vol_dev)
}

fn byte_at(dev: &dyn BlockDevice, at: u64) -> u8 {
    let mut b = [0u8; 1];
    dev.read_at(&mut b, at).unwrap();
    b[0]
}

#[test]
fn the_volume_changes_only_after_the_pre_image_is_durable_and_reads_wait_for_it() {
    let gate = Arc::new(GatedDevice::new());
    let (vol, vol_dev) = setup(gate.clone(), OnStoreError::Invalidate);
    let flushes = gate.flushes.load(Ordering::SeqCst);
    gate.close();
    // Acknowledged although the store cannot flush yet...
    vol.write(&[2u8; BS], 8 * BS as u64).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    // ...but not on the volume device, and the snapshot already reads the pre-image.
    assert_eq!(byte_at(&*vol_dev, 8 * BS as u64), 1, "volume changed first");
    let mut buf = vec![0u8; BS];
    vol.snapshot("s")
        .unwrap()
        .read(&mut buf, 8 * BS as u64)
        .unwrap();
    assert!(buf.iter().all(|&b| b == 1));
    // A read of the held range and a flush wait for the store; another range does not.
    let v2 = vol.clone();
    let reader = std::thread::spawn(move || {
        let mut b = vec![0u8; BS];
        v2.read(&mut b, 8 * BS as u64).unwrap();
        b
    });
    let v3 = vol.clone();
    let flusher = std::thread::spawn(move || v3.flush());
    let mut other = vec![0u8; BS];
    vol.read(&mut other, 0).unwrap();
    assert!(other.iter().all(|&b| b == 1));
    std::thread::sleep(Duration::from_millis(50));
    assert!(!reader.is_finished(), "a read of a held write did not wait");
    assert!(
        !flusher.is_finished(),
        "a flush did not wait for a held write"
    );
    gate.open();
    assert!(reader.join().unwrap().iter().all(|&b| b == 2));
    flusher.join().unwrap().unwrap();
    assert_eq!(byte_at(&*vol_dev, 8 * BS as u64), 2);
    assert!(gate.flushes.load(Ordering::SeqCst) > flushes);
}

#[test]
fn many_held_writes_share_one_store_flush() {
    let gate = Arc::new(GatedDevice::new());
    let (vol, _) = setup(gate.clone(), OnStoreError::Invalidate);
    gate.close();
    // The first write's batch is stuck in its flush; the next 50 queue behind it.
    for i in 0..51u64 {
        vol.write(&[3u8; BS], i * 65536).unwrap();
    }
    let before = gate.flushes.load(Ordering::SeqCst);
    gate.open();
    vol.flush().unwrap();
    let used = gate.flushes.load(Ordering::SeqCst) - before;
    assert!(used <= 3, "51 held writes took {used} store flushes");
    let mut buf = vec![0u8; LEN as usize];
    vol.read(&mut buf, 0).unwrap();
    for i in 0..51usize {
        assert_eq!(buf[i * 65536], 3);
    }
    vol.snapshot("s").unwrap().read(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|&b| b == 1));
}

#[test]
fn a_batch_of_large_held_writes_lands_whole() {
    let gate = Arc::new(GatedDevice::new());
    let (vol, vol_dev) = setup(gate.clone(), OnStoreError::Invalidate);
    gate.close();
    // The first is stuck in its store flush; the next six gather into one batch of large
    // writes that share no byte, which the committer applies from several threads.
    let big = 512 << 10;
    for i in 0..7u8 {
        vol.write(&vec![10 + i; big], u64::from(i) * big as u64)
            .unwrap();
    }
    gate.open();
    vol.flush().unwrap();
    let mut buf = vec![0u8; LEN as usize];
    vol_dev.read_at(&mut buf, 0).unwrap();
    for (i, chunk) in buf.chunks(big).enumerate() {
        let want = if i < 7 { 10 + i as u8 } else { 1 };
        assert!(chunk.iter().all(|&b| b == want), "piece {i} of the volume");
    }
    vol.snapshot("s").unwrap().read(&mut buf, 0).unwrap();
    assert!(
        buf.iter().all(|&b| b == 1),
        "the snapshot kept the old bytes"
    );
}

#[test]
fn a_later_write_of_a_held_range_lands_after_it() {
    let gate = Arc::new(GatedDevice::new());
    let (vol, vol_dev) = setup(gate.clone(), OnStoreError::Invalidate);
    gate.close();
    vol.write(&[4u8; BS], 0).unwrap();
    // Preserves nothing more (block 0 is held), so it is not held itself: it must wait.
    let v2 = vol.clone();
    let second = std::thread::spawn(move || v2.write(&[5u8; 100], 10));
    std::thread::sleep(Duration::from_millis(50));
    assert!(!second.is_finished(), "the second write did not wait");
    gate.open();
    second.join().unwrap().unwrap();
    vol.flush().unwrap();
    assert_eq!(byte_at(&*vol_dev, 0), 4);
    assert_eq!(byte_at(&*vol_dev, 10), 5);
    assert_eq!(byte_at(&*vol_dev, 110), 4);
}

#[test]
fn a_failed_store_flush_invalidates_the_snapshot_before_the_volume_changes() {
    let store = Arc::new(FaultDevice::new(MemDevice::growable(u64::MAX)));
    let (vol, vol_dev) = setup(store.clone(), OnStoreError::Invalidate);
    // The pre-image write passes, the record's log write fails.
    store.arm(1, Fault::Io);
    vol.write(&[6u8; BS], 0).unwrap();
    vol.flush().unwrap();
    assert_eq!(byte_at(&*vol_dev, 0), 6, "the volume write was not applied");
    let info = vol.snapshot("s").unwrap().info();
    assert!(
        matches!(info.state, SnapshotState::Invalid(_)),
        "{:?}",
        info.state
    );
}

#[test]
fn fail_write_snapshots_are_flushed_inside_the_write() {
    let store = Arc::new(FaultDevice::new(MemDevice::growable(u64::MAX)));
    let (vol, vol_dev) = setup(store.clone(), OnStoreError::FailWrite);
    store.arm(1, Fault::Io);
    let e = vol.write(&[6u8; BS], 0).unwrap_err();
    assert!(e.to_string().contains("the volume is unchanged"), "{e}");
    vol.flush().unwrap();
    assert_eq!(byte_at(&*vol_dev, 0), 1);
    assert!(vol.snapshot("s").unwrap().is_valid());
}

#[test]
fn direct_reads_are_refused_over_held_writes() {
    use fss_core::device::{FileDevice, OpenOptions};
    use fss_core::export::Export;
    let dir = tempfile::tempdir().unwrap();
    let opts = OpenOptions {
        create_len: Some(LEN),
        direct_large: true,
        ..OpenOptions::default()
    };
    let vol_dev = FileDevice::open(&dir.path().join("v.img"), &opts).unwrap();
    let vol = Volume::new("vol", Arc::new(vol_dev));
    vol.write(&vec![1u8; LEN as usize], 0).unwrap();
    let gate = Arc::new(GatedDevice::new());
    let store_dev: Arc<dyn BlockDevice> = gate.clone();
    vol.create_snapshot("s", &persistent(OnStoreError::Invalidate), move |p| {
        Ok(Box::new(FileStore::create(store_dev, p, false, None)?) as Box<dyn Store>)
    })
    .unwrap();
    gate.close();
    vol.write(&[2u8; BS], 8 * BS as u64).unwrap();
    let export = Export::Volume(vol.clone());
    let buf = [0u8; BS];
    // Its bytes are not on the volume's file yet: only the engine's read may serve it.
    assert!(export.direct_read(8 * BS as u64, &buf).is_none());
    assert!(export.direct_read(7 * BS as u64 + 1, &buf).is_none());
    assert!(export.direct_read(0, &buf).is_some());
    gate.open();
    vol.flush().unwrap();
    assert!(export.direct_read(8 * BS as u64, &buf).is_some());
}
