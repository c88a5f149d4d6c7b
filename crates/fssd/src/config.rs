//! What the daemon is started with: where it keeps things, how it opens volumes, and the
//! test-only hooks. A leaf module: the daemon, the registry and the front-ends read it.

use crate::paths::Paths;
use std::path::PathBuf;
use std::time::Duration;

/// What `fss serve` was asked.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Directories and sockets.
    pub paths: Paths,
    /// TCP address for NBD, if any.
    pub nbd_listen: Option<String>,
    /// TCP address for `GET /metrics` (`--metrics-listen`), if any.
    pub metrics_listen: Option<String>,
    /// TLS for NBD over TCP (checked by [`NbdTls::check`]).
    pub nbd_tls: NbdTls,
    /// How volumes are opened (page cache or O_DIRECT).
    pub volume_io: VolumeIo,
    /// Test-only hooks ([`TestHooks::from_env`] at start; default off).
    pub test_hooks: TestHooks,
    /// Opens `/dev/fuse` and mounts it on the FUSE directory, for the supervisor to hold (the
    /// FUSE front-end's `mount_connection`; the daemon library does not depend on it). `None`:
    /// each serving process mounts its own, which dies with it.
    pub fuse_mount: Option<FuseMount>,
    /// Whether to serve the FUSE directory at all (`--fuse-dir none`: NBD only). When it is
    /// wanted but cannot be mounted, the daemon warns once and serves NBD only.
    pub fuse_enabled: bool,
}

/// `fss serve --tls`: whether NBD over TCP offers or requires TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsChoice {
    /// Plaintext only (`NBD_OPT_STARTTLS` refused).
    Off,
    /// Offered; plaintext clients are served too.
    On,
    /// Required: plaintext clients are refused before they learn anything.
    Require,
}

impl TlsChoice {
    /// The choice named `s` (`off`, `on`, `require`), as `fss serve --tls` takes it.
    ///
    /// # Errors
    /// Any other name.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        match s {
            "off" => Ok(TlsChoice::Off),
            "on" => Ok(TlsChoice::On),
            "require" => Ok(TlsChoice::Require),
            other => Err(format!(
                "unknown TLS mode '{other}': use off, on or require"
            )),
        }
    }

    /// Its name, as `--tls` takes it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            TlsChoice::Off => "off",
            TlsChoice::On => "on",
            TlsChoice::Require => "require",
        }
    }
}

/// TLS for NBD over TCP, as `fss serve --tls-certificates DIR --tls MODE --tls-verify-peer
/// --tls-authz CN=NAME` asked. The unix socket is always plaintext (local, mode 0600).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NbdTls {
    /// `--tls` (default: `require` with certificates).
    pub mode: Option<TlsChoice>,
    /// The directory with `ca-cert.pem`, `server-cert.pem`, `server-key.pem`.
    pub certificates: Option<PathBuf>,
    /// Require a client certificate signed by `ca-cert.pem`.
    pub verify_peer: bool,
    /// The client certificate subject common names accepted (empty: any the CA signed).
    pub authz: Vec<String>,
}

impl NbdTls {
    /// Whether TLS is to be set up, and with which mode; refuses contradictions, and NBD over
    /// TCP that would be plaintext by accident.
    ///
    /// # Errors
    /// A sentence naming the flags at odds and the ways out.
    pub fn check(
        &self,
        nbd_listen: Option<&str>,
    ) -> std::result::Result<Option<TlsChoice>, String> {
        let client_checks = self.verify_peer || !self.authz.is_empty();
        match (&self.certificates, self.mode) {
            (None, Some(m @ (TlsChoice::On | TlsChoice::Require))) => Err(format!(
                "--tls {} needs --tls-certificates DIR (with ca-cert.pem, server-cert.pem and \
                 server-key.pem)",
                if m == TlsChoice::On { "on" } else { "require" }
            )),
            (None, _) if client_checks => Err(
                "--tls-verify-peer and --tls-authz need --tls-certificates DIR (with \
                 ca-cert.pem, server-cert.pem and server-key.pem)"
                    .into(),
            ),
            (None, None) if nbd_listen.is_some() => Err(format!(
                "NBD over TCP (--nbd-listen {}) would serve every volume in plaintext and \
                 without authentication: give --tls-certificates DIR (with ca-cert.pem, \
                 server-cert.pem and server-key.pem) to require TLS, or --tls off to accept \
                 plaintext on a trusted network",
                nbd_listen.unwrap_or_default()
            )),
            (None, _) => Ok(None),
            (Some(_), Some(TlsChoice::Off)) => Err(
                "--tls off contradicts --tls-certificates (and --tls-verify-peer, \
                 --tls-authz): drop one or the other"
                    .into(),
            ),
            (Some(_), _) if nbd_listen.is_none() => Err(
                "--tls-certificates applies to NBD over TCP, and there is none: add \
                 --nbd-listen ADDR:PORT (the unix socket is always plaintext)"
                    .into(),
            ),
            (Some(_), None) => Ok(Some(TlsChoice::Require)),
            (Some(_), Some(m)) => Ok(Some(m)),
        }
    }
}

/// See [`ServeOptions::fuse_mount`]: the mount point to a `/dev/fuse` descriptor mounted there,
/// or a message saying what failed.
pub type FuseMount = fn(&std::path::Path) -> std::result::Result<std::os::fd::OwnedFd, String>;

/// How the daemon does I/O on its volumes (images and block devices). Stores are not
/// affected. Every mode is coherent: a direct read of a range first writes back the page
/// cache's dirty pages of that range (the kernel does this for O_DIRECT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VolumeIo {
    /// Reads and writes through the page cache.
    Buffered,
    /// Aligned reads of at least [`fss_core::device::DIRECT_READ_MIN`] bytes with O_DIRECT,
    /// writes and smaller reads through the page cache: large reads skip the page-cache copy,
    /// small writes are still absorbed by the cache.
    DirectReads,
    /// Aligned reads and writes with O_DIRECT.
    Direct,
    /// As `DirectReads`, and aligned writes of at least
    /// [`fss_core::device::DIRECT_WRITE_MIN`] bytes with O_DIRECT too: large transfers skip
    /// the page-cache copy both ways, small writes are still absorbed by the cache.
    #[default]
    DirectLarge,
}

impl VolumeIo {
    /// The mode named `s` (`buffered`, `direct-reads`, `direct-large`, `direct`), as `fss serve --volume-io`
    /// takes it.
    ///
    /// # Errors
    /// Any other name.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        match s {
            "buffered" => Ok(VolumeIo::Buffered),
            "direct-reads" => Ok(VolumeIo::DirectReads),
            "direct-large" => Ok(VolumeIo::DirectLarge),
            "direct" => Ok(VolumeIo::Direct),
            other => Err(format!(
                "unknown volume I/O mode '{other}': use buffered, direct-reads, direct-large or direct"
            )),
        }
    }

    /// The device options of this mode.
    pub(crate) fn apply(self, opts: &mut fss_core::device::OpenOptions) {
        opts.direct = self == VolumeIo::Direct;
        opts.direct_reads = self == VolumeIo::DirectReads;
        opts.direct_large = self == VolumeIo::DirectLarge;
    }
}

/// Test-only hooks, read from the environment once when `fss serve` starts
/// ([`TestHooks::from_env`]) and passed down; no operation reads the environment itself.
/// Tests that drive the binaries set them through the environment. All are off by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TestHooks {
    /// `FSS_TEST_ROLLBACK_PAUSE_MS`: a pause after each chunk a rollback rewrites, so that a
    /// test can interrupt a rollback midway.
    pub rollback_pause: Option<Duration>,
    /// `FSS_TEST_RESTORE_HALT_AFTER`: a restore onto a volume stops after writing this many
    /// data records and waits, never finishing, so that a test can kill the daemon at a known
    /// point midway (a restore holds one data record per write of at most 1 MiB).
    pub restore_halt_after: Option<u64>,
    /// `FSS_TEST_FREEZE_HOLD_MS` (read by the CLI): how long a consistent snapshot keeps the
    /// file system frozen before asking for the snapshot, so that a test can kill the CLI
    /// while frozen or let the freeze lease expire.
    pub freeze_hold: Option<Duration>,
    /// `FSS_TEST_HOLD_COMMITS_MS`: every volume's committer waits this long before each
    /// commit, so that acknowledged writes stay held and a test can kill the daemon then.
    pub hold_commits: Option<Duration>,
    /// `FSS_TEST_CHILD_CRASH_AT_START`: the first this many serving processes a supervisor
    /// starts kill themselves (SIGKILL) right at start, before they are ready, so that a test
    /// can make a crash loop or a crash before ready.
    pub child_crash_at_start: Option<u64>,
    /// `FSS_TEST_RESTART_HOLD_MS`: for `fss restart`, how long the serving process waits
    /// after it drained and saved, before it answers and exits, so that a test can connect a
    /// client while nothing accepts.
    pub restart_hold: Option<Duration>,
}

impl TestHooks {
    /// The hooks set in the environment (`FSS_TEST_*`); unset or unparsable ones are off.
    #[must_use]
    pub fn from_env() -> Self {
        let millis = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_millis)
        };
        TestHooks {
            rollback_pause: millis("FSS_TEST_ROLLBACK_PAUSE_MS"),
            restore_halt_after: std::env::var("FSS_TEST_RESTORE_HALT_AFTER")
                .ok()
                .and_then(|v| v.parse::<u64>().ok()),
            freeze_hold: millis("FSS_TEST_FREEZE_HOLD_MS"),
            hold_commits: millis("FSS_TEST_HOLD_COMMITS_MS"),
            child_crash_at_start: std::env::var("FSS_TEST_CHILD_CRASH_AT_START")
                .ok()
                .and_then(|v| v.parse::<u64>().ok()),
            restart_hold: millis("FSS_TEST_RESTART_HOLD_MS"),
        }
    }
}
