//! Loop devices, mounts and file checksums for the file-system tests, cleaned up in every
//! outcome.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Run a command that must succeed; its trimmed stdout.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {cmd} ({e}); install it (apt install e2fsprogs xfsprogs util-linux coreutils)")
    });
    assert!(
        o.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A path as a command argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Detaches loop devices and unmounts, newest first, whatever happens.
#[derive(Default)]
pub struct Cleanup {
    mounts: Vec<PathBuf>,
    loops: Vec<String>,
}

impl Cleanup {
    pub fn attach(&mut self, file: &Path, read_only: bool) -> String {
        let args: Vec<&str> = if read_only {
            vec!["-r", "-f", "--show", s(file)]
        } else {
            vec!["--direct-io=on", "-f", "--show", s(file)]
        };
        let dev = run("losetup", &args);
        self.loops.push(dev.clone());
        dev
    }
    pub fn mount(&mut self, dev: &str, at: &Path, opts: &str) {
        std::fs::create_dir_all(at).unwrap();
        run("mount", &["-o", opts, dev, s(at)]);
        self.mounts.push(at.to_path_buf());
    }
    /// A tmpfs of `size` (`24m`) at `at`, unmounted like the other mounts.
    pub fn tmpfs(&mut self, at: &Path, size: &str) {
        std::fs::create_dir_all(at).unwrap();
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
                s(at),
            ],
        );
        self.mounts.push(at.to_path_buf());
    }
    pub fn umount(&mut self, at: &Path) {
        run("umount", &[s(at)]);
        self.mounts.retain(|m| m != at);
    }
    pub fn detach(&mut self, dev: &str) {
        run("losetup", &["-d", dev]);
        self.loops.retain(|l| l != dev);
    }
    pub fn release_all(&mut self) {
        for m in self.mounts.drain(..).rev() {
            let _ = Command::new("fsfreeze")
                .args(["-u", s(&m)])
                .stderr(Stdio::null())
                .status();
            // Busy (a daemon still has files open there, as after a failed assertion): detach
            // it lazily; it goes when they are closed.
            if !Command::new("umount")
                .arg(&m)
                .status()
                .is_ok_and(|s| s.success())
            {
                let _ = Command::new("umount").arg("-l").arg(&m).status();
            }
        }
        for l in self.loops.drain(..).rev() {
            let _ = Command::new("losetup").args(["-d", &l]).status();
        }
    }
}

/// A fresh ext4 on a loop device over `file` (a volume's FUSE file), mounted at `mnt`; the
/// loop device.
pub fn ext4_on(c: &mut Cleanup, file: &Path, mnt: &Path) -> String {
    let dev = c.attach(file, false);
    run("mkfs.ext4", &["-q", &dev]);
    c.mount(&dev, mnt, "rw");
    dev
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.release_all();
    }
}

/// Every regular file under `root` (but lost+found) -> its sha256.
pub fn sums(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n == "lost+found") {
                    continue;
                }
                stack.push(p);
            } else {
                let sum = run("sha256sum", &[s(&p)]);
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.insert(
                    rel,
                    sum.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
        }
    }
    out
}
