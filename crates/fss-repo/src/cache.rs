//! A local cache of immutable repository documents (pack indexes), stored exactly as fetched
//! (sealed: the cache reveals nothing the store does not) under
//! `$FSS_REPO_CACHE` or `$XDG_CACHE_HOME/fss` or `~/.cache/fss`, one directory per repository.
//!
//! Only a name that the current listing holds, with the listing's size, is read from the cache,
//! so an index whose pack a prune deleted is never trusted from it; files the listing no longer
//! holds are removed. A cached document that does not open is fetched again. `FSS_REPO_CACHE=off`
//! disables the cache.

use std::path::{Path, PathBuf};

/// The cache directory of one repository.
#[derive(Debug, Clone)]
pub struct DocCache {
    dir: PathBuf,
}

impl DocCache {
    /// The cache of the repository whose `config` object is `config` (it holds the repository's
    /// random key check or id key, so it names the repository), or `None` when disabled or no
    /// cache home is known.
    #[must_use]
    pub fn for_repository(config: &[u8]) -> Option<Self> {
        let home = match std::env::var_os("FSS_REPO_CACHE") {
            Some(v) if v == "off" => return None,
            Some(v) if !v.is_empty() => PathBuf::from(v),
            _ => match std::env::var_os("XDG_CACHE_HOME") {
                Some(x) if !x.is_empty() => PathBuf::from(x).join("fss"),
                _ => PathBuf::from(std::env::var_os("HOME")?).join(".cache/fss"),
            },
        };
        let id = blake3::hash(config).to_hex();
        Some(Self::at(home.join(&id.as_str()[..32])))
    }

    /// A cache in `dir`.
    #[must_use]
    pub fn at(dir: PathBuf) -> Self {
        DocCache { dir }
    }

    fn file(&self, name: &str) -> PathBuf {
        // Object names are `folder/hex`; one flat directory per folder.
        self.dir.join(name)
    }

    /// The cached bytes of object `name` if they are there with `size` bytes.
    #[must_use]
    pub fn get(&self, name: &str, size: u64) -> Option<Vec<u8>> {
        let path = self.file(name);
        let len = std::fs::metadata(&path).ok()?.len();
        if len != size {
            return None;
        }
        std::fs::read(path).ok().filter(|b| b.len() as u64 == size)
    }

    /// Keep `data` as object `name` (best effort: a cache that cannot be written is no error).
    pub fn put(&self, name: &str, data: &[u8]) {
        let path = self.file(name);
        let Some(parent) = path.parent() else { return };
        if std::fs::create_dir_all(parent).is_err() {
            return;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, data).is_ok() && std::fs::rename(&tmp, &path).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    /// Remove the cached objects under `folder` (such as `index/`) that `listed` does not hold.
    pub fn retain(&self, folder: &str, listed: &[(String, u64)]) {
        let dir = self.dir.join(folder.trim_end_matches('/'));
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let keep: std::collections::HashSet<&str> = listed
            .iter()
            .filter_map(|(n, _)| n.strip_prefix(folder))
            .collect();
        for e in entries.flatten() {
            let name = e.file_name();
            if !name.to_str().is_some_and(|n| keep.contains(n)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// The directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
