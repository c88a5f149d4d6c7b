//! The `Arc` forwarding impl must reach every method of the inner device, overridden or not.

use super::{BlockDevice, Extent};
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

/// Records the name of every method called on it, and overrides every one of them.
#[derive(Default)]
struct Recorder(Mutex<Vec<&'static str>>);

impl Recorder {
    fn note(&self, what: &'static str) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(what);
    }
    fn calls(&self) -> Vec<&'static str> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl BlockDevice for Recorder {
    fn len(&self) -> u64 {
        self.note("len");
        1 << 20
    }
    fn is_empty(&self) -> bool {
        self.note("is_empty");
        false
    }
    fn read_at(&self, _buf: &mut [u8], _offset: u64) -> io::Result<()> {
        self.note("read_at");
        Ok(())
    }
    fn read_at_cached(&self, _buf: &mut [u8], _offset: u64) -> io::Result<()> {
        self.note("read_at_cached");
        Ok(())
    }
    fn write_at_cached(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        self.note("write_at_cached");
        Ok(())
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        self.note("write_at");
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        self.note("flush");
        Ok(())
    }
    fn discard(&self, _offset: u64, _len: u64) -> io::Result<()> {
        self.note("discard");
        Ok(())
    }
    fn write_zeroes(&self, _offset: u64, _len: u64) -> io::Result<()> {
        self.note("write_zeroes");
        Ok(())
    }
    fn describe(&self) -> String {
        self.note("describe");
        String::new()
    }
    fn allocation(&self, _offset: u64, _len: u64) -> io::Result<Vec<Extent>> {
        self.note("allocation");
        Ok(Vec::new())
    }
    fn space_available(&self) -> io::Result<Option<u64>> {
        self.note("space_available");
        Ok(None)
    }
}

/// Calls every trait method once through `dev`, in a fixed order.
fn call_all(dev: &dyn BlockDevice) -> io::Result<()> {
    let mut buf = [0u8; 512];
    dev.len();
    dev.is_empty();
    dev.read_at(&mut buf, 0)?;
    dev.read_at_cached(&mut buf, 0)?;
    dev.write_at_cached(&buf, 0)?;
    dev.write_at(&buf, 0)?;
    dev.flush()?;
    dev.discard(0, 512)?;
    dev.write_zeroes(0, 512)?;
    dev.describe();
    dev.allocation(0, 512)?;
    dev.space_available()?;
    Ok(())
}

const ALL: [&str; 12] = [
    "len",
    "is_empty",
    "read_at",
    "read_at_cached",
    "write_at_cached",
    "write_at",
    "flush",
    "discard",
    "write_zeroes",
    "describe",
    "allocation",
    "space_available",
];

#[test]
fn arc_dyn_forwards_every_method_to_the_inner_device() -> io::Result<()> {
    let rec = Arc::new(Recorder::default());
    // As `Volume` holds its device: an `Arc<dyn BlockDevice>`, itself used as a `BlockDevice`.
    let dev: Arc<dyn BlockDevice> = rec.clone();
    call_all(&dev)?;
    assert_eq!(rec.calls(), ALL);
    // And one level deeper, as a store wrapping a shared device would see it.
    let nested: Arc<Arc<dyn BlockDevice>> = Arc::new(dev);
    call_all(&nested)?;
    assert_eq!(rec.calls(), ALL);
    Ok(())
}
