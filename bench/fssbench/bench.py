"""The run: its work directory, the main fss daemon, the cases in order, and clean-up.

`Bench` is the context every case receives: configuration, the sampler, the rows, the
processes and loop devices to undo, and the main daemon's control client. It owns
everything that must be undone, so `cleanup` can undo it in every outcome.
"""

import datetime
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from . import report, servers
from .cases import case1, case2, case3, case4, case5, case8
from .case67 import case67
from .config import PEERS_SH, RESULTS, REPO
from .util import T0, Fatal, Procs, die, loadavg, log, mem_kib, sh
from .workloads import Sampler, nbd_uri, warm

# the order cases run in: 6 and 7 last, they restart a daemon and fill a scratch fs
PLAN = [(1, case1), (2, case2), (4, case4), (3, case3), (5, case5), (8, case8),
        (6, case67)]


def workdir_base(cfg):
    """Check `BASE` is local disk with 14 GiB free (the images, case 7's 6 GiB scratch
    file system); returns its file system type."""
    base = cfg.base
    base.mkdir(parents=True, exist_ok=True)
    fstype = sh(["findmnt", "-n", "-o", "FSTYPE", "-T", str(base)]).split()[0]
    if fstype in ("tmpfs", "ramfs", "overlay"):
        die(f"{base} is on {fstype}; set BASE to a directory on local disk")
    st = os.statvfs(base)
    if st.f_bavail * st.f_frsize < 14 << 30:
        die(f"need 14 GiB free under {base}")
    return fstype


class Bench:
    """One run's state; the cases (cases.py, case67.py) read and extend it."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.fstype = workdir_base(cfg)
        self.w = Path(tempfile.mkdtemp(prefix="fss-bench.", dir=cfg.base))
        self.procs = Procs(self.w)
        self.loops = []          # loop devices made here (case 8)
        self.scratch_loops = []  # loop devices under the scratch file system (case 6)
        self.scratch_mnt = None
        self.img = self.w / "origin.raw"
        self.img2 = self.w / "origin2.raw"
        self.state = self.w / "state"
        self.s = Sampler(cfg, self.w, [self.img, self.img2])
        self.rows = report.Rows()
        self.extra = {}          # other figures for the JSON
        self.skipped = []
        self.errors = []
        self.mem_timeline = []
        self.pf = self.ctl = None

    # ------------------------------------------------------------ cleanup
    def cleanup(self):
        """Undo everything: loops, processes, mounts under the work dir, the work dir."""
        t = time.monotonic()
        for dev in reversed(self.loops):          # case 8: loops over fss files first
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        self.loops.clear()
        self.procs.stop_all()
        # the scratch file system, and a FUSE mount a daemon of ours left behind (killed)
        for mp in self._mounts_under_workdir():
            subprocess.run(["umount", "-l", mp], capture_output=True)
        self._detach_scratch_loops()
        t1 = time.monotonic()
        if self.cfg.keep:
            log(f"kept {self.w}")
        else:
            shutil.rmtree(self.w, ignore_errors=True)
        log(f"cleaned up: processes stopped in {t1 - t:.1f} s, files removed in "
            f"{time.monotonic() - t1:.1f} s")

    def _mounts_under_workdir(self):
        try:
            mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        except OSError:
            mounts = []
        mps = [m.split()[4].replace("\\040", " ") for m in mounts]
        return [mp for mp in mps if mp.startswith(str(self.w) + "/")]

    def _detach_scratch_loops(self):
        for dev in self.scratch_loops:
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        self.scratch_loops.clear()

    # ------------------------------------------------------------ shared by cases
    def mem_note(self, what, pid):
        """The main daemon's memory after a case: `main_daemon_memory_kib` in the JSON."""
        self.mem_timeline.append({"after": what, **mem_kib(pid)})

    def timed_ctl(self, op, **args):
        """A control request whose duration is recorded (and logged when slow)."""
        _, dt = self.ctl.call(op, **args)
        self.extra.setdefault("main_daemon_control_ms", {}).setdefault(op, []).append(
            round(dt * 1e3, 2))
        if dt > 1:
            log(f"slow {op} {args}: {dt:.1f} s (load {loadavg():.1f})")

    def snap(self, volume, name, transient):
        self.timed_ctl("snapshot-create", volume=volume, name=name, transient=transient)

    def unsnap(self, *names):
        for n in names:
            self.timed_ctl("snapshot-delete", name=n)

    def snap_info(self, name):
        """The counters of a snapshot that the JSON keeps after a case."""
        i = self.ctl("snapshot-info", name=name)
        return {k: i.get(k) for k in ("kind", "state", "clusters_preserved",
                                        "blocks_preserved", "store_used", "cow_calls",
                                        "busy_waits")}

    def fss_cli(self, state, *args):
        return sh([str(self.fss), *args], env=servers.fss_env(state))

    def wait_nbd(self, uri, p):
        servers.wait_nbd(self.procs, uri, p)

    def scratch_fs(self, gib=3):
        """An ext4 of `gib` GiB on a loop device over one file in the work dir (made anew
        after `drop_scratch_fs`). The file is written with zeros first, so that it is a few
        large extents: preallocated, the 4 KiB pre-images written at a 64 KiB stride inside
        would split it into millions of extents, which take minutes to delete on a
        `discard` mount."""
        img, mnt = self.w / "scratch.ext4", self.w / "scratch"
        sh(["dd", "if=/dev/zero", f"of={img}", "bs=4M", f"count={gib * 256}", "oflag=direct",
            "conv=notrunc", "status=none"])
        dev = sh(["losetup", "-f", "--show", str(img)]).strip()
        self.scratch_loops.append(dev)
        sh(["mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
            dev])
        mnt.mkdir(exist_ok=True)
        sh(["mount", "-o", "nodiscard", dev, str(mnt)])
        if img not in self.s.evict_paths:
            self.s.evict_paths.append(img)
        self.scratch_mnt = mnt
        return mnt

    def drop_scratch_fs(self):
        """Unmount the scratch fs early (its loop device and extents go with it)."""
        if self.scratch_mnt is None:
            return
        subprocess.run(["umount", str(self.scratch_mnt)], capture_output=True)
        self._detach_scratch_loops()
        self.scratch_mnt = None

    def losetup(self, path):
        """A direct-I/O loop device over `path`, detached by cleanup if a case fails."""
        dev = sh(["losetup", "-f", "--show", "--direct-io=on", str(path)]).strip()
        self.loops.append(dev)
        return dev

    def serving_pid(self):
        """The process that serves I/O (`fss serve` runs it under a supervisor, whose pid
        `self.pf` is): where CPU time and memory go."""
        return self.ctl("status")["pid"]

    # ------------------------------------------------------------ setup
    def start_main_fss(self):
        """The daemon most cases measure: `vol` and `vol2` on the two images, warmed."""
        self.state.mkdir()
        self.pf, _, self.ctl = servers.start_fss(self.procs, self.fss, "fss", self.state)
        self.ctl("volume-remove", name="default")   # the one it makes when unconfigured
        self.ctl("volume-add", name="vol", device=str(self.img))
        self.ctl("volume-add", name="vol2", device=str(self.img2))
        st = self.ctl("status")
        self.fsock = st["nbd_socket"]
        self.u_vol = nbd_uri("vol", self.fsock)
        self.u_vol2 = nbd_uri("vol2", self.fsock)
        self.wait_nbd(self.u_vol, self.pf)
        warm(self.u_vol)
        warm(self.u_vol2)
        self.mem_note("start, 2 volumes, warm-up", self.serving_pid())

    def setup(self):
        """Versions, the binary, the two pre-filled images, the main daemon."""
        cfg = self.cfg
        self.extra["started"] = datetime.datetime.now().astimezone().isoformat(
            timespec="seconds")
        self.extra["loadavg_start"] = Path("/proc/loadavg").read_text().split()[:3]
        self.extra["versions"] = servers.versions()
        log(f"work dir {self.w} ({self.fstype}); {cfg.reps} x ({cfg.runtime:g} s + "
            f"{cfg.ramp:g} s ramp) per time-based sample; peers as in {PEERS_SH}"
            f"{'' if PEERS_SH.exists() else ' (not found)'}")
        self.fss, self.extra["fss"] = servers.build_fss(cfg, self.w)
        servers.prefill(self.img, cfg.size_mib)
        servers.prefill(self.img2, cfg.size_mib)
        log(f"prefilled 2 x {cfg.size_mib} MiB")
        self.start_main_fss()

    # ------------------------------------------------------------ main
    def run_cases(self):
        """Each case in turn; a failed case is an error row, a dead daemon ends the run."""
        for n, fn in PLAN:
            if not self.cfg.wants(n):
                continue
            try:
                fn(self)
            except Fatal as e:
                self.errors.append(f"case {n}: {e}")
                log(f"case {n} failed: {e}")
                if self.pf.poll() is not None:
                    raise

    def run(self):
        """Set up, run the cases, print the table, write the JSON; 1 if any case failed."""
        self.setup()
        self.run_cases()
        self.extra["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        self.mem_note("end", self.serving_pid())
        self.rows.finish()
        self.extra["duration_s"] = round(time.monotonic() - T0, 1)
        notes = [f"- error: {e}" for e in self.errors] + [f"- {s}" for s in self.skipped]
        table = report.table(self.cfg, self.rows.rows, self.extra, self.s.loads,
                             self.fstype, notes)
        print(table, flush=True)
        out = self.write_results(table)
        print(f"\nEvery figure: {out.relative_to(REPO)}  (total {self.extra['duration_s']:.0f} s)")
        return 1 if self.errors else 0

    def write_results(self, table):
        """bench/results/<timestamp>.json: every figure of the run."""
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = RESULTS / f"{stamp}.json"
        doc = report.results_doc(self.cfg, self.extra,
                                 report.host_info(self.fstype, self.s.loads),
                                 self.rows.rows, self.s.samples, self.mem_timeline,
                                 self.skipped, self.errors, table)
        out.write_text(json.dumps(doc, indent=1))
        return out
