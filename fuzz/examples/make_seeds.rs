//! Write the seed corpora: `cargo run --release --example make_seeds` (from `fuzz/`).
//! Seeds are real stores made by today's code for the fuzz identity, and NBD and control
//! sessions as clients send them; the fuzzer mutates them.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, seeds) in [
        ("store_open", fss_fuzz::store_seeds()),
        ("log_replay", fss_fuzz::log_seeds()),
        ("nbd_request", fss_fuzz::nbd::nbd_seeds()),
        ("control_request", fss_fuzz::control::control_seeds()),
    ] {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in seeds {
            let path = dir.join(name);
            std::fs::write(&path, &bytes)?;
            println!("{} ({} bytes)", path.display(), bytes.len());
        }
    }
    Ok(())
}
