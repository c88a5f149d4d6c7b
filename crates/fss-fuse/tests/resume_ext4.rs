//! ext4 on a loop device (direct I/O) over a FUSE file survives kill -9 of the process
//! serving the FUSE connection: a writer that writes and fsyncs files throughout never sees
//! an error, every file reads back, `e2fsck -fn` is clean, and the kernel logs no error for
//! the loop device.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::child::{catalog_over, serve_if_helper, AbortOnPanic, DetachLast, Helper, Serving};
use common::{
    disk_tempdir, is_mount_point, output, require_commands, run, serial, FsMount, LoopDev, Pattern,
};
use fss_fuse::{FuseFrontEnd, Hooks, Start};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MIB: u64 = 1 << 20;
/// Serving processes killed with -9 while the writer runs.
const KILLS: usize = 4;

/// Not a test of its own: the serving process the test kills.
#[test]
fn helper_child() {
    serve_if_helper();
}

/// The files the writer made: (name, seed, length), every one fsynced.
type Written = Vec<(String, u64, usize)>;

/// Bytes of files the writer keeps at most: the oldest go first, so that a fast machine
/// churns the 256 MiB file system instead of filling it.
const KEEP_BYTES: usize = 64 << 20;

/// Write and fsync files until told to stop, removing the oldest ones beyond
/// [`KEEP_BYTES`]; the first error ends it. Returns the files still there and how many
/// were written in all.
fn writer(dir: PathBuf, stop: Arc<AtomicBool>) -> std::io::Result<(Written, u64)> {
    let mut written = std::collections::VecDeque::new();
    let mut kept = 0usize;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let len = 4096 + usize::try_from(i * 7919 % (256 << 10)).unwrap();
        let name = format!("f{i:05}");
        let mut f = std::fs::File::create_new(dir.join(&name))?;
        f.write_all(&Pattern::new(i).bytes(len))?;
        f.sync_all()?;
        written.push_back((name, i, len));
        kept += len;
        while kept > KEEP_BYTES {
            let Some((old, _, old_len)) = written.pop_front() else {
                break;
            };
            std::fs::remove_file(dir.join(old))?;
            kept -= old_len;
        }
        i += 1;
    }
    Ok((written.into(), i))
}

/// Write a line to the kernel log, to find what the kernel logged after it.
fn kernel_log_mark() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mark = format!("fss-fuse-test resume_ext4 {} {nanos}", std::process::id());
    std::fs::write("/dev/kmsg", format!("{mark}\n")).expect("write /dev/kmsg");
    mark
}

/// Kernel log lines after `mark` that report an error on `dev` (`/dev/loopN`).
fn kernel_errors_since(mark: &str, dev: &str) -> Vec<String> {
    let name = dev.trim_start_matches("/dev/");
    let log = run("dmesg", &[]);
    let after = log.lines().skip_while(|l| !l.contains(mark)).skip(1);
    after
        .filter(|l| {
            l.split(|c: char| !c.is_ascii_alphanumeric())
                .any(|w| w == name)
        })
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("error") || l.contains("data loss") || l.contains("abort")
        })
        .map(str::to_string)
        .collect()
}

fn check_files(dir: &Path, written: &Written) {
    for (name, seed, len) in written {
        let got = std::fs::read(dir.join(name)).unwrap();
        assert!(got == Pattern::new(*seed).bytes(*len), "{name} differs");
    }
}

/// Kill -9 the serving process [`KILLS`] times at growing intervals, each time starting the
/// next one on the same connection; after the last kill, this process serves.
fn kill_in_turn(fd: &OwnedFd, s: &Serving, mut helper: Helper) -> FuseFrontEnd {
    for kill in 1..=KILLS {
        std::thread::sleep(Duration::from_millis(200 + 100 * kill as u64));
        helper.kill();
        // The writer's requests wait in the kernel meanwhile.
        std::thread::sleep(Duration::from_millis(50));
        if kill == KILLS {
            break;
        }
        helper = Helper::spawn("helper_child", fd, s, Start::Resume, None);
    }
    FuseFrontEnd::serve_connection(
        fd.try_clone().unwrap(),
        &s.dir,
        catalog_over(&s.image, None),
        Hooks::default(),
        &s.session,
        Start::Resume,
    )
    .unwrap()
}

#[test]
fn ext4_on_loop_survives_kill_9_of_the_server() {
    let _g = serial();
    require_commands(&["losetup", "mkfs.ext4", "e2fsck", "dmesg", "mount", "umount"]);
    let tmp = disk_tempdir();
    let s = Serving {
        dir: tmp.path().join("dev"),
        image: tmp.path().join("vol.img"),
        session: tmp.path().join("fuse-session.json"),
    };
    std::fs::File::create(&s.image)
        .unwrap()
        .set_len(256 * MIB)
        .unwrap();
    let mark = kernel_log_mark();

    let fd = fss_fuse::mount_connection(&s.dir).unwrap();
    let _detach = DetachLast(s.dir.clone());
    let helper = Helper::spawn("helper_child", &fd, &s, Start::Fresh, None);
    let lo = LoopDev::attach(&s.dir.join("vol"), &["--direct-io=on"]);
    assert!(lo.direct_io(), "the loop device does direct I/O");
    run("mkfs.ext4", &["-q", "-F", &lo.dev]);
    let mnt_dir = tmp.path().join("mnt");
    let mnt = FsMount::mount(&lo.dev, &mnt_dir, "");
    let _abort = AbortOnPanic(s.dir.clone());

    let stop = Arc::new(AtomicBool::new(false));
    let w = {
        let (dir, stop) = (mnt_dir.clone(), Arc::clone(&stop));
        std::thread::spawn(move || writer(dir, stop))
    };
    let fuse = kill_in_turn(&fd, &s, helper);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    assert!(
        common::wait_until(Duration::from_secs(30), || w.is_finished()),
        "the writer hangs: a request of a killed server was never answered"
    );
    let (written, total) = w.join().unwrap().expect("the writer never sees an error");
    assert!(total > 10, "the writer wrote {total} files");
    assert_eq!(fuse.open_files(), vec![("vol".to_string(), 1)]);

    // Read everything back from the device, not the page cache: mount again.
    drop(mnt);
    let mnt = FsMount::mount(&lo.dev, &mnt_dir, "ro");
    check_files(&mnt_dir, &written);
    drop(mnt);
    let fsck = output("e2fsck", &["-fn", &lo.dev]);
    assert!(
        fsck.status.success(),
        "e2fsck -fn: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let dev = lo.dev.clone();
    drop(lo);
    let errors = kernel_errors_since(&mark, &dev);
    assert!(
        errors.is_empty(),
        "the kernel logged errors for {dev}:\n{}",
        errors.join("\n")
    );
    println!("{total} files written and fsynced across {KILLS} kills of the server");
    fuse.detach().unwrap();
    fss_fuse::unmount(&s.dir).unwrap();
    assert!(!is_mount_point(&s.dir));
}
