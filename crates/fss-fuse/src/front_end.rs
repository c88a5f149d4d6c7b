//! Mounting the FUSE directory, serving it on background threads, and unmounting it.

use crate::error::{FuseError, Result};
use crate::filesystem::FssFs;
use crate::handles::{Handles, OpenHook};
use crate::mount_point;
use fss_core::export::Catalog;
use fuser::{Config, MountOption, Session, SessionACL};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long [`FuseFrontEnd::stop`] waits for the serving threads after the unmount.
const THREAD_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the daemon wants to hear about.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Told when a name gets its first open handle (`true`) and loses its last (`false`);
    /// see [`OpenHook`].
    pub on_open_change: Option<OpenHook>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("on_open_change", &self.on_open_change.is_some())
            .finish()
    }
}

/// How to serve.
#[derive(Debug, Clone)]
pub struct FuseOptions {
    /// Threads receiving and answering requests (each has its own /dev/fuse descriptor). A
    /// loop device keeps up to this many requests being served at once.
    pub threads: usize,
    /// Asynchronous requests (loop device I/O) the kernel keeps queued before it throttles.
    pub max_background: u16,
}

impl Default for FuseOptions {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(4, std::num::NonZero::get);
        FuseOptions {
            // Measured here (2 CPUs): 4 KiB random writes at depth 16 through a loop device
            // reach 0.75x of a plain file with 4 threads and 0.93x with 8.
            threads: cpus.saturating_mul(2).clamp(8, 32),
            max_background: 64,
        }
    }
}

/// A mounted FUSE directory with one file per export of a catalog.
///
/// Dropping it unmounts as [`FuseFrontEnd::unmount`] does.
#[derive(Debug)]
pub struct FuseFrontEnd {
    dir: PathBuf,
    /// `st_dev` of the mounted root: tells whether the directory still shows our mount.
    dev: u64,
    handles: Arc<Handles>,
    session: Option<JoinHandle<io::Result<()>>>,
}

impl FuseFrontEnd {
    /// Mount `dir` (created if missing; a dead FUSE mount left there by a crashed daemon is
    /// detached first) and serve `catalog` on it with the default [`FuseOptions`].
    ///
    /// # Errors
    /// The directory cannot be created, the mount or the FUSE handshake fails, or the serving
    /// threads cannot start.
    pub fn mount(dir: &Path, catalog: Arc<dyn Catalog>, hooks: Hooks) -> Result<Self> {
        Self::mount_with(dir, catalog, hooks, &FuseOptions::default())
    }

    /// [`FuseFrontEnd::mount`] with explicit options.
    ///
    /// # Errors
    /// As [`FuseFrontEnd::mount`].
    pub fn mount_with(
        dir: &Path,
        catalog: Arc<dyn Catalog>,
        hooks: Hooks,
        options: &FuseOptions,
    ) -> Result<Self> {
        mount_point::prepare(dir).map_err(|source| FuseError::Directory {
            dir: dir.to_path_buf(),
            source,
        })?;
        let handles = Arc::new(Handles::new(hooks.on_open_change));
        let fs = FssFs::new(catalog, Arc::clone(&handles), options.max_background);
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("fss".into()),
            // As a kernel option, so that a direct mount(2) (root) gets it too: "fuse.fss".
            MountOption::CUSTOM("subtype=fss".into()),
            MountOption::DefaultPermissions,
            MountOption::NoDev,
            MountOption::NoSuid,
            MountOption::NoExec,
            MountOption::NoAtime,
        ];
        config.acl = SessionACL::Owner;
        config.n_threads = Some(options.threads.max(1));
        config.clone_fd = true;
        let session = Session::new(fs, dir, &config).map_err(|source| FuseError::Mount {
            dir: dir.to_path_buf(),
            source,
        })?;
        let thread = std::thread::Builder::new()
            .name("fss-fuse".into())
            .spawn(move || session.run())
            .map_err(FuseError::Thread)?;
        let mut fuse = FuseFrontEnd {
            dir: dir.to_path_buf(),
            dev: 0,
            handles,
            session: Some(thread),
        };
        // Only now that requests are served: stat(2) on the mount root asks the file system.
        // On failure, dropping `fuse` unmounts.
        fuse.dev = mount_point::device_of(dir).map_err(|source| FuseError::Mount {
            dir: dir.to_path_buf(),
            source,
        })?;
        tracing::info!(dir = %dir.display(), threads = options.threads, "FUSE directory mounted");
        Ok(fuse)
    }

    /// The mount point.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The names with open files and how many handles each has.
    #[must_use]
    pub fn open_files(&self) -> Vec<(String, usize)> {
        self.handles.open_files()
    }

    /// Whether a file of `name` is open.
    #[must_use]
    pub fn is_open(&self, name: &str) -> bool {
        self.handles.open_files().iter().any(|(n, _)| n == name)
    }

    /// Whether the directory is still mounted and served.
    #[must_use]
    pub fn is_serving(&self) -> bool {
        self.session.as_ref().is_some_and(|s| !s.is_finished())
    }

    /// Unmount and wait for the serving threads to end: when this returns `Ok`, no request is
    /// in flight and none will come. Does nothing if already stopped.
    ///
    /// # Errors
    /// [`FuseError::Busy`] if files are open (a loop device, a process): nothing changed, try
    /// again once they are closed. [`FuseError::Unmount`], or [`FuseError::StillServing`] if
    /// the threads did not end in time after the unmount.
    pub fn stop(&mut self) -> Result<()> {
        let Some(thread) = self.session.take() else {
            return Ok(());
        };
        if let Err(e) = self.unmount_if_ours() {
            self.session = Some(thread);
            return Err(e);
        }
        let deadline = Instant::now() + THREAD_EXIT_TIMEOUT;
        while !thread.is_finished() {
            if Instant::now() >= deadline {
                self.session = Some(thread);
                return Err(FuseError::StillServing {
                    dir: self.dir.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let result = match thread.join() {
            Ok(r) => r,
            Err(_) => Err(io::Error::other("a FUSE serving thread panicked")),
        };
        tracing::info!(dir = %self.dir.display(), "FUSE directory unmounted");
        result.map_err(|source| FuseError::Session {
            dir: self.dir.clone(),
            source,
        })
    }

    /// Stop; if files are still open, detach the directory lazily instead: it leaves the
    /// namespace now, and the open files are served until closed (then the threads end).
    ///
    /// # Errors
    /// As [`FuseFrontEnd::stop`]; after a `Busy` error the directory is detached.
    pub fn unmount(mut self) -> Result<()> {
        self.stop_or_detach()
    }

    fn stop_or_detach(&mut self) -> Result<()> {
        match self.stop() {
            Err(e @ FuseError::Busy { .. }) => {
                if let Err(d) = mount_point::detach(&self.dir) {
                    tracing::warn!(dir = %self.dir.display(), error = %d,
                        "cannot detach the busy FUSE directory");
                } else {
                    tracing::warn!(dir = %self.dir.display(), open = ?self.open_files(),
                        "FUSE directory detached while files are open; they stay served until closed");
                }
                // The threads end when the last open file is closed; nobody waits for them.
                self.session = None;
                Err(e)
            }
            other => other,
        }
    }

    fn unmount_if_ours(&self) -> Result<()> {
        match mount_point::device_of(&self.dir) {
            Ok(dev) if dev != self.dev => {
                // Unmounted by someone else (or covered): nothing of ours to unmount.
                return Ok(());
            }
            // Ours, or a dead connection (ENOTCONN): unmount it.
            Ok(_) | Err(_) => {}
        }
        match mount_point::unmount(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => {
                Err(FuseError::Busy {
                    dir: self.dir.clone(),
                    open: self.open_files().into_iter().map(|(n, _)| n).collect(),
                })
            }
            // Not a mount point any more: someone unmounted it.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => Ok(()),
            Err(source) => Err(FuseError::Unmount {
                dir: self.dir.clone(),
                source,
            }),
        }
    }
}

impl Drop for FuseFrontEnd {
    fn drop(&mut self) {
        if self.session.is_some() {
            if let Err(e) = self.stop_or_detach() {
                tracing::warn!(error = %e, "unmounting the FUSE directory on drop");
            }
        }
    }
}
