//! The `fss` and `fssconfig` commands: clap front-ends to the daemon's control protocol, plus
//! `fss serve`, which runs the daemon in the foreground.
//!
//! - [`output`]: tables and JSON for listings;
//! - [`mounts`]: from a mount point to the fss volume under it (mountinfo -> loop device ->
//!   backing file in the FUSE directory);
//! - [`consistent`]: a snapshot of a mounted file system under a freeze lease.

pub mod consistent;
pub mod mounts;
pub mod output;

use anyhow::Context;
use std::path::PathBuf;

/// Exit status for a failed operation (a usage error is clap's 2).
pub const EXIT_FAILED: i32 = 1;

/// The state directory commands talk to.
#[must_use]
pub fn state_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(fssd::paths::default_state_dir)
}

/// Connect to the daemon.
///
/// # Errors
/// No daemon.
pub fn connect(state_dir: &std::path::Path) -> anyhow::Result<fssd::client::Client> {
    fssd::client::Client::connect(state_dir).map_err(|e| anyhow::anyhow!(e.message))
}

/// Parse a size argument for clap.
///
/// # Errors
/// Not a size.
pub fn size_arg(s: &str) -> Result<u64, String> {
    fssd::names::parse_size(s).map_err(|e| e.0)
}

/// Call the daemon and turn its error into a message.
///
/// # Errors
/// The daemon refused.
pub fn call(
    client: &mut fssd::client::Client,
    req: fssd::protocol::Request,
) -> anyhow::Result<serde_json::Value> {
    client.call(req).map_err(|e| anyhow::anyhow!(e.message))
}

/// Decode a daemon result.
///
/// # Errors
/// The daemon sent something else than expected.
pub fn decode<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> anyhow::Result<T> {
    serde_json::from_value(v)
        .context("unexpected answer from the daemon (is it the same fss release?)")
}

/// The front-ends `fss serve` starts (NBD, FUSE).
pub mod frontends {
    use fssd::daemon::{FrontEnd, ServeOptions};
    use fssd::registry::Registry;
    use std::sync::Arc;

    /// Start every front-end.
    ///
    /// # Errors
    /// A front-end could not start (a socket in use, no FUSE).
    pub fn start(
        _registry: &Arc<Registry>,
        _opts: &ServeOptions,
    ) -> fssd::Result<Vec<Box<dyn FrontEnd>>> {
        Ok(Vec::new())
    }
}
