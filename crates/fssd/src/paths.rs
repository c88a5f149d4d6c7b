//! Where the daemon keeps things, as DESIGN fixes: the state directory and what is inside it.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The most bytes of a unix socket path (sun_path minus its terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// The daemon's paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The state directory.
    pub state_dir: PathBuf,
    /// The FUSE directory.
    pub fuse_dir: PathBuf,
    /// The NBD unix socket.
    pub nbd_socket: PathBuf,
}

impl Paths {
    /// Paths for `state_dir` with the default FUSE dir and NBD socket unless given.
    #[must_use]
    pub fn new(state_dir: PathBuf, fuse_dir: Option<PathBuf>, nbd_socket: Option<PathBuf>) -> Self {
        Paths {
            fuse_dir: fuse_dir.unwrap_or_else(|| state_dir.join("dev")),
            nbd_socket: nbd_socket.unwrap_or_else(|| state_dir.join("nbd.sock")),
            state_dir,
        }
    }

    /// `<state-dir>/control.sock`.
    #[must_use]
    pub fn control_socket(&self) -> PathBuf {
        self.state_dir.join("control.sock")
    }

    /// `<state-dir>/state.json`.
    #[must_use]
    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }

    /// `<state-dir>/lock`.
    #[must_use]
    pub fn lock_file(&self) -> PathBuf {
        self.state_dir.join("lock")
    }

    /// `<state-dir>/heartbeat` ([`crate::heartbeat`]).
    #[must_use]
    pub fn heartbeat_file(&self) -> PathBuf {
        self.state_dir.join("heartbeat")
    }

    /// `<state-dir>/volumes`.
    #[must_use]
    pub fn volumes_dir(&self) -> PathBuf {
        self.state_dir.join("volumes")
    }

    /// `<state-dir>/stores`.
    #[must_use]
    pub fn stores_dir(&self) -> PathBuf {
        self.state_dir.join("stores")
    }

    /// `<state-dir>/invalidated`: invalidations of snapshots whose store could not take them
    /// (see `stand_in`), folded into `state.json` at the next start.
    #[must_use]
    pub fn invalidated_dir(&self) -> PathBuf {
        self.state_dir.join("invalidated")
    }
}

/// Where the journals of held writes live (`<run-dir>/journal`): memory that outlives the
/// process but not the machine. `FSS_RUN_DIR`, else `/run/fss` for root, else
/// `$XDG_RUNTIME_DIR/fss`, else `<state-dir>/run` (a disk file then: correct, but its pages
/// may be written back).
#[must_use]
pub fn journal_dir(state_dir: &Path) -> PathBuf {
    let run = if let Some(d) = std::env::var_os("FSS_RUN_DIR").filter(|d| !d.is_empty()) {
        PathBuf::from(d)
    } else if rustix::process::geteuid().is_root() {
        PathBuf::from("/run/fss")
    } else if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Path::new(&x).join("fss")
    } else {
        state_dir.join("run")
    };
    run.join("journal")
}

/// The state directory: `FSS_STATE_DIR`, else `/var/lib/fss` for root, else
/// `$XDG_STATE_HOME/fss` (default `~/.local/state/fss`).
#[must_use]
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FSS_STATE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/fss");
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Path::new(&x).join("fss");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    Path::new(&home).join(".local/state/fss")
}

/// Check a unix socket path fits.
///
/// # Errors
/// A sentence saying the path is too long and what to do.
pub fn check_socket_path(p: &Path) -> Result<(), String> {
    let n = p.as_os_str().len();
    if n > MAX_SOCKET_PATH {
        Err(format!(
            "socket path {} is {n} bytes long, more than the {MAX_SOCKET_PATH} a unix socket allows; \
             use a shorter state directory (--state-dir or FSS_STATE_DIR)",
            p.display()
        ))
    } else {
        Ok(())
    }
}

/// The mode of the directories fss makes: volume data and pre-images are nobody else's
/// business, whatever the umask.
pub const DIR_MODE: u32 = 0o700;

/// Create `dir` and its missing parents, each new one mode [`DIR_MODE`]; an existing one is
/// left as it is (it may be the administrator's).
///
/// # Errors
/// The directory could not be made.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
}

/// Create one of fss's own directories (the state directory, `volumes/`, `stores/`) if
/// missing, and make it mode [`DIR_MODE`] even if it exists: releases before 0.2 made them
/// 0755 under the usual umask, which let any user read images and stores.
///
/// # Errors
/// The directory could not be made or its mode set.
pub fn own_private_dir(dir: &Path) -> std::io::Result<()> {
    create_private_dir(dir)?;
    let m = std::fs::metadata(dir)?;
    if m.permissions().mode() & 0o777 != DIR_MODE {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))?;
    }
    Ok(())
}
