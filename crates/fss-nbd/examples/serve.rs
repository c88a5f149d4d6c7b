//! Serve a sparse volume `default` and a snapshot `snap` of it over NBD on a unix socket, to try
//! NBD clients by hand.
//!
//! ```sh
//! cargo run -p fss-nbd --example serve -- [--dir DIR] [--size BYTES]
//! nbdinfo --list 'nbd+unix:///?socket=DIR/nbd.sock'
//! qemu-io -f raw -c 'read -P 0xa5 0 64k' 'nbd+unix:///snap?socket=DIR/nbd.sock'
//! ```
//!
//! The volume image is `DIR/default.img` (default DIR: a fresh temporary directory, SIZE 64 MiB):
//! 64 KiB of 0xa5 at offset 0 and at 1 MiB, holes elsewhere. The snapshot is taken after that,
//! then the first 4 KiB of the volume are overwritten with 0x5a, so `fss:preserved` on `snap`
//! marks exactly [0, 4096). It runs until killed.

use fss_core::device::{FileDevice, OpenOptions};
use fss_core::export::Export;
use fss_core::store::DeviceStore;
use fss_core::{SnapshotOptions, Volume};
use fss_nbd::{Server, ServerOptions, StaticCatalog};
use std::error::Error;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

fn main() -> Result<(), Box<dyn Error>> {
    let mut dir: Option<PathBuf> = None;
    let mut size: u64 = 64 << 20;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dir" => dir = args.next().map(PathBuf::from),
            "--size" => size = args.next().ok_or("--size needs a value")?.parse()?,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let dir = match dir {
        Some(d) => d,
        None => tempfile::Builder::new()
            .prefix("fss-nbd-")
            .tempdir()?
            .keep(),
    };
    std::fs::create_dir_all(&dir)?;
    let image = dir.join("default.img");
    let _ = std::fs::remove_file(&image);
    let dev = FileDevice::open(
        &image,
        &OpenOptions {
            create_len: Some(size),
            exclusive: true,
            ..OpenOptions::default()
        },
    )?;
    let vol = Volume::new("default", Arc::new(dev));
    vol.write(&[0xa5; 65536], 0)?;
    if size >= (1 << 20) + 65536 {
        vol.write(&[0xa5; 65536], 1 << 20)?;
    }
    let snap = vol.create_snapshot("snap", &SnapshotOptions::default(), DeviceStore::in_memory)?;
    vol.write(&[0x5a; 4096], 0)?;

    let catalog = Arc::new(StaticCatalog::new());
    catalog.insert(Export::Volume(vol));
    catalog.insert(Export::Snapshot(snap));
    let socket = dir.join("nbd.sock");
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)?;
    println!("serving on nbd+unix:///default?socket={}", socket.display());
    println!("           nbd+unix:///snap?socket={}", socket.display());
    Server::new(catalog, ServerOptions::default()).serve_unix(listener)?;
    Ok(())
}
