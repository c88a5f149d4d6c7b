//! From a mount point to the fss volume under it: /proc/self/mountinfo gives the device,
//! /sys/block/loopN/loop/backing_file the file behind a loop device, and a file in the
//! daemon's FUSE directory is named after its volume.

use anyhow::{bail, Context};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One line of mountinfo that matters here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The mounted device ("/dev/loop3").
    pub source: String,
    /// The file system type.
    pub fstype: String,
}

/// Undo mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse mountinfo text.
#[must_use]
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let source = r.next()?;
            Some(Mount {
                mount_point: PathBuf::from(unescape(mount_point)),
                source: unescape(source),
                fstype: fstype.to_string(),
            })
        })
        .collect()
}

/// The mount at exactly `path` (the last one, if mounts are stacked).
///
/// # Errors
/// `path` is not a mount point.
pub fn mount_at(path: &Path) -> anyhow::Result<Mount> {
    let canon = path
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", path.display()))?;
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .context("cannot read /proc/self/mountinfo")?;
    match parse_mountinfo(&text).into_iter().rev().find(|m| m.mount_point == canon) {
        Some(m) => Ok(m),
        None => bail!(
            "{} is not a mount point; give the directory a file system on an fss volume is mounted at, or a volume name",
            path.display()
        ),
    }
}

/// The file behind a loop device, if `source` is one.
#[must_use]
pub fn loop_backing_file(source: &str) -> Option<PathBuf> {
    let name = Path::new(source).file_name()?.to_str()?;
    if !name.starts_with("loop") {
        return None;
    }
    let f = std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
    Some(PathBuf::from(f.trim_end_matches('\n')))
}

/// The fss volume mounted at `mount_point`, given the daemon's FUSE directory.
///
/// # Errors
/// Not a mount point, not a loop device, or a loop device over something else than an fss
/// volume file; each says so.
pub fn volume_of_mount(mount_point: &Path, fuse_dir: &Path) -> anyhow::Result<String> {
    let m = mount_at(mount_point)?;
    let Some(backing) = loop_backing_file(&m.source) else {
        bail!(
            "{} is not on an fss volume: it is mounted from {} ({}); fss snapshots file systems on a loop device over a file in {}",
            mount_point.display(),
            m.source,
            m.fstype,
            fuse_dir.display()
        );
    };
    let fuse = fuse_dir
        .canonicalize()
        .unwrap_or_else(|_| fuse_dir.to_path_buf());
    match (
        backing.parent(),
        backing.file_name().and_then(|n| n.to_str()),
    ) {
        (Some(dir), Some(name)) if dir == fuse || dir == fuse_dir => Ok(name.to_string()),
        _ => bail!(
            "{} is not on an fss volume: {} is a loop device over {}, not over a file in {}",
            mount_point.display(),
            m.source,
            backing.display(),
            fuse_dir.display()
        ),
    }
}

/// Refuse a store that lies on the file system being snapshotted: it would take part in its
/// own snapshot, and writes to it would need copy-on-write themselves.
///
/// # Errors
/// The store (or the nearest existing directory above it) is on that file system.
pub fn check_store_not_on(store: &Path, mount_point: &Path) -> anyhow::Result<()> {
    let mut p = store.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            return Ok(());
        }
    }
    let (Ok(a), Ok(b)) = (std::fs::metadata(&p), std::fs::metadata(mount_point)) else {
        return Ok(());
    };
    if a.dev() == b.dev() {
        bail!(
            "the store {} lies on the file system being snapshotted ({}); put the store on another file system",
            store.display(),
            mount_point.display()
        );
    }
    Ok(())
}

/// The volume under the file system mounted at `target` (a path, made absolute), asking the
/// daemon `client` speaks to where its FUSE directory is.
///
/// # Errors
/// The daemon has no FUSE directory, or `target` is not a file system on one of its volumes.
pub fn volume_of_target(
    client: &mut fssd::client::Client,
    target: &str,
) -> anyhow::Result<(String, PathBuf)> {
    let st: fssd::protocol::StatusInfo =
        crate::decode(crate::call(client, fssd::protocol::Request::Status)?)?;
    let fuse = st.fuse_dir.context(
        "the daemon has no FUSE directory, so no file system can be on one of its volumes",
    )?;
    let mp = crate::path_arg(target).map_err(anyhow::Error::msg)?;
    let volume = volume_of_mount(&mp, &fuse)?;
    Ok((volume, mp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_with_escapes() {
        let text = "36 35 98:0 / /mnt/my\\040disk rw,noatime master:1 - ext4 /dev/loop3 rw,errors=continue\n\
                    37 35 0:5 / /proc rw - proc proc rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/my disk"));
        assert_eq!(
            (m[0].source.as_str(), m[0].fstype.as_str()),
            ("/dev/loop3", "ext4")
        );
    }

    #[test]
    fn not_a_mount_point_is_said() {
        let d = tempfile::tempdir().unwrap();
        let e = mount_at(d.path()).unwrap_err().to_string();
        assert!(e.contains("is not a mount point"), "{e}");
        // The root file system is a mount point, but not on an fss volume.
        let e = volume_of_mount(Path::new("/"), Path::new("/var/lib/fss/dev"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not on an fss volume") || e.contains("not a mount point"),
            "{e}"
        );
    }

    #[test]
    fn store_on_the_snapshotted_file_system_is_refused() {
        let e = check_store_not_on(Path::new("/definitely/not/here/x.fss"), Path::new("/"))
            .unwrap_err();
        assert!(e
            .to_string()
            .contains("lies on the file system being snapshotted"));
    }
}
