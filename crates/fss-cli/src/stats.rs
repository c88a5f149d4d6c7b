//! `fss stats`: the figures `fss serve --metrics-listen` serves, read over the control socket.

use crate::{call, connect, decode, output};
use fssd::names::human_size;
use fssd::protocol::Request;
use fssd::stats::Stats;
use std::path::Path;

/// Print the daemon's figures, as JSON (`--json`, schema in docs/CLI.md) or as tables.
///
/// # Errors
/// No daemon, or it refused.
pub fn stats(state: &Path, json: bool) -> anyhow::Result<()> {
    let v = call(&mut connect(state)?, Request::Stats)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let s: Stats = decode(v)?;
    println!(
        "NBD connections: {}, open FUSE files: {}, serving-process restarts: {}",
        s.nbd_connections, s.fuse_open_files, s.restarts
    );
    let rows: Vec<Vec<String>> = s
        .volumes
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                human_size(v.read_bytes),
                human_size(v.written_bytes),
                v.preserved_blocks.to_string(),
                human_size(v.held_write_bytes),
            ]
        })
        .collect();
    let header = ["VOLUME", "READ", "WRITTEN", "PRESERVED BLOCKS", "HELD"];
    print!("{}", output::table(&header, &rows));
    Ok(())
}
