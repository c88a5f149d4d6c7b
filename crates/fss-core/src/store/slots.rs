//! Slot allocation under a size limit, shared by every store: slots are numbered densely, and
//! the limit (an optional maximum, and a fixed medium's size) can be raised while live.

use crate::error::{Error, ErrorKind, Result};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};

/// Allocated slots and the limit on the bytes they may take.
#[derive(Debug)]
pub(crate) struct Slots {
    count: AtomicU32,
    max: Mutex<Option<u64>>,
    /// The medium's own limit: a fixed-size device cannot grow.
    medium_max: Option<u64>,
}

impl Slots {
    /// `count` slots already allocated, at most `max` bytes, on a medium of `medium_max`.
    pub(crate) fn new(count: u32, max: Option<u64>, medium_max: Option<u64>) -> Self {
        Slots {
            count: AtomicU32::new(count),
            max: Mutex::new(max),
            medium_max,
        }
    }

    /// Slots allocated.
    pub(crate) fn count(&self) -> u32 {
        self.count.load(Ordering::Acquire)
    }

    /// The effective limit in bytes.
    pub(crate) fn limit(&self) -> Option<u64> {
        let max = *self.max.lock().unwrap_or_else(PoisonError::into_inner);
        match (max, self.medium_max) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next slot, if `bytes_for(slots)` stays within the limit.
    pub(crate) fn allocate(&self, store: &str, bytes_for: impl Fn(u64) -> u64) -> Result<u32> {
        let limit = self.limit();
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| match limit {
                Some(l) if bytes_for(u64::from(n) + 1) > l => None,
                _ => n.checked_add(1),
            })
            .map_err(|n| {
                Error::new(
                    ErrorKind::NoSpace,
                    "allocate",
                    store,
                    format!(
                        "the store is full ({} bytes used of at most {}); raise its maximum size or \
                         give the snapshot a larger store",
                        bytes_for(u64::from(n)),
                        limit.unwrap_or(0)
                    ),
                )
            })
    }

    /// Whether `new_slots` more slots stay within the limit (`bytes_for` as in `allocate`),
    /// and `disk_need` more bytes fit in `disk_free`, the free space under the medium if known.
    pub(crate) fn check_room(
        &self,
        store: &str,
        bytes_for: impl Fn(u64) -> u64,
        new_slots: u64,
        disk_need: u64,
        disk_free: Option<u64>,
    ) -> Result<()> {
        let want = bytes_for(u64::from(self.count()) + new_slots);
        let no_space = |detail: String| {
            Err(Error::new(
                ErrorKind::NoSpace,
                "make room in",
                store,
                detail,
            ))
        };
        if let Some(limit) = self.limit().filter(|&l| want > l) {
            return no_space(format!(
                "it lacks {} bytes: it would take {want} bytes, and its limit is {limit}; raise \
                 its maximum size (fss snapshot set NAME --max-store-size SIZE|none)",
                want - limit
            ));
        }
        if let Some(free) = disk_free.filter(|&f| disk_need > f) {
            return no_space(format!(
                "its file system lacks {} bytes: {disk_need} bytes are needed and {free} are \
                 free; free space there first",
                disk_need - free
            ));
        }
        Ok(())
    }

    /// Change the maximum; refused below what is used.
    pub(crate) fn set_max(&self, store: &str, max: Option<u64>, used: u64) -> Result<()> {
        if let Some(m) = max.filter(|&m| m < used) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "set maximum size of",
                store,
                format!("{m} bytes is below the {used} bytes already used"),
            ));
        }
        *self.max.lock().unwrap_or_else(PoisonError::into_inner) = max;
        Ok(())
    }
}
