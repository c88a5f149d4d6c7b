"""Cases 6 and 7, on a second daemon of their own (state6): snapshot creation time on
sparse volumes of 1 GiB to 1 TiB, daemon restart with 100k preserved clusters, and the
daemon's resident memory per volume, per snapshot and per preserved cluster (over 100k
clusters here, over 1M in case7_million). Memory is the serving process's, not the
supervisor's.

They share one setup (the volumes and the 100k-cluster snapshot), so either case number
runs both. Creation is timed on the control socket minus a `status` round trip, so
neither process start-up nor the protocol's own floor is in the figure.
"""

import json
import shutil
import statistics
import time

from .case7_million import case7_million
from .config import CLUSTER
from .servers import fss_env, start_fss
from .report import per_sample_ratios
from .util import die, log, mem_kib, sh
from .workloads import nbd_uri, order

SIZES = (("1 GiB", "s1g", 1 << 30), ("64 GiB", "s64g", 64 << 30), ("1 TiB", "s1t", 1 << 40))
KINDS = ("transient", "persistent")
N100K = 100_000


class Daemon:
    """The second daemon: its process and client, replaced on every restart."""

    def __init__(self, b, state):
        self.b = b
        self.state = state
        self.p, _, self.ctl = start_fss(b.procs, b.fss, "fss6", state)

    def restart(self):
        """SIGTERM, start again; returns (seconds to stop, seconds until `status`)."""
        self.ctl.close()
        self.b.s.evict()      # the fill's dirty pages are not the restart's cost
        stop = self.b.procs.stop(self.p)
        self.b.s.evict()
        self.p, ready, self.ctl = start_fss(self.b.procs, self.b.fss, "fss6", self.state)
        return stop, ready

    def pid(self):
        """The serving process (`fss serve` runs it under a supervisor), where the maps live."""
        return self.ctl("status")["pid"]

    def rss(self):
        return mem_kib(self.pid())


def memory_per_volume_and_snapshot(d):
    """Case 7's first figures: RSS after each volume, and per live snapshot of each kind
    on each, all held at once (a create-delete cycle would hand the next one the memory
    the last one freed)."""
    d.ctl("volume-remove", name="default")
    time.sleep(0.2)
    mem = {"empty": d.rss()}
    for label, name, size in SIZES:
        d.ctl("volume-create", name=name, size=size)
        time.sleep(0.2)
        mem[f"volume {label}"] = d.rss()
    held = []
    for kind in ("persistent", "transient"):
        for label, name, _ in SIZES:
            before = d.rss()
            sname = f"m-{kind}-{name}"
            d.ctl("snapshot-create", volume=name, name=sname, transient=kind == "transient")
            held.append(sname)
            after = d.rss()
            mem[f"snapshot {kind} on {label}"] = {
                "delta_kib": after["VmRSS"] - before["VmRSS"], **after}
    for sname in held:
        d.ctl("snapshot-delete", name=sname)
    return mem


def time_create_on_socket(b, ctl):
    """`snapshot-create` round trips, each beside a `status` one, in alternating order."""
    create = {}
    for t in range(b.cfg.snap_trials):
        for label, name, _ in order(SIZES, t):
            for kind in order(KINDS, t):
                _, floor = ctl.call("status")
                _, dt = ctl.call("snapshot-create", volume=name, name="c6",
                                 transient=kind == "transient")
                _, ddt = ctl.call("snapshot-delete", name="c6")
                c = create.setdefault(f"{kind} {label}", {"create_ms": [],
                                      "status_ms": [], "delete_ms": []})
                c["create_ms"].append(dt * 1e3)
                c["status_ms"].append(floor * 1e3)
                c["delete_ms"].append(ddt * 1e3)
    return create


def time_create_cli(b, ctl, state):
    """The same through the CLI (hyperfine), beside `fss status`; {} without hyperfine."""
    cli = {}
    if not shutil.which("hyperfine"):
        return cli
    for label, name, _ in SIZES:
        for kind in KINDS:
            extra = " --transient" if kind == "transient" else ""
            ctl("snapshot-create", volume=name, name="hf", transient=kind == "transient")
            out = b.w / "hf.json"
            sh(["hyperfine", "-N", "--style=none", "--runs", str(b.cfg.snap_trials),
                "--export-json", str(out),
                "--prepare", f"{b.fss} snapshot delete hf",
                f"{b.fss} snapshot create {name} hf{extra}",
                "--prepare", "true", f"{b.fss} status"], env=fss_env(state))
            ctl("snapshot-delete", name="hf")
            r = json.loads(out.read_text())["results"]
            cli[f"{kind} {label}"] = {"create_ms": [x * 1e3 for x in r[0]["times"]],
                                      "status_ms": [x * 1e3 for x in r[1]["times"]]}
    return cli


def net_ms(c):
    """Creation minus the `status` round trip beside it, trial by trial."""
    return [a - b for a, b in zip(c["create_ms"], c["status_ms"])]


def create_rows(b, create, cli):
    """Case 6's creation rows: daemon time ÷ the 1 GiB one, and the CLI's for reference."""
    med = statistics.median
    for kind in KINDS:
        bnet = net_ms(create[f"{kind} 1 GiB"])
        for label, _, _ in SIZES:
            net = net_ms(create[f"{kind} {label}"])
            b.rows.add_values(6, f"snapshot create, {kind}: daemon (control RTT − status RTT)",
                              f"{label} sparse volume", "ms", net, bnet,
                              per_sample_ratios(net, bnet, positive_only=True),
                              goal=("<", 10.0) if kind == "persistent" else None,
                              note="ratio ÷ 1 GiB",
                              subject=f"{kind} {label}", baseline=f"{kind} 1 GiB")
            h = cli.get(f"{kind} {label}")
            if h:
                b.rows.add_values(6, f"snapshot create, {kind}: CLI wall − `fss status` "
                                  "wall (hyperfine medians)",
                                  f"{label} sparse volume", "ms",
                                  [med(h["create_ms"]) - med(h["status_ms"])],
                                  [med(h["status_ms"])], note="baseline: `fss status`")


def fill_100k(b, d, u):
    """100k preserved clusters: 4 KiB writes at a 64 KiB stride, in two halves (the second
    half's growth is the cost per cluster without the fixed costs the first I/O brings:
    worker buffers, allocator arenas). Returns the RSS after each half and the snapshot's
    counters, checked."""
    n = N100K
    halves = []
    for h in range(2):
        b.s.fio(f"c7/fill-100k-{h}", d.pid(), [
            "--ioengine=nbd", f"--uri={u}", "--rw=write:60k", "--bs=4k",
            "--iodepth=16", f"--offset={h * (n // 8) * CLUSTER}",
            f"--size={n // 8 * CLUSTER}", f"--offset_increment={n // 4 * CLUSTER}",
            f"--io_size={n // 8 * 4096}"], timed=False, jobs=4)
        time.sleep(0.2)
        halves.append(d.rss())
    info = {k: v for k, v in d.ctl("snapshot-info", name="p100k").items()
            if k in ("clusters_preserved", "blocks_preserved", "store_used")}
    if info["clusters_preserved"] != n:
        die(f"100k setup: {info['clusters_preserved']} clusters preserved")
    return halves, info


def restarts(b, d, label, restart):
    """`restarts` daemon restarts, each timed and its RSS noted, into restart[label]."""
    r = restart[label]
    for _ in range(b.cfg.restarts):
        stop, ready = d.restart()
        time.sleep(0.1)
        r["stop_s"].append(stop)
        r["ready_s"].append(ready)
        r["rss_kib"].append(d.rss().get("VmRSS"))
        log(f"restart ({label}): stop {stop * 1e3:.0f} ms, "
            f"ready {ready * 1e3:.0f} ms, RSS {r['rss_kib'][-1]} KiB")


def restart_rows(b, e, f):
    """Case 6's restart rows: with 100k preserved clusters ÷ with an empty snapshot."""
    total_f = [a + c for a, c in zip(f["stop_s"], f["ready_s"])]
    total_e = [a + c for a, c in zip(e["stop_s"], e["ready_s"])]
    b.rows.add_values(6, "daemon restart: SIGTERM → `status` answers",
                      "snapshot holding 100k preserved clusters", "ms",
                      [x * 1e3 for x in total_f], [x * 1e3 for x in total_e],
                      per_sample_ratios(total_f, total_e),
                      note="baseline: same snapshot, empty", subject="restart 100k",
                      baseline="restart empty")
    b.rows.add_values(6, "  of which start → `status` answers",
                      "snapshot holding 100k preserved clusters", "ms",
                      [x * 1e3 for x in f["ready_s"]], [x * 1e3 for x in e["ready_s"]],
                      per_sample_ratios(f["ready_s"], e["ready_s"]))


def memory_rows(b, mem, halves, restart, peak_kib):
    """Case 7's rows: RSS added per volume, per snapshot, per preserved cluster; peak."""
    n = N100K
    before, after = mem["100k: before fill"], mem["100k: after fill"]
    e, f = restart["empty"], restart["100k"]
    base = mem["empty"]["VmRSS"]
    for label, _, _ in SIZES:
        b.rows.add_values(7, "daemon RSS added per volume, no snapshot", label, "KiB",
                          [mem[f"volume {label}"]["VmRSS"] - base])
        base = mem[f"volume {label}"]["VmRSS"]
    for kind in KINDS:
        for label, _, _ in SIZES:
            b.rows.add_values(7, f"daemon RSS per live {kind} snapshot", label, "KiB",
                              [mem[f"snapshot {kind} on {label}"]["delta_kib"]])
    b.rows.add_values(7, "daemon RSS per preserved cluster, live", "100k clusters", "B",
                      [(after["VmRSS"] - before["VmRSS"]) * 1024 / n])
    b.rows.add_values(7, "daemon RSS per preserved cluster, live, 50k → 100k",
                      "second 50k clusters", "B",
                      [(halves[1]["VmRSS"] - halves[0]["VmRSS"]) * 1024 / (n // 2)])
    b.rows.add_values(7, "daemon RSS per preserved cluster, after restart",
                      "100k clusters", "B",
                      [(x - y) * 1024 / n for x, y in zip(f["rss_kib"], e["rss_kib"])])
    b.rows.add_values(7, "daemon peak RSS (VmHWM), main daemon, whole run", "", "KiB",
                      [peak_kib])


def case6_creation(b, d, state):
    """Snapshot creation timings (socket and CLI) and their rows."""
    create = time_create_on_socket(b, d.ctl)
    cli = time_create_cli(b, d.ctl, state)
    b.extra["case6_snapshot_create"] = {"control_socket": create, "cli_hyperfine": cli}
    create_rows(b, create, cli)


def case67_restart_and_memory(b, d, mem):
    """The 100k-cluster snapshot on a scratch ext4 (nodiscard; 2 x 100k-extent files take
    minutes to delete on a `discard` mount), restarts around its fill, and case 7's rows."""
    mnt = b.scratch_fs()
    d.ctl("volume-create", name="c100k", size=8 << 30, image=str(mnt / "c100k.img"))
    d.ctl("snapshot-create", volume="c100k", name="p100k", transient=False, store=str(mnt))
    u = nbd_uri("c100k", d.ctl("status")["nbd_socket"])
    restart = {"empty": {"stop_s": [], "ready_s": [], "rss_kib": []},
               "100k": {"stop_s": [], "ready_s": [], "rss_kib": []}}
    restarts(b, d, "empty", restart)
    before = d.rss()
    halves, info = fill_100k(b, d, u)
    time.sleep(0.2)
    after = d.rss()
    restarts(b, d, "100k", restart)
    b.extra["case6_restart"] = dict(restart, snapshot=info)
    e, f = restart["empty"], restart["100k"]
    restart_rows(b, e, f)
    mem.update({"100k: before fill": before, "100k: after fill": after})
    b.extra["case7_memory_kib"] = mem
    b.extra["case7_restart_rss_kib"] = {"empty": e["rss_kib"], "100k": f["rss_kib"]}
    peak = mem_kib(b.ctl("status")["pid"]).get("VmHWM", 0)
    memory_rows(b, mem, halves, restart, peak)
    d.ctl("snapshot-delete", name="p100k")
    d.ctl("volume-remove", name="c100k")


def case67(b):
    """Cases 6 and 7 on a second daemon, stopped (and its scratch fs dropped) at the end."""
    log("cases 6 and 7: snapshot creation, restart, memory (a second daemon)")
    st6 = b.w / "state6"
    st6.mkdir()
    d = Daemon(b, st6)
    try:
        mem = memory_per_volume_and_snapshot(d)
        case6_creation(b, d, st6)
        case67_restart_and_memory(b, d, mem)
        b.drop_scratch_fs()
        case7_million(b, d, restarts)
    finally:
        d.ctl.close()
        b.procs.stop(d.p)
        b.drop_scratch_fs()
