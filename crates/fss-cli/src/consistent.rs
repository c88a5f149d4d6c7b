//! A snapshot of a mounted file system: open a freeze lease with the daemon, freeze, ask for the
//! snapshot, thaw on every path (errors and Ctrl-C included), close the lease. If this process
//! dies while the file system is frozen, the daemon thaws it (lease dropped or expired).
//! [`create`] is `fss snapshot create` and `create-group`, of volumes or mount points.

use crate::{call, connect, decode};
use anyhow::Context;
use fssd::freeze;
use fssd::protocol::{Request, SnapshotInfo, SnapshotSpec};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Take the snapshots in `specs` of the file systems at `mounts` (same order), all frozen at
/// once. One spec and one mount point for a single snapshot; several for a group. `hooks`
/// are test-only ([`fssd::config::TestHooks::from_env`] when the command starts).
///
/// # Errors
/// Freezing failed (nothing was taken), or the daemon refused the snapshot (everything was
/// thawed first).
pub fn create_frozen(
    client: &mut fssd::client::Client,
    specs: Vec<SnapshotSpec>,
    mounts: &[&Path],
    hooks: &fssd::config::TestHooks,
) -> anyhow::Result<serde_json::Value> {
    // Ctrl-C or SIGTERM while frozen must not kill us before we thaw: note it, act after.
    let interrupted = Arc::new(AtomicBool::new(false));
    let mut handlers = Vec::new();
    for sig in [signal_hook_consts::SIGINT, signal_hook_consts::SIGTERM] {
        if let Ok(id) = signal_hook_registry_flag(sig, &interrupted) {
            handlers.push(id);
        }
    }
    let mut leases = Vec::new();
    let mut frozen = Vec::new();
    let result = (|| {
        for m in mounts {
            let v = crate::call(
                client,
                Request::LeaseOpen {
                    mount_point: m.display().to_string(),
                },
            )?;
            leases.push(
                v.get("lease")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0),
            );
            let dir =
                freeze::open_mount(m).with_context(|| format!("cannot open {}", m.display()))?;
            freeze::freeze(&dir).map_err(|e| {
                let hint = match e.raw_os_error() {
                    Some(1) => " (freezing needs root)",
                    Some(16) => " (it is already frozen)",
                    Some(95) => " (this file system cannot be frozen)",
                    _ => "",
                };
                anyhow::anyhow!("cannot freeze {}: {e}{hint}", m.display())
            })?;
            frozen.push((m.to_path_buf(), dir));
        }
        // For tests only: stay frozen a while, to be killed or to outlive the lease.
        if let Some(hold) = hooks.freeze_hold {
            std::thread::sleep(hold);
        }
        let mut specs = specs.clone();
        for (s, l) in specs.iter_mut().zip(&leases) {
            s.lease = Some(*l);
        }
        let req = if specs.len() == 1 {
            Request::SnapshotCreate(specs[0].clone())
        } else {
            Request::SnapshotCreateGroup {
                members: specs.clone(),
            }
        };
        crate::call(client, req)
    })();
    let mut thaw_error = None;
    for (m, dir) in frozen.iter().rev() {
        // EINVAL: not frozen any more (the daemon thawed it when the lease expired).
        if let Err(e) = freeze::thaw(dir).or_else(|e| {
            if e.raw_os_error() == Some(22) {
                Ok(())
            } else {
                Err(e)
            }
        }) {
            thaw_error.get_or_insert(anyhow::anyhow!(
                "cannot thaw {}: {e}; run `fsfreeze -u {}` now",
                m.display(),
                m.display()
            ));
        }
    }
    for id in leases {
        let _ = crate::call(client, Request::LeaseClose { lease: id });
    }
    for h in handlers {
        signal_hook_unregister(h);
    }
    if interrupted.load(std::sync::atomic::Ordering::Acquire) {
        eprintln!("interrupted: the file systems were thawed");
        std::process::exit(130);
    }
    if let Some(e) = thaw_error {
        return Err(e);
    }
    result
}

/// Resolve each spec's volume: a mount point becomes its volume (and is frozen later).
fn resolve(
    client: &mut fssd::client::Client,
    specs: &mut [SnapshotSpec],
) -> anyhow::Result<Vec<PathBuf>> {
    let mut mounts = Vec::new();
    for s in specs.iter_mut() {
        if !s.volume.contains('/') {
            continue;
        }
        let (volume, mp) = crate::mounts::volume_of_target(client, &s.volume)?;
        if let Some(store) = &s.store {
            crate::mounts::check_store_not_on(store, &mp)?;
        }
        s.mount_point = Some(mp.display().to_string());
        s.volume = volume;
        mounts.push(mp);
    }
    Ok(mounts)
}

/// `fss snapshot create` and `create-group`: resolve mount points to volumes, take the
/// snapshots (frozen when of mount points), print what was made.
///
/// # Errors
/// No daemon, a mount point not on an fss volume, or the daemon refused.
pub fn create(
    state: &Path,
    mut specs: Vec<SnapshotSpec>,
    json: bool,
    group: bool,
) -> anyhow::Result<()> {
    let mut client = connect(state)?;
    let mounts = resolve(&mut client, &mut specs)?;
    let result = if mounts.is_empty() {
        let req = if group {
            Request::SnapshotCreateGroup { members: specs }
        } else {
            Request::SnapshotCreate(specs.remove(0))
        };
        call(&mut client, req)?
    } else {
        let refs: Vec<&Path> = mounts.iter().map(PathBuf::as_path).collect();
        let hooks = fssd::config::TestHooks::from_env();
        create_frozen(&mut client, specs, &refs, &hooks)?
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    let list: Vec<SnapshotInfo> = if result.is_array() {
        decode(result)?
    } else {
        vec![decode(result)?]
    };
    for s in list {
        println!(
            "created {} snapshot '{}' of volume '{}'{}",
            s.kind,
            s.name,
            s.volume,
            s.mount_point
                .map(|m| format!(" (file system at {m}, frozen and thawed)"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

use signal_hook::consts as signal_hook_consts;

fn signal_hook_registry_flag(
    sig: i32,
    flag: &Arc<AtomicBool>,
) -> std::io::Result<signal_hook::SigId> {
    signal_hook::flag::register(sig, Arc::clone(flag))
}

fn signal_hook_unregister(id: signal_hook::SigId) {
    signal_hook::low_level::unregister(id);
}
