//! `fss restart`: the serving process drains, saves and exits; the supervisor starts the
//! binary on disk; this command waits until the new process answers.

use crate::{call, connect, decode};
use fssd::protocol::{RestartInfo, StatusInfo};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long the new process may take to answer, beyond the drain.
const TAKEOVER_WAIT: Duration = Duration::from_secs(60);

/// What `fss restart` was asked.
#[derive(Debug, Clone, Copy)]
pub struct RestartArgs {
    /// Print one JSON document.
    pub json: bool,
    /// Seconds to wait for long operations (the daemon's default: 30).
    pub timeout: Option<u64>,
    /// Drop transient snapshots instead of refusing.
    pub drop_transient: bool,
}

/// Run `fss restart`.
///
/// # Errors
/// The daemon refused (transient snapshots, a binary on disk that does not run, no
/// supervisor), the new binary did not start (the previous one serves again), or no process
/// answered in time.
pub fn restart(state: &Path, a: RestartArgs) -> anyhow::Result<()> {
    let mut c = connect(state)?;
    let before: StatusInfo = decode(call(&mut c, fssd::protocol::Request::Status)?)?;
    let t0 = Instant::now();
    let req = fssd::protocol::Request::Restart {
        timeout_seconds: a.timeout,
        drop_transient: a.drop_transient,
    };
    let info: RestartInfo = decode(call(&mut c, req)?)?;
    drop(c);
    let wait = Duration::from_secs(a.timeout.unwrap_or(30)) + TAKEOVER_WAIT;
    let after = successor(state, before.pid, t0 + wait)?;
    let ms = t0.elapsed().as_millis();
    if let Some(why) = after
        .last_restart
        .as_ref()
        .and_then(|l| l.upgrade_error.as_ref())
    {
        anyhow::bail!(
            "{why}; the previous binary (fss {}) serves again as pid {}",
            after.version,
            after.pid
        );
    }
    if a.json {
        let v = serde_json::json!({
            "old_pid": info.old_pid,
            "new_pid": after.pid,
            "old_version": info.old_version,
            "new_version": after.version,
            "ms": ms,
            "waited_for": info.waited_for,
            "carried_over": info.carried_over,
            "dropped_transient": info.dropped_transient,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "restarted: fss {} (pid {}) -> fss {} (pid {}) in {ms} ms",
        info.old_version, info.old_pid, after.version, after.pid
    );
    let list = |what: &str, v: &[String]| {
        if !v.is_empty() {
            println!("{what}: {}", v.join(", "));
        }
    };
    list("waited for", &info.waited_for);
    list(
        "carried over (resumed by the new process)",
        &info.carried_over,
    );
    list("dropped transient snapshots", &info.dropped_transient);
    Ok(())
}

/// The status of the process that took over from `old_pid`, once it answers.
fn successor(state: &Path, old_pid: u32, deadline: Instant) -> anyhow::Result<StatusInfo> {
    let mut last_error = String::new();
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let answer = connect(state).and_then(|mut c| {
            c.set_timeout(Some(left.max(Duration::from_millis(10))))
                .map_err(|e| anyhow::anyhow!(e.message))?;
            decode::<StatusInfo>(call(&mut c, fssd::protocol::Request::Status)?)
        });
        match answer {
            Ok(s) if s.pid != old_pid => return Ok(s),
            Ok(_) => {}
            Err(e) => last_error = format!(": {e:#}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("no fss process answered after the restart{last_error}")
}
