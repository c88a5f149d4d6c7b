//! Store format v1: pure encoding and decoding, no I/O (see `docs/FORMAT.md`).
//!
//! - [`layout`]: where the superblock, log blocks and data slots lie;
//! - [`superblock`]: the immutable header of a store;
//! - [`le`]: little-endian fields at fixed offsets;
//! - [`record`]: log records, the log-block writer and the replay scanner.

pub mod layout;
pub mod le;
pub mod record;
pub mod superblock;

/// Why bytes could not be decoded as a store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The magic is not fss's.
    #[error("not an fss store (bad magic)")]
    NotAStore,
    /// A format version this code does not read.
    #[error("store format version {0} is not supported (this fss reads version 1)")]
    UnsupportedVersion(u32),
    /// Damaged bytes: a checksum mismatch, or a field out of range.
    #[error("store is corrupt: {0}")]
    Corrupt(String),
}

/// Bytes in a block, the unit of the log and of the superblock.
pub const BLOCK: usize = 4096;
