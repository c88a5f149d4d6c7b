//! The superblock: block 0 of a store, written once (see `docs/FORMAT.md` section 2).

use super::layout::Layout;
use super::le::{u32_at, u64_at};
use super::{FormatError, BLOCK};

/// The magic at offset 0.
pub const MAGIC: [u8; 8] = *b"FSSSTOR\0";
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;
const CRC_AT: usize = BLOCK - 4;
const NAME_MAX: usize = 64;

/// The decoded superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// Random; seeds record checksums.
    pub nonce: [u8; 16],
    /// The volume's identity.
    pub volume_id: [u8; 16],
    /// The snapshot's creation order within the volume.
    pub snapshot_id: u64,
    /// The volume's length.
    pub volume_len: u64,
    /// The cluster size in bytes.
    pub cluster_size: u32,
    /// Creation time, ns since the epoch.
    pub created_ns: u64,
    /// The snapshot's name.
    pub name: String,
}

impl Superblock {
    /// The layout this superblock's cluster size implies.
    #[must_use]
    pub fn layout(&self) -> Layout {
        Layout::new(u64::from(self.cluster_size))
    }

    /// Encode into one block.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK];
        let layout = self.layout();
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&1u32.to_le_bytes());
        b[16..32].copy_from_slice(&self.nonce);
        b[32..48].copy_from_slice(&self.volume_id);
        b[48..56].copy_from_slice(&self.snapshot_id.to_le_bytes());
        b[56..64].copy_from_slice(&self.volume_len.to_le_bytes());
        b[64..68].copy_from_slice(&self.cluster_size.to_le_bytes());
        b[68..72].copy_from_slice(&(layout.slots_per_group() as u32).to_le_bytes());
        b[72..76].copy_from_slice(&(layout.log_blocks_per_group() as u32).to_le_bytes());
        b[80..88].copy_from_slice(&self.created_ns.to_le_bytes());
        let name = self.name.as_bytes();
        let n = name.len().min(NAME_MAX);
        b[88] = n as u8;
        b[89..89 + n].copy_from_slice(&name[..n]);
        let crc = crc32c::crc32c(&b[..CRC_AT]);
        b[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decode and check a superblock.
    ///
    /// # Errors
    /// [`FormatError`]: not a store, another version, or corrupt.
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        if b.len() < BLOCK || b[0..8] != MAGIC {
            return Err(FormatError::NotAStore);
        }
        let version = u32_at(b, 8);
        if version != VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let corrupt = |what: &str| Err(FormatError::Corrupt(format!("superblock: {what}")));
        if crc32c::crc32c(&b[..CRC_AT]) != u32_at(b, CRC_AT) {
            return corrupt("checksum mismatch");
        }
        let cluster_size = u32_at(b, 64);
        if !cluster_size.is_power_of_two() || !(4096..=16 << 20).contains(&cluster_size) {
            return corrupt("cluster size out of range");
        }
        let layout = Layout::new(u64::from(cluster_size));
        if u64::from(u32_at(b, 68)) != layout.slots_per_group()
            || u64::from(u32_at(b, 72)) != layout.log_blocks_per_group()
        {
            return corrupt("group geometry does not match the cluster size");
        }
        let n = b[88] as usize;
        if n == 0 || n > NAME_MAX {
            return corrupt("snapshot name length out of range");
        }
        let Ok(name) = std::str::from_utf8(&b[89..89 + n]) else {
            return corrupt("snapshot name is not UTF-8");
        };
        let mut nonce = [0u8; 16];
        nonce.copy_from_slice(&b[16..32]);
        let mut volume_id = [0u8; 16];
        volume_id.copy_from_slice(&b[32..48]);
        Ok(Superblock {
            nonce,
            volume_id,
            snapshot_id: u64_at(b, 48),
            volume_len: u64_at(b, 56),
            cluster_size,
            created_ns: u64_at(b, 80),
            name: name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb() -> Superblock {
        Superblock {
            nonce: [7; 16],
            volume_id: [1; 16],
            snapshot_id: 3,
            volume_len: 1 << 30,
            cluster_size: 65536,
            created_ns: 1_700_000_000_000_000_000,
            name: "fss0".into(),
        }
    }

    #[test]
    fn round_trip() {
        let b = sb().encode();
        assert_eq!(b.len(), BLOCK);
        assert_eq!(Superblock::decode(&b).unwrap(), sb());
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let b = sb().encode();
        for bit in (0..BLOCK * 8).step_by(7) {
            let mut c = b.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(Superblock::decode(&c).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn magic_and_version_have_their_own_errors() {
        let mut b = sb().encode();
        assert_eq!(Superblock::decode(&[0u8; 10]), Err(FormatError::NotAStore));
        b[8] = 2;
        assert_eq!(
            Superblock::decode(&b),
            Err(FormatError::UnsupportedVersion(2))
        );
        b[0] = b'X';
        assert_eq!(Superblock::decode(&b), Err(FormatError::NotAStore));
    }
}
