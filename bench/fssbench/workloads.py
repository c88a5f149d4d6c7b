"""Workloads and samples: what fio and nbdcopy run, and how one sample is taken.

Every sample starts from a cold page cache (`evict`) and records the load average and the
server's CPU beside its figures: the machine is shared, and a ratio is only as good as the
two samples taken side by side.
"""

import json
import os
import random
import subprocess
import time

from .config import CLUSTER
from .util import die, loadavg, log, sh, ticks

# key -> (name in the table, fio arguments, unit of its figure)
WL = {
    "sw": ("seq write 1M", ["--rw=write", "--bs=1M"], "MB/s"),
    "rw": ("randwrite 4K", ["--rw=randwrite", "--bs=4k", "--norandommap"], "IOPS"),
    "sr": ("seq read 1M", ["--rw=read", "--bs=1M"], "MB/s"),
    "rr": ("randread 4K", ["--rw=randread", "--bs=4k", "--norandommap"], "IOPS"),
    # first overwrites (size-based, stopped after RUNTIME+RAMP; never wrap)
    "fs": ("1st overwrite seq 1M", ["--rw=write", "--bs=1M"], "MB/s"),
    "ff": ("1st overwrite 4K, each in a fresh 64K cluster", None, "IOPS"),
}


def wl_name(wl, qd):
    """The workload column of the table, e.g. `randwrite 4K, qd16`."""
    return f"{WL[wl][0]}, qd{qd}"


def order(items, rep):
    """Interleaving: alternate the order each round so no one always goes first."""
    return list(items) if rep % 2 == 0 else list(reversed(items))


def nbd_uri(export, sock):
    """An NBD URI over a unix socket: the only transport the bench uses."""
    return f"nbd+unix:///{export}?socket={sock}"


def warm(uri):
    """The same warm-up for every server: a 4 MiB-request read pass over 256 MiB
    (a fresh process page-faults its first large buffers; see peers.sh)."""
    sh(["fio", "--name=warmup", "--ioengine=nbd", f"--uri={uri}", "--rw=read",
        "--bs=4M", "--iodepth=4", "--size=256M", "--output=/dev/null"])


def fio_figures(j):
    """The figures of one fio job (its JSON): every direction (read, write, trim) summed,
    latency of the busiest."""
    ds = [j[k] for k in ("read", "write", "trim") if k in j]
    d = max(ds, key=lambda x: x["total_ios"])
    pct = d.get("clat_ns", {}).get("percentile", {})
    return {
        "MB/s": sum(x["bw_bytes"] for x in ds) / 1e6,
        "IOPS": sum(x["iops"] for x in ds),
        "ios": sum(x["total_ios"] for x in ds),
        "lat_p50_us": pct.get("50.000000", 0) / 1e3,
        "lat_p99_us": pct.get("99.000000", 0) / 1e3,
    }


class Sampler:
    """Takes samples and keeps them by key (`samples`), with the load seen at each."""

    def __init__(self, cfg, workdir, evict_paths):
        self.cfg = cfg
        self.w = workdir
        self.evict_paths = evict_paths  # shared list: cases append files they add
        self.samples = {}  # key -> [sample dict]
        self.loads = []
        self.nrun = 0
        self.clk = os.sysconf("SC_CLK_TCK")

    def evict(self):
        """Write back and drop the page cache of every file the servers use."""
        paths = list(self.evict_paths)
        for d in (self.w / "state" / "stores", self.w / "state6" / "stores",
                  self.w / "scratch"):
            if d.is_dir():
                paths += [f for f in d.iterdir() if f.is_file()]
        for p in paths:
            try:
                fd = os.open(p, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    def record(self, key, sample):
        """Append a sample: sample i of a key is round i, which the ratios rely on."""
        self.samples.setdefault(key, []).append(sample)

    def _start(self):
        """Cold cache, then note the load: the common start of every sample."""
        self.evict()
        la = loadavg()
        self.loads.append(la)
        return la

    def fio(self, key, pid, args, timed=True, jobs=1):
        """One fio sample, appended to `key`. pid: server to charge CPU to (or None).
        jobs > 1 only for setup writes (one NBD connection each, reported as a group)."""
        self.nrun += 1
        out = self.w / f"fio-{self.nrun}.json"
        argv = ["fio", f"--name={key.replace('/', '_')}", "--output-format=json",
                f"--output={out}", f"--numjobs={jobs}", "--group_reporting"] + args
        if timed:
            argv += ["--time_based", f"--runtime={int(self.cfg.runtime * 1000)}ms",
                     f"--ramp_time={int(self.cfg.ramp * 1000)}ms"]
        la = self._start()
        c0 = ticks(pid) if pid else 0
        t0 = time.monotonic()
        r = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        t1 = time.monotonic()
        c1 = ticks(pid) if pid else 0
        if r.returncode != 0 or not out.exists():
            die(f"fio {key} failed: {r.stdout[-1500:]} {r.stderr[-1500:]}")
        j = json.loads(out.read_text())["jobs"][0]
        if j["error"]:
            die(f"fio {key} reported error {j['error']}")
        s = fio_figures(j)
        s["server_cpu_pct"] = (None if not pid else
                               round((c1 - c0) / self.clk / (t1 - t0) * 100))
        s["load1"] = la
        s["wall_s"] = round(t1 - t0, 3)
        self.record(key, s)
        log(f"{key:<28} {s['MB/s']:8.1f} MB/s {s['IOPS']:9.0f} IOPS  "
            f"p99 {s['lat_p99_us']:7.0f} us  server-cpu {s['server_cpu_pct']}%")
        return s

    def nbdcopy(self, key, uri, pid):
        """A whole-device copy to `null:`: throughput of one reader over the device."""
        la = self._start()
        c0 = ticks(pid)
        t0 = time.monotonic()
        sh(["nbdcopy", uri, "null:"], timeout=600)
        dt = time.monotonic() - t0
        s = {"MB/s": self.cfg.size / dt / 1e6, "wall_s": round(dt, 3), "load1": la,
             "server_cpu_pct": round((ticks(pid) - c0) / self.clk / dt * 100)}
        self.record(key, s)
        log(f"{key:<28} {s['MB/s']:8.1f} MB/s (nbdcopy to null:, {dt:.2f} s)")

    def iolog(self):
        """4 KiB writes, one into each 64 KiB cluster of the device, random order (fio
        iolog replay, as peers.sh: fio's own random maps repeat or refuse)."""
        path = self.w / "fresh.iolog"
        if not path.exists():
            ncl = self.cfg.size // CLUSTER
            clusters = list(range(ncl))
            random.Random(1).shuffle(clusters)
            with open(path, "w") as f:
                f.write("fio version 2 iolog\nnbd add\nnbd open\n")
                for c in clusters:
                    f.write(f"nbd write {c * CLUSTER} 4096\n")
                f.write("nbd close\n")
        return path

    def first_args(self, wl, qd):
        """Size-based first-overwrite job, stopped after RUNTIME+RAMP (each block once)."""
        cfg = self.cfg
        cap = [f"--runtime={int((cfg.runtime + cfg.ramp) * 1000)}ms", f"--iodepth={qd}"]
        if wl == "fs":
            return WL["fs"][1] + [f"--size={cfg.size_mib}M"] + cap
        return [f"--read_iolog={self.iolog()}"] + cap
