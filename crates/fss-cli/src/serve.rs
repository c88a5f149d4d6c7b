//! `fss serve`: by default the supervisor ([`fssd::supervisor`]), which starts this same
//! binary again as its serving process (`--serving-child`); with `--no-supervisor`, the whole
//! daemon in one process, which dies with it.

use clap::Args;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The arguments of `fss serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Directory of the FUSE files (default <state-dir>/dev), or `none` to serve NBD only.
    /// When it cannot be mounted (no /dev/fuse, no permission), fss warns and serves NBD only.
    #[arg(long, value_name = "DIR|none", value_parser = fuse_dir_arg)]
    pub fuse_dir: Option<FuseDir>,
    /// Unix socket for NBD (default <state-dir>/nbd.sock).
    #[arg(long, value_name = "PATH", value_parser = crate::path_arg)]
    pub nbd_socket: Option<PathBuf>,
    /// Also serve NBD over TCP at this address (for example 127.0.0.1:10809); needs
    /// --tls-certificates, or --tls off for plaintext.
    #[arg(long, value_name = "ADDR:PORT")]
    pub nbd_listen: Option<String>,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (for example 127.0.0.1:9850).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<String>,
    /// TLS for NBD over TCP.
    #[command(flatten)]
    pub tls: crate::nbd_tls::TlsArgs,
    /// Volume I/O: direct-large (default: O_DIRECT for reads of 64 KiB or more and writes of
    /// 256 KiB or more), direct-reads (O_DIRECT for large reads only), buffered, or direct
    /// (O_DIRECT for every aligned read and write). Default from FSS_VOLUME_IO when set.
    #[arg(long, value_name = "MODE", value_parser = fssd::config::VolumeIo::parse)]
    pub volume_io: Option<fssd::config::VolumeIo>,
    /// Run the daemon in this one process, without the supervisor that restarts it when it
    /// dies and makes `fss restart` possible.
    #[arg(long)]
    pub no_supervisor: bool,
    /// Internal: run as the serving process of a supervisor (set by `fss serve` itself).
    #[arg(long, hide = true, conflicts_with = "no_supervisor")]
    pub serving_child: bool,
}

/// `--fuse-dir`: a directory, or `none`.
#[derive(Clone, Debug)]
pub enum FuseDir {
    /// No FUSE directory: NBD only.
    None,
    /// This directory.
    Dir(PathBuf),
}

fn fuse_dir_arg(s: &str) -> Result<FuseDir, String> {
    if s == "none" {
        Ok(FuseDir::None)
    } else {
        crate::path_arg(s).map(FuseDir::Dir)
    }
}

fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("FSS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// Log to stderr as `FSS_LOG` says, for a command other than `fss serve`, only when it is set
/// (e.g. `FSS_LOG=debug fss backup ...` times the phases of a backup).
pub fn debug_logging() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("FSS_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// Run `fss serve` until it stops; its exit status.
///
/// # Errors
/// The daemon could not start (another one serves the state directory, a socket cannot be
/// made, the state is damaged).
pub fn serve(state: &Path, a: ServeArgs) -> anyhow::Result<i32> {
    // Before any thread exists: the serving threads share a few allocator arenas.
    fssd::heap::limit_arenas();
    init_logging();
    let volume_io = match a.volume_io {
        Some(m) => m,
        None => match std::env::var("FSS_VOLUME_IO") {
            Ok(s) => fssd::config::VolumeIo::parse(&s).map_err(|e| anyhow::anyhow!(e))?,
            Err(_) => fssd::config::VolumeIo::default(),
        },
    };
    let (fuse_dir, fuse_enabled) = match a.fuse_dir {
        Some(FuseDir::None) => (None, false),
        Some(FuseDir::Dir(d)) => (Some(d), true),
        None => (None, true),
    };
    let nbd_tls = a.tls.checked(a.nbd_listen.as_deref())?;
    let opts = fssd::config::ServeOptions {
        paths: fssd::paths::Paths::new(state.to_path_buf(), fuse_dir, a.nbd_socket),
        nbd_listen: a.nbd_listen,
        metrics_listen: a.metrics_listen,
        nbd_tls,
        volume_io,
        test_hooks: fssd::config::TestHooks::from_env(),
        fuse_mount: Some(|dir| fss_fuse::mount_connection(dir).map_err(|e| e.to_string())),
        fuse_enabled,
    };
    let message = |e: fssd::DaemonError| anyhow::anyhow!(e.message);
    let start = Box::new(crate::frontends::start);
    if a.serving_child {
        let handover = fssd::serving::adopt(&opts.test_hooks).map_err(message)?;
        let stopped = fssd::daemon::run_serving(&opts, handover, start).map_err(message)?;
        return Ok(stopped.exit_code());
    }
    if a.no_supervisor {
        let stopped = fssd::daemon::run(&opts, start).map_err(message)?;
        return Ok(stopped.exit_code());
    }
    // The serving process gets the user's arguments as they were, and the flag.
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    args.push("--serving-child".into());
    fssd::supervisor::run(&opts, args).map_err(message)
}
