//! Blocks, clusters, and the arithmetic between byte offsets and them.
//!
//! A block (4 KiB) is the unit of preservation; a cluster (a power of two from 4 KiB to
//! 16 MiB) is the unit of allocation and mapping in a store. The cluster size belongs to the
//! volume and is grown automatically so that no volume needs more than 2^24 clusters.

use crate::cluster_map::{mask_range, mask_words};
use crate::error::{Error, ErrorKind, Result};

/// The unit of preservation, in bytes.
pub const BLOCK_SIZE: u64 = 4096;
/// log2 of [`BLOCK_SIZE`].
pub const BLOCK_SHIFT: u32 = 12;
/// The smallest cluster size.
pub const MIN_CLUSTER_SIZE: u64 = 4096;
/// The largest cluster size.
pub const MAX_CLUSTER_SIZE: u64 = 16 << 20;
/// The cluster size used when none is asked for.
pub const DEFAULT_CLUSTER_SIZE: u64 = 64 << 10;
/// The most clusters a volume may have; the cluster size grows past it (fss's FSS_CLUSTER_MAX).
pub const MAX_CLUSTERS: u64 = 1 << 24;

/// The shape of a volume as seen by its snapshots: its length and its cluster size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    volume_len: u64,
    cluster_shift: u32,
}

impl Geometry {
    /// The geometry for a volume of `volume_len` bytes with the `requested` cluster size (or
    /// the default), grown until the volume has at most [`MAX_CLUSTERS`] clusters.
    ///
    /// # Errors
    /// `InvalidArgument` if the requested size is not a power of two in range, or the volume is
    /// too large even for the largest cluster size.
    pub fn new(volume_len: u64, requested: Option<u64>) -> Result<Self> {
        let size = requested.unwrap_or(DEFAULT_CLUSTER_SIZE);
        if !size.is_power_of_two() || !(MIN_CLUSTER_SIZE..=MAX_CLUSTER_SIZE).contains(&size) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "choose cluster size",
                format!("{size} bytes"),
                "the cluster size must be a power of two from 4K to 16M (for example 64K)",
            ));
        }
        let mut shift = size.trailing_zeros();
        while volume_len.div_ceil(1 << shift) > MAX_CLUSTERS {
            shift += 1;
            if (1u64 << shift) > MAX_CLUSTER_SIZE {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    "choose cluster size",
                    format!("a volume of {volume_len} bytes"),
                    "the volume is larger than 2^24 clusters of 16M (256 TiB); fss cannot snapshot it",
                ));
            }
        }
        // Only the default grows silently; a size asked for is honoured or refused.
        if requested.is_some() && shift != size.trailing_zeros() {
            let min = 1u64 << shift;
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "choose cluster size",
                format!("{size} bytes"),
                format!(
                    "a volume of {volume_len} bytes would need more than 2^24 clusters of that \
                     size; the smallest cluster size for it is {} ({min} bytes): give that or \
                     more, or leave the cluster size out",
                    if min >= 1 << 20 {
                        format!("{}M", min >> 20)
                    } else {
                        format!("{}K", min >> 10)
                    }
                ),
            ));
        }
        Ok(Geometry {
            volume_len,
            cluster_shift: shift,
        })
    }

    /// The volume's length in bytes.
    #[must_use]
    pub fn volume_len(&self) -> u64 {
        self.volume_len
    }

    /// The cluster size in bytes.
    #[must_use]
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_shift
    }

    /// log2 of the cluster size.
    #[must_use]
    pub fn cluster_shift(&self) -> u32 {
        self.cluster_shift
    }

    /// Blocks in one cluster (1 to 4096).
    #[must_use]
    pub fn blocks_per_cluster(&self) -> u32 {
        1 << (self.cluster_shift - BLOCK_SHIFT)
    }

    /// Clusters in the volume, counting a last partial one.
    #[must_use]
    pub fn cluster_count(&self) -> u64 {
        self.volume_len.div_ceil(self.cluster_size())
    }

    /// Blocks in the volume, counting a last partial one.
    #[must_use]
    pub fn block_count(&self) -> u64 {
        self.volume_len.div_ceil(BLOCK_SIZE)
    }

    /// The cluster holding block `block`.
    #[must_use]
    pub fn cluster_of_block(&self, block: u64) -> u64 {
        block >> (self.cluster_shift - BLOCK_SHIFT)
    }

    /// The first block of cluster `cluster`.
    #[must_use]
    pub fn first_block(&self, cluster: u64) -> u64 {
        cluster << (self.cluster_shift - BLOCK_SHIFT)
    }

    /// The index of `block` inside its cluster.
    #[must_use]
    pub fn block_in_cluster(&self, block: u64) -> u32 {
        (block & (u64::from(self.blocks_per_cluster()) - 1)) as u32
    }

    /// The clusters holding blocks `[b0, b1)` (not empty), in order.
    pub(crate) fn clusters_of(&self, b0: u64, b1: u64) -> impl Iterator<Item = Cluster> + Clone {
        // At most MAX_CLUSTERS (2^24) clusters: every index fits in u32.
        (self.cluster_of_block(b0)..=self.cluster_of_block(b1 - 1)).map(|c| Cluster(c as u32))
    }

    /// The first block of `cluster`.
    pub(crate) fn first_block_of(&self, cluster: Cluster) -> u64 {
        self.first_block(cluster.index())
    }

    /// The blocks of `cluster` inside the volume and inside blocks `[b0, b1)`, as masks:
    /// (whole cluster, the part in range).
    pub(crate) fn cluster_masks(&self, cluster: Cluster, b0: u64, b1: u64) -> (Vec<u16>, Vec<u16>) {
        let full = self.blocks_in_range(cluster, 0, u64::MAX);
        (full, self.blocks_in_range(cluster, b0, b1))
    }

    /// The blocks of `cluster` inside the volume and inside blocks `[b0, b1)`: the second
    /// mask of [`cluster_masks`](Self::cluster_masks), for readers, which need only that.
    pub(crate) fn blocks_in_range(&self, cluster: Cluster, b0: u64, b1: u64) -> Vec<u16> {
        let words = mask_words(self.blocks_per_cluster());
        let first = self.first_block_of(cluster);
        let end = (first + u64::from(self.blocks_per_cluster())).min(self.block_count());
        let from = b0.max(first) - first;
        let to = b1.min(end) - first;
        mask_range(words, from as u32, to as u32)
    }
}

/// A cluster of the volume, by index. A volume has at most [`MAX_CLUSTERS`] (2^24) clusters,
/// so every index fits the `u32` by which cluster maps and stores key clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Cluster(u32);

impl Cluster {
    /// The cluster a map or store keys by `key`.
    pub(crate) fn from_key(key: u32) -> Self {
        Cluster(key)
    }

    /// Its key in a cluster map or store.
    pub(crate) fn key(self) -> u32 {
        self.0
    }

    /// Its index among the volume's clusters.
    pub(crate) fn index(self) -> u64 {
        u64::from(self.0)
    }
}

/// A byte range `[start, end)` of the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub start: u64,
    pub end: u64,
}

impl Span {
    /// Its place in a buffer that holds the volume's bytes from byte `base` on.
    pub(crate) fn in_buf(self, base: u64) -> std::ops::Range<usize> {
        (self.start - base) as usize..(self.end - base) as usize
    }

    /// Its length in bytes.
    pub(crate) fn len(self) -> u64 {
        self.end - self.start
    }
}

/// The bytes of blocks `[first, first + count)` that lie in `[offset, offset + len)`.
pub(crate) fn clip(first: u64, count: u64, offset: u64, len: u64) -> Span {
    Span {
        start: (first * BLOCK_SIZE).max(offset),
        end: ((first + count) * BLOCK_SIZE).min(offset + len),
    }
}

/// The blocks `[first, end)` touched by the byte range `[offset, offset + len)`.
#[must_use]
pub fn block_span(offset: u64, len: u64) -> (u64, u64) {
    (offset >> BLOCK_SHIFT, (offset + len).div_ceil(BLOCK_SIZE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_and_explicit_sizes() {
        let g = Geometry::new(1 << 30, None).unwrap();
        assert_eq!(g.cluster_size(), 64 << 10);
        assert_eq!(g.blocks_per_cluster(), 16);
        assert_eq!(g.cluster_count(), 16384);
        let g = Geometry::new(10_000, Some(4096)).unwrap();
        assert_eq!(
            (g.cluster_count(), g.block_count(), g.blocks_per_cluster()),
            (3, 3, 1)
        );
    }

    #[test]
    fn grows_past_two_to_the_24_clusters() {
        // 2 TiB at 64K would be 2^25 clusters: grown to 128K.
        let g = Geometry::new(2 << 40, None).unwrap();
        assert_eq!(g.cluster_size(), 128 << 10);
        assert_eq!(g.cluster_count(), 1 << 24);
        let g = Geometry::new((1 << 40) + 1, None).unwrap();
        assert!(g.cluster_count() <= MAX_CLUSTERS);
        assert_eq!(g.cluster_size(), 128 << 10);
    }

    #[test]
    fn a_requested_size_too_small_for_the_volume_is_refused_naming_the_minimum() {
        for (len, asked, min) in [
            ((1u64 << 40) + 1, 4096, "128K"),
            (15 << 40, 4096, "1M"),
            (15 << 40, 512 << 10, "1M"),
            (255 << 40, 1 << 20, "16M"),
        ] {
            let e = Geometry::new(len, Some(asked)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument);
            assert!(
                e.to_string().contains(&format!("is {min} (")),
                "{len} {asked}: {e}"
            );
        }
        // The minimum itself is taken as asked.
        let g = Geometry::new(15 << 40, Some(1 << 20)).unwrap();
        assert_eq!(g.cluster_size(), 1 << 20);
    }

    #[test]
    fn rejects_bad_sizes() {
        for bad in [0, 1000, 2048, 3 << 12, 32 << 20] {
            let e = Geometry::new(1 << 30, Some(bad)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        }
        let e = Geometry::new(u64::MAX, None).unwrap_err();
        assert!(e.to_string().contains("256 TiB"));
    }

    #[test]
    fn block_arithmetic() {
        let g = Geometry::new(1 << 20, Some(16384)).unwrap();
        assert_eq!(g.cluster_of_block(9), 2);
        assert_eq!(g.first_block(2), 8);
        assert_eq!(g.block_in_cluster(9), 1);
        assert_eq!(block_span(4095, 2), (0, 2));
        assert_eq!(block_span(4096, 4096), (1, 2));
    }
}
