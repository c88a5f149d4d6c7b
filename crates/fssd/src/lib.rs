//! fssd: the fss daemon. It owns the engine objects (volumes and snapshots from `fss-core`),
//! keeps their state in `<state-dir>/state.json`, answers the control protocol on
//! `<state-dir>/control.sock`, and hands exports to front-ends (NBD, FUSE), which never touch
//! state or stores themselves.
//!
//! - [`daemon`]: `fss serve` (lock, start, ready, stop);
//! - [`config`]: what the daemon is started with (volume I/O mode, test hooks);
//! - [`registry`]: the live objects and the operations of the control API;
//! - [`control`]: the control socket and freeze leases;
//! - [`protocol`]: request and response types (`docs/CONTROL.md`);
//! - [`client`]: a client of the control socket;
//! - [`state`]: the persistent state file;
//! - [`stores`]: where snapshot stores go;
//! - [`freeze`]: freezing and thawing file systems;
//! - [`names`], [`paths`], [`error`].

pub mod client;
pub mod config;
pub mod control;
pub mod daemon;
pub mod error;
pub mod freeze;
pub mod heap;
pub mod names;
pub mod paths;
pub mod protocol;
pub mod registry;
pub mod state;
pub mod stores;

pub use error::{DaemonError, ErrorKind, Result};
