//! Keys, chunk ids, sealing (optional authenticated encryption) and compression of blobs.
//!
//! A key file holds 32 random bytes as 64 hex digits. From it two keys are derived with
//! BLAKE3's key derivation: the chunk-id key (chunk ids are keyed BLAKE3 hashes, so names reveal
//! nothing about the data) and the data key (ChaCha20-Poly1305). An unencrypted repository keeps
//! a random chunk-id key in its config.

use crate::error::{RepoError, Result};
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// A chunk's id: the keyed BLAKE3 hash of its plaintext.
pub type ChunkId = [u8; 32];

/// Bytes of a nonce in front of every sealed blob.
pub const NONCE_LEN: usize = 12;
/// Bytes of the authentication tag after every sealed blob.
pub const TAG_LEN: usize = 16;

const ID_CONTEXT: &str = "fss-repo 1 chunk id key";
const DATA_CONTEXT: &str = "fss-repo 1 data key";

/// `n` random bytes as hex.
#[must_use]
pub fn random_hex(n: usize) -> String {
    hex(&random_bytes(n))
}

/// `n` random bytes.
#[must_use]
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    // The OS generator does not fail on Linux once booted; a zero buffer is only a weaker name.
    let _ = getrandom::fill(&mut b);
    b
}

/// Lower-case hex.
#[must_use]
pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// Parse lower- or upper-case hex of exactly `N` bytes.
#[must_use]
pub fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.trim();
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Read a key file (64 hex digits).
///
/// # Errors
/// The file cannot be read or does not hold a key.
pub fn read_key_file(path: &Path) -> Result<[u8; 32]> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| RepoError::io(format!("cannot read the key file {}", path.display()), e))?;
    unhex::<32>(&text).ok_or_else(|| {
        RepoError::Invalid(format!(
            "{} is not an fss repository key (64 hex digits)",
            path.display()
        ))
    })
}

/// Read the key file, or create it (mode 0600) with a new random key when it does not exist.
///
/// # Errors
/// It cannot be read or created.
pub fn read_or_create_key_file(path: &Path) -> Result<[u8; 32]> {
    if path.exists() {
        return read_key_file(path);
    }
    let key: [u8; 32] = unhex::<32>(&random_hex(32)).unwrap_or([0; 32]);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| RepoError::io(format!("cannot create the key file {}", path.display()), e))?;
    writeln!(f, "{}", hex(&key))
        .and_then(|()| f.sync_all())
        .map_err(|e| RepoError::io(format!("cannot write the key file {}", path.display()), e))?;
    Ok(key)
}

/// The keys of an open repository.
#[derive(Clone)]
pub struct Keys {
    id_key: [u8; 32],
    cipher: Option<ChaCha20Poly1305>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("encrypted", &self.cipher.is_some())
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// Keys of an unencrypted repository with this chunk-id key.
    #[must_use]
    pub fn plain(id_key: [u8; 32]) -> Self {
        Keys {
            id_key,
            cipher: None,
        }
    }

    /// Keys derived from a master key.
    #[must_use]
    pub fn from_master(master: &[u8; 32]) -> Self {
        let data = blake3::derive_key(DATA_CONTEXT, master);
        Keys {
            id_key: blake3::derive_key(ID_CONTEXT, master),
            cipher: Some(ChaCha20Poly1305::new(Key::from_slice(&data))),
        }
    }

    /// Whether blobs are encrypted.
    #[must_use]
    pub fn encrypted(&self) -> bool {
        self.cipher.is_some()
    }

    /// The id of a chunk.
    #[must_use]
    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        *blake3::keyed_hash(&self.id_key, data).as_bytes()
    }

    /// Encrypt (nonce, ciphertext, tag) or pass through.
    #[must_use]
    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let Some(c) = &self.cipher else {
            return plain.to_vec();
        };
        let nonce = random_bytes(NONCE_LEN);
        let mut out = nonce.clone();
        // Encryption of an in-memory buffer with a 12-byte nonce cannot fail.
        out.extend(
            c.encrypt(Nonce::from_slice(&nonce), plain)
                .unwrap_or_default(),
        );
        out
    }

    /// Decrypt and authenticate, or pass through. `None`: forged, damaged or another key.
    #[must_use]
    pub fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        let Some(c) = &self.cipher else {
            return Some(sealed.to_vec());
        };
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        c.decrypt(Nonce::from_slice(nonce), body).ok()
    }
}

const RAW: u8 = 0;
const ZSTD: u8 = 1;

/// A blob's plaintext: a flag byte (0 stored, 1 zstd) and the bytes, compressed when that
/// makes them smaller.
#[must_use]
pub fn pack_plain(data: &[u8]) -> Vec<u8> {
    if let Ok(z) = zstd::bulk::compress(data, 3) {
        if z.len() + 1 < data.len() {
            let mut out = Vec::with_capacity(z.len() + 1);
            out.push(ZSTD);
            out.extend_from_slice(&z);
            return out;
        }
    }
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(RAW);
    out.extend_from_slice(data);
    out
}

/// Undo [`pack_plain`]; `limit` bounds the decompressed size.
///
/// # Errors
/// A description of what is wrong (unknown flag, bad zstd data).
pub fn unpack_plain(blob: &[u8], limit: usize) -> std::result::Result<Vec<u8>, String> {
    match blob.split_first() {
        Some((&RAW, rest)) => Ok(rest.to_vec()),
        Some((&ZSTD, rest)) => {
            zstd::bulk::decompress(rest, limit).map_err(|e| format!("bad zstd data: {e}"))
        }
        Some((f, _)) => Err(format!("unknown blob flag {f}")),
        None => Err("empty blob".to_string()),
    }
}

/// Seal a metadata document (JSON), compressed.
#[must_use]
pub fn seal_doc(keys: &Keys, json: &[u8]) -> Vec<u8> {
    keys.seal(&pack_plain(json))
}

/// Open a metadata document sealed by [`seal_doc`].
///
/// # Errors
/// [`RepoError::WrongKey`] when it does not authenticate, `Corrupt` when it does not decode.
pub fn open_doc<T: serde::de::DeserializeOwned>(
    keys: &Keys,
    object: &str,
    sealed: &[u8],
) -> Result<T> {
    let plain = keys.open(sealed).ok_or_else(|| {
        RepoError::corrupt(
            object,
            "it does not authenticate with this key (damaged or written with another key)",
        )
    })?;
    let json = unpack_plain(&plain, 1 << 30).map_err(|e| RepoError::corrupt(object, e))?;
    serde_json::from_slice(&json).map_err(|e| RepoError::corrupt(object, e.to_string()))
}

/// Parse hex of any even length.
#[must_use]
pub fn unhex_vec(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok())
        .collect()
}
