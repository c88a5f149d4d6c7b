//! `fss mount NAME DIR` and `fss umount DIR`: a volume or snapshot's FUSE file on a loop
//! device (read-only for a snapshot, direct I/O always), its file system detected with blkid
//! and mounted with the options a snapshot of it needs:
//! - ext4: `ro,noload` (the journal of a frozen ext4 is not replayed on a read-only device);
//! - xfs: `ro,norecovery,nouuid` (a dirty log is left alone, and the snapshot carries the
//!   UUID of the mounted original, which XFS refuses otherwise);
//! - btrfs: `ro,rescue=nologreplay`; since Linux 6.7 a single-device btrfs whose fsid is
//!   mounted already gets a temporary fsid by itself (temp_fsid), so the clone needs no option.
//!
//! A volume is mounted read-write with the file system's defaults. The loop device is
//! detached again on every failure after it was attached.

use crate::mounts::{loop_backing_file, parse_mountinfo, Mount};
use crate::{call, connect, decode};
use anyhow::{bail, Context};
use fssd::protocol::{Request, SnapshotHealth, SnapshotInfo, StatusInfo, VolumeInfo};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The file systems `fss mount` knows.
const KNOWN: &str = "ext4, xfs and btrfs";

/// Run `program args`; its trimmed standard output, or its standard error as the error.
fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let o = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}: is util-linux installed?"))?;
    if !o.status.success() {
        bail!("{}", String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// Whether `name` is a snapshot (read-only) or a volume; refuses unknown names and snapshots
/// that cannot be read.
fn is_snapshot(client: &mut fssd::client::Client, name: &str) -> anyhow::Result<bool> {
    let snaps: Vec<SnapshotInfo> = decode(call(client, Request::SnapshotList)?)?;
    if let Some(s) = snaps.iter().find(|s| s.name == name) {
        if s.state != SnapshotHealth::Valid {
            bail!(
                "snapshot '{name}' is {} ({}): its contents cannot be trusted, so it is not mounted",
                s.state.as_str(),
                s.reason.as_deref().unwrap_or("no reason recorded")
            );
        }
        return Ok(true);
    }
    let volumes: Vec<VolumeInfo> = decode(call(client, Request::VolumeList)?)?;
    if volumes.iter().any(|v| v.name == name) {
        return Ok(false);
    }
    bail!("no volume or snapshot named '{name}'; see `fss volume list` and `fss snapshot list`")
}

fn mounts() -> anyhow::Result<Vec<Mount>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .context("cannot read /proc/self/mountinfo")?;
    Ok(parse_mountinfo(&text))
}

/// `dir`, resolved, if nothing is mounted on it yet.
fn free_directory(dir: &Path) -> anyhow::Result<PathBuf> {
    let canon = dir.canonicalize().with_context(|| {
        format!(
            "cannot use {} as a mount point; create it first",
            dir.display()
        )
    })?;
    if !canon.is_dir() {
        bail!(
            "{} is not a directory; give an empty directory to mount on",
            dir.display()
        );
    }
    if let Some(m) = mounts()?.into_iter().rev().find(|m| m.mount_point == canon) {
        bail!(
            "{} is busy: {} ({}) is mounted there already; unmount it first (fss umount {0})",
            dir.display(),
            m.source,
            m.fstype
        );
    }
    Ok(canon)
}

/// The mount options for `fstype`, or `None` when fss does not know how to mount it.
fn options(fstype: &str, snapshot: bool) -> Option<&'static str> {
    Some(match (fstype, snapshot) {
        ("ext4", true) => "ro,noload",
        ("xfs", true) => "ro,norecovery,nouuid",
        ("btrfs", true) => "ro,rescue=nologreplay",
        ("ext4" | "xfs" | "btrfs", false) => "rw",
        _ => return None,
    })
}

/// A loop device detached when dropped, unless kept.
struct Attached(Option<String>);

impl Drop for Attached {
    fn drop(&mut self) {
        if let Some(dev) = self.0.take() {
            let _ = run("losetup", &["-d", &dev]);
        }
    }
}

/// `fss mount NAME DIR`: prints the loop device.
///
/// # Errors
/// No daemon or no FUSE directory, an unknown name, a busy directory, no or an unsupported
/// file system, or the mount failed.
pub fn mount(state: &Path, name: &str, dir: &Path) -> anyhow::Result<()> {
    let mut client = connect(state)?;
    let status: StatusInfo = decode(call(&mut client, Request::Status)?)?;
    let Some(fuse) = status.fuse_dir else {
        bail!("the daemon serves no FUSE directory (--fuse-dir none, or /dev/fuse was not usable), so there is no file to attach; use NBD instead");
    };
    let snapshot = is_snapshot(&mut client, name)?;
    let dir = free_directory(dir)?;
    let file = fuse.join(name);
    let file_arg = file.to_string_lossy();
    let mut args = vec!["--find", "--show", "--direct-io=on"];
    if snapshot {
        args.push("--read-only");
    }
    args.push(&file_arg);
    let dev = run("losetup", &args)
        .with_context(|| format!("cannot attach {} to a loop device", file.display()))?;
    let mut attached = Attached(Some(dev.clone()));
    let fstype = match run("blkid", &["-p", "-o", "value", "-s", "TYPE", &dev]) {
        Ok(t) if !t.is_empty() => t,
        _ => bail!("no file system found on '{name}' ({dev}); fss mount knows {KNOWN}"),
    };
    let Some(opts) = options(&fstype, snapshot) else {
        bail!("'{name}' holds {fstype}, which fss mount does not know ({KNOWN}); attach it yourself with losetup -r {}", file.display());
    };
    let dir_arg = dir.to_string_lossy();
    run("mount", &["-t", &fstype, "-o", opts, &dev, &dir_arg]).with_context(|| {
        format!("cannot mount {fstype} of '{name}' ({dev}) on {dir_arg} with -o {opts}")
    })?;
    // Mounted: the loop device stays until `fss umount`.
    attached.0 = None;
    println!("{dev}");
    Ok(())
}

/// `fss umount DIR`: unmount the file system `fss mount` put there and detach its loop device.
///
/// # Errors
/// Nothing is mounted there, it is not on an fss loop device, or it is busy.
pub fn umount(dir: &Path) -> anyhow::Result<()> {
    let canon = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    let all = mounts()?;
    let Some(m) = all.iter().rev().find(|m| m.mount_point == canon) else {
        bail!("nothing is mounted on {}", dir.display());
    };
    let on_fss = loop_backing_file(&m.source).is_some_and(|file| {
        let parent = file.parent().map(Path::to_path_buf).unwrap_or_default();
        all.iter()
            .any(|f| f.mount_point == parent && f.fstype == "fuse.fss")
    });
    if !on_fss {
        bail!(
            "{} is not an fss mount: it is mounted from {} ({}); use umount",
            dir.display(),
            m.source,
            m.fstype
        );
    }
    let dir_arg = canon.to_string_lossy();
    run("umount", &[&dir_arg]).with_context(|| {
        format!("cannot unmount {dir_arg}; close what is open under it (fuser -vm {dir_arg}) and try again")
    })?;
    run("losetup", &["-d", &m.source])
        .with_context(|| format!("unmounted {dir_arg}, but cannot detach {}", m.source))?;
    println!("unmounted {dir_arg}, detached {}", m.source);
    Ok(())
}
