//! Held writes outlive the process: acknowledged writes whose pre-images sit in a persistent
//! store's staged (not yet durable) records are in the journal, and a new process replays them
//! through the write path. The death of a process is modelled by copying every device as it
//! is (page cache included: `CrashDevice::contents`), losing only the process's memory.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::pattern;
use fss_core::device::{BlockDevice, CrashDevice};
use fss_core::store::{FileStore, Store, StoreIdentity};
use fss_core::{SnapshotOptions, Volume};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MIB: u64 = 1 << 20;
const VOL_ID: [u8; 16] = [0x5a; 16];
const BOOT: [u8; 16] = [1; 16];

fn persistent() -> SnapshotOptions {
    SnapshotOptions {
        persistent: true,
        ..Default::default()
    }
}

/// What a process leaves behind: the volume, the store and the journal, as the kernel has them.
struct Left {
    vol: Arc<CrashDevice>,
    store: Arc<CrashDevice>,
    journal: Arc<CrashDevice>,
}

fn copy(d: &CrashDevice) -> Arc<CrashDevice> {
    Arc::new(CrashDevice::from_bytes(&d.contents()))
}

/// A volume with a persistent snapshot `s` of `before`, then `writes` acknowledged while the
/// committer is held back; returns what a death right then leaves.
fn run_and_die(before: &[u8], writes: &[(u64, Vec<u8>)], journal: bool) -> Left {
    let vol_dev = Arc::new(CrashDevice::from_bytes(before));
    let d: Arc<dyn BlockDevice> = vol_dev.clone();
    let vol = Volume::with_identity("vol", d, VOL_ID);
    let store_dev: Arc<Mutex<Option<Arc<CrashDevice>>>> = Arc::default();
    let sd = Arc::clone(&store_dev);
    vol.create_snapshot("s", &persistent(), move |p| {
        let dev = Arc::new(CrashDevice::growable(u64::MAX));
        *sd.lock().unwrap() = Some(Arc::clone(&dev));
        Ok(Box::new(FileStore::create(dev, p, false, None)?) as Box<dyn Store>)
    })
    .unwrap();
    let journal_dev = Arc::new(CrashDevice::growable(u64::MAX));
    if journal {
        assert_eq!(vol.attach_journal(journal_dev.clone(), BOOT).unwrap(), 0);
    }
    vol.pause_commits(Duration::from_millis(1500));
    for (off, data) in writes {
        vol.write(data, *off).unwrap();
    }
    let store = store_dev.lock().unwrap().clone().unwrap();
    let left = Left {
        vol: copy(&vol_dev),
        store: copy(&store),
        journal: copy(&journal_dev),
    };
    // The dead process's memory is not looked at again; let this one finish in the background.
    std::thread::spawn(move || drop(vol));
    left
}

/// Start again on what was left: attach the snapshot, then replay the journal (or not).
fn restart(left: &Left, boot: Option<[u8; 16]>) -> (Volume, u64) {
    let d: Arc<dyn BlockDevice> = left.vol.clone();
    let vol = Volume::with_identity("vol", d, VOL_ID);
    let expect = StoreIdentity {
        volume_id: VOL_ID,
        volume_len: vol.len(),
        snapshot_id: 1,
    };
    let store: Arc<dyn BlockDevice> = left.store.clone();
    let (store, rec) = FileStore::open(store, &expect, false, None, None).unwrap();
    vol.attach_snapshot(&persistent(), Box::new(store), rec)
        .unwrap();
    let n = match boot {
        Some(b) => vol.attach_journal(left.journal.clone(), b).unwrap(),
        None => 0,
    };
    (vol, n)
}

fn read_all(read: impl Fn(&mut [u8], u64) -> fss_core::Result<()>, len: u64) -> Vec<u8> {
    let mut b = vec![0u8; len as usize];
    read(&mut b, 0).unwrap();
    b
}

/// Writes: (offset, bytes).
type Writes = Vec<(u64, Vec<u8>)>;

/// The volume before, the writes, and the volume after them.
fn scenario() -> (Vec<u8>, Writes, Vec<u8>) {
    let before = pattern(1, 0, (4 * MIB) as usize);
    // First overwrites (so held), unaligned and spanning clusters, none overlapping.
    let writes: Writes = [(4096u64, 8192usize), (MIB + 100, 70_000), (3 * MIB, 4096)]
        .iter()
        .enumerate()
        .map(|(i, &(off, len))| (off, pattern(10 + i as u64, off, len)))
        .collect();
    let mut after = before.clone();
    for (off, data) in &writes {
        after[*off as usize..*off as usize + data.len()].copy_from_slice(data);
    }
    (before, writes, after)
}

#[test]
fn acknowledged_held_writes_survive_the_death_of_the_process() {
    let (before, writes, after) = scenario();
    let left = run_and_die(&before, &writes, true);
    // The writes were held: the volume device does not have them yet.
    assert_eq!(left.vol.contents(), before, "the committer was held back");
    let (vol, n) = restart(&left, Some(BOOT));
    assert_eq!(n, writes.len() as u64, "every held write is replayed");
    let len = vol.len();
    assert!(
        read_all(|b, o| vol.read(b, o), len) == after,
        "volume after replay"
    );
    let snap = vol.snapshot("s").unwrap();
    assert!(snap.is_valid());
    assert!(
        read_all(|b, o| snap.read(b, o), len) == before,
        "snapshot exact"
    );
    // Replayed and flushed: a second death now loses nothing either, and replays nothing.
    drop(snap);
    let left2 = Left {
        vol: copy(&left.vol),
        store: copy(&left.store),
        journal: copy(&left.journal),
    };
    drop(vol);
    let (vol, n) = restart(&left2, Some(BOOT));
    assert_eq!(n, 0);
    assert!(read_all(|b, o| vol.read(b, o), len) == after);
    let snap = vol.snapshot("s").unwrap();
    assert!(read_all(|b, o| snap.read(b, o), len) == before);
}

#[test]
fn without_the_journal_or_after_a_reboot_they_are_lost() {
    let (before, writes, after) = scenario();
    // The failure this journal exists for: nothing kept them.
    let left = run_and_die(&before, &writes, false);
    let (vol, _) = restart(&left, None);
    let len = vol.len();
    assert!(read_all(|b, o| vol.read(b, o), len) == before);
    // Another boot: the journal is not trusted (a power cut loses what no FLUSH covered), and
    // the snapshot stays exact.
    let left = run_and_die(&before, &writes, true);
    let (vol, n) = restart(&left, Some([2; 16]));
    assert_eq!(n, 0);
    assert!(read_all(|b, o| vol.read(b, o), len) != after);
    let snap = vol.snapshot("s").unwrap();
    assert!(read_all(|b, o| snap.read(b, o), len) == before);
}

/// Large first overwrites on files in the daemon's default I/O mode go O_DIRECT end to end:
/// pre-image reads, volume writes, and held writes applied from their journal records. The
/// volume and both snapshots (persistent with a journal, transient) stay exact, through a
/// restart of the persistent one.
#[test]
fn large_first_overwrites_on_files_stay_exact() {
    use fss_core::device::{FileDevice, OpenOptions};
    use fss_core::store::DeviceStore;
    let dir = tempfile::tempdir().unwrap();
    let len = 8 * MIB;
    let before = pattern(3, 0, len as usize);
    std::fs::write(dir.path().join("vol"), &before).unwrap();
    let open = |name: &str, create: bool| -> Arc<dyn BlockDevice> {
        let opts = OpenOptions {
            direct_large: true,
            create_len: create.then_some(0),
            ..OpenOptions::default()
        };
        Arc::new(FileDevice::open(&dir.path().join(name), &opts).unwrap())
    };
    let vol = Volume::with_identity("vol", open("vol", false), VOL_ID);
    let store = open("store", true);
    let s = Arc::clone(&store);
    vol.create_snapshot("p", &persistent(), move |p| {
        Ok(Box::new(FileStore::create(s, p, false, None)?) as Box<dyn Store>)
    })
    .unwrap();
    assert_eq!(vol.attach_journal(open("journal", true), BOOT).unwrap(), 0);
    let mut after = before.clone();
    // Aligned and not, from 256 KiB (where direct writes start) to 2 MiB, spanning clusters.
    let writes = [
        (0u64, 256 << 10),
        (MIB, 1 << 20),
        (2 * MIB + 512, 300_000),
        (4 * MIB, 2 << 20),
    ];
    let mut transient_at = None;
    for (i, &(off, n)) in writes.iter().enumerate() {
        if i == 2 {
            // A transient snapshot too, from here on.
            vol.create_snapshot("t", &SnapshotOptions::default(), DeviceStore::in_memory)
                .unwrap();
            transient_at = Some(after.clone());
        }
        let data = pattern(20 + i as u64, off, n);
        vol.write(&data, off).unwrap();
        after[off as usize..off as usize + n].copy_from_slice(&data);
    }
    vol.flush().unwrap();
    assert!(read_all(|b, o| vol.read(b, o), len) == after, "volume");
    let p = vol.snapshot("p").unwrap();
    assert!(
        read_all(|b, o| p.read(b, o), len) == before,
        "persistent snapshot"
    );
    let t = vol.snapshot("t").unwrap();
    assert!(
        Some(read_all(|b, o| t.read(b, o), len)) == transient_at,
        "transient snapshot"
    );
    drop((p, t, vol));
    let vol = Volume::with_identity("vol", open("vol", false), VOL_ID);
    let expect = StoreIdentity {
        volume_id: VOL_ID,
        volume_len: len,
        snapshot_id: 1,
    };
    let (store, rec) = FileStore::open(open("store", false), &expect, false, None, None).unwrap();
    vol.attach_snapshot(&persistent(), Box::new(store), rec)
        .unwrap();
    assert!(
        read_all(|b, o| vol.read(b, o), len) == after,
        "volume after a restart"
    );
    let p = vol.snapshot("p").unwrap();
    assert!(
        read_all(|b, o| p.read(b, o), len) == before,
        "persistent snapshot after a restart"
    );
}
