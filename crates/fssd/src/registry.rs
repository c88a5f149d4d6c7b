//! The daemon's live objects: volumes and snapshots by name, their persistent state, and the
//! operations of the control API. Front-ends see it as a [`Catalog`].

use crate::config::{TestHooks, VolumeIo};
use crate::error::ErrorKind;
use crate::error::{DaemonError, Result};
use crate::names::{check_name, human_size};
use crate::paths::Paths;
use crate::protocol::{
    BackupKind, DiffExtent, SnapshotHealth, SnapshotInfo, SnapshotKind, SnapshotSpec, StatusInfo,
    StorePolicy, VerifyInfo, VolumeInfo, VolumeStatus,
};
use crate::state::{Fingerprint, SnapshotState, State, VolumeKind, VolumeState};
use crate::stores::{self, StorePlace};
use fss_core::device::{BlockDevice, FileDevice, OpenOptions};
use fss_core::export::{Catalog, Export, ExportInfo};
use fss_core::store::StoreIdentity;
use fss_core::{Snapshot, SnapshotOptions, SnapshotState as CoreState, Volume};
use rustix::io::Errno;
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::UNIX_EPOCH;

/// The size of the volume made on a fresh state directory.
pub const DEFAULT_VOLUME_SIZE: u64 = 1 << 30;

/// A front-end's count of users per export name.
pub type UsageSource = Box<dyn Fn() -> BTreeMap<String, usize> + Send + Sync>;

struct Inner {
    state: State,
    volumes: HashMap<String, Volume>,
    /// Volumes in the state that could not be opened, and why.
    offline: HashMap<String, String>,
    snapshots: HashMap<String, Snapshot>,
    /// Snapshots in the state that could not be brought back, and why.
    unavailable: HashMap<String, String>,
    /// Volumes that changed while fss was not running: their snapshots are unverified.
    unverified: HashMap<String, String>,
    recovered_from_crash: bool,
}

/// Everything the daemon serves.
pub struct Registry {
    paths: Paths,
    /// How volumes are opened.
    volume_io: VolumeIo,
    /// Test-only hooks.
    hooks: TestHooks,
    inner: Mutex<Inner>,
    exports: RwLock<BTreeMap<String, Export>>,
    opens: Mutex<HashMap<String, u64>>,
    /// Front-ends that count their own users (NBD connections per export).
    usage: Mutex<Vec<UsageSource>>,
    /// Front-end addresses, for `status`.
    pub(crate) endpoints: Mutex<(Option<PathBuf>, Option<PathBuf>, Option<String>)>,
    /// Names (volumes, snapshots) in use by long operations running now (backup, restore,
    /// rollback), with what holds them.
    held: Mutex<HashMap<String, Vec<String>>>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = s
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0);
    }
    out
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn fingerprint(path: &Path, clean: bool) -> Fingerprint {
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_block_device() => Fingerprint {
            size: 0,
            dev: m.rdev(),
            ino: 0,
            mtime_ns: None,
        },
        Ok(m) => Fingerprint {
            size: m.len(),
            dev: m.dev(),
            ino: m.ino(),
            mtime_ns: clean
                .then(|| i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())),
        },
        Err(_) => Fingerprint::default(),
    }
}

/// The store policy a snapshot request asks for (`invalidate` when it names none).
fn spec_policy(spec: &SnapshotSpec) -> Result<StorePolicy> {
    spec.on_store_error
        .as_deref()
        .map_or(Ok(StorePolicy::Invalidate), StorePolicy::parse)
}

fn open_volume_device(path: &Path, io: VolumeIo) -> Result<Arc<FileDevice>> {
    let mut opts = OpenOptions {
        exclusive: true,
        ..OpenOptions::default()
    };
    io.apply(&mut opts);
    FileDevice::open(path, &opts).map(Arc::new).map_err(|e| {
        if e.kind() == std::io::ErrorKind::WouldBlock
            || e.raw_os_error() == Some(Errno::BUSY.raw_os_error())
        {
            DaemonError::busy(format!(
                "{} is in use by another process (fss holds volumes exclusively); stop it first",
                path.display()
            ))
        } else {
            DaemonError::io(&format!("cannot open {}", path.display()), &e)
        }
    })
}

impl Registry {
    /// Load the state (or start one with a 1 GiB volume `default`), open every volume, bring
    /// back persistent snapshots, drop transient ones, finish interrupted deletes. Volumes are
    /// opened as `volume_io` says.
    ///
    /// # Errors
    /// The state file is unreadable or damaged, or the default volume cannot be made.
    pub fn open(paths: Paths, volume_io: VolumeIo, hooks: TestHooks) -> Result<Registry> {
        let state_file = paths.state_file();
        let loaded = State::load(&state_file)?;
        let fresh = loaded.is_none();
        let state = loaded.unwrap_or_default();
        let recovered_from_crash = !state.clean_shutdown;
        if recovered_from_crash {
            let reboot = !state.boot_id.is_empty() && state.boot_id != boot_id();
            tracing::warn!(
                "the previous run did not stop cleanly ({}); persistent snapshots are recovered from their stores",
                if reboot { "the machine rebooted or lost power" } else { "the daemon crashed or was killed" }
            );
        }
        let reg = Registry {
            paths,
            volume_io,
            hooks,
            inner: Mutex::new(Inner {
                state,
                volumes: HashMap::new(),
                offline: HashMap::new(),
                snapshots: HashMap::new(),
                unavailable: HashMap::new(),
                unverified: HashMap::new(),
                recovered_from_crash,
            }),
            exports: RwLock::new(BTreeMap::new()),
            opens: Mutex::new(HashMap::new()),
            usage: Mutex::new(Vec::new()),
            endpoints: Mutex::new((None, None, None)),
            held: Mutex::new(HashMap::new()),
        };
        {
            let mut inner = reg.lock();
            reg.bring_back(&mut inner);
            reg.resume_rollbacks(&mut inner);
            if fresh && inner.state.volumes.is_empty() {
                let image = reg.paths.volumes_dir().join("default.img");
                if let Err(e) = reg.volume_create(
                    &mut inner,
                    "default",
                    DEFAULT_VOLUME_SIZE,
                    Some(image.clone()),
                ) {
                    // A default image left by a run whose state was lost: serve it again.
                    if image.exists() {
                        reg.volume_add(&mut inner, "default", &image)?;
                    } else {
                        return Err(e);
                    }
                }
                tracing::info!(image = %image.display(), "no volume configured: serving a new 1 GiB sparse volume 'default'");
            }
            inner.state.clean_shutdown = false;
            inner.state.boot_id = boot_id();
            reg.save(&inner)?;
        }
        // Replaying store logs allocated and freed a record per preserved block run.
        crate::heap::give_back_free_memory();
        Ok(reg)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Operations update the maps and the state together before any fallible step that
        // could panic; a poisoned lock still holds consistent data.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn save(&self, inner: &Inner) -> Result<()> {
        inner
            .state
            .save(&self.paths.state_file())
            .map_err(Into::into)
    }

    fn publish(&self, name: &str, export: Export) {
        self.exports
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string(), export);
    }

    fn unpublish(&self, name: &str) {
        self.exports
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
    }

    /// Open count of `name` by front-ends.
    fn opens_of(&self, name: &str) -> u64 {
        self.open_counts().get(name).copied().unwrap_or(0)
    }

    fn open_counts(&self) -> BTreeMap<String, u64> {
        let mut all: BTreeMap<String, u64> = self
            .opens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, &n)| (k.clone(), n))
            .collect();
        for source in self
            .usage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            for (k, n) in source() {
                *all.entry(k).or_insert(0) += n as u64;
            }
        }
        all
    }

    /// Names open by front-ends, with counts.
    #[must_use]
    pub fn open_devices(&self) -> Vec<(String, u64)> {
        self.open_counts()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Let a front-end report its users per export (checked before deletes and at stop).
    pub fn add_usage_source(&self, source: UsageSource) {
        self.usage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(source);
    }

    /// Record where front-ends serve, for `status`.
    pub fn set_endpoints(
        &self,
        fuse_dir: Option<PathBuf>,
        nbd_socket: Option<PathBuf>,
        nbd_listen: Option<String>,
    ) {
        *self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = (fuse_dir, nbd_socket, nbd_listen);
    }

    fn name_taken(inner: &Inner, name: &str) -> bool {
        inner.state.volumes.iter().any(|v| v.name == name)
            || inner.state.snapshots.iter().any(|s| s.name == name)
    }

    fn bring_back(&self, inner: &mut Inner) {
        let volumes = inner.state.volumes.clone();
        let clean = inner.state.clean_shutdown;
        for v in &volumes {
            let dev = match open_volume_device(&v.path, self.volume_io) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(volume = %v.name, error = %e, "volume is offline");
                    inner.offline.insert(v.name.clone(), e.message);
                    continue;
                }
            };
            let now = fingerprint(&v.path, true);
            let old = &v.fingerprint;
            let changed = if dev.len() != v.size {
                Some(format!(
                    "its size changed from {} to {} bytes",
                    v.size,
                    dev.len()
                ))
            } else if old.ino != 0 && (old.ino != now.ino || old.dev != now.dev) {
                Some("its image file was replaced".to_string())
            } else if clean && old.mtime_ns.is_some() && old.mtime_ns != now.mtime_ns {
                Some("its image was modified while fss was not running".to_string())
            } else {
                None
            };
            let has_snapshots = inner.state.snapshots.iter().any(|s| s.volume == v.name);
            if let (Some(why), true) = (&changed, has_snapshots) {
                tracing::error!(volume = %v.name, "volume changed while fss was not running ({why}): its snapshots are UNVERIFIED");
                if let Some(sv) = inner.state.volumes.iter_mut().find(|x| x.name == v.name) {
                    sv.unverified = Some(why.clone());
                }
            }
            if let Some(why) = inner
                .state
                .volumes
                .iter()
                .find(|x| x.name == v.name)
                .and_then(|x| x.unverified.clone())
            {
                if changed.is_none() {
                    tracing::warn!(volume = %v.name, "snapshots still UNVERIFIED ({why}); delete them and take new ones");
                }
                inner.unverified.insert(v.name.clone(), why);
            }
            let dyn_dev: Arc<dyn BlockDevice> = dev;
            let vol = Volume::with_identity(v.name.clone(), dyn_dev, unhex(&v.id));
            self.publish(&v.name, Export::Volume(vol.clone()));
            inner.volumes.insert(v.name.clone(), vol);
        }
        let snaps = inner.state.snapshots.clone();
        let mut keep = Vec::new();
        for s in snaps {
            if !s.persistent {
                tracing::warn!(snapshot = %s.name, volume = %s.volume,
                    "dropped transient snapshot {} (transient snapshots do not survive a restart)", s.name);
                if s.store_owned {
                    let _ = std::fs::remove_file(&s.store);
                }
                continue;
            }
            let Some(vol) = inner.volumes.get(&s.volume).cloned() else {
                inner.unavailable.insert(
                    s.name.clone(),
                    format!("its volume '{}' is offline", s.volume),
                );
                keep.push(s);
                continue;
            };
            let place = StorePlace {
                path: s.store.clone(),
                owned: s.store_owned,
                is_device: s.store_is_device,
            };
            let expect = StoreIdentity {
                volume_id: vol.identity(),
                volume_len: vol.len(),
                snapshot_id: s.id,
            };
            let attached =
                stores::reopen(&place, &expect, s.max_store_bytes).and_then(|(store, rec)| {
                    let opts = SnapshotOptions {
                        persistent: true,
                        on_store_error: s.on_store_error.into(),
                        ..SnapshotOptions::default()
                    };
                    vol.attach_snapshot(&opts, store, rec)
                        .map_err(DaemonError::from)
                });
            match attached {
                Ok(snap) if s.deleting => {
                    drop(snap);
                    match vol.delete_snapshot(&s.name) {
                        Ok(()) => {
                            tracing::info!(snapshot = %s.name, "finished deleting snapshot interrupted by a stop");
                        }
                        Err(e) => {
                            tracing::error!(snapshot = %s.name, error = %e, "could not finish deleting snapshot");
                        }
                    }
                }
                Ok(snap) => {
                    tracing::info!(snapshot = %s.name, volume = %s.volume, "persistent snapshot recovered");
                    self.publish(&s.name, Export::Snapshot(snap.clone()));
                    inner.snapshots.insert(s.name.clone(), snap);
                    keep.push(s);
                }
                // The store of an interrupted delete may already be gone: the delete is done.
                Err(_) if s.deleting => {
                    tracing::info!(snapshot = %s.name, "finished deleting snapshot");
                }
                Err(e) => {
                    tracing::error!(snapshot = %s.name, error = %e, "snapshot could not be brought back");
                    inner.unavailable.insert(s.name.clone(), e.message);
                    keep.push(s);
                }
            }
        }
        inner.state.snapshots = keep;
    }

    /// `status`: the daemon's version, places and counts.
    #[must_use]
    pub fn status(&self) -> StatusInfo {
        let inner = self.lock();
        self.status_of(&inner)
    }

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
        Ok(self.volume_info(&inner, name))
    }

    /// `volume-add`: serve an existing image or block device.
    ///
    /// # Errors
    /// A bad or taken name, a device already served, empty, in use or unreadable.
    pub fn add_volume(&self, name: &str, device: &Path) -> Result<VolumeInfo> {
        let mut inner = self.lock();
        self.volume_add(&mut inner, name, device)?;
        Ok(self.volume_info(&inner, name))
    }

    /// `volume-list`: every volume, in the order they were added.
    #[must_use]
    pub fn list_volumes(&self) -> Vec<VolumeInfo> {
        let inner = self.lock();
        inner
            .state
            .volumes
            .iter()
            .map(|v| self.volume_info(&inner, &v.name))
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
        self.volume_remove(&mut inner, name)
    }

    /// `snapshot-create`: take a snapshot.
    ///
    /// # Errors
    /// A bad spec, a missing, offline or busy volume, or a store that cannot be made.
    pub fn create_snapshot(&self, spec: &SnapshotSpec) -> Result<SnapshotInfo> {
        let mut inner = self.lock();
        self.check_volume_free(&inner, &spec.volume)?;
        self.snapshot_create(&mut inner, spec)?;
        self.snapshot_info(&inner, &spec.name)
    }

    /// `snapshot-create-group`: several snapshots (one per volume) at one instant.
    ///
    /// # Errors
    /// As [`Registry::create_snapshot`] for any member, or a volume or name given twice.
    pub fn create_snapshot_group(&self, members: &[SnapshotSpec]) -> Result<Vec<SnapshotInfo>> {
        let mut inner = self.lock();
        for m in members {
            self.check_volume_free(&inner, &m.volume)?;
        }
        self.snapshot_create_group(&mut inner, members)?;
        members
            .iter()
            .map(|m| self.snapshot_info(&inner, &m.name))
            .collect()
    }

    /// `snapshot-delete`: delete a snapshot and its store.
    ///
    /// # Errors
    /// No such snapshot, or it is open, in use by a long operation, or the target of an
    /// unfinished rollback.
    pub fn delete_snapshot(&self, name: &str) -> Result<()> {
        let mut inner = self.lock();
        self.check_snapshot_deletable(&inner, name)?;
        self.snapshot_delete(&mut inner, name)
    }

    /// `snapshot-list`: every snapshot, oldest first per volume.
    ///
    /// # Errors
    /// Not expected (every listed snapshot has an entry); kept for the lookup's type.
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        let inner = self.lock();
        inner
            .state
            .snapshots
            .iter()
            .map(|s| self.snapshot_info(&inner, &s.name))
            .collect()
    }

    /// `snapshot-info`: one snapshot.
    ///
    /// # Errors
    /// No such snapshot.
    pub fn describe_snapshot(&self, name: &str) -> Result<SnapshotInfo> {
        let inner = self.lock();
        self.snapshot_info(&inner, name)
    }

    /// `snapshot-verify`: check a snapshot's store against its checksums.
    ///
    /// # Errors
    /// No such snapshot, unavailable, or the store cannot be read.
    pub fn verify_snapshot(&self, name: &str) -> Result<VerifyInfo> {
        let snap = Self::snapshot(&self.lock(), name)?;
        let r = snap.verify()?;
        Ok(VerifyInfo {
            name: name.to_string(),
            checksummed: r.checksummed,
            blocks_checked: r.blocks_checked,
            damaged: r.damaged,
        })
    }

    /// `checksum`: SHA-256 (hex) of a volume's or snapshot's whole contents.
    ///
    /// # Errors
    /// Nothing served under that name, or a read failed.
    pub fn checksum(&self, name: &str) -> Result<String> {
        // Under the registry's lock, as every operation: one running now finishes first.
        let inner = self.lock();
        let export = self.lookup(name);
        drop(inner);
        let export = export.ok_or_else(|| {
            DaemonError::not_found(format!(
                "no volume or snapshot named '{name}'; see `fss volume list` and `fss snapshot list`"
            ))
        })?;
        checksum(&export)
    }

    /// `diff`: the extents changed between `snapshot` and `until` (or the volume now).
    ///
    /// # Errors
    /// A snapshot is missing or unusable, or the pair is not of one chain in order.
    pub fn diff(&self, snapshot: &str, until: Option<&str>) -> Result<Vec<DiffExtent>> {
        let (older, newer) = self.diff_pair(&self.lock(), snapshot, until)?;
        diff_extents(&older, newer.as_ref())
    }

    fn status_of(&self, inner: &Inner) -> StatusInfo {
        let ep = self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        StatusInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            state_dir: self.paths.state_dir.clone(),
            fuse_dir: ep.0,
            nbd_socket: ep.1,
            nbd_listen: ep.2,
            volumes: inner.state.volumes.len() as u64,
            snapshots: inner.state.snapshots.len() as u64,
            recovered_from_crash: inner.recovered_from_crash,
        }
    }

    fn volume_info(&self, inner: &Inner, name: &str) -> VolumeInfo {
        let v = inner.state.volumes.iter().find(|v| v.name == name);
        let live = inner.volumes.get(name);
        VolumeInfo {
            name: name.to_string(),
            size: v.map_or(0, |v| v.size),
            path: v.map(|v| v.path.clone()).unwrap_or_default(),
            kind: v.map_or(VolumeKind::Image, |v| v.kind),
            snapshots: inner
                .state
                .snapshots
                .iter()
                .filter(|s| s.volume == name)
                .count() as u64,
            cluster_size: live.and_then(Volume::cluster_size),
            state: inner
                .offline
                .get(name)
                .map_or(VolumeStatus::Online, |r| VolumeStatus::Offline(r.clone())),
            open: self.opens_of(name),
        }
    }

    fn volume_create(
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
        let image = image.unwrap_or_else(|| self.paths.volumes_dir().join(format!("{name}.img")));
        if image.exists() {
            return Err(DaemonError::exists(format!(
                "{} already exists; serve it with `fss volume add {name} --device {}` or choose another --image",
                image.display(),
                image.display()
            )));
        }
        if let Some(dir) = image.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| DaemonError::io(&format!("cannot create {}", dir.display()), &e))?;
        }
        let mut opts = OpenOptions {
            exclusive: true,
            create_len: Some(size),
            ..OpenOptions::default()
        };
        self.volume_io.apply(&mut opts);
        let dev = FileDevice::open(&image, &opts).map_err(|e| {
            DaemonError::io(&format!("cannot create image {}", image.display()), &e)
        })?;
        self.register_volume(inner, name, image, VolumeKind::CreatedImage, Arc::new(dev))
    }

    fn volume_add(&self, inner: &mut Inner, name: &str, device: &Path) -> Result<()> {
        check_name(name)?;
        if Self::name_taken(inner, name) {
            return Err(DaemonError::exists(format!(
                "the name '{name}' is taken by a volume or snapshot; choose another"
            )));
        }
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
        if inner.state.volumes.iter().any(|v| v.path == device) {
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

    fn register_volume(
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
        inner.state.volumes.push(VolumeState {
            name: name.to_string(),
            id: hex(&id),
            fingerprint: fingerprint(&path, false),
            path,
            kind,
            size,
            unverified: None,
        });
        if let Err(e) = self.save(inner) {
            inner.state.volumes.pop();
            return Err(e);
        }
        self.publish(name, Export::Volume(vol.clone()));
        inner.volumes.insert(name.to_string(), vol);
        tracing::info!(volume = name, size, "volume added");
        Ok(())
    }

    fn volume_remove(&self, inner: &mut Inner, name: &str) -> Result<()> {
        if !inner.state.volumes.iter().any(|v| v.name == name) {
            return Err(DaemonError::not_found(format!(
                "no volume named '{name}'; see `fss volume list`"
            )));
        }
        let snaps: Vec<&str> = inner
            .state
            .snapshots
            .iter()
            .filter(|s| s.volume == name)
            .map(|s| s.name.as_str())
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
        let i = inner
            .state
            .volumes
            .iter()
            .position(|v| v.name == name)
            .unwrap_or(0);
        let removed = inner.state.volumes.remove(i);
        if let Err(e) = self.save(inner) {
            inner.state.volumes.insert(i, removed);
            return Err(e);
        }
        self.unpublish(name);
        if let Some(v) = inner.volumes.remove(name) {
            let _ = v.flush();
        }
        inner.offline.remove(name);
        tracing::info!(volume = name, image = %removed.path.display(), "volume removed (its image is kept)");
        Ok(())
    }

    fn snapshot(inner: &Inner, name: &str) -> Result<Snapshot> {
        if let Some(s) = inner.snapshots.get(name) {
            return Ok(s.clone());
        }
        if let Some(r) = inner.unavailable.get(name) {
            return Err(DaemonError::new(
                ErrorKind::InvalidSnapshot,
                format!("snapshot '{name}' is unavailable: {r}"),
            ));
        }
        Err(DaemonError::not_found(format!(
            "no snapshot named '{name}'; see `fss snapshot list`"
        )))
    }

    fn check_spec(&self, inner: &Inner, spec: &SnapshotSpec) -> Result<()> {
        check_name(&spec.name)?;
        if Self::name_taken(inner, &spec.name) {
            return Err(DaemonError::exists(format!(
                "the name '{}' is taken by a volume or snapshot; choose another",
                spec.name
            )));
        }
        if !inner.volumes.contains_key(&spec.volume) {
            return Err(match inner.offline.get(&spec.volume) {
                Some(r) => DaemonError::busy(format!("volume '{}' is offline: {r}", spec.volume)),
                None => DaemonError::not_found(format!(
                    "no volume named '{}'; see `fss volume list`",
                    spec.volume
                )),
            });
        }
        if spec.unlink_store && !spec.transient {
            return Err(DaemonError::invalid(
                "an unlinked store (-x) makes a transient snapshot; add --transient",
            ));
        }
        spec_policy(spec)?;
        Ok(())
    }

    /// Make the store and the engine snapshot; returns its state entry (not yet saved).
    /// Where a new snapshot's store goes and with which options.
    fn snapshot_plan(
        &self,
        inner: &Inner,
        spec: &SnapshotSpec,
    ) -> Result<(Volume, StorePlace, SnapshotOptions, StorePolicy)> {
        let vol = inner
            .volumes
            .get(&spec.volume)
            .cloned()
            .ok_or_else(|| DaemonError::not_found("volume vanished"))?;
        let store_arg = spec
            .store
            .clone()
            .unwrap_or_else(|| self.paths.stores_dir());
        if spec.store.is_none() {
            std::fs::create_dir_all(&store_arg).map_err(|e| {
                DaemonError::io(&format!("cannot create {}", store_arg.display()), &e)
            })?;
        }
        let place = stores::place(&store_arg, &spec.volume, &spec.name)?;
        let on_err = spec_policy(spec)?;
        let opts = SnapshotOptions {
            cluster_size: spec.cluster_size,
            persistent: !spec.transient,
            on_store_error: on_err.into(),
            max_store_bytes: spec.max_store_size,
            ..SnapshotOptions::default()
        };
        Ok((vol, place, opts, on_err))
    }

    /// The state entry of a snapshot just made.
    fn snapshot_record(
        spec: &SnapshotSpec,
        place: StorePlace,
        on_err: StorePolicy,
        snap: &Snapshot,
    ) -> SnapshotState {
        let info = snap.info();
        SnapshotState {
            name: spec.name.clone(),
            volume: spec.volume.clone(),
            id: info.id,
            persistent: !spec.transient,
            store: place.path,
            store_owned: place.owned,
            store_is_device: place.is_device,
            max_store_bytes: spec.max_store_size,
            on_store_error: on_err,
            created: info
                .created
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            cluster_size: info.cluster_size,
            mount_point: spec.mount_point.clone(),
            deleting: false,
        }
    }

    fn snapshot_make(&self, inner: &Inner, spec: &SnapshotSpec) -> Result<SnapshotState> {
        let (vol, place, opts, on_err) = self.snapshot_plan(inner, spec)?;
        let snap = vol.create_snapshot(&spec.name, &opts, |p| {
            stores::create(&place, p, spec.unlink_store)
        })?;
        Ok(Self::snapshot_record(spec, place, on_err, &snap))
    }

    fn snapshot_create(&self, inner: &mut Inner, spec: &SnapshotSpec) -> Result<()> {
        self.check_spec(inner, spec)?;
        let entry = self.snapshot_make(inner, spec)?;
        self.commit_snapshots(inner, vec![entry])
    }

    fn commit_snapshots(&self, inner: &mut Inner, entries: Vec<SnapshotState>) -> Result<()> {
        let n = entries.len();
        inner.state.snapshots.extend(entries.iter().cloned());
        if let Err(e) = self.save(inner) {
            let keep = inner.state.snapshots.len() - n;
            inner.state.snapshots.truncate(keep);
            for s in &entries {
                if let Some(v) = inner.volumes.get(&s.volume) {
                    let _ = v.delete_snapshot(&s.name);
                }
            }
            return Err(e);
        }
        for s in entries {
            if let Some(snap) = inner
                .volumes
                .get(&s.volume)
                .and_then(|v| v.snapshot(&s.name))
            {
                self.publish(&s.name, Export::Snapshot(snap.clone()));
                inner.snapshots.insert(s.name.clone(), snap);
            }
            tracing::info!(snapshot = %s.name, volume = %s.volume, persistent = s.persistent, store = %s.store.display(), "snapshot created");
        }
        Ok(())
    }

    /// Several snapshots at one instant: every volume's writes are held while all are taken.
    fn snapshot_create_group(&self, inner: &mut Inner, members: &[SnapshotSpec]) -> Result<()> {
        if members.is_empty() {
            return Err(DaemonError::invalid(
                "a group needs at least one VOLUME:NAME",
            ));
        }
        for (i, m) in members.iter().enumerate() {
            self.check_spec(inner, m)?;
            if members[..i]
                .iter()
                .any(|o| o.name == m.name || o.volume == m.volume)
            {
                return Err(DaemonError::invalid(format!(
                    "the group names '{}' or volume '{}' twice; one snapshot per volume",
                    m.name, m.volume
                )));
            }
        }
        // All at one instant: the engine holds every volume's barrier while it makes them.
        let plans: Vec<(Volume, StorePlace, SnapshotOptions, StorePolicy)> = members
            .iter()
            .map(|m| self.snapshot_plan(inner, m))
            .collect::<Result<_>>()?;
        let group: Vec<(&Volume, &str, &SnapshotOptions)> = plans
            .iter()
            .zip(members)
            .map(|((v, _, o, _), m)| (v, m.name.as_str(), o))
            .collect();
        let snaps = Volume::create_snapshot_group(&group, |p| {
            let i = members
                .iter()
                .position(|m| m.name == p.snapshot)
                .unwrap_or(0);
            stores::create(&plans[i].1, p, members[i].unlink_store)
        })?;
        let made: Vec<SnapshotState> = plans
            .into_iter()
            .zip(members)
            .zip(&snaps)
            .map(|(((_, place, _, on_err), m), snap)| Self::snapshot_record(m, place, on_err, snap))
            .collect();
        self.commit_snapshots(inner, made)
    }

    fn snapshot_delete(&self, inner: &mut Inner, name: &str) -> Result<()> {
        let Some(i) = inner.state.snapshots.iter().position(|s| s.name == name) else {
            return Err(DaemonError::not_found(format!(
                "no snapshot named '{name}'; see `fss snapshot list`"
            )));
        };
        // Withdraw it from front-ends first, then look for users: an open racing the delete
        // either shows up in the count or finds nothing to open.
        self.unpublish(name);
        let open = self.opens_of(name);
        if open > 0 {
            if let Some(snap) = inner.snapshots.get(name) {
                self.publish(name, Export::Snapshot(snap.clone()));
            }
            return Err(DaemonError::busy(format!(
                "snapshot '{name}' is open ({open} times, by NBD clients or a loop device on its FUSE file); close it first"
            )));
        }
        // Remember the delete first: a crash midway is finished at the next start.
        inner.state.snapshots[i].deleting = true;
        self.save(inner)?;
        let s = inner.state.snapshots[i].clone();
        self.unpublish(name);
        inner.snapshots.remove(name);
        if let Some(vol) = inner.volumes.get(&s.volume) {
            vol.delete_snapshot(name)?;
        } else if s.store_owned {
            let _ = std::fs::remove_file(&s.store);
        }
        inner.unavailable.remove(name);
        inner.state.snapshots.retain(|x| x.name != name);
        // With its last snapshot gone, there is nothing left to be unverified.
        if !inner.state.snapshots.iter().any(|x| x.volume == s.volume) {
            inner.unverified.remove(&s.volume);
            if let Some(v) = inner.state.volumes.iter_mut().find(|v| v.name == s.volume) {
                v.unverified = None;
            }
        }
        self.save(inner)?;
        // Its map (and the entries moved into the next older one) freed many small chunks.
        crate::heap::give_back_free_memory();
        tracing::info!(snapshot = name, "snapshot deleted");
        Ok(())
    }

    fn snapshot_info(&self, inner: &Inner, name: &str) -> Result<SnapshotInfo> {
        let s = inner
            .state
            .snapshots
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| {
                DaemonError::not_found(format!(
                    "no snapshot named '{name}'; see `fss snapshot list`"
                ))
            })?;
        let live = inner.snapshots.get(name).map(Snapshot::info);
        let (state, reason) = if let Some(r) = inner.unavailable.get(name) {
            (SnapshotHealth::Unavailable, Some(r.clone()))
        } else if let Some(CoreState::Invalid(r)) = live.as_ref().map(|i| i.state.clone()) {
            (SnapshotHealth::Invalid, Some(r))
        } else if let Some(r) = inner.unverified.get(&s.volume) {
            (
                SnapshotHealth::Unverified,
                Some(format!("the volume changed while fss was not running: {r}")),
            )
        } else {
            (SnapshotHealth::Valid, None)
        };
        let stats = live.as_ref().map(|i| i.stats.clone()).unwrap_or_default();
        Ok(SnapshotInfo {
            name: s.name.clone(),
            volume: s.volume.clone(),
            id: s.id,
            kind: if s.persistent {
                SnapshotKind::Persistent
            } else {
                SnapshotKind::Transient
            },
            state,
            reason,
            created: s.created,
            size: live.as_ref().map_or(0, |i| i.len),
            cluster_size: s.cluster_size,
            store: s.store.clone(),
            store_used: stats.store_bytes_used,
            store_max: stats.store_max_bytes.or(s.max_store_bytes),
            blocks_preserved: stats.blocks_preserved,
            clusters_preserved: stats.clusters_preserved,
            cow_calls: stats.cow_calls,
            busy_waits: stats.busy_waits,
            on_store_error: s.on_store_error,
            mount_point: s.mount_point.clone(),
        })
    }

    /// Flush every volume, record fingerprints and a clean stop.
    pub fn shutdown(&self) {
        let mut inner = self.lock();
        for (name, v) in &inner.volumes {
            if let Err(e) = v.flush() {
                tracing::error!(volume = %name, error = %e, "flush at stop failed");
            }
        }
        let paths: Vec<PathBuf> = inner.state.volumes.iter().map(|v| v.path.clone()).collect();
        for (v, p) in inner.state.volumes.iter_mut().zip(paths) {
            v.fingerprint = fingerprint(&p, true);
        }
        inner.state.clean_shutdown = true;
        if let Err(e) = self.save(&inner) {
            tracing::error!(error = %e, "could not record the clean stop");
        }
    }

    /// A one-line description of an export, for NBD and listings.
    fn describe(e: &Export) -> String {
        match e {
            Export::Volume(v) => format!("fss volume, {}", human_size(v.len())),
            Export::Snapshot(s) => {
                let i = s.info();
                format!(
                    "fss snapshot of volume '{}' ({}), read-only",
                    i.volume,
                    human_size(i.len)
                )
            }
        }
    }
}

impl Catalog for Registry {
    fn lookup(&self, name: &str) -> Option<Export> {
        self.exports
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    fn list(&self) -> Vec<ExportInfo> {
        let exports = self
            .exports
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        exports
            .iter()
            .map(|(name, e)| ExportInfo {
                name: name.clone(),
                description: Self::describe(e),
                read_only: e.is_read_only(),
                len: e.len(),
            })
            .collect()
    }
}

impl Registry {
    /// A front-end opened (`open = true`) or closed an export.
    pub fn note_open(&self, name: &str, open: bool) {
        let mut o = self.opens.lock().unwrap_or_else(PoisonError::into_inner);
        let n = o.entry(name.to_string()).or_insert(0);
        *n = if open { *n + 1 } else { n.saturating_sub(1) };
    }
}

/// SHA-256 of an export's whole contents, hex.
fn checksum(e: &Export) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < e.len() {
        let n = (e.len() - off).min(buf.len() as u64) as usize;
        e.read(&mut buf[..n], off)?;
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

// ---------------------------------------------------------------------------------------------
// Change lists, backups, restores onto volumes, rollbacks (issue 7).

/// How much a rollback reads from the snapshot and writes to the volume at once.
const ROLLBACK_CHUNK: u64 = 4 << 20;

/// Names held by a long operation; released when dropped.
pub struct Hold<'a> {
    reg: &'a Registry,
    names: Vec<String>,
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        let mut held = self.reg.held.lock().unwrap_or_else(PoisonError::into_inner);
        for n in &self.names {
            if let Some(v) = held.get_mut(n) {
                v.pop();
                if v.is_empty() {
                    held.remove(n);
                }
            }
        }
    }
}

/// A backup about to be streamed: the snapshots, held against deletion until it is dropped.
pub struct BackupJob<'a> {
    /// The snapshot to back up.
    pub snapshot: Snapshot,
    /// The base of an incremental backup.
    pub base: Option<Snapshot>,
    /// What the first response says.
    pub start: crate::protocol::BackupStart,
    _hold: Hold<'a>,
}

/// A volume seen as a block device, for restoring onto it through the engine.
struct VolumeTarget(Volume);

fn core_io(e: fss_core::Error) -> std::io::Error {
    let kind = std::io::Error::from_raw_os_error(e.errno()).kind();
    std::io::Error::new(kind, e)
}

impl BlockDevice for VolumeTarget {
    fn len(&self) -> u64 {
        self.0.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.read(buf, offset).map_err(core_io)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.0.write(buf, offset).map_err(core_io)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.0.flush().map_err(core_io)
    }
    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.0.discard(offset, len).map_err(core_io)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.0.write_zeroes(offset, len).map_err(core_io)
    }
    fn describe(&self) -> String {
        format!("volume {}", self.0.name())
    }
    fn allocation(&self, offset: u64, len: u64) -> std::io::Result<Vec<fss_core::device::Extent>> {
        self.0.allocation(offset, len).map_err(core_io)
    }
}

/// The extents changed since `older` (until `newer`, or now), exact to 4 KiB.
fn diff_extents(older: &Snapshot, newer: Option<&Snapshot>) -> Result<Vec<DiffExtent>> {
    let len = older.len();
    let changed = match newer {
        Some(n) => older.changed_until(n, 0, len)?,
        None => older.changed(0, len)?,
    };
    Ok(changed
        .into_iter()
        .filter(|e| e.data)
        .map(|e| DiffExtent {
            offset: e.offset,
            length: e.len,
        })
        .collect())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Write `snap`'s bytes over every extent of its volume changed since it was taken, through
/// the engine (so newer snapshots keep their contents), then flush. Idempotent.
/// Returns (extents, bytes) rewritten.
fn rollback_pass(
    vol: &Volume,
    snap: &Snapshot,
    pause: Option<std::time::Duration>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(u64, u64)> {
    let extents: Vec<_> = snap
        .changed(0, vol.len())?
        .into_iter()
        .filter(|e| e.data)
        .collect();
    let total: u64 = extents.iter().map(|e| e.len).sum();
    let mut buf = vec![0u8; ROLLBACK_CHUNK.min(total.max(1)) as usize];
    let mut done = 0;
    progress(0, total);
    for e in &extents {
        let (mut off, end) = (e.offset, e.offset + e.len);
        while off < end {
            let n = (end - off).min(buf.len() as u64) as usize;
            snap.read(&mut buf[..n], off)?;
            vol.write(&buf[..n], off)?;
            off += n as u64;
            done += n as u64;
            progress(done, total);
            if let Some(p) = pause {
                std::thread::sleep(p);
            }
        }
    }
    vol.flush()?;
    Ok((extents.len() as u64, total))
}

impl Registry {
    /// Hold `names` for `what` until the returned guard is dropped.
    fn hold(&self, names: &[&str], what: &str) -> Hold<'_> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        for n in names {
            held.entry((*n).to_string())
                .or_default()
                .push(what.to_string());
        }
        Hold {
            reg: self,
            names: names.iter().map(|n| (*n).to_string()).collect(),
        }
    }

    /// Long operations running now (backup, restore, rollback), as "name (what)".
    #[must_use]
    pub fn running_operations(&self) -> Vec<String> {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let mut v: Vec<String> = held
            .iter()
            .filter(|(_, w)| !w.is_empty())
            .map(|(n, w)| format!("{n} ({})", w.join(", ")))
            .collect();
        v.sort();
        v
    }

    /// What holds `name` now, if anything.
    fn held_by(&self, name: &str) -> Option<String> {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .and_then(|v| v.last().cloned())
    }

    /// The unfinished rollback of the volume `volume` (this incarnation of it), if any.
    fn unfinished_rollback<'i>(
        inner: &'i Inner,
        volume: &str,
    ) -> Option<&'i crate::state::RollbackState> {
        let id = &inner.state.volumes.iter().find(|v| v.name == volume)?.id;
        inner
            .state
            .rollbacks
            .iter()
            .find(|r| r.volume == volume && &r.volume_id == id)
    }

    /// Refuse a new snapshot of a volume that a long operation holds now, or whose rollback
    /// is unfinished.
    fn check_volume_free(&self, inner: &Inner, volume: &str) -> Result<()> {
        if let Some(what) = self.held_by(volume) {
            return Err(DaemonError::busy(format!(
                "volume '{volume}' is busy with {what}; wait for it to finish"
            )));
        }
        if let Some(r) = Self::unfinished_rollback(inner, volume) {
            let finish = if inner.snapshots.contains_key(&r.snapshot) {
                format!(
                    "finish it first with `fss rollback {volume} {}`",
                    r.snapshot
                )
            } else {
                format!(
                    "that snapshot is gone: roll the volume back to another of its \
                     snapshots first (`fss rollback {volume} SNAPSHOT`)"
                )
            };
            return Err(DaemonError::busy(format!(
                "volume '{volume}' has an unfinished rollback to snapshot '{}'; {finish}",
                r.snapshot
            )));
        }
        Ok(())
    }

    /// Refuse to delete a snapshot a long operation uses now, or the target of an unfinished
    /// rollback.
    fn check_snapshot_deletable(&self, inner: &Inner, name: &str) -> Result<()> {
        if let Some(what) = self.held_by(name) {
            return Err(DaemonError::busy(format!(
                "snapshot '{name}' is in use by {what}; wait for it to finish"
            )));
        }
        if let Some(r) = inner.state.rollbacks.iter().find(|r| r.snapshot == name) {
            return Err(DaemonError::busy(format!(
                "snapshot '{name}' is the target of an unfinished rollback of volume \
                 '{}'; finish it first with `fss rollback {} {name}`",
                r.volume, r.volume
            )));
        }
        Ok(())
    }

    /// A snapshot whose contents can be trusted now: live, valid, on a verified volume.
    fn usable(inner: &Inner, name: &str) -> Result<Snapshot> {
        let snap = Self::snapshot(inner, name)?;
        if let Some(s) = inner.state.snapshots.iter().find(|s| s.name == name) {
            if let Some(r) = inner.unverified.get(&s.volume) {
                return Err(DaemonError::new(
                    ErrorKind::InvalidSnapshot,
                    format!(
                        "snapshot '{name}' is unverified: its volume '{}' changed while fss was \
                         not running ({r}), so its contents cannot be trusted",
                        s.volume
                    ),
                ));
            }
        }
        if let CoreState::Invalid(r) = snap.info().state {
            return Err(DaemonError::new(
                ErrorKind::InvalidSnapshot,
                format!("snapshot '{name}' is invalid: {r}"),
            ));
        }
        Ok(snap)
    }

    /// The snapshots of a diff, checked: one volume, `until` newer, both of one chain.
    fn diff_pair(
        &self,
        inner: &Inner,
        snapshot: &str,
        until: Option<&str>,
    ) -> Result<(Snapshot, Option<Snapshot>)> {
        let older = Self::usable(inner, snapshot)?;
        let Some(until) = until else {
            return Ok((older, None));
        };
        let newer = Self::usable(inner, until)?;
        let (a, b) = (older.info(), newer.info());
        if a.volume != b.volume {
            return Err(DaemonError::invalid(format!(
                "'{snapshot}' is a snapshot of volume '{}' and '{until}' of volume '{}': a diff \
                 compares two snapshots of one volume",
                a.volume, b.volume
            )));
        }
        if a.id == b.id {
            return Err(DaemonError::invalid(format!(
                "'{snapshot}' and '{until}' are the same snapshot"
            )));
        }
        if a.id > b.id {
            return Err(DaemonError::invalid(format!(
                "'{until}' is older than '{snapshot}': give the older snapshot first \
                 (`fss diff {until} {snapshot}`)"
            )));
        }
        if a.persistent != b.persistent {
            let kind = |p: bool| if p { "persistent" } else { "transient" };
            return Err(DaemonError::invalid(format!(
                "cannot diff '{snapshot}' ({}) and '{until}' ({}): persistent and transient \
                 snapshots form separate chains, and exact change lists exist only between \
                 snapshots of one chain; diff two snapshots of the same kind, or '{snapshot}' \
                 against the volume now (`fss diff {snapshot}`)",
                kind(a.persistent),
                kind(b.persistent)
            )));
        }
        Ok((older, Some(newer)))
    }

    /// Look up and hold the snapshots of a backup.
    ///
    /// # Errors
    /// A snapshot is missing, unusable, or `since` is not an older snapshot of the same volume.
    pub fn backup_job(&self, snapshot: &str, since: Option<&str>) -> Result<BackupJob<'_>> {
        let inner = self.lock();
        let snap = Self::usable(&inner, snapshot)?;
        let info = snap.info();
        let base = match since {
            None => None,
            Some(b) => {
                let base = Self::usable(&inner, b)?;
                let bi = base.info();
                if bi.volume != info.volume {
                    return Err(DaemonError::invalid(format!(
                        "'{b}' is a snapshot of volume '{}', not of '{}': an incremental backup \
                         starts from an older snapshot of the same volume",
                        bi.volume, info.volume
                    )));
                }
                if bi.id >= info.id {
                    return Err(DaemonError::invalid(format!(
                        "'{b}' is not older than '{snapshot}': an incremental backup goes from \
                         an older snapshot (--since) to a newer one"
                    )));
                }
                Some(base)
            }
        };
        let mut names = vec![snapshot];
        names.extend(since);
        let what = format!("a backup of '{snapshot}'");
        Ok(BackupJob {
            start: crate::protocol::BackupStart {
                snapshot: snapshot.to_string(),
                volume: info.volume.clone(),
                kind: if base.is_some() {
                    BackupKind::Incremental
                } else {
                    BackupKind::Full
                },
                since: since.map(str::to_string),
                size: info.len,
            },
            snapshot: snap,
            base,
            _hold: self.hold(&names, &what),
        })
    }

    /// Find an online volume for a restore or a rollback.
    fn online_volume(inner: &Inner, volume: &str) -> Result<Volume> {
        inner
            .volumes
            .get(volume)
            .cloned()
            .ok_or_else(|| match inner.offline.get(volume) {
                Some(r) => DaemonError::busy(format!("volume '{volume}' is offline: {r}")),
                None => DaemonError::not_found(format!(
                    "no volume named '{volume}'; see `fss volume list`"
                )),
            })
    }

    /// Withdraw a volume from front-ends and check that nobody has it open; on refusal it is
    /// published again.
    fn withdraw_unopened(&self, volume: &str, vol: &Volume, what: &str) -> Result<()> {
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

    /// Restore backup files (a full backup, then incrementals in order) onto the volume
    /// `volume`, which must have no snapshots and not be open. It is not served meanwhile.
    ///
    /// # Errors
    /// The volume is missing, busy, open or has snapshots; a file cannot be opened; the chain
    /// is wrong or damaged (the library's error, naming the file).
    pub fn restore_volume(
        &self,
        volume: &str,
        files: &[PathBuf],
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<crate::protocol::RestoreDone> {
        let mut inputs: Vec<(String, Box<dyn std::io::Read>)> = Vec::new();
        for f in files {
            let file = std::fs::File::open(f)
                .map_err(|e| DaemonError::io(&format!("cannot open backup {}", f.display()), &e))?;
            inputs.push((f.display().to_string(), Box::new(file)));
        }
        let inner = self.lock();
        let vol = Self::online_volume(&inner, volume)?;
        if let Some(r) = inner.offline.get(volume) {
            return Err(DaemonError::busy(format!(
                "volume '{volume}' is not served: {r}"
            )));
        }
        let snaps: Vec<&str> = inner
            .state
            .snapshots
            .iter()
            .filter(|s| s.volume == volume)
            .map(|s| s.name.as_str())
            .collect();
        if !snaps.is_empty() {
            return Err(DaemonError::busy(format!(
                "volume '{volume}' has snapshots ({}): a restore rewrites the whole volume; \
                 delete them first, or restore into a new volume or image",
                snaps.join(", ")
            )));
        }
        if let Some(what) = self.held_by(volume) {
            return Err(DaemonError::busy(format!(
                "volume '{volume}' is busy with {what}; wait for it to finish"
            )));
        }
        self.withdraw_unopened(volume, &vol, "a restore")?;
        let _hold = self.hold(&[volume], &format!("a restore onto '{volume}'"));
        drop(inner);
        tracing::info!(volume, files = ?files, "restore onto volume started");
        let target = VolumeTarget(vol.clone());
        let result = fss_core::backup::restore(inputs, &target, progress);
        self.publish(volume, Export::Volume(vol));
        match result {
            Ok(s) => {
                tracing::info!(volume, snapshot = %s.snapshot.name, backups = s.backups, "restore onto volume done");
                Ok(crate::protocol::RestoreDone {
                    volume: volume.to_string(),
                    snapshot: s.snapshot.name,
                    backups: s.backups as u64,
                    data_bytes: s.data_bytes,
                    zero_bytes: s.zero_bytes,
                })
            }
            Err(e) => {
                tracing::error!(volume, error = %e, "restore onto volume failed");
                Err(e.into())
            }
        }
    }

    /// Return `volume` to `snapshot`'s contents: rewrite, through the engine, every extent
    /// changed since the snapshot with its bytes. Refused while the volume is open unless
    /// `force`. Recorded in the state first, so that a stop midway is finished at the next
    /// start; the volume is not served meanwhile (unless `force`).
    ///
    /// # Errors
    /// The volume or snapshot is missing or unusable, the volume is open or busy, or the
    /// rollback failed midway (the volume is then withdrawn until it is run again).
    pub fn rollback(
        &self,
        volume: &str,
        snapshot: &str,
        force: bool,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<crate::protocol::RollbackDone> {
        let mut inner = self.lock();
        let vol = Self::online_volume(&inner, volume)?;
        let unfinished = Self::unfinished_rollback(&inner, volume).cloned();
        if let Some(r) = &unfinished {
            // Another target is allowed only when the unfinished one's snapshot is gone: the
            // volume can then be put back into one consistent state.
            if r.snapshot != snapshot && inner.snapshots.contains_key(&r.snapshot) {
                return Err(DaemonError::busy(format!(
                    "volume '{volume}' has an unfinished rollback to snapshot '{}'; finish it \
                     first with `fss rollback {volume} {}`",
                    r.snapshot, r.snapshot
                )));
            }
        } else if let Some(r) = inner.offline.get(volume) {
            return Err(DaemonError::busy(format!(
                "volume '{volume}' is not served: {r}"
            )));
        }
        let snap = Self::usable(&inner, snapshot)?;
        let info = snap.info();
        if info.volume != volume {
            return Err(DaemonError::invalid(format!(
                "'{snapshot}' is a snapshot of volume '{}', not of '{volume}'",
                info.volume
            )));
        }
        if let Some(what) = self.held_by(volume) {
            return Err(DaemonError::busy(format!(
                "volume '{volume}' is busy with {what}; wait for it to finish"
            )));
        }
        if force {
            let open = self.opens_of(volume);
            if open > 0 {
                tracing::warn!(volume, open, "rolling back a volume that is open (--force)");
            }
        } else {
            self.withdraw_unopened(volume, &vol, "a rollback")?;
        }
        let again = unfinished.as_ref().is_some_and(|r| r.snapshot == snapshot);
        if !again {
            let before = inner.state.rollbacks.clone();
            inner.state.rollbacks.retain(|r| r.volume != volume);
            let volume_id = inner
                .state
                .volumes
                .iter()
                .find(|v| v.name == volume)
                .map(|v| v.id.clone())
                .unwrap_or_default();
            inner.state.rollbacks.push(crate::state::RollbackState {
                volume: volume.to_string(),
                volume_id,
                snapshot: snapshot.to_string(),
                snapshot_id: info.id,
                started: now_secs(),
            });
            if let Err(e) = self.save(&inner) {
                inner.state.rollbacks = before;
                if unfinished.is_none() {
                    self.publish(volume, Export::Volume(vol));
                }
                return Err(e);
            }
        }
        let _hold = self.hold(
            &[volume, snapshot],
            &format!("a rollback of '{volume}' to '{snapshot}'"),
        );
        drop(inner);
        if !info.persistent {
            tracing::warn!(volume, snapshot, "rolling back to a transient snapshot: if the daemon stops before the rollback completes, the snapshot is gone and the volume is left offline");
        }
        tracing::info!(volume, snapshot, force, "rollback started");
        let result = rollback_pass(&vol, &snap, self.hooks.rollback_pause, progress);
        let mut inner = self.lock();
        match result {
            Ok((extents, bytes)) => {
                inner.state.rollbacks.retain(|r| r.volume != volume);
                inner.offline.remove(volume);
                self.publish(volume, Export::Volume(vol));
                tracing::info!(volume, snapshot, extents, bytes, "rollback done");
                if let Err(e) = self.save(&inner) {
                    return Err(DaemonError::new(
                        ErrorKind::Io,
                        format!(
                            "the rollback of '{volume}' to '{snapshot}' is complete, but the \
                             state could not be updated ({e}); the next start will redo it, \
                             which is harmless"
                        ),
                    ));
                }
                Ok(crate::protocol::RollbackDone {
                    volume: volume.to_string(),
                    snapshot: snapshot.to_string(),
                    extents,
                    bytes,
                })
            }
            Err(e) => {
                let why = format!(
                    "the rollback to snapshot '{snapshot}' failed midway ({}); the volume holds \
                     a mix of old and new data and is not served: run `fss rollback {volume} \
                     {snapshot}` again",
                    e.message
                );
                tracing::error!(volume, snapshot, "{why}");
                self.unpublish(volume);
                inner.offline.insert(volume.to_string(), why.clone());
                Err(DaemonError::new(e.kind, why))
            }
        }
    }

    /// Finish the rollbacks a stop interrupted, before anything is served.
    fn resume_rollbacks(&self, inner: &mut Inner) {
        let records = std::mem::take(&mut inner.state.rollbacks);
        let mut keep = Vec::new();
        for r in records {
            let current = inner.state.volumes.iter().find(|v| v.name == r.volume);
            if current.is_none_or(|v| v.id != r.volume_id) {
                tracing::info!(volume = %r.volume, "forgetting the interrupted rollback of a volume that was removed");
                continue;
            }
            let Some(vol) = inner.volumes.get(&r.volume).cloned() else {
                tracing::error!(volume = %r.volume, snapshot = %r.snapshot,
                    "cannot finish the interrupted rollback: the volume is offline; it is retried at the next start");
                keep.push(r);
                continue;
            };
            let snap = inner
                .snapshots
                .get(&r.snapshot)
                .filter(|s| s.info().id == r.snapshot_id && s.is_valid())
                .cloned();
            let failed = match snap {
                None => Some(format!(
                    "a rollback to snapshot '{}' was interrupted and the snapshot is gone or \
                     unusable (a transient snapshot does not survive a restart): the volume \
                     holds a mix of the snapshot's data and later data and is not served; roll \
                     it back to another of its snapshots (`fss rollback {} SNAPSHOT`), or check \
                     it, `fss volume remove {}` and add it again",
                    r.snapshot, r.volume, r.volume
                )),
                Some(snap) => {
                    tracing::warn!(volume = %r.volume, snapshot = %r.snapshot,
                        "resuming the rollback of volume {} to snapshot {} interrupted by a stop", r.volume, r.snapshot);
                    match rollback_pass(&vol, &snap, self.hooks.rollback_pause, &mut |_, _| {}) {
                        Ok((extents, bytes)) => {
                            tracing::info!(volume = %r.volume, snapshot = %r.snapshot, extents, bytes,
                                "finished the interrupted rollback of volume {} to snapshot {}", r.volume, r.snapshot);
                            None
                        }
                        Err(e) => Some(format!(
                            "the interrupted rollback to snapshot '{}' could not be finished \
                             ({}); the volume holds a mix and is not served: run `fss rollback \
                             {} {}` again",
                            r.snapshot, e.message, r.volume, r.snapshot
                        )),
                    }
                }
            };
            if let Some(why) = failed {
                tracing::error!(volume = %r.volume, "{why}");
                self.unpublish(&r.volume);
                inner.offline.insert(r.volume.clone(), why);
                keep.push(r);
            }
        }
        inner.state.rollbacks = keep;
    }
}
