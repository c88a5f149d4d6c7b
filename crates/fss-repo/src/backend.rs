//! Where a repository's objects live: a small synchronous [`Backend`] trait, a directory
//! (`file://`) implementation, and [`open_url`], which picks one from a URL.

use crate::error::{RepoError, Result};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// An object store: flat names with `/` separators, whole-object writes, ranged reads.
/// Writes are atomic (an object is either absent or complete); no conditional writes are used.
pub trait Backend: Send + Sync {
    /// Store `data` as `name`, replacing any object of that name.
    ///
    /// # Errors
    /// The store refused.
    fn put(&self, name: &str, data: &[u8]) -> Result<()>;
    /// The whole object.
    ///
    /// # Errors
    /// [`RepoError::Missing`] or the store refused.
    fn get(&self, name: &str) -> Result<Vec<u8>>;
    /// `len` bytes from `start`.
    ///
    /// # Errors
    /// [`RepoError::Missing`], a short object, or the store refused.
    fn get_range(&self, name: &str, start: u64, len: u64) -> Result<Vec<u8>>;
    /// Every object whose name starts with `prefix` (a folder such as `packs/`), with its size.
    ///
    /// # Errors
    /// The store refused.
    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>>;
    /// Remove an object; removing an absent one is not an error.
    ///
    /// # Errors
    /// The store refused.
    fn delete(&self, name: &str) -> Result<()>;
    /// Whether the object exists.
    ///
    /// # Errors
    /// The store refused.
    fn exists(&self, name: &str) -> Result<bool>;
}

/// Open the backend a URL names: `file:///PATH` or `s3://BUCKET/PREFIX`.
///
/// # Errors
/// [`RepoError::Invalid`] for another scheme or a malformed URL; the S3 client could not be
/// built from the environment.
pub fn open_url(url: &str) -> Result<Box<dyn Backend>> {
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(RepoError::Invalid(format!(
                "'{url}': a file:// URL needs an absolute path (file:///PATH)"
            )));
        }
        return Ok(Box::new(FileBackend::new(path)));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        return Ok(Box::new(crate::s3::S3Backend::new(rest)?));
    }
    Err(RepoError::Invalid(format!(
        "'{url}' is not a repository URL: use s3://BUCKET/PREFIX or file:///PATH"
    )))
}

/// Whether `s` names a repository (rather than a backup file).
#[must_use]
pub fn is_repo_url(s: &str) -> bool {
    s.starts_with("s3://") || s.starts_with("file://")
}

/// A directory holding the objects as files; writes go to a temporary file that is flushed and
/// renamed, so a crash leaves either the old object or the new one.
#[derive(Debug)]
pub struct FileBackend {
    root: PathBuf,
}

const TMP_MARK: &str = ".tmp-";

impl FileBackend {
    /// A backend rooted at `root` (created on the first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FileBackend { root: root.into() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

fn backend_err(op: &'static str, name: &str, e: &std::io::Error) -> RepoError {
    let missing = e.kind() == std::io::ErrorKind::NotFound && op != "put";
    RepoError::backend(op, name, missing, e.to_string())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl Backend for FileBackend {
    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        let path = self.path(name);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| backend_err("put", name, &e))?;
        let tmp = PathBuf::from(format!(
            "{}{TMP_MARK}{}",
            path.display(),
            crate::crypto::random_hex(8)
        ));
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(backend_err("put", name, &e));
        }
        sync_dir(&dir);
        Ok(())
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        std::fs::read(self.path(name)).map_err(|e| backend_err("get", name, &e))
    }

    fn get_range(&self, name: &str, start: u64, len: u64) -> Result<Vec<u8>> {
        let read = || -> std::io::Result<Vec<u8>> {
            let mut f = File::open(self.path(name))?;
            f.seek(SeekFrom::Start(start))?;
            let mut buf = vec![0; usize::try_from(len).unwrap_or(usize::MAX)];
            f.read_exact(&mut buf)?;
            Ok(buf)
        };
        read().map_err(|e| backend_err("get", name, &e))
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        let mut dirs = vec![self.path(prefix)];
        while let Some(dir) = dirs.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(backend_err("list", prefix, &e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| backend_err("list", prefix, &e))?;
                let meta = entry
                    .metadata()
                    .map_err(|e| backend_err("list", prefix, &e))?;
                let path = entry.path();
                if meta.is_dir() {
                    dirs.push(path);
                } else if let Ok(rel) = path.strip_prefix(&self.root) {
                    let rel = rel.to_string_lossy().to_string();
                    if !rel.contains(TMP_MARK) {
                        out.push((rel, meta.len()));
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, name: &str) -> Result<()> {
        match std::fs::remove_file(self.path(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(backend_err("delete", name, &e))
            }
            _ => Ok(()),
        }
    }

    fn exists(&self, name: &str) -> Result<bool> {
        Ok(self.path(name).exists())
    }
}
