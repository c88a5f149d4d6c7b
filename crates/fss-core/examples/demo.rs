//! A walkthrough of the engine on real files, checking itself as it goes.
//!
//! ```sh
//! cargo run --release --example demo
//! ```
//!
//! It makes a sparse 1 MiB volume image under the state directory (`$FSS_STATE_DIR`, or
//! `./fss-demo-state`), writes a recognisable pattern, takes snapshot s1, overwrites part of the
//! volume, takes s2, overwrites more (with a discard and a write-zeroes), takes s3, writes again,
//! then deletes s2 from the middle of the chain. After each stage it prints what every snapshot
//! and the volume read at a few offsets, and each snapshot's counters; it compares every byte
//! with what it expects and exits with status 1 on the first difference.
//!
//! Each snapshot's store is a file next to the image (`stores/<name>.store`), a transient
//! [`DeviceStore`]: gone when the snapshot is deleted.

use fss_core::device::{FileDevice, OpenOptions};
use fss_core::store::{DeviceStore, Store};
use fss_core::{ErrorKind, Snapshot, SnapshotOptions, SnapshotState, Volume, BLOCK_SIZE};
use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::Arc;

type DemoResult<T = ()> = Result<T, Box<dyn Error>>;

/// 256 blocks of 4 KiB, 16 clusters of 64 KiB.
const VOLUME_LEN: u64 = 1 << 20;
/// The blocks whose first 16 bytes the tables show.
const PROBES: [u64; 8] = [0, 6, 10, 40, 64, 100, 150, 200];

/// A live snapshot, what it must read, and its store file.
struct Snap {
    handle: Snapshot,
    expected: Vec<u8>,
    store: PathBuf,
}

/// The volume, the snapshots, and a model of what each must read.
struct Demo {
    vol: Volume,
    stores: PathBuf,
    expected: Vec<u8>,
    snaps: Vec<Snap>,
}

impl Demo {
    /// A fresh sparse image under `state` (any earlier one is replaced).
    fn new(state: &Path) -> DemoResult<Self> {
        let volumes = state.join("volumes");
        let stores = state.join("stores");
        std::fs::create_dir_all(&volumes)?;
        std::fs::create_dir_all(&stores)?;
        let image = volumes.join("demo.img");
        remove_if_present(&image)?;
        let opts = OpenOptions {
            create_len: Some(VOLUME_LEN),
            exclusive: true,
            ..OpenOptions::default()
        };
        let dev = FileDevice::open(&image, &opts)?;
        println!(
            "volume image: {} ({} KiB, sparse)",
            image.display(),
            VOLUME_LEN >> 10
        );
        Ok(Demo {
            vol: Volume::new("demo", Arc::new(dev)),
            stores,
            expected: vec![0; usize::try_from(VOLUME_LEN)?],
            snaps: Vec::new(),
        })
    }

    /// Fill blocks `[first, end)` with 16-byte lines such as `after-s1blk 0006`.
    fn write_blocks(&mut self, label: &str, first: u64, end: u64) -> DemoResult {
        let mut data = Vec::new();
        for block in first..end {
            let line = format!("{label:<8}blk {block:04}");
            for _ in 0..BLOCK_SIZE / 16 {
                data.extend_from_slice(line.as_bytes());
            }
        }
        self.write(&data, first * BLOCK_SIZE)
    }

    fn write(&mut self, data: &[u8], offset: u64) -> DemoResult {
        self.vol.write(data, offset)?;
        self.model_range(offset, data.len() as u64)?
            .copy_from_slice(data);
        Ok(())
    }

    fn discard(&mut self, offset: u64, len: u64) -> DemoResult {
        self.vol.discard(offset, len)?;
        self.model_range(offset, len)?.fill(0);
        Ok(())
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> DemoResult {
        self.vol.write_zeroes(offset, len)?;
        self.model_range(offset, len)?.fill(0);
        Ok(())
    }

    fn model_range(&mut self, offset: u64, len: u64) -> DemoResult<&mut [u8]> {
        let start = usize::try_from(offset)?;
        let end = usize::try_from(offset + len)?;
        self.expected
            .get_mut(start..end)
            .ok_or_else(|| "range outside the model".into())
    }

    /// Take snapshot `name`, its store a file in the stores directory.
    fn snapshot(&mut self, name: &str) -> DemoResult {
        let store = self.stores.join(format!("{name}.store"));
        remove_if_present(&store)?;
        let path = store.clone();
        let handle = self
            .vol
            .create_snapshot(name, &SnapshotOptions::default(), |params| {
                let opts = OpenOptions {
                    create_len: Some(0),
                    ..OpenOptions::default()
                };
                let dev = FileDevice::open(&path, &opts).map_err(|e| {
                    fss_core::Error::io("create store", path.display().to_string(), e)
                })?;
                Ok(Box::new(DeviceStore::new(Arc::new(dev), params, false)) as Box<dyn Store>)
            })?;
        println!("\n== snapshot {name} taken (store {})", store.display());
        self.snaps.push(Snap {
            handle,
            expected: self.expected.clone(),
            store,
        });
        Ok(())
    }

    /// Delete snapshot `name` and its store file; return its handle, now dead.
    fn delete(&mut self, name: &str) -> DemoResult<Snapshot> {
        let i = self.position(name)?;
        self.vol.delete_snapshot(name)?;
        let gone = self.snaps.remove(i);
        std::fs::remove_file(&gone.store)?;
        println!("\n== snapshot {name} deleted");
        Ok(gone.handle)
    }

    fn position(&self, name: &str) -> DemoResult<usize> {
        self.snaps
            .iter()
            .position(|s| s.handle.name() == name)
            .ok_or_else(|| format!("no snapshot {name}").into())
    }

    /// Blocks preserved in `name`'s own store.
    fn preserved(&self, name: &str) -> DemoResult<u64> {
        Ok(self.snaps[self.position(name)?]
            .handle
            .info()
            .stats
            .blocks_preserved)
    }

    /// Print the probe table and every snapshot's counters, then compare every byte of every
    /// snapshot and of the volume with the model.
    fn show_and_verify(&self) -> DemoResult {
        let mut header = format!("{:>8}  {:>5}", "offset", "block");
        for s in &self.snaps {
            header.push_str(&format!("  {:<18}", s.handle.name()));
        }
        header.push_str("  volume");
        println!("{header}");
        for block in PROBES {
            let offset = block * BLOCK_SIZE;
            let mut line = format!("{offset:>#8x}  {block:>5}");
            for s in &self.snaps {
                let mut head = [0u8; 16];
                s.handle.read(&mut head, offset)?;
                line.push_str(&format!("  {:<18}", show(&head)));
            }
            let mut head = [0u8; 16];
            self.vol.read(&mut head, offset)?;
            line.push_str(&format!("  {}", show(&head)));
            println!("{line}");
        }
        for s in &self.snaps {
            let info = s.handle.info();
            let state = match &info.state {
                SnapshotState::Valid => "valid".to_string(),
                SnapshotState::Invalid(why) => format!("INVALID ({why})"),
            };
            println!(
                "{}: {state}, {} blocks preserved in {} clusters, {} KiB of store used ({})",
                info.name,
                info.stats.blocks_preserved,
                info.stats.clusters_preserved,
                info.stats.store_bytes_used >> 10,
                info.store
            );
        }
        let mut all = vec![0u8; self.expected.len()];
        for s in &self.snaps {
            s.handle.read(&mut all, 0)?;
            compare(s.handle.name(), &all, &s.expected)?;
        }
        self.vol.read(&mut all, 0)?;
        compare("the volume", &all, &self.expected)?;
        println!(
            "verified: all {} bytes of {} snapshot(s) and of the volume are as expected",
            self.expected.len(),
            self.snaps.len()
        );
        Ok(())
    }
}

/// A claim the demo makes, checked.
fn claim(ok: bool, what: &str) -> DemoResult {
    if ok {
        println!("checked: {what}");
        Ok(())
    } else {
        Err(format!("MISMATCH: expected {what}").into())
    }
}

fn compare(what: &str, got: &[u8], want: &[u8]) -> DemoResult {
    match got.iter().zip(want).position(|(a, b)| a != b) {
        None if got.len() == want.len() => Ok(()),
        None => Err(format!(
            "MISMATCH: {what} has {} bytes, expected {}",
            got.len(),
            want.len()
        )
        .into()),
        Some(i) => {
            let end = (i + 16).min(got.len());
            Err(format!(
                "MISMATCH: {what} at offset {i:#x} reads {} where {} was expected",
                show(&got[i..end]),
                show(&want[i..end])
            )
            .into())
        }
    }
}

/// Up to 16 bytes as text: printable ASCII as is, other bytes as '.', all zeroes as (zeroes).
fn show(bytes: &[u8]) -> String {
    if bytes.iter().all(|&b| b == 0) {
        return "(zeroes)".to_string();
    }
    let text: String = bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '.'
            }
        })
        .collect();
    format!("\"{text}\"")
}

fn remove_if_present(path: &Path) -> DemoResult {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

fn main() -> DemoResult {
    let state =
        std::env::var_os("FSS_STATE_DIR").map_or_else(|| "fss-demo-state".into(), PathBuf::from);
    std::fs::create_dir_all(&state)?;
    let state = state.canonicalize()?;
    println!(
        "state directory: {} (set FSS_STATE_DIR to change it)",
        state.display()
    );
    let mut d = Demo::new(&state)?;

    // 1. A recognisable pattern over the whole volume.
    d.write_blocks("orig", 0, VOLUME_LEN / BLOCK_SIZE)?;
    d.vol.flush()?;
    println!(
        "wrote \"orig    blk NNNN\" lines over all {} blocks",
        VOLUME_LEN / BLOCK_SIZE
    );

    // 2. s1, then change blocks 0-7 and 8 bytes in the middle of block 40.
    d.snapshot("s1")?;
    d.write_blocks("after-s1", 0, 8)?;
    d.write(b"<patch!>", 40 * BLOCK_SIZE + 8)?;
    println!("wrote blocks 0-7 (after-s1) and 8 bytes inside block 40");
    d.show_and_verify()?;
    claim(
        d.preserved("s1")? == 9,
        "s1 preserved 9 blocks: 0-7 and all of block 40 for an 8-byte write",
    )?;

    // 3. s2, then blocks 4-11 (half of them already changed once), a discard of cluster 4
    // (blocks 64-79) and write-zeroes on blocks 100-101.
    d.snapshot("s2")?;
    d.write_blocks("after-s2", 4, 12)?;
    d.discard(64 * BLOCK_SIZE, 16 * BLOCK_SIZE)?;
    d.write_zeroes(100 * BLOCK_SIZE, 2 * BLOCK_SIZE)?;
    println!("wrote blocks 4-11 (after-s2), discarded blocks 64-79, zeroed blocks 100-101");
    d.show_and_verify()?;
    claim(
        d.preserved("s2")? == 26,
        "s2 preserved 26 blocks (8 written, 16 discarded, 2 zeroed)",
    )?;
    claim(
        d.preserved("s1")? == 9,
        "s1 still holds 9 blocks: nothing is written for an older snapshot (the chain rule)",
    )?;

    // 4. s3, then blocks 0-1 and 200-201.
    d.snapshot("s3")?;
    d.write_blocks("after-s3", 0, 2)?;
    d.write_blocks("after-s3", 200, 202)?;
    println!("wrote blocks 0-1 and 200-201 (after-s3)");
    d.show_and_verify()?;

    // 5. Delete s2 from the middle: the entries s1 lacks (blocks 8-11, 64-79, 100-101) move
    // into s1's store first, so s1 stays exact; s3 never needed s2.
    let s2 = d.delete("s2")?;
    d.show_and_verify()?;
    claim(
        d.preserved("s1")? == 9 + 22,
        "s1 now holds 31 blocks: its 9 plus the 22 of s2's that it lacked (4-7 it had)",
    )?;
    let mut buf = [0u8; 16];
    let dead = s2.read(&mut buf, 0);
    claim(
        matches!(&dead, Err(e) if e.kind() == ErrorKind::NotFound),
        "a read through the deleted s2's handle fails with NotFound",
    )?;
    if let Err(e) = dead {
        println!("         ({e})");
    }

    // 6. Writes go on after the deletion; s1 and s3 stay exact.
    d.write_blocks("final", 0, 16)?;
    println!("\nwrote blocks 0-15 (final)");
    d.show_and_verify()?;

    let st = d.vol.stats();
    println!(
        "\nvolume: {} writes ({} KiB), {} needed copy-on-write, {} blocks preserved in all, {} live snapshots",
        st.writes,
        st.bytes_written >> 10,
        st.cow_calls,
        st.blocks_preserved,
        st.snapshots
    );
    for name in ["s1", "s3"] {
        d.delete(name)?;
    }
    claim(
        d.vol.stats().snapshots == 0,
        "no snapshots left; their store files are removed",
    )?;
    println!(
        "the volume image stays in {}",
        state.join("volumes").display()
    );
    println!("demo OK");
    Ok(())
}
