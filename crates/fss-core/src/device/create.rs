//! Making files fresh: no file or link already at the name is ever used, and a file made for
//! a device that then fails to open is removed again.

use super::file::FILE_MODE;
use rustix::fs::OFlags;
use std::fs::File;
use std::io;
use std::path::Path;

/// Create `path` with O_CREAT | O_EXCL | O_NOFOLLOW and mode [`FILE_MODE`], by `openat` on
/// its parent directory, so nothing already at the name (a file or a planted link) is used.
pub(super) fn create_fresh(path: &Path, read_only: bool) -> io::Result<File> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = rustix::fs::open(
        parent,
        OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::PATH,
        rustix::fs::Mode::empty(),
    )?;
    let access = if read_only {
        OFlags::RDONLY
    } else {
        OFlags::RDWR
    };
    let fd = rustix::fs::openat(
        &dir,
        name,
        access | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        rustix::fs::Mode::from_raw_mode(FILE_MODE),
    )
    .map_err(|e| {
        if e == rustix::io::Errno::EXIST {
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} already exists (a file or a symbolic link); fss creates it fresh",
                    path.display()
                ),
            )
        } else {
            e.into()
        }
    })?;
    Ok(File::from(fd))
}

/// Removes a file this open created unless the open completes.
pub(super) struct CreatedFile<'a>(pub(super) Option<&'a Path>);

impl CreatedFile<'_> {
    pub(super) fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for CreatedFile<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Fail unless `a` and `b` are open on the same inode.
pub(super) fn same_file(a: &File, b: &File, path: &Path) -> io::Result<()> {
    let (ma, mb) = (rustix::fs::fstat(a)?, rustix::fs::fstat(b)?);
    if (ma.st_dev, ma.st_ino) == (mb.st_dev, mb.st_ino) {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{} was replaced while it was being opened",
            path.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::{BlockDevice, FileDevice, OpenOptions};
    use std::os::unix::fs::PermissionsExt;

    fn fresh(len: u64) -> OpenOptions {
        OpenOptions {
            create_new: true,
            create_len: Some(len),
            exclusive: true,
            direct_large: true,
            ..OpenOptions::default()
        }
    }

    #[test]
    fn create_new_makes_a_private_file_of_the_length() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("v.img");
        let dev = FileDevice::open(&p, &fresh(1 << 20)).unwrap();
        assert_eq!(dev.len(), 1 << 20);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn create_new_never_uses_what_is_at_the_name() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("precious");
        std::fs::write(&target, b"keep me").unwrap();
        let gone = d.path().join("not-there");
        let cases = [
            ("file", None),
            ("link-to-file", Some(target.clone())),
            ("dangling-link", Some(gone.clone())),
        ];
        for (name, link_to) in cases {
            let p = d.path().join(name);
            match &link_to {
                Some(t) => std::os::unix::fs::symlink(t, &p).unwrap(),
                None => std::fs::write(&p, b"").unwrap(),
            }
            let e = FileDevice::open(&p, &fresh(4096)).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{name}: {e}");
            assert!(e.to_string().contains("already exists"), "{name}: {e}");
        }
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
        assert!(!gone.exists(), "a dangling link's target was created");
    }

    #[test]
    fn a_file_that_cannot_be_sized_is_removed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("huge.img");
        // Far past any file system's limit (and i64): set_len fails after the create.
        assert!(FileDevice::open(&p, &fresh(u64::MAX - 4095)).is_err());
        assert!(
            std::fs::symlink_metadata(&p).is_err(),
            "a failed create left a file"
        );
    }

    #[test]
    fn a_missing_directory_is_not_found() {
        let d = tempfile::tempdir().unwrap();
        let e = FileDevice::open(&d.path().join("no/v.img"), &fresh(4096)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
    }
}
