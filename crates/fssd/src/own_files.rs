//! Refusing paths that would make fss serve or store through itself.
//!
//! A volume or store that is one of the daemon's own files, one of its exports (a file in its
//! FUSE directory, or a loop device over one), or that lives on a file system mounted from an
//! fss volume, makes fss's I/O wait on fss's own I/O: the first request deadlocks, and a stop
//! hangs for ever on its own FUSE connection. Files are compared by device and inode, so a
//! link or a bind mount does not slip through.

use crate::error::{DaemonError, Result};
use crate::paths::Paths;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Loop devices nest at most this deep before we stop looking (a loop over a file on a file
/// system on a loop ...).
const MAX_DEPTH: usize = 4;

/// The major number of loop devices.
const LOOP_MAJOR: u32 = 7;

/// What a path is checked as, for the message.
#[derive(Debug, Clone, Copy)]
pub enum Use {
    /// A volume's image or device.
    Volume,
    /// A snapshot's store (a file, a directory to make one in, or a device).
    Store,
}

impl Use {
    fn what(self) -> &'static str {
        match self {
            Use::Volume => "a volume",
            Use::Store => "a store",
        }
    }
}

/// Refuse `path` as a volume or store if it is, or lives on, something fss serves.
///
/// `stores` are the store files of existing snapshots, `volumes` the images being served.
/// A path that does not exist yet is judged by its directory.
///
/// # Errors
/// `invalid`, naming what the path resolves to and what to do instead.
pub fn check(paths: &Paths, path: &Path, used_as: Use, stores: &[PathBuf]) -> Result<()> {
    let refuse = |why: String| {
        Err(DaemonError::invalid(format!(
            "{} cannot be {}: {why}; fss would wait on its own I/O. Choose a path outside fss's \
             state directory and off every file system served by fss",
            path.display(),
            used_as.what()
        )))
    };
    if let Ok(meta) = std::fs::metadata(path) {
        if let Some(why) = own_file(paths, &meta, used_as, stores) {
            return refuse(why);
        }
    }
    if matches!(used_as, Use::Volume) && under(path, &paths.stores_dir()) {
        return refuse("it lies in the store directory".into());
    }
    // A path not made yet lives on the file system of its nearest existing ancestor.
    let Some(meta) = existing(path) else {
        return Ok(());
    };
    let fuse_dev = fuse_device(&paths.fuse_dir);
    if let Some(why) = on_export(&meta, fuse_dev, &paths.fuse_dir, 0) {
        return refuse(why);
    }
    Ok(())
}

/// Whether `path` (existing or not) lies inside the existing directory `dir`.
fn under(path: &Path, dir: &Path) -> bool {
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    let resolved = path.canonicalize().ok().or_else(|| {
        let parent = path.parent()?.canonicalize().ok()?;
        Some(parent.join(path.file_name()?))
    });
    resolved.is_some_and(|p| p.starts_with(dir))
}

/// The metadata of `path`, or of its nearest existing ancestor when it does not exist yet.
fn existing(path: &Path) -> Option<std::fs::Metadata> {
    let mut p = Some(path);
    while let Some(at) = p {
        if let Ok(m) = std::fs::metadata(at) {
            return Some(m);
        }
        p = at.parent().filter(|q| !q.as_os_str().is_empty());
    }
    None
}

/// The device number of the FUSE directory's file system, if it is mounted there. Read from
/// `/proc/self/mountinfo`, never by a stat of the directory: between two serving processes,
/// and at start before the FUSE session runs, nobody answers it and a stat would wait.
pub(crate) fn fuse_device(fuse_dir: &Path) -> Option<u64> {
    let parent = fuse_dir.parent()?.canonicalize().ok()?;
    let dir = parent.join(fuse_dir.file_name()?);
    let want = dir.to_str()?;
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        if f.get(4) != Some(&want) {
            return None;
        }
        let (major, minor) = f.get(2)?.split_once(':')?;
        Some(rustix::fs::makedev(
            major.parse().ok()?,
            minor.parse().ok()?,
        ))
    })
}

fn same(a: &std::fs::Metadata, b: &Path) -> bool {
    std::fs::metadata(b).is_ok_and(|m| m.dev() == a.dev() && m.ino() == a.ino())
}

/// Whether `meta` is one of the daemon's own files or directories.
fn own_file(
    paths: &Paths,
    meta: &std::fs::Metadata,
    used_as: Use,
    stores: &[PathBuf],
) -> Option<String> {
    let named = [
        (paths.state_dir.clone(), "the state directory"),
        (paths.lock_file(), "the daemon's lock file"),
        (paths.heartbeat_file(), "the daemon's heartbeat file"),
        (paths.state_file(), "the daemon's state file"),
        (
            paths.state_file().with_extension("json.tmp"),
            "the daemon's state file",
        ),
        (paths.control_socket(), "the control socket"),
        (
            paths.state_dir.join("fuse-session.json"),
            "the daemon's FUSE session file",
        ),
        (
            paths.state_dir.join("fuse-session.table.json"),
            "the daemon's FUSE session file",
        ),
        (
            paths.state_dir.join("leases.json"),
            "the daemon's lease file",
        ),
        (
            paths.state_dir.join("serving.pid"),
            "the daemon's process record",
        ),
        (paths.nbd_socket.clone(), "the NBD socket"),
        (paths.stores_dir(), "the store directory"),
        (
            paths.invalidated_dir(),
            "the daemon's directory of invalidations",
        ),
    ];
    // The mounted FUSE directory is caught as an export; unmounted, it can be looked at.
    let fuse_dir = fuse_device(&paths.fuse_dir)
        .is_none()
        .then(|| (paths.fuse_dir.clone(), "the FUSE directory"));
    // A store directory is fine as a store; a volume's default place is fine for a volume.
    for (p, what) in named.into_iter().chain(fuse_dir) {
        let allowed = matches!(used_as, Use::Store) && p == paths.stores_dir();
        if !allowed && same(meta, &p) {
            return Some(format!("it is {what}"));
        }
    }
    if stores.iter().any(|s| same(meta, s)) {
        return Some("it is the store of a snapshot".into());
    }
    None
}

/// Whether `meta` is an fss export: a file on the FUSE directory's file system, a loop device
/// over one, or a file on a file system whose device is such a loop device.
fn on_export(
    meta: &std::fs::Metadata,
    fuse_dev: Option<u64>,
    fuse_dir: &Path,
    depth: usize,
) -> Option<String> {
    if depth > MAX_DEPTH {
        return Some("it sits under too many loop devices to check".into());
    }
    if fuse_dev == Some(meta.dev()) {
        return Some(format!(
            "it is in fss's FUSE directory {}",
            fuse_dir.display()
        ));
    }
    // A block device is judged by itself, anything else by the file system it lives on.
    let dev = if meta.file_type().is_block_device() {
        meta.rdev()
    } else {
        meta.dev()
    };
    let backing = loop_backing_file(dev)?;
    let inner = std::fs::metadata(&backing).ok()?;
    on_export(&inner, fuse_dev, fuse_dir, depth + 1).map(|why| {
        format!(
            "it is on loop device {}:{} backed by {}, and {why}",
            rustix::fs::major(dev),
            rustix::fs::minor(dev),
            backing.display()
        )
    })
}

/// The file behind loop device `dev`, if it is an attached loop device.
fn loop_backing_file(dev: u64) -> Option<PathBuf> {
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    if major != LOOP_MAJOR {
        return None;
    }
    let f = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/loop/backing_file"))
        .ok()?;
    // The kernel appends " (deleted)" to an unlinked backing file.
    let f = f.trim_end_matches('\n');
    Some(PathBuf::from(f.strip_suffix(" (deleted)").unwrap_or(f)))
}

/// Whether the file system mounted at `mount_point` lives on one of this daemon's exports (a
/// loop device over a file in its FUSE directory): the only file systems a freeze lease may
/// thaw.
#[must_use]
pub fn is_on_export(paths: &Paths, mount_point: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(mount_point) else {
        return false;
    };
    let fuse_dev = fuse_device(&paths.fuse_dir);
    if fuse_dev.is_none() {
        return false;
    }
    if on_export(&meta, fuse_dev, &paths.fuse_dir, 0).is_some() {
        return true;
    }
    // A btrfs mount reports an anonymous st_dev of its own, not its device's: judge it by the
    // device mountinfo names for that mount point.
    mount_source(mount_point)
        .and_then(|src| std::fs::metadata(src).ok())
        .filter(|m| m.file_type().is_block_device())
        .is_some_and(|m| on_export(&m, fuse_dev, &paths.fuse_dir, 0).is_some())
}

/// The source (device) of the mount at exactly `mount_point`, the last one if stacked.
fn mount_source(mount_point: &Path) -> Option<PathBuf> {
    let want = mount_point.canonicalize().ok()?;
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().rev().find_map(|l| {
        // "ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [TAGS...] - FSTYPE SOURCE SUPER_OPTIONS"
        let f: Vec<&str> = l.split(' ').collect();
        if Path::new(&unescape_mountinfo(f.get(4)?)) != want {
            return None;
        }
        let dash = f.iter().position(|x| *x == "-")?;
        Some(PathBuf::from(unescape_mountinfo(f.get(dash + 2)?)))
    })
}

/// Undo mountinfo's octal escapes (`\040` for a space, and tab, newline, backslash).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push(
                    d.iter()
                        .fold(0u8, |acc, c| acc.wrapping_mul(8).wrapping_add(c - b'0')),
                );
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/mnt/my\040disk"), "/mnt/my disk");
        assert_eq!(unescape_mountinfo(r"/a\134b\011c"), "/a\\b\tc");
        // Not an escape: kept as it is.
        assert_eq!(unescape_mountinfo(r"/x\9y\04"), r"/x\9y\04");
    }

    #[test]
    fn the_root_mount_has_a_source() {
        assert!(mount_source(Path::new("/")).is_some());
        assert!(mount_source(Path::new("/definitely/not/here")).is_none());
    }
}
