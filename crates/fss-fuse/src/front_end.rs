//! A served FUSE directory: mounting and serving it in one go ([`FuseFrontEnd::mount`]), or
//! serving a connection someone else mounted and may hand to the next process
//! ([`FuseFrontEnd::serve_connection`]); stopping, detaching, unmounting.

use crate::connection;
use crate::error::{FuseError, Result};
use crate::handles::{Handles, OpenHook};
use crate::mount_point;
use crate::persist::SessionFiles;
use crate::session::{Session, Setup, Start};
use fss_core::export::Catalog;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long [`FuseFrontEnd::stop`] and [`FuseFrontEnd::detach`] wait for the serving threads.
const THREAD_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the daemon wants to hear about.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Told when a name gets its first open handle (`true`) and loses its last (`false`);
    /// see [`OpenHook`]. A resumed session reports every name open in the table it restored.
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
    /// Threads serving requests (one reads at a time, each answers what it read). A loop
    /// device keeps up to this many requests being served at once.
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

/// A served FUSE directory with one file per export of a catalog.
///
/// Dropping one made by [`FuseFrontEnd::mount`] unmounts as [`FuseFrontEnd::unmount`] does;
/// dropping one made by [`FuseFrontEnd::serve_connection`] detaches as
/// [`FuseFrontEnd::detach`] does (the mount stays for whoever holds the connection).
#[derive(Debug)]
pub struct FuseFrontEnd {
    dir: PathBuf,
    /// `st_dev` of the mounted root: tells whether the directory still shows our mount.
    dev: u64,
    handles: Arc<Handles>,
    session: Option<Session>,
    /// Mounted by this front-end (dropping it unmounts), not handed in.
    owns_mount: bool,
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

    /// [`FuseFrontEnd::mount`] with explicit options: [`connection::mount_connection`], then
    /// a [`Start::Fresh`] session without session files (it cannot be resumed).
    ///
    /// # Errors
    /// As [`FuseFrontEnd::mount`].
    pub fn mount_with(
        dir: &Path,
        catalog: Arc<dyn Catalog>,
        hooks: Hooks,
        options: &FuseOptions,
    ) -> Result<Self> {
        let fd = connection::mount_connection(dir)?;
        match Self::serve(fd, dir, catalog, hooks, options, None, Start::Fresh) {
            Ok(mut fuse) => {
                fuse.owns_mount = true;
                tracing::info!(dir = %dir.display(), threads = options.threads,
                    "FUSE directory mounted");
                Ok(fuse)
            }
            Err(e) => {
                // Nothing serves the mount: do not leave it behind.
                if let Err(d) = mount_point::detach(dir) {
                    tracing::warn!(dir = %dir.display(), error = %d, "cannot detach a failed mount");
                }
                Err(e)
            }
        }
    }

    /// Serve the connection `fd` (from [`connection::mount_connection`], possibly in another
    /// process) mounted on `dir`, with the default [`FuseOptions`]. The session is persisted
    /// to `session_file` and a table file beside it, so that the next process can resume it
    /// with [`Start::Resume`]. Does not unmount when dropped.
    ///
    /// # Errors
    /// The handshake, the session files or the serving threads fail.
    pub fn serve_connection(
        fd: OwnedFd,
        dir: &Path,
        catalog: Arc<dyn Catalog>,
        hooks: Hooks,
        session_file: &Path,
        start: Start,
    ) -> Result<Self> {
        let options = FuseOptions::default();
        Self::serve_connection_with(fd, dir, catalog, hooks, &options, session_file, start)
    }

    /// [`FuseFrontEnd::serve_connection`] with explicit options.
    ///
    /// # Errors
    /// As [`FuseFrontEnd::serve_connection`].
    pub fn serve_connection_with(
        fd: OwnedFd,
        dir: &Path,
        catalog: Arc<dyn Catalog>,
        hooks: Hooks,
        options: &FuseOptions,
        session_file: &Path,
        start: Start,
    ) -> Result<Self> {
        let files = SessionFiles::new(session_file);
        let fuse = Self::serve(fd, dir, catalog, hooks, options, Some(&files), start)?;
        tracing::info!(dir = %dir.display(), ?start, threads = options.threads,
            "serving the FUSE directory");
        Ok(fuse)
    }

    fn serve(
        fd: OwnedFd,
        dir: &Path,
        catalog: Arc<dyn Catalog>,
        hooks: Hooks,
        options: &FuseOptions,
        files: Option<&SessionFiles>,
        start: Start,
    ) -> Result<Self> {
        let setup = Setup {
            catalog,
            hook: hooks.on_open_change,
            threads: options.threads,
            max_background: options.max_background,
            files,
        };
        let session = Session::start(fd, &setup, start)?;
        let mut fuse = FuseFrontEnd {
            dir: dir.to_path_buf(),
            dev: 0,
            handles: Arc::clone(session.handles()),
            session: Some(session),
            owns_mount: false,
        };
        // Only now that requests are served: stat(2) on the mount root asks the file system.
        fuse.dev = mount_point::device_of(dir).map_err(|source| FuseError::Mount {
            dir: dir.to_path_buf(),
            source,
        })?;
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
        let Some(mut session) = self.session.take() else {
            return Ok(());
        };
        if let Err(e) = self.unmount_if_ours() {
            self.session = Some(session);
            return Err(e);
        }
        if !session.join(THREAD_EXIT_TIMEOUT) {
            self.session = Some(session);
            return Err(FuseError::StillServing {
                dir: self.dir.clone(),
            });
        }
        tracing::info!(dir = %self.dir.display(), "FUSE directory unmounted");
        Ok(())
    }

    /// Stop serving without unmounting, for the next process to resume: each serving thread
    /// answers the request it is serving and ends; requests not read yet stay queued in the
    /// kernel (their callers wait) until a session reads the connection again. The table
    /// file already holds every open handle.
    ///
    /// # Errors
    /// [`FuseError::StillServing`] if a thread did not end in time (it is left running).
    pub fn detach(mut self) -> Result<()> {
        self.detach_session()
    }

    fn detach_session(&mut self) -> Result<()> {
        let Some(mut session) = self.session.take() else {
            return Ok(());
        };
        if session.detach(THREAD_EXIT_TIMEOUT) {
            tracing::info!(dir = %self.dir.display(), "FUSE session detached; the mount stays");
            Ok(())
        } else {
            Err(FuseError::StillServing {
                dir: self.dir.clone(),
            })
        }
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
        connection::unmount(&self.dir).map_err(|e| match e {
            FuseError::Busy { dir, .. } => FuseError::Busy {
                dir,
                open: self.open_files().into_iter().map(|(n, _)| n).collect(),
            },
            other => other,
        })
    }
}

impl Drop for FuseFrontEnd {
    fn drop(&mut self) {
        if self.session.is_none() {
            return;
        }
        let result = if self.owns_mount {
            self.stop_or_detach()
        } else {
            self.detach_session()
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "stopping the FUSE directory on drop");
        }
    }
}
