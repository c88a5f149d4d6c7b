//! The documents a repository holds (`docs/REPOSITORY.md`): the config, pack indexes,
//! backup manifests and garbage-collection marks, and the object names they live under.

use serde::{Deserialize, Serialize};

/// The name of the config object.
pub const CONFIG: &str = "config";
/// Folder of pack objects.
pub const PACKS: &str = "packs/";
/// Folder of pack indexes (one per pack, same name).
pub const INDEX: &str = "index/";
/// Folder of backup manifests.
pub const BACKUPS: &str = "backups/";
/// Folder of garbage-collection marks.
pub const MARKS: &str = "gc/";
/// The format's identifier in the config.
pub const FORMAT: &str = "fss-repo";
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;
/// Default chunk size (`docs/REPOSITORY.md` says why).
pub const CHUNK_SIZE: u32 = 1 << 20;
/// A pack is closed once it holds this many bytes.
pub const PACK_TARGET: usize = 32 << 20;

/// The `config` object, plain JSON (it holds no secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// Always `fss-repo`.
    pub format: String,
    /// Always 1.
    pub version: u32,
    /// Bytes of every chunk but a volume's last.
    pub chunk_size: u32,
    /// `none` or `chacha20poly1305`.
    pub encryption: String,
    /// Unencrypted repositories: the chunk-id key, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_key: Option<String>,
    /// Encrypted repositories: a sealed known text, hex, that tells a wrong key at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_check: Option<String>,
}

/// The text sealed in [`Config::key_check`].
pub const KEY_CHECK: &[u8] = b"fss-repo key check 1";

/// One chunk's place in a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The chunk id, hex.
    #[serde(with = "hex32")]
    pub id: [u8; 32],
    /// Byte offset of its blob in the pack.
    pub offset: u64,
    /// Bytes of its blob.
    pub length: u32,
    /// Bytes of the chunk's plaintext.
    pub raw: u32,
}

/// `index/NAME`: the chunks of `packs/NAME`, sealed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackIndex {
    /// The pack's name (hex).
    pub pack: String,
    /// Its chunks in pack order.
    pub chunks: Vec<IndexEntry>,
}

/// `backups/ID`: one backup, a logical full of its snapshot, sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The backup's id (also its object name).
    pub id: String,
    /// The volume's name.
    pub volume: String,
    /// The volume's identity, hex.
    pub volume_id: String,
    /// The snapshot's name.
    pub snapshot: String,
    /// The snapshot's id within its volume.
    pub snapshot_id: u64,
    /// The snapshot's creation time, ns since the epoch (with the id: its identity).
    pub snapshot_created_ns: u64,
    /// When the backup was made, seconds since the epoch (UTC).
    pub created: u64,
    /// The volume's size in bytes.
    pub size: u64,
    /// Bytes of every chunk but the last.
    pub chunk_size: u32,
    /// One entry per chunk of the volume: its id (hex), or `null` for all zero.
    pub chunks: Vec<Option<String>>,
    /// Chunk bytes this backup added, before compression.
    pub new_bytes: u64,
    /// Bytes it added to the store (packs and indexes), after compression and encryption.
    pub stored_bytes: u64,
}

/// `gc/ID`: packs that no manifest needed when the mark was made, sealed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mark {
    /// When, seconds since the epoch.
    pub marked: u64,
    /// The candidate packs.
    pub packs: Vec<String>,
}

/// Object name of a pack.
#[must_use]
pub fn pack_object(name: &str) -> String {
    format!("{PACKS}{name}")
}

/// Object name of a pack's index.
#[must_use]
pub fn index_object(name: &str) -> String {
    format!("{INDEX}{name}")
}

/// Object name of a manifest.
#[must_use]
pub fn backup_object(id: &str) -> String {
    format!("{BACKUPS}{id}")
}

/// Seconds since the epoch, now.
#[must_use]
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// UTC (year, month, day, hour, minute, second) of a time.
fn utc(secs: u64) -> (u64, u64, u64, u64, u64, u64) {
    let (y, m, d) = crate::calendar::civil(secs / 86_400);
    let t = secs % 86_400;
    (y, m, d, t / 3600, t / 60 % 60, t % 60)
}

/// A new backup or mark id: UTC time to the second, then random hex, so names sort by time.
#[must_use]
pub fn new_id(secs: u64) -> String {
    let (y, m, d, h, mi, s) = utc(secs);
    let r = crate::crypto::random_hex(4);
    format!("{y:04}{m:02}{d:02}T{h:02}{mi:02}{s:02}Z-{r}")
}

/// RFC 3339 UTC form of a time.
#[must_use]
pub fn rfc3339(secs: u64) -> String {
    let (y, m, d, h, mi, s) = utc(secs);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::crypto::hex(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        crate::crypto::unhex::<32>(&s).ok_or_else(|| serde::de::Error::custom("not a chunk id"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_590_503), "2026-12-06T20:55:03Z");
        assert!(new_id(1_796_590_503).starts_with("20261206T205503Z-"));
    }
}
