//! A restore onto an fss volume killed midway (kill -9 of the daemon, at a known record through
//! the test hook `FSS_TEST_RESTORE_HALT_AFTER`): at the next start it is finished when its
//! backups are still there, and otherwise the volume is left offline with the commands to
//! finish or abandon it; never served half restored. Contents are compared byte for byte with
//! copies of the source image taken when the backups were made.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::{checksum, fails, qemu_io, sha256, volume, Daemon, FSS};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A restore onto volume `dst` killed midway, and what to compare with.
struct Interrupted {
    _tmp: tempfile::TempDir,
    d: Daemon,
    /// The backups given to the restore, in order.
    files: Vec<PathBuf>,
    /// SHA-256 of the source image as the last backup holds it.
    source: String,
    /// SHA-256 of `dst`'s image before the restore.
    old: String,
    /// SHA-256 of `dst`'s image when the daemon was killed (before: `old`).
    midway: String,
    /// `dst`'s image.
    image: PathBuf,
}

impl Interrupted {
    /// Back up a 64 MiB volume (60 MiB of data in 1 MiB records, 4 MiB of zeroes; with
    /// `incremental`, then 10 MiB changed in an incremental backup), then restore it onto
    /// another volume through the CLI and kill the daemon after `halt_after` data records.
    fn new(halt_after: u64, incremental: bool) -> Interrupted {
        let mut t = Self::prepare(Some(halt_after), incremental);
        t.interrupt();
        t
    }

    /// The daemon (with the halt hook), the backups and the volume `dst` to restore onto.
    fn prepare(halt_after: Option<u64>, incremental: bool) -> Interrupted {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let halt = halt_after.map(|n| n.to_string());
        let env: Vec<(&str, &str)> = halt
            .iter()
            .map(|n| ("FSS_TEST_RESTORE_HALT_AFTER", n.as_str()))
            .collect();
        let d = Daemon::start_with_env(&dir, &env);
        d.ok(&["volume", "create", "src", "--size", "64M"]);
        let src = dir.join("volumes").join("src.img");
        qemu_io(
            &d,
            "src",
            &[
                "write -P 0x11 0 64M",
                "write -P 0x12 8M 8M",
                "write -z 40M 4M",
                "write -P 0x13 60M 4k",
            ],
        );
        d.ok(&["snapshot", "create", "src", "s1"]);
        let mut source = sha256(&src);
        assert_eq!(source, checksum(&d, "s1"));
        let mut files = vec![out.join("full.fss")];
        d.ok(&["backup", "s1", s(&files[0])]);
        if incremental {
            qemu_io(&d, "src", &["write -P 0x21 0 8M", "write -P 0x22 30M 2M"]);
            d.ok(&["snapshot", "create", "src", "s2"]);
            source = sha256(&src);
            assert_eq!(source, checksum(&d, "s2"));
            files.push(out.join("incr.fss"));
            d.ok(&["backup", "s2", s(&files[1]), "--since", "s1"]);
        }
        d.ok(&["volume", "create", "dst", "--size", "64M"]);
        qemu_io(&d, "dst", &["write -P 0xee 0 64M"]);
        let image = dir.join("volumes").join("dst.img");
        let old = sha256(&image);
        Interrupted {
            _tmp: tmp,
            d,
            files,
            source,
            midway: old.clone(),
            old,
            image,
        }
    }

    /// Restore onto `dst` through the CLI, and kill the daemon when the hook halts it.
    fn interrupt(&mut self) {
        let mut args: Vec<&str> = vec!["restore"];
        args.extend(self.files.iter().map(|f| s(f)));
        args.push("dst");
        let dir = self.d.dir.clone();
        let d = &mut self.d;
        let cli = Command::new(FSS)
            .args(&args)
            .env("FSS_STATE_DIR", &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while !d.log().contains("test hook: restore halted") {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the restore did not reach the halt; log:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // While it runs, nobody can open or snapshot the volume.
        assert!(
            !dir.join("dev").join("dst").exists(),
            "a FUSE file is served"
        );
        let e = fails(d, &["snapshot", "create", "dst", "x"]);
        assert!(e.contains("busy with a restore onto 'dst'"), "{e}");
        d.kill9();
        let o = cli.wait_with_output().unwrap();
        assert_eq!(
            o.status.code(),
            Some(1),
            "the CLI reports the daemon going away"
        );
        self.midway = sha256(&self.image);
        assert_ne!(self.midway, self.old, "the restore had not started");
        assert_ne!(self.midway, self.source, "not interrupted midway");
    }

    fn state_json(&self) -> String {
        std::fs::read_to_string(self.d.dir.join("state.json")).unwrap()
    }

    /// Move the backups away (`back`: put them back).
    fn hide_files(&self, back: bool) {
        for f in &self.files {
            let hidden = f.with_extension("hidden");
            let (from, to) = if back { (&hidden, f) } else { (f, &hidden) };
            std::fs::rename(from, to).unwrap();
        }
    }

    /// `dst` must be offline, its reason naming the commands to finish or abandon the restore.
    fn assert_offline(&self) -> String {
        let state = volume(&self.d, "dst")["state"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(state.starts_with("offline: "), "{state}");
        let again = format!("fss restore {} dst", self.file_list());
        assert!(state.contains(&again), "'{state}' does not say '{again}'");
        assert!(state.contains("fss restore --abandon dst"), "{state}");
        assert!(
            !self.d.dir.join("dev").join("dst").exists(),
            "served by FUSE"
        );
        let e = fails(&self.d, &["checksum", "dst"]);
        assert!(e.contains("no volume or snapshot named 'dst'"), "{e}");
        let e = fails(&self.d, &["snapshot", "create", "dst", "x"]);
        assert!(e.contains("unfinished restore"), "{e}");
        assert_eq!(sha256(&self.image), self.midway, "nothing wrote to it");
        state
    }

    fn file_list(&self) -> String {
        let names: Vec<&str> = self.files.iter().map(|f| s(f)).collect();
        names.join(" ")
    }
}

#[test]
fn a_restore_killed_midway_is_finished_at_the_next_start() {
    let mut t = Interrupted::new(20, false);
    t.d.restart();
    assert_eq!(volume(&t.d, "dst")["state"], "online");
    assert_eq!(checksum(&t.d, "dst"), t.source, "served half restored");
    assert_eq!(sha256(&t.image), t.source);
    let log = t.d.log();
    let tail = &log[log.rfind("resuming the restore of volume dst").expect(&log)..];
    let done = tail
        .find("finished the interrupted restore of volume dst")
        .expect(tail);
    for serving in ["NBD server listening", "serving the FUSE directory"] {
        assert!(
            tail.find(serving).is_some_and(|i| i > done),
            "served before the restore was finished: {tail}"
        );
    }
    assert!(!t.state_json().contains("restores"));
    // Served again, and a further restart changes nothing.
    qemu_io(&t.d, "dst", &["write -P 0x55 0 4k"]);
    let now = checksum(&t.d, "dst");
    t.d.restart();
    assert_eq!(checksum(&t.d, "dst"), now);
    let log = t.d.log();
    assert_eq!(
        log.matches("resuming the restore of volume dst").count(),
        1,
        "{log}"
    );
}

#[test]
fn without_its_backups_an_interrupted_restore_leaves_the_volume_offline_until_run_again() {
    let mut t = Interrupted::new(20, false);
    t.hide_files(false);
    t.d.restart();
    t.assert_offline();
    let e = fails(&t.d, &["restore", "--abandon", "src"]);
    assert!(e.contains("no unfinished restore"), "{e}");
    // The same offline state after a second start.
    t.d.restart();
    t.assert_offline();
    // Run again with the backups back: finished, served, exact.
    t.hide_files(true);
    let o = t.d.ok(&["restore", s(&t.files[0]), "dst"]);
    assert!(o.contains("onto volume 'dst'"), "{o}");
    assert_eq!(volume(&t.d, "dst")["state"], "online");
    assert_eq!(checksum(&t.d, "dst"), t.source);
    assert!(!t.state_json().contains("restores"));
}

#[test]
fn an_interrupted_restore_can_be_abandoned_and_says_the_volume_is_partial() {
    let mut t = Interrupted::new(20, false);
    t.hide_files(false);
    t.d.restart();
    t.assert_offline();
    let o = t.d.ok(&["restore", "--abandon", "dst"]);
    assert!(o.contains("partial"), "{o}");
    assert!(
        o.contains("abandoned the unfinished restore onto volume 'dst'"),
        "{o}"
    );
    assert_eq!(volume(&t.d, "dst")["state"], "online");
    assert_eq!(checksum(&t.d, "dst"), t.midway, "served as it was left");
    assert_ne!(t.midway, t.old);
    assert!(!t.state_json().contains("restores"));
    let e = fails(&t.d, &["restore", "--abandon", "dst"]);
    assert!(e.contains("no unfinished restore"), "{e}");
    t.d.restart();
    assert_eq!(volume(&t.d, "dst")["state"], "online");
    assert_eq!(checksum(&t.d, "dst"), t.midway);
}

#[test]
fn a_chain_restore_killed_during_the_incremental_is_finished_at_the_next_start() {
    // 60 data records in the full backup, 10 in the incremental: halted 3 into the latter.
    let mut t = Interrupted::new(63, true);
    let image = std::fs::read(&t.image).unwrap();
    let at = |mib: u64| image[usize::try_from(mib * MIB).unwrap()];
    assert_eq!(at(0), 0x21, "the incremental had started");
    assert_eq!(at(30), 0x11, "the incremental had not finished");
    drop(image);
    // Without the incremental: offline, naming both files.
    std::fs::rename(&t.files[1], t.files[1].with_extension("hidden")).unwrap();
    t.d.restart();
    let state = volume(&t.d, "dst")["state"].as_str().unwrap().to_string();
    assert!(state.starts_with("offline: "), "{state}");
    assert!(state.contains(s(&t.files[1])), "{state}");
    assert_ne!(sha256(&t.image), t.source);
    // With it back: finished at the next start.
    std::fs::rename(t.files[1].with_extension("hidden"), &t.files[1]).unwrap();
    t.d.restart();
    assert_eq!(volume(&t.d, "dst")["state"], "online");
    assert_eq!(checksum(&t.d, "dst"), t.source);
    assert_eq!(sha256(&t.image), t.source);
    assert!(!t.state_json().contains("restores"));
}

#[test]
fn a_volume_removed_after_an_interrupted_restore_forgets_it() {
    let mut t = Interrupted::new(20, false);
    assert!(t.state_json().contains("\"restores\""), "not recorded");
    t.hide_files(false);
    t.d.restart();
    t.assert_offline();
    t.d.ok(&["volume", "remove", "dst"]);
    assert!(!t.state_json().contains("restores"));
    // Added again (the user's choice), it is served as it is; no restore is resumed.
    t.hide_files(true);
    t.d.ok(&["volume", "add", "dst", "--device", s(&t.image)]);
    t.d.restart();
    assert_eq!(volume(&t.d, "dst")["state"], "online");
    assert_eq!(checksum(&t.d, "dst"), t.midway);
    assert!(!t.d.log().contains("resuming the restore"));
}

#[test]
fn a_restore_that_fails_midway_leaves_the_volume_offline_until_run_again() {
    let t = Interrupted::prepare(None, false);
    let mut bytes = std::fs::read(&t.files[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    let damaged = t.files[0].with_extension("damaged");
    std::fs::write(&damaged, &bytes).unwrap();
    let e = fails(&t.d, &["restore", s(&damaged), "dst"]);
    assert!(e.contains("failed midway") && e.contains("checksum"), "{e}");
    assert!(e.contains("fss restore --abandon dst"), "{e}");
    let state = volume(&t.d, "dst")["state"].as_str().unwrap().to_string();
    assert!(
        state.contains(&format!("fss restore {} dst", s(&damaged))),
        "{state}"
    );
    let partial = sha256(&t.image);
    assert_ne!(partial, t.old);
    // Not served at the next start either (the damaged backup fails again).
    let mut d = t.d;
    d.restart();
    let state = volume(&d, "dst")["state"].as_str().unwrap().to_string();
    assert!(state.contains("failed again when resumed"), "{state}");
    // Run again with an intact backup: served, exact.
    d.ok(&["restore", s(&t.files[0]), "dst"]);
    assert_eq!(volume(&d, "dst")["state"], "online");
    assert_eq!(checksum(&d, "dst"), t.source);
}

#[test]
fn a_restore_refused_before_writing_leaves_the_volume_served_as_it_was() {
    let t = Interrupted::prepare(None, true);
    let e = fails(&t.d, &["restore", s(&t.files[1]), "dst"]);
    assert!(e.contains("a restore starts with a full backup"), "{e}");
    assert_eq!(volume(&t.d, "dst")["state"], "online");
    assert_eq!(checksum(&t.d, "dst"), t.old);
    assert!(!t.state_json().contains("restores"));
}
