"""Case 7's memory over a 1M-cluster fill, on case 6/7's daemon: the serving process's RSS
per preserved cluster, as the slope of RSS over the fill (live) and as the difference to an
empty snapshot after a restart.

The fill goes through the daemon's write path with 4 KiB discards at a 64 KiB stride: a
discard preserves its pre-image exactly as a write does, and leaves the (sparse) volume
sparse, so the fill writes only the store (4 GiB of pre-images, 1M log records).
"""

import time

from .config import CLUSTER
from .report import slope
from .util import die, log
from .workloads import nbd_uri

N1M = 1_000_000
STEPS = 8          # RSS read after each eighth; the slope is fitted over these points
JOBS = 4           # fio jobs, one NBD connection each, each on its own quarter
VOLUME = 1 << 36   # 64 GiB: 1,048,576 clusters of 64 KiB


def fill_step(b, d, u, step):
    """Preserve 1M / STEPS more clusters: every job discards 4 KiB at the start of each
    cluster of the next 1/STEPS of its quarter."""
    per_job = N1M // (JOBS * STEPS)
    b.s.fio(f"c7/fill-1m-{step}", d.pid(), [
        "--ioengine=nbd", f"--uri={u}", "--rw=trim:60k", "--bs=4k", "--iodepth=16",
        f"--offset={step * per_job * CLUSTER}", f"--size={per_job * CLUSTER}",
        f"--offset_increment={N1M // JOBS * CLUSTER}", f"--io_size={per_job * 4096}"],
        timed=False, jobs=JOBS)


def fill(b, d, u):
    """The whole fill; returns [(clusters preserved, RSS KiB)] after each step, checked
    against the snapshot's own count."""
    points = []
    t = time.monotonic()
    for step in range(STEPS):
        fill_step(b, d, u, step)
        time.sleep(0.2)
        n = d.ctl("snapshot-info", name="p1m")["clusters_preserved"]
        if n != (step + 1) * N1M // STEPS:
            die(f"1M fill, step {step}: {n} clusters preserved")
        points.append((n, d.rss()["VmRSS"]))
        log(f"1M fill: {n} clusters, RSS {points[-1][1]} KiB")
    log(f"1M fill took {time.monotonic() - t:.0f} s")
    return points


def rows(b, points, restart):
    """The two rows, goal <= 16 B per cluster (DESIGN decision 4)."""
    per = slope([n for n, _ in points], [kib * 1024 for _, kib in points])
    b.rows.add_values(7, "daemon RSS per preserved cluster, live, slope over 1M clusters",
                      f"{STEPS} points, {points[0][0]:,} → {points[-1][0]:,} clusters", "B",
                      [per], goal=("<=", 16.0), note="least-squares slope")
    e, f = restart["empty"]["rss_kib"], restart["1m"]["rss_kib"]
    b.rows.add_values(7, "daemon RSS per preserved cluster, after restart, 1M clusters",
                      "1M clusters vs the same snapshot empty", "B",
                      [(x - y) * 1024 / N1M for x, y in zip(f, e)], goal=("<=", 16.0))


def case7_million(b, d, restarts):
    """Volume and persistent snapshot on a scratch ext4 big enough for the store, restarts
    with the snapshot empty and full (`restarts` as case 6's), the fill, the rows."""
    mnt = b.scratch_fs(6)
    d.ctl("volume-create", name="c1m", size=VOLUME, image=str(mnt / "c1m.img"))
    d.ctl("snapshot-create", volume="c1m", name="p1m", transient=False, store=str(mnt))
    u = nbd_uri("c1m", d.ctl("status")["nbd_socket"])
    restart = {k: {"stop_s": [], "ready_s": [], "rss_kib": []} for k in ("empty", "1m")}
    restarts(b, d, "empty", restart)
    points = fill(b, d, u)
    restarts(b, d, "1m", restart)
    # the replay's own peak: records and entries it frees (and trims) once the map is built
    hwm = d.rss().get("VmHWM")
    log(f"after restart with 1M clusters: peak RSS (VmHWM) {hwm} KiB")
    b.extra["case7_million"] = {"fill_rss_kib": points, "restart": restart,
                                "restart_hwm_kib": hwm}
    rows(b, points, restart)
    d.ctl("snapshot-delete", name="p1m")
    d.ctl("volume-remove", name="c1m")
