//! Volumes: create, add, list, remove.

use super::entries::{VolumeEntry, VolumeLive};
use super::fingerprint::fingerprint;
use super::recovery::{hex, open_volume_device};
use super::{Inner, Registry};
use crate::error::{DaemonError, ErrorKind, Result};
use crate::names::{check_name, human_size};
use crate::own_files;
use crate::protocol::{VolumeInfo, VolumeStatus};
use crate::state::{VolumeKind, VolumeState};
use fss_core::device::{BlockDevice, FileDevice, OpenOptions};
use fss_core::export::Export;
use fss_core::geometry::{MAX_CLUSTERS, MAX_CLUSTER_SIZE};
use fss_core::Volume;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

impl Registry {
    /// `volume-create`: create a sparse image of `size` bytes (at `image`, default
    /// `<state-dir>/volumes/NAME.img`) and serve it.
    ///
    /// # Errors
    /// A bad or taken name, a zero size, an existing image, or an I/O failure.
    pub fn create_volume(
        &self,
        name: &str,
        size: u64,
        image: Option<PathBuf>,
    ) -> Result<VolumeInfo> {
        let mut inner = self.lock();
        self.volume_create(&mut inner, name, size, image)?;
        self.volume_info_of(&inner, name)
    }

    /// `volume-add`: serve an existing image or block device.
    ///
    /// # Errors
    /// A bad or taken name, a device already served, empty, in use or unreadable.
    pub fn add_volume(&self, name: &str, device: &Path) -> Result<VolumeInfo> {
        let mut inner = self.lock();
        self.volume_add(&mut inner, name, device)?;
        self.volume_info_of(&inner, name)
    }

    /// `volume-list`: every volume, in the order they were added.
    #[must_use]
    pub fn list_volumes(&self) -> Vec<VolumeInfo> {
        let inner = self.lock();
        inner
            .volumes
            .values()
            .map(|v| self.volume_info(&inner, v))
            .collect()
    }

    /// `volume-remove`: stop serving a volume (its image is kept).
    ///
    /// # Errors
    /// No such volume, or it has snapshots, is open or busy.
    pub fn remove_volume(&self, name: &str) -> Result<()> {
        let mut inner = self.lock();
        if let Some(what) = self.held_by(name) {
            return Err(DaemonError::busy(format!(
                "volume '{name}' is busy with {what}; wait for it to finish"
            )));
        }
        if inner.meta.schedules.iter().any(|s| s.spec.volume == name) {
            return Err(DaemonError::busy(format!(
                "volume '{name}' has a snapshot schedule; remove it first with `fss schedule \
                 remove {name}`"
            )));
        }
        self.volume_remove(&mut inner, name)
    }

    /// Every online volume's counters, for `stats` and metrics.
    pub(crate) fn volume_stats(&self) -> Vec<crate::stats::VolumeStat> {
        let inner = self.lock();
        inner
            .volumes
            .iter()
            .filter_map(|(name, v)| {
                let s = v.volume()?.stats();
                Some(crate::stats::VolumeStat {
                    name: name.clone(),
                    read_bytes: s.bytes_read,
                    written_bytes: s.bytes_written,
                    preserved_blocks: s.blocks_preserved,
                    held_write_bytes: s.held_bytes,
                })
            })
            .collect()
    }

    /// A volume as listings show it.
    fn volume_info(&self, inner: &Inner, v: &VolumeEntry) -> VolumeInfo {
        let name = &v.record.name;
        VolumeInfo {
            name: name.clone(),
            size: v.record.size,
            path: v.record.path.clone(),
            kind: v.record.kind,
            snapshots: inner.snapshots_of(name).count() as u64,
            cluster_size: v.volume().and_then(Volume::cluster_size),
            state: v.offline().map_or(VolumeStatus::Online, |r| {
                VolumeStatus::Offline(r.to_string())
            }),
            open: self.opens_of(name),
        }
    }

    /// Volume `name` (just made) as listings show it.
    fn volume_info_of(&self, inner: &Inner, name: &str) -> Result<VolumeInfo> {
        let v = inner.volumes.get(name).ok_or_else(|| {
            DaemonError::internal(format!("volume '{name}' vanished as it was made"))
        })?;
        Ok(self.volume_info(inner, v))
    }

    pub(super) fn volume_create(
        &self,
        inner: &mut Inner,
        name: &str,
        size: u64,
        image: Option<PathBuf>,
    ) -> Result<()> {
        check_name(name)?;
        if Self::name_taken(inner, name) {
            return Err(DaemonError::exists(format!(
                "the name '{name}' is taken by a volume or snapshot; choose another"
            )));
        }
        if size == 0 {
            return Err(DaemonError::invalid(
                "a volume needs a size above 0 (for example --size 1G)",
            ));
        }
        // The largest volume fss can snapshot: 2^24 clusters of the largest cluster size.
        let max = MAX_CLUSTERS * MAX_CLUSTER_SIZE;
        if size > max {
            return Err(DaemonError::invalid(format!(
                "a volume of {size} bytes is too large: fss snapshots volumes of at most {} \
                 ({max} bytes); give a smaller --size",
                human_size(max)
            )));
        }
        let image = image.unwrap_or_else(|| self.paths.volumes_dir().join(format!("{name}.img")));
        if std::fs::symlink_metadata(&image).is_ok() {
            return Err(DaemonError::exists(format!(
                "{} already exists; serve it with `fss volume add {name} --device {}` or choose another --image",
                image.display(),
                image.display()
            )));
        }
        self.check_not_own(inner, &image, own_files::Use::Volume)?;
        if let Some(dir) = image.parent() {
            crate::paths::create_private_dir(dir)
                .map_err(|e| DaemonError::io(&format!("cannot create {}", dir.display()), &e))?;
        }
        let mut opts = OpenOptions {
            exclusive: true,
            create_len: Some(size),
            create_new: true,
            ..OpenOptions::default()
        };
        self.volume_io.apply(&mut opts);
        let dev = FileDevice::open(&image, &opts).map_err(|e| {
            DaemonError::io(&format!("cannot create image {}", image.display()), &e)
        })?;
        self.register_volume(inner, name, image, VolumeKind::CreatedImage, Arc::new(dev))
    }

    /// Refuse a volume or store path that is, or lives on, something this daemon serves.
    pub(super) fn check_not_own(
        &self,
        inner: &Inner,
        path: &Path,
        used_as: own_files::Use,
    ) -> Result<()> {
        let stores: Vec<PathBuf> = inner
            .snapshots
            .values()
            .map(|e| e.record.store.clone())
            .collect();
        own_files::check(&self.paths, path, used_as, &stores)
    }

    pub(super) fn volume_add(&self, inner: &mut Inner, name: &str, device: &Path) -> Result<()> {
        check_name(name)?;
        if Self::name_taken(inner, name) {
            return Err(DaemonError::exists(format!(
                "the name '{name}' is taken by a volume or snapshot; choose another"
            )));
        }
        self.check_not_own(inner, device, own_files::Use::Volume)?;
        let meta = std::fs::metadata(device)
            .map_err(|e| DaemonError::io(&format!("cannot add {}", device.display()), &e))?;
        let kind = if meta.file_type().is_block_device() {
            VolumeKind::BlockDevice
        } else if meta.is_file() {
            VolumeKind::Image
        } else {
            return Err(DaemonError::invalid(format!(
                "{} is neither an image file nor a block device",
                device.display()
            )));
        };
        if inner.volumes.values().any(|v| v.record.path == device) {
            return Err(DaemonError::exists(format!(
                "{} is already served as a volume",
                device.display()
            )));
        }
        let dev = open_volume_device(device, self.volume_io)?;
        if dev.is_empty() {
            return Err(DaemonError::invalid(format!(
                "{} is empty; a volume needs a size above 0",
                device.display()
            )));
        }
        self.register_volume(inner, name, device.to_path_buf(), kind, dev)
    }

    pub(super) fn register_volume(
        &self,
        inner: &mut Inner,
        name: &str,
        path: PathBuf,
        kind: VolumeKind,
        dev: Arc<FileDevice>,
    ) -> Result<()> {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|e| {
            DaemonError::new(ErrorKind::Io, format!("no randomness for a volume id: {e}"))
        })?;
        let size = dev.len();
        let dyn_dev: Arc<dyn BlockDevice> = dev;
        let vol = Volume::with_identity(name, dyn_dev, id);
        self.start_journal(&vol, &hex(&id))?;
        let record = VolumeState {
            name: name.to_string(),
            id: hex(&id),
            fingerprint: fingerprint(&path, false),
            path,
            kind,
            size,
            unverified: None,
        };
        let live = VolumeLive::Online(vol.clone());
        inner
            .volumes
            .insert(name.to_string(), VolumeEntry { record, live });
        if let Err(e) = self.save(inner) {
            inner.volumes.pop();
            return Err(e);
        }
        self.publish(name, Export::Volume(vol));
        tracing::info!(volume = name, size, "volume added");
        Ok(())
    }

    pub(super) fn volume_remove(&self, inner: &mut Inner, name: &str) -> Result<()> {
        if !inner.volumes.contains_key(name) {
            return Err(DaemonError::not_found(format!(
                "no volume named '{name}'; see `fss volume list`"
            )));
        }
        let snaps: Vec<&str> = inner
            .snapshots_of(name)
            .map(|s| s.record.name.as_str())
            .collect();
        if !snaps.is_empty() {
            return Err(DaemonError::busy(format!(
                "volume '{name}' has snapshots ({}); delete them first with `fss snapshot delete`",
                snaps.join(", ")
            )));
        }
        let open = self.opens_of(name);
        if open > 0 {
            return Err(DaemonError::busy(format!(
                "volume '{name}' is open ({open} times, by NBD clients or the FUSE file); close it first"
            )));
        }
        let restore = inner.unfinished_restore(name).is_some();
        let Some((i, key, removed)) = inner.volumes.shift_remove_full(name) else {
            return Ok(());
        };
        let restores = inner.meta.restores.clone();
        inner.meta.restores.retain(|r| r.volume != name);
        if let Err(e) = self.save(inner) {
            inner.volumes.shift_insert(i, key, removed);
            inner.meta.restores = restores;
            return Err(e);
        }
        if restore {
            tracing::warn!(volume = name, image = %removed.record.path.display(),
                "its unfinished restore is forgotten: the image holds a partially restored volume");
        }
        self.unpublish(name);
        self.remove_journal(&removed.record.id);
        if let Some(v) = removed.volume() {
            let _ = v.flush();
        }
        tracing::info!(volume = name, image = %removed.record.path.display(), "volume removed (its image is kept)");
        Ok(())
    }

    /// Find an online volume for a restore or a rollback.
    pub(super) fn online_volume(inner: &Inner, volume: &str) -> Result<Volume> {
        inner
            .volume(volume)
            .cloned()
            .ok_or_else(|| match inner.offline(volume) {
                Some(r) => DaemonError::busy(format!("volume '{volume}' is offline: {r}")),
                None => DaemonError::not_found(format!(
                    "no volume named '{volume}'; see `fss volume list`"
                )),
            })
    }

    /// Withdraw a volume from front-ends and check that nobody has it open; on refusal it is
    /// published again.
    pub(super) fn withdraw_unopened(&self, volume: &str, vol: &Volume, what: &str) -> Result<()> {
        let busy = |open: u64| {
            DaemonError::busy(format!(
                "volume '{volume}' is open ({open} times, by NBD clients or the FUSE file): {what} \
                 would change the data beneath them; close it first"
            ))
        };
        let open = self.opens_of(volume);
        if open > 0 {
            return Err(busy(open));
        }
        // Withdraw first, then look again: an open racing us shows up in the count or finds
        // nothing to open.
        self.unpublish(volume);
        let open = self.opens_of(volume);
        if open > 0 {
            self.publish(volume, Export::Volume(vol.clone()));
            return Err(busy(open));
        }
        Ok(())
    }

    /// Serve `vol` (the engine object of volume `name`) again.
    pub(super) fn serve_again(&self, inner: &mut Inner, name: &str, vol: Volume) {
        if let Some(entry) = inner.volumes.get_mut(name) {
            entry.live = VolumeLive::Online(vol.clone());
        }
        self.publish(name, Export::Volume(vol));
    }

    /// Withdraw volume `name` from front-ends and keep it offline for `why`, with its engine
    /// object (`vol`) for the operation that can bring it back.
    pub(super) fn take_offline(&self, inner: &mut Inner, name: &str, vol: Volume, why: String) {
        self.unpublish(name);
        if let Some(entry) = inner.volumes.get_mut(name) {
            entry.live = VolumeLive::Withdrawn { volume: vol, why };
        }
    }
}
