//! An open repository: its backend, its keys, and the reading of its indexes and manifests.

use crate::backend::{open_url, Backend};
use crate::cache::DocCache;
use crate::crypto::{
    hex, open_doc, read_key_file, read_or_create_key_file, seal_doc, unhex, ChunkId, Keys,
};
use crate::error::{RepoError, Result};
use crate::format::{
    backup_object, Config, IndexEntry, Manifest, Mark, PackIndex, BACKUPS, CHUNK_SIZE, CONFIG,
    FORMAT, INDEX, KEY_CHECK, MARKS, VERSION,
};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Where a chunk is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The pack's name.
    pub pack: String,
    /// The chunk's entry in it.
    pub entry: IndexEntry,
}

/// Every indexed chunk, and the packs a garbage-collection mark names (whose chunks a backup
/// must not reuse).
#[derive(Debug, Default)]
pub struct ChunkIndex {
    /// Chunk id to location.
    pub chunks: HashMap<ChunkId, Location>,
    /// Packs that have an index.
    pub packs: HashSet<String>,
    /// Packs named by a mark.
    pub marked: HashSet<String>,
}

/// Parallel reads of small documents (indexes, manifests, marks) unless set otherwise.
const DEFAULT_CONNECTIONS: usize = 4;

/// An open repository.
pub struct Repository {
    backend: Box<dyn Backend>,
    keys: Keys,
    config: Config,
    url: String,
    connections: usize,
    cache: Option<DocCache>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Repository {
    /// Create a repository at `url`, encrypted with the key in `key_file` (created with a new
    /// random key when it does not exist) or unencrypted.
    ///
    /// # Errors
    /// A repository already exists there, the key file is unusable, or the store refused.
    pub fn init(url: &str, key_file: Option<&Path>) -> Result<Self> {
        Self::init_with(url, key_file, CHUNK_SIZE)
    }

    /// [`Repository::init`] with another chunk size (a power of two, 64 KiB to 16 MiB).
    ///
    /// # Errors
    /// As [`Repository::init`], or an unusable chunk size.
    pub fn init_with(url: &str, key_file: Option<&Path>, chunk_size: u32) -> Result<Self> {
        if !chunk_size_ok(chunk_size) {
            return Err(RepoError::Invalid(format!(
                "chunk size {chunk_size} is not a power of two from 64 KiB to 16 MiB"
            )));
        }
        let backend = open_url(url)?;
        Self::init_on(backend, url, key_file, chunk_size)
    }

    /// [`Repository::init_with`] on a given backend.
    ///
    /// # Errors
    /// As [`Repository::init`].
    pub fn init_on(
        backend: Box<dyn Backend>,
        url: &str,
        key_file: Option<&Path>,
        chunk_size: u32,
    ) -> Result<Self> {
        if backend.exists(CONFIG)? {
            return Err(RepoError::Invalid(format!(
                "{url} already holds a repository; use it, or choose another URL"
            )));
        }
        let (keys, config) = if let Some(path) = key_file {
            let keys = Keys::from_master(&read_or_create_key_file(path)?);
            let check = hex(&keys.seal(KEY_CHECK));
            (
                keys,
                new_config("chacha20poly1305", None, Some(check), chunk_size),
            )
        } else {
            let id_key = crate::crypto::random_hex(32);
            let keys = Keys::plain(unhex::<32>(&id_key).unwrap_or([0; 32]));
            (keys, new_config("none", Some(id_key), None, chunk_size))
        };
        let json = serde_json::to_vec_pretty(&config)
            .map_err(|e| RepoError::Invalid(format!("cannot encode the config: {e}")))?;
        backend.put(CONFIG, &json)?;
        Ok(Repository {
            backend,
            keys,
            config,
            url: url.to_string(),
            connections: DEFAULT_CONNECTIONS,
            cache: DocCache::for_repository(&json),
        })
    }

    /// Open the repository at `url` with its key file, if it is encrypted.
    ///
    /// # Errors
    /// No repository there, a wrong or missing key, or the store refused.
    pub fn open(url: &str, key_file: Option<&Path>) -> Result<Self> {
        let backend = open_url(url)?;
        Self::open_on(backend, url, key_file)
    }

    /// [`Repository::open`] on a given backend.
    ///
    /// # Errors
    /// As [`Repository::open`].
    pub fn open_on(backend: Box<dyn Backend>, url: &str, key_file: Option<&Path>) -> Result<Self> {
        let raw = match backend.get(CONFIG) {
            Err(RepoError::Missing { .. }) => {
                return Err(RepoError::Invalid(format!(
                    "{url} holds no fss repository (no 'config' object); create one with `fss repo init {url}`"
                )))
            }
            r => r?,
        };
        let config: Config =
            serde_json::from_slice(&raw).map_err(|e| RepoError::corrupt(CONFIG, e.to_string()))?;
        if !chunk_size_ok(config.chunk_size) {
            return Err(RepoError::corrupt(
                CONFIG,
                format!("chunk size {} is out of range", config.chunk_size),
            ));
        }
        if config.format != FORMAT || config.version != VERSION {
            return Err(RepoError::corrupt(
                CONFIG,
                format!(
                    "format {} version {} is not {FORMAT} {VERSION}",
                    config.format, config.version
                ),
            ));
        }
        let keys = match (&config.id_key, &config.key_check, key_file) {
            (Some(id), None, _) => Keys::plain(
                unhex::<32>(id).ok_or_else(|| RepoError::corrupt(CONFIG, "bad id_key"))?,
            ),
            (None, Some(_), None) => return Err(RepoError::KeyRequired),
            (None, Some(check), Some(path)) => {
                let keys = Keys::from_master(&read_key_file(path)?);
                let sealed = crate::crypto::unhex_vec(check)
                    .ok_or_else(|| RepoError::corrupt(CONFIG, "bad key_check"))?;
                if keys.open(&sealed).as_deref() != Some(KEY_CHECK) {
                    return Err(RepoError::WrongKey {
                        detail: format!("{} is not the key of {url}", path.display()),
                    });
                }
                keys
            }
            _ => {
                return Err(RepoError::corrupt(
                    CONFIG,
                    "neither id_key nor key_check, or both",
                ))
            }
        };
        Ok(Repository {
            backend,
            keys,
            config,
            url: url.to_string(),
            connections: DEFAULT_CONNECTIONS,
            cache: DocCache::for_repository(&raw),
        })
    }

    /// Read indexes, manifests and marks on `n` parallel connections (at least one).
    #[must_use]
    pub fn with_connections(mut self, n: usize) -> Self {
        self.connections = n.max(1);
        self
    }

    /// Keep pack indexes and manifests in `cache` (`None`: no cache), instead of the default
    /// ([`DocCache::for_repository`]).
    #[must_use]
    pub fn with_cache(mut self, cache: Option<DocCache>) -> Self {
        self.cache = cache;
        self
    }

    /// The backend.
    #[must_use]
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// The keys.
    #[must_use]
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The chunk size.
    #[must_use]
    pub fn chunk_size(&self) -> u32 {
        self.config.chunk_size
    }

    /// The URL it was opened with.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every backup, oldest first.
    ///
    /// # Errors
    /// A manifest cannot be read or decoded.
    pub fn backups(&self) -> Result<Vec<Manifest>> {
        let names = self.backend.list(BACKUPS)?;
        if let Some(c) = &self.cache {
            c.retain(BACKUPS, &names);
        }
        let mut out = Vec::with_capacity(names.len());
        for r in self.read_docs::<Manifest>(&names, true) {
            out.push(r?);
        }
        out.sort_by(|a, b| order(a).cmp(&order(b)));
        Ok(out)
    }

    /// One backup by id.
    ///
    /// # Errors
    /// [`RepoError::NoSuchBackup`], or it cannot be read.
    pub fn backup(&self, id: &str) -> Result<Manifest> {
        match self.read_doc(&backup_object(id)) {
            Err(RepoError::Missing { .. }) => Err(RepoError::NoSuchBackup(id.to_string())),
            r => r,
        }
    }

    /// Read every pack index and every mark.
    ///
    /// # Errors
    /// An index or mark cannot be read.
    pub fn load_index(&self) -> Result<ChunkIndex> {
        let mut idx = ChunkIndex::default();
        for (_, mark) in self.marks()? {
            idx.marked.extend(mark.packs);
        }
        let names = self.backend.list(INDEX)?;
        if let Some(c) = &self.cache {
            c.retain(INDEX, &names);
        }
        for r in self.read_docs::<PackIndex>(&names, true) {
            let pi = match r {
                // Deleted by a concurrent prune between the listing and the read.
                Err(RepoError::Missing { .. }) => continue,
                r => r?,
            };
            let marked = idx.marked.contains(&pi.pack);
            for entry in pi.chunks {
                // A chunk stored twice (again after its first pack was marked) is found in
                // the unmarked pack, so the marked one can go.
                let keep_old = idx
                    .chunks
                    .get(&entry.id)
                    .is_some_and(|old| marked || !idx.marked.contains(&old.pack));
                if !keep_old {
                    idx.chunks.insert(
                        entry.id,
                        Location {
                            pack: pi.pack.clone(),
                            entry,
                        },
                    );
                }
            }
            idx.packs.insert(pi.pack);
        }
        Ok(idx)
    }

    /// Every garbage-collection mark with its object name.
    ///
    /// # Errors
    /// A mark cannot be read.
    pub fn marks(&self) -> Result<Vec<(String, Mark)>> {
        let names = self.backend.list(MARKS)?;
        let mut out = Vec::new();
        for ((name, _), r) in names.iter().zip(self.read_docs::<Mark>(&names, false)) {
            match r {
                Err(RepoError::Missing { .. }) => {}
                r => out.push((name.clone(), r?)),
            }
        }
        Ok(out)
    }

    /// Read and open a sealed document.
    ///
    /// # Errors
    /// Missing, unreadable or damaged.
    pub fn read_doc<T: serde::de::DeserializeOwned>(&self, object: &str) -> Result<T> {
        let sealed = self.backend.get(object)?;
        open_doc(&self.keys, object, &sealed)
    }

    /// Read the documents `names` (a listing: name and size) on the repository's connections;
    /// the results in the order of `names`. With `cached`, the documents are immutable ones
    /// (indexes, manifests): they are taken from the local cache when it holds them with the
    /// listed size and they open, and kept there when fetched.
    pub fn read_docs<T: serde::de::DeserializeOwned + Send>(
        &self,
        names: &[(String, u64)],
        cached: bool,
    ) -> Vec<Result<T>> {
        let next = AtomicUsize::new(0);
        let slots: Vec<Mutex<Option<Result<T>>>> = names.iter().map(|_| Mutex::new(None)).collect();
        let worker = || loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some((name, size)) = names.get(i) else {
                break;
            };
            let cache = self.cache.as_ref().filter(|_| cached);
            let r = match cache {
                Some(c) => self.read_cached(c, name, *size),
                None => self.read_doc::<T>(name),
            };
            if let Ok(mut slot) = slots[i].lock() {
                *slot = Some(r);
            }
        };
        let threads = self.connections.min(names.len());
        if threads <= 1 {
            worker();
        } else {
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(worker);
                }
            });
        }
        slots
            .into_iter()
            .zip(names)
            .map(|(slot, (name, _))| {
                slot.into_inner().ok().flatten().unwrap_or_else(|| {
                    Err(RepoError::Invalid(format!(
                        "a thread reading {name} failed"
                    )))
                })
            })
            .collect()
    }

    fn read_cached<T: serde::de::DeserializeOwned>(
        &self,
        cache: &DocCache,
        name: &str,
        size: u64,
    ) -> Result<T> {
        if let Some(doc) = cache
            .get(name, size)
            .and_then(|b| open_doc(&self.keys, name, &b).ok())
        {
            return Ok(doc);
        }
        let sealed = self.backend.get(name)?;
        let doc = open_doc(&self.keys, name, &sealed)?;
        cache.put(name, &sealed);
        Ok(doc)
    }

    /// Seal and store a document; returns the bytes stored.
    ///
    /// # Errors
    /// The store refused.
    pub fn write_doc<T: serde::Serialize>(&self, object: &str, doc: &T) -> Result<u64> {
        self.store_doc(object, doc, false)
    }

    /// [`Repository::write_doc`] of an immutable document (an index, a manifest), kept in the
    /// local cache too once stored, so the next backup need not fetch it.
    ///
    /// # Errors
    /// The store refused.
    pub fn write_immutable_doc<T: serde::Serialize>(&self, object: &str, doc: &T) -> Result<u64> {
        self.store_doc(object, doc, true)
    }

    fn store_doc<T: serde::Serialize>(&self, object: &str, doc: &T, cache: bool) -> Result<u64> {
        let json = serde_json::to_vec(doc)
            .map_err(|e| RepoError::Invalid(format!("cannot encode {object}: {e}")))?;
        let sealed = seal_doc(&self.keys, &json);
        self.backend.put(object, &sealed)?;
        if let Some(c) = self.cache.as_ref().filter(|_| cache) {
            c.put(object, &sealed);
        }
        Ok(sealed.len() as u64)
    }
}

fn chunk_size_ok(n: u32) -> bool {
    n.is_power_of_two() && (64 << 10..=16 << 20).contains(&n)
}

fn new_config(
    encryption: &str,
    id_key: Option<String>,
    key_check: Option<String>,
    chunk_size: u32,
) -> Config {
    Config {
        format: FORMAT.to_string(),
        version: VERSION,
        chunk_size,
        encryption: encryption.to_string(),
        id_key,
        key_check,
    }
}

/// The order of backups in time: when made (to the second), then, within a second, the
/// snapshot's creation time (later snapshots of a volume are newer), then the id.
#[must_use]
pub fn order(m: &Manifest) -> (u64, u64, &str) {
    (m.created, m.snapshot_created_ns, &m.id)
}
