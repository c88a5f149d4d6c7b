//! `fssconfig`: NetBSD's fssconfig(8) syntax and output over fss.
//!
//! ```text
//! fssconfig [-cxv] fssN path backup [cluster [size]]
//! fssconfig -u [-v] fssN
//! fssconfig -l [-v] [fssN]
//! ```

use fss_cli::{call, connect, decode, output::ctime, state_dir};
use fssd::protocol::{Request, SnapshotInfo, SnapshotSpec, StatusInfo};
use std::path::Path;

const USAGE: &str = "usage: fssconfig [-cxv] device path backup [cluster [size]]\n       fssconfig -u [-v] device\n       fssconfig -l [-v] [device]";

#[derive(Default)]
struct Flags {
    c: bool,
    u: bool,
    l: bool,
    x: bool,
    v: bool,
}

fn fail(msg: &str) -> ! {
    eprintln!("fssconfig: {msg}");
    std::process::exit(1);
}

fn usage() -> ! {
    eprintln!("{USAGE}");
    std::process::exit(1);
}

/// `fssN: <mount or volume>, taken <ctime>, <clusters> clusters of <size>, <bytes> backup`.
fn line(s: &SnapshotInfo, verbose: bool) -> String {
    let what = s.mount_point.clone().unwrap_or_else(|| s.volume.clone());
    if !verbose {
        return format!("{}: {what}", s.name);
    }
    let clusters = if s.cluster_size == 0 {
        0
    } else {
        s.size.div_ceil(s.cluster_size)
    };
    format!(
        "{}: {what}, taken {}, {clusters} clusters of {}, {} backup",
        s.name,
        ctime(s.created),
        s.cluster_size,
        s.store_used
    )
}

fn size(arg: &str, what: &str) -> Option<u64> {
    match fssd::names::parse_size(arg) {
        Ok(0) => None,
        Ok(n) => Some(n),
        Err(e) => fail(&format!("{what}: {}", e.0)),
    }
}

fn main() {
    let mut flags = Flags::default();
    let mut args = Vec::new();
    for a in std::env::args().skip(1) {
        if let Some(opts) = a
            .strip_prefix('-')
            .filter(|o| !o.is_empty() && args.is_empty())
        {
            for ch in opts.chars() {
                match ch {
                    'c' => flags.c = true,
                    'u' => flags.u = true,
                    'l' => flags.l = true,
                    'x' => flags.x = true,
                    'v' => flags.v = true,
                    _ => usage(),
                }
            }
        } else {
            args.push(a);
        }
    }
    let modes = u8::from(flags.c) + u8::from(flags.u) + u8::from(flags.l);
    if modes > 1 || (flags.x && !flags.c && modes == 1) {
        usage();
    }
    let state = state_dir(None);
    let mut client = match connect(&state) {
        Ok(c) => c,
        Err(e) => fail(&e.to_string()),
    };
    let result = if flags.l {
        list(&mut client, &args, flags.v)
    } else if flags.u {
        if args.len() != 1 {
            usage();
        }
        call(
            &mut client,
            Request::SnapshotDelete {
                name: args[0].clone(),
            },
        )
        .map(|_| {
            if flags.v {
                println!("{}: unconfigured", args[0]);
            }
        })
    } else {
        if !(3..=5).contains(&args.len()) {
            usage();
        }
        configure(&mut client, &args, &flags)
    };
    if let Err(e) = result {
        fail(&format!(
            "{}: {e:#}",
            args.first().map_or("fss", String::as_str)
        ));
    }
}

fn configure(
    client: &mut fssd::client::Client,
    args: &[String],
    flags: &Flags,
) -> anyhow::Result<()> {
    // The daemon opens the store, so a relative backup path means the caller's directory.
    let backup = fss_cli::path_arg(&args[2]).map_err(anyhow::Error::msg)?;
    let (dev, path) = (&args[0], &args[1]);
    let cluster = args.get(3).and_then(|a| size(a, "cluster"));
    let max = args.get(4).and_then(|a| size(a, "size"));
    let mut spec = SnapshotSpec {
        volume: path.clone(),
        name: dev.clone(),
        store: Some(backup.clone()),
        cluster_size: cluster,
        max_store_size: max,
        transient: flags.x,
        on_store_error: None,
        unlink_store: flags.x,
        mount_point: None,
        lease: None,
    };
    let is_mount = path.starts_with('/') || Path::new(path).is_dir();
    let result = if is_mount {
        let st: StatusInfo = decode(call(client, Request::Status)?)?;
        let fuse = st.fuse_dir.unwrap_or_default();
        let mp = fss_cli::path_arg(path).map_err(anyhow::Error::msg)?;
        spec.volume = fss_cli::mounts::volume_of_mount(&mp, &fuse)?;
        fss_cli::mounts::check_store_not_on(&backup, &mp)?;
        spec.mount_point = Some(mp.display().to_string());
        let hooks = fssd::config::TestHooks::from_env();
        fss_cli::consistent::create_frozen(client, vec![spec], &[mp.as_path()], &hooks)?
    } else {
        call(client, Request::SnapshotCreate(spec))?
    };
    if flags.v {
        println!("{}", line(&decode(result)?, true));
    }
    Ok(())
}

fn list(client: &mut fssd::client::Client, args: &[String], verbose: bool) -> anyhow::Result<()> {
    if args.len() > 1 {
        usage();
    }
    let all: Vec<SnapshotInfo> = decode(call(client, Request::SnapshotList)?)?;
    let show = |name: &str| match all.iter().find(|s| s.name == name) {
        Some(s) => println!("{}", line(s, verbose)),
        None => println!("{name}: not in use"),
    };
    if let Some(one) = args.first() {
        show(one);
        return Ok(());
    }
    for i in 0..4 {
        show(&format!("fss{i}"));
    }
    let units = ["fss0", "fss1", "fss2", "fss3"];
    for s in all.iter().filter(|s| !units.contains(&s.name.as_str())) {
        println!("{}", line(s, verbose));
    }
    Ok(())
}
