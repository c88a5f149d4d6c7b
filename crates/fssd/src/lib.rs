//! fssd: the fss daemon. It owns the engine objects (volumes and snapshots from `fss-core`),
//! keeps their state in `<state-dir>/state.json`, answers the control protocol on
//! `<state-dir>/control.sock`, and hands exports to front-ends (NBD, FUSE), which never touch
//! state or stores themselves.
//!
//! - [`supervisor`]: `fss serve`, the process that holds the sockets and the state directory's
//!   lock and starts the serving process, again after it dies, and for `fss restart`;
//! - [`handover`]: the contract between the supervisor and the serving process (environment,
//!   channel lines, exit status, the restart record);
//! - [`serving`]: the serving process's side of it (adopting descriptors, dying with the
//!   supervisor, the channel);
//! - [`daemon`]: the serving process (start, ready, stop), or the whole daemon unsupervised;
//! - [`restart`]: `fss restart` in the serving process (checks, waiting, drain, answer);
//! - [`schedule`]: snapshot schedules (intervals, names, retention, `--min-free`, the timer);
//! - [`listeners`]: making the listening sockets;
//! - [`leases`]: freeze leases, recorded so that the next process honours them;
//! - [`config`]: what the daemon is started with (volume I/O mode, test-only hooks);
//! - [`registry`]: the live objects and the operations of the control API, with recovery at
//!   start (`registry/recovery.rs`);
//! - [`catalog`]: what front-ends see (exports by name) and their open counts;
//! - [`volume_target`]: a volume as a block device, for restores through the engine;
//! - [`control`]: the control socket, the one dispatch of every request, freeze leases;
//! - [`protocol`]: request and response types (`docs/CONTROL.md`);
//! - [`client`]: a client of the control socket;
//! - [`state`]: the persistent state file;
//! - [`stores`]: where snapshot stores go;
//! - [`freeze`]: freezing and thawing file systems;
//! - [`own_files`]: refusing volumes and stores that are, or live on, fss's own files and exports;
//! - [`heap`]: giving freed memory back to the system;
//! - [`heartbeat`]: the daemon's last sign of life, kept on disk, for the next start;
//! - [`names`]: names and sizes; [`paths`]: the state directory's places; [`error`]: the
//!   daemon's error and its kinds.

pub mod catalog;
pub mod client;
pub mod config;
pub mod control;
pub mod daemon;
pub mod error;
pub mod freeze;
pub mod handover;
pub mod heap;
pub mod heartbeat;
pub mod leases;
pub mod listeners;
pub mod metrics;
pub mod names;
pub mod own_files;
pub mod paths;
pub mod protocol;
pub mod registry;
pub mod restart;
pub mod schedule;
pub mod serving;
mod stand_in;
pub mod state;
pub mod stats;
pub mod stores;
pub mod supervisor;
pub mod volume_target;

pub use error::{DaemonError, ErrorKind, Result};
