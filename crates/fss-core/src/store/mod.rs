//! Backing stores: where pre-images go, and the records that find them.
//!
//! The engine owns each snapshot's [`ClusterMap`](crate::cluster_map::ClusterMap); a store only
//! hands out cluster-sized slots, keeps the blocks written into them, and (when persistent)
//! makes them and their records durable on [`Store::sync`]. The in-memory/transient
//! [`DeviceStore`] lives here; durable formats implement the same trait.

mod device_store;
mod file_store;
mod replay;
mod slots;

pub use device_store::DeviceStore;
pub use file_store::{FileStore, StoreIdentity};

use crate::cluster_map::ClusterMap;
use crate::error::Result;
use std::time::SystemTime;

/// What a store is being made for, handed to the factory at snapshot creation.
#[derive(Debug, Clone)]
pub struct StoreParams {
    /// The snapshot's name.
    pub snapshot: String,
    /// The volume's name.
    pub volume: String,
    /// The volume's length in bytes.
    pub volume_len: u64,
    /// The cluster size (slot size) in bytes.
    pub cluster_size: u64,
    /// Whether the snapshot must survive a restart.
    pub persistent: bool,
    /// The most bytes the store may use, if limited.
    pub max_bytes: Option<u64>,
    /// The volume's identity (assigned by whoever manages volumes; zero if none).
    pub volume_id: [u8; 16],
    /// The snapshot's creation order within the volume (its position in the chain).
    pub snapshot_id: u64,
    /// When the snapshot is taken.
    pub created: SystemTime,
}

/// One cluster of a snapshot's map, as a store recovers it when reopened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    /// Cluster index in the volume.
    pub cluster: u32,
    /// Slot in the store.
    pub slot: u32,
    /// Preserved blocks (16-bit words, as in [`crate::cluster_map`]).
    pub mask: Vec<u16>,
}

/// What reopening a durable store recovered.
#[derive(Debug)]
pub struct Recovered {
    /// The snapshot's name.
    pub name: String,
    /// Its creation order within the volume.
    pub snapshot_id: u64,
    /// When it was taken.
    pub created: SystemTime,
    /// The cluster size.
    pub cluster_size: u64,
    /// The map: each preserved cluster's slot and blocks.
    pub map: ClusterMap,
    /// Set if the snapshot was invalidated before the restart, with the reason.
    pub invalid: Option<String>,
}

impl Recovered {
    /// The map as a list, ascending by cluster.
    #[must_use]
    pub fn entries(&self) -> Vec<MapEntry> {
        self.map
            .iter()
            .map(|(cluster, slot, mask)| MapEntry {
                cluster,
                slot,
                mask: mask.to_vec(),
            })
            .collect()
    }
}

/// The outcome of rereading a store and checking every preserved block's checksum.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Whether the store keeps checksums at all (transient stores do not).
    pub checksummed: bool,
    /// Blocks checked.
    pub blocks_checked: u64,
    /// Volume byte offsets of the blocks whose pre-image is damaged.
    pub damaged: Vec<u64>,
}

/// A snapshot's backing store.
///
/// Slots are numbered 0, 1, 2... in allocation order. Implementations are shared by many
/// writer threads: every method takes `&self`.
pub trait Store: Send + Sync {
    /// For messages: "store /var/lib/fss/stores/s1.fss", "memory store".
    fn describe(&self) -> String;

    /// Allocate the next slot for `cluster`.
    ///
    /// # Errors
    /// `NoSpace` when the slot would pass the maximum size or the medium is full.
    fn allocate_slot(&self, cluster: u32) -> Result<u32>;

    /// Write whole blocks `data` into `slot` from block `first_block` of the cluster; they
    /// belong to `cluster`. A persistent store also stages the record that finds them.
    ///
    /// # Errors
    /// The write failed; the blocks are then not preserved.
    fn write_blocks(&self, cluster: u32, slot: u32, first_block: u32, data: &[u8]) -> Result<()>;

    /// Write `data` into consecutive slots from `first_slot` on, starting at block
    /// `first_block` of the first and going on through the next ones from their first block,
    /// as if slots of `cluster_size` bytes lay end to end; `clusters[i]` is the cluster of
    /// slot `first_slot + i`. As [`Store::write_blocks`] slot by slot (the default); stores
    /// whose slots lie end to end override it with fewer, larger writes.
    ///
    /// # Errors
    /// A write failed; none of these blocks count as preserved then.
    fn write_slot_run(
        &self,
        clusters: &[u32],
        first_slot: u32,
        first_block: u32,
        data: &[u8],
        cluster_size: u64,
    ) -> Result<()> {
        for_each_slot(
            clusters,
            first_slot,
            first_block,
            data,
            cluster_size,
            |c, s, b, d| self.write_blocks(c, s, b, d),
        )
    }

    /// Read `buf` from `slot` at byte `offset` inside it.
    ///
    /// # Errors
    /// The read failed.
    fn read(&self, slot: u32, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// Read `buf` from `slot` at byte `offset` inside it and on through the slots after it, as
    /// if slots of `cluster_size` bytes lay end to end. Stores where they do override this
    /// with fewer I/Os; the default reads slot by slot.
    ///
    /// # Errors
    /// A read failed.
    fn read_slots(&self, slot: u32, offset: u64, buf: &mut [u8], cluster_size: u64) -> Result<()> {
        let (mut slot, mut offset) = (slot, offset);
        let mut rest = buf;
        while !rest.is_empty() {
            let n =
                usize::try_from(cluster_size - offset).map_or(rest.len(), |n| n.min(rest.len()));
            let (now, later) = rest.split_at_mut(n);
            self.read(slot, offset, now)?;
            (slot, offset, rest) = (slot + 1, 0, later);
        }
        Ok(())
    }

    /// Where `buf.len()` bytes from byte `offset` of `slot` on (slots laid end to end, as for
    /// [`Store::read_slots`]) can be read with one positional read into `buf`: a descriptor
    /// and the offset in it. For callers that put many reads in flight at once
    /// ([`crate::device::read_all`]). `None` (the default): use `read_slots`.
    fn read_source(
        &self,
        _slot: u32,
        _offset: u64,
        _buf: &[u8],
    ) -> Option<(std::os::fd::BorrowedFd<'_>, u64)> {
        None
    }

    /// Make every block written so far, and its record, durable. A transient store does
    /// nothing. Concurrent callers may share one flush (group commit).
    ///
    /// # Errors
    /// The flush failed; the blocks written since the last sync must then be treated as lost.
    fn sync(&self) -> Result<()>;

    /// Bytes the store takes on its medium, by allocated slots.
    fn used_bytes(&self) -> u64;

    /// The maximum, if any.
    fn max_bytes(&self) -> Option<u64>;

    /// Change the maximum while the snapshot is live (`None`: no limit but the medium's).
    ///
    /// # Errors
    /// `InvalidArgument` if the new maximum is below what is already used or the medium's size.
    fn set_max_bytes(&self, max: Option<u64>) -> Result<()>;

    /// Whether the store keeps records durably (a persistent snapshot).
    fn is_persistent(&self) -> bool;

    /// Whether `new_slots` more slots, holding `new_blocks` blocks in all, fit: within the
    /// maximum size and the medium, and in the free space of the file system under a store
    /// file. For a move that must not start unless it can finish (a delete moving entries into
    /// the next older store). The default: no limit known.
    ///
    /// # Errors
    /// `NoSpace`, naming the store and the bytes it lacks; `Io` if the free space could not be
    /// read.
    fn check_room(&self, _new_slots: u64, _new_blocks: u64) -> Result<()> {
        Ok(())
    }

    /// Record durably that the snapshot is invalid (persistent stores; others do nothing).
    ///
    /// # Errors
    /// The record could not be written.
    fn record_invalid(&self, _reason: &str) -> Result<()> {
        Ok(())
    }

    /// Reread every preserved block and check it against its checksum.
    ///
    /// # Errors
    /// The store could not be read.
    fn verify(&self) -> Result<VerifyReport> {
        Ok(VerifyReport::default())
    }

    /// Release the store's space: the snapshot is deleted.
    ///
    /// # Errors
    /// The space could not be released (the snapshot is gone regardless).
    fn destroy(&self) -> Result<()>;
}

/// Split a run of slots (see [`Store::write_slot_run`]) into its per-slot pieces:
/// `f(cluster, slot, first_block, data)` for each, in order.
///
/// # Errors
/// The first error of `f`.
pub(crate) fn for_each_slot(
    clusters: &[u32],
    first_slot: u32,
    first_block: u32,
    data: &[u8],
    cluster_size: u64,
    mut f: impl FnMut(u32, u32, u32, &[u8]) -> Result<()>,
) -> Result<()> {
    let block = crate::geometry::BLOCK_SIZE;
    let mut rest = data;
    let mut start = first_block;
    for (i, &cluster) in clusters.iter().enumerate() {
        let room = cluster_size.saturating_sub(u64::from(start) * block);
        let n = usize::try_from(room).map_or(rest.len(), |r| r.min(rest.len()));
        let (now, later) = rest.split_at(n);
        let slot = first_slot.saturating_add(u32::try_from(i).unwrap_or(u32::MAX));
        f(cluster, slot, start, now)?;
        (rest, start) = (later, 0);
    }
    Ok(())
}
