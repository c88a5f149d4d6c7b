//! Turning a `--store` argument (a directory, a file, or a raw device) into a snapshot store,
//! and reopening it after a restart.

use crate::error::{DaemonError, Result};
use crate::names::human_size;
use crate::schedule::space::SpaceWatch;
use fss_core::device::{BlockDevice, FileDevice, OpenOptions};
use fss_core::format::layout::Layout;
use fss_core::store::{DeviceStore, FileStore, Recovered, Store, StoreIdentity, StoreParams};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a new snapshot's store goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorePlace {
    /// The file or device.
    pub path: PathBuf,
    /// fss makes the file inside a store directory, and removes it on delete.
    pub owned: bool,
    /// A raw block device (fixed size).
    pub is_device: bool,
    /// fss creates the file (O_EXCL, never through a link); otherwise it is an existing empty
    /// file or a device.
    pub fresh: bool,
}

impl StorePlace {
    fn file(path: PathBuf, owned: bool, fresh: bool) -> Self {
        StorePlace {
            path,
            owned,
            is_device: false,
            fresh,
        }
    }
}

/// Decide where the store of snapshot `snap` of `volume` goes, given `--store` (or the default
/// store directory).
///
/// A link is followed only to a directory or a block device (`/dev/disk/by-id/...`): a store
/// file is never written through a link, which someone else may have planted in a directory
/// they can write to.
///
/// # Errors
/// The path does not exist (nor its parent), is a link to a file, or is an existing non-empty
/// file.
pub fn place(arg: &Path, volume: &str, snap: &str) -> Result<StorePlace> {
    let link = std::fs::symlink_metadata(arg).is_ok_and(|m| m.file_type().is_symlink());
    match std::fs::metadata(arg) {
        Ok(m) if m.is_dir() => {
            let mut path = arg.join(format!("{volume}.{snap}.fss"));
            let mut n = 1;
            // symlink_metadata: a dangling link counts as taken too.
            while std::fs::symlink_metadata(&path).is_ok() {
                path = arg.join(format!("{volume}.{snap}.{n}.fss"));
                n += 1;
            }
            Ok(StorePlace::file(path, true, true))
        }
        Ok(m) if m.file_type().is_block_device() => Ok(StorePlace {
            path: arg.to_path_buf(),
            owned: false,
            is_device: true,
            fresh: false,
        }),
        _ if link => Err(DaemonError::invalid(format!(
            "store {} is a symbolic link; fss does not write a store through a link to a file \
             (give the file's own path, a directory, or a block device)",
            arg.display()
        ))),
        Ok(m) if m.is_file() && m.len() == 0 => {
            Ok(StorePlace::file(arg.to_path_buf(), false, false))
        }
        Ok(m) if m.is_file() => Err(DaemonError::exists(format!(
            "store file {} already exists and is not empty ({} bytes); give a new file name, a \
             directory, or delete it first",
            arg.display(),
            m.len()
        ))),
        Ok(_) => Err(DaemonError::invalid(format!(
            "store {} is neither a directory, a regular file nor a block device",
            arg.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => new_file_place(arg),
        Err(e) => Err(DaemonError::io(&format!("store {}", arg.display()), &e)),
    }
}

/// A `--store` path that does not exist yet: a new file, if its directory exists.
fn new_file_place(arg: &Path) -> Result<StorePlace> {
    if arg.as_os_str().as_encoded_bytes().ends_with(b"/") {
        return Err(DaemonError::not_found(format!(
            "store directory {} does not exist; create it (mkdir -p) or choose another store",
            arg.display()
        )));
    }
    let parent = arg
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if parent.is_dir() {
        Ok(StorePlace::file(arg.to_path_buf(), false, true))
    } else {
        Err(DaemonError::not_found(format!(
            "store path {}: directory {} does not exist; create it or choose another store",
            arg.display(),
            parent.display()
        )))
    }
}

fn open_device(place: &StorePlace, create: bool) -> Result<Arc<FileDevice>> {
    let opts = OpenOptions {
        exclusive: true,
        create_len: (create && !place.is_device).then_some(0),
        create_new: create && place.fresh,
        // Large pre-image runs (a 1 MiB first overwrite) go direct: no copy, no dirty pages.
        direct_large: true,
        ..OpenOptions::default()
    };
    FileDevice::open(&place.path, &opts)
        .map(Arc::new)
        .map_err(|e| DaemonError::io(&format!("cannot open store {}", place.path.display()), &e))
}

/// A store file's device, watched for `--min-free` (a raw device cannot grow: not watched).
fn watched(
    dev: Arc<FileDevice>,
    place: &StorePlace,
    watch: &Arc<SpaceWatch>,
) -> Arc<dyn BlockDevice> {
    if place.is_device {
        dev
    } else {
        watch.wrap(dev, &place.path)
    }
}

/// Make a new store at `place` for `params`; `unlink` removes the file once open (the store is
/// then transient by nature).
///
/// # Errors
/// The store could not be created (no space, permissions, ...); nothing is left behind.
pub fn create(
    place: &StorePlace,
    params: &StoreParams,
    unlink: bool,
    watch: &Arc<SpaceWatch>,
) -> fss_core::Result<Box<dyn Store>> {
    check_max_bytes(params)?;
    let to_core = |e: DaemonError| {
        fss_core::Error::new(
            fss_core::ErrorKind::Io,
            "create store",
            place.path.display().to_string(),
            e.message,
        )
    };
    let dev = open_device(place, true).map_err(to_core)?;
    let cleanup = || {
        if !place.is_device && (place.owned || unlink) {
            let _ = std::fs::remove_file(&place.path);
        }
    };
    let dyn_dev = watched(dev, place, watch);
    let result: fss_core::Result<Box<dyn Store>> = if params.persistent {
        let owned = place.owned.then(|| place.path.clone());
        FileStore::create(dyn_dev, params, place.is_device, owned)
            .map(|s| Box::new(s) as Box<dyn Store>)
    } else {
        let mut s = DeviceStore::new(dyn_dev, params, place.is_device);
        if place.owned {
            s = s.with_owned_path(place.path.clone());
        }
        Ok(Box::new(s))
    };
    match result {
        Ok(s) => {
            if unlink && !place.is_device {
                let _ = std::fs::remove_file(&place.path);
            }
            Ok(s)
        }
        Err(e) => {
            cleanup();
            Err(e)
        }
    }
}

/// The smallest maximum size a store may have: an empty store and room for one cluster. A
/// smaller one would invalidate the snapshot at the first write that needs a pre-image.
#[must_use]
pub fn min_max_bytes(params: &StoreParams) -> u64 {
    if params.persistent {
        Layout::new(params.cluster_size).bytes_for_slots(1)
    } else {
        params.cluster_size
    }
}

fn check_max_bytes(params: &StoreParams) -> fss_core::Result<()> {
    let min = min_max_bytes(params);
    match params.max_bytes {
        Some(max) if max < min => Err(fss_core::Error::new(
            fss_core::ErrorKind::InvalidArgument,
            "create store",
            format!("of snapshot '{}'", params.snapshot),
            format!(
                "a maximum store size of {max} bytes is too small: an empty {} store with {} \
                 clusters and one cluster of pre-images need at least {min} bytes ({}); give \
                 --max-store-size {min} or more",
                if params.persistent {
                    "persistent"
                } else {
                    "transient"
                },
                human_size(params.cluster_size),
                human_size(min),
            ),
        )),
        _ => Ok(()),
    }
}

/// Reopen a persistent store after a restart.
///
/// # Errors
/// Missing, foreign, corrupt or unreadable.
pub fn reopen(
    place: &StorePlace,
    expect: &StoreIdentity,
    max: Option<u64>,
    watch: &Arc<SpaceWatch>,
) -> Result<(Box<dyn Store>, Recovered)> {
    let dev = watched(open_device(place, false)?, place, watch);
    let owned = place.owned.then(|| place.path.clone());
    let (store, rec) = FileStore::open(dev, expect, place.is_device, max, owned)?;
    Ok((Box::new(store), rec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places() {
        let d = tempfile::tempdir().unwrap();
        let p = place(d.path(), "vol", "s1").unwrap();
        assert!(p.owned && p.path.ends_with("vol.s1.fss"));
        std::fs::write(&p.path, b"x").unwrap();
        let p2 = place(d.path(), "vol", "s1").unwrap();
        assert!(p2.path.ends_with("vol.s1.1.fss"));
        let e = place(&p.path, "vol", "s1").unwrap_err();
        assert!(e.message.contains("not empty"), "{e}");
        let f = place(&d.path().join("new.fss"), "vol", "s").unwrap();
        assert!(!f.owned);
        let e = place(&d.path().join("nope/new.fss"), "vol", "s").unwrap_err();
        assert_eq!(e.kind, "not-found");
        assert!(e.message.contains("does not exist"), "{e}");
    }
}
