"""Cases 1-5 and 8: throughput of fss and its peers, each a ratio to a baseline measured
in the same run, round by round, the order of subject and baseline reversed every round.

Each case is a function of the `Bench` context: it takes samples through `b.s`, adds its
rows to `b.rows`, and stops what it started (peers, snapshots, loop devices) in `finally`.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

from .config import CLUSTER, QDS
from .servers import (CBW_DELETE, QMP, cbw_create, start_nbdkit, start_qemu_nbd,
                      start_qsd)
from .util import die, log, sh
from .workloads import WL, nbd_uri, order, warm, wl_name

RW4 = ("sw", "rw", "sr", "rr")
C1_NAMES = {"F": "fss volume (no snapshot)", "R": "local fio libaio O_DIRECT (disk limit)",
            "At": "qemu-nbd aio=threads", "B": "nbdkit file cache=none"}


# ------------------------------------------------------------ case 1
def c1_servers(b):
    """The NBD peers of case 1 (A always; A' and B when `PEERS` names them), warmed."""
    servers = {"A": start_qemu_nbd(b.procs, "qemu-nbd", b.w / "a.sock", b.img, "native")}
    if "At" in b.cfg.peers:
        servers["At"] = start_qemu_nbd(b.procs, "qemu-nbd-threads", b.w / "at.sock", b.img,
                                       "threads")
    if "B" in b.cfg.peers:
        servers["B"] = start_nbdkit(b.procs, b.w / "b.sock", b.img)
    for p, u in servers.values():
        b.wait_nbd(u, p)
        warm(u)
    return servers


def c1_round(b, servers, rep):
    """One round of case 1: every workload on every server, then whole-device copies."""
    cfg = b.cfg
    names = (["R"] if "R" in cfg.peers else []) + list(servers)
    for wl in RW4:
        for qd in QDS:
            for s in order(names, rep):
                if s == "R" and (qd not in cfg.r_qds or rep >= cfg.info_reps):
                    continue
                args = WL[wl][1] + [f"--iodepth={qd}", f"--size={cfg.size_mib}M"]
                if s == "R":
                    b.s.fio(f"c1/R/{wl}{qd}", None, ["--ioengine=libaio", "--direct=1",
                                                    f"--filename={b.img}"] + args)
                else:
                    b.s.fio(f"c1/{s}/{wl}{qd}", c1_pid(b, servers, s),
                            ["--ioengine=nbd", f"--uri={servers[s][1]}"] + args)
    for s in order(["A", "F"], rep) if rep < cfg.info_reps else ():
        b.s.nbdcopy(f"c1/{s}/copy", servers[s][1], c1_pid(b, servers, s))


def c1_pid(b, servers, s):
    """The process whose CPU time a sample of server `s` reports: for fss the serving
    process, not the supervisor started as `b.pf` (whose figure was 0%)."""
    return b.serving_pid() if s == "F" else servers[s][0].pid


def case1(b):
    """fss volume, no snapshot ÷ qemu-nbd (R, A', B shown ÷ A for reference)."""
    log("case 1: fss volume vs qemu-nbd (and the disk's limit)")
    servers = c1_servers(b)
    servers["F"] = (b.pf, b.u_vol)
    try:
        for rep in range(b.cfg.reps):
            c1_round(b, servers, rep)
    finally:
        for s, (p, _) in servers.items():
            if s != "F":
                b.procs.stop(p)
    for wl in RW4:
        for qd in QDS:
            for s in ["F"] + [x for x in b.cfg.peers if x != "F"]:
                if f"c1/{s}/{wl}{qd}" not in b.s.samples:
                    continue
                b.rows.add(1, f"{C1_NAMES[s]} ÷ qemu-nbd", wl_name(wl, qd), f"c1/{s}/{wl}{qd}",
                           f"c1/A/{wl}{qd}", WL[wl][2], b.s.samples,
                           (">=", 1.0) if s == "F" else None)
    b.rows.add(1, "fss volume ÷ qemu-nbd", "whole-device copy (nbdcopy → null:)",
               "c1/F/copy", "c1/A/copy", "MB/s", b.s.samples, (">=", 1.0))
    b.mem_note("case 1", b.serving_pid())


# ------------------------------------------------------------ case 2
def c2_fss_sample(b, v, key, args, fss_info):
    """fss with no snapshot, or with a fresh one (every write a first overwrite)."""
    if v != "none":
        b.snap("vol", "c2", v == "transient")
    b.s.fio(key, b.serving_pid(), ["--ioengine=nbd", f"--uri={b.u_vol}"] + args, timed=False)
    if v != "none":
        fss_info.setdefault(key, []).append(b.snap_info("c2"))
        b.unsnap("c2")


def c2_qemu_sample(b, v, key, args, qsd, cbw):
    """qemu-storage-daemon plain (C), or after a fresh fleecing snapshot (D)."""
    pc, u_c, qmp, fl = qsd
    if v == "D":
        sh(["qemu-img", "create", "-q", "-f", "raw", str(fl), f"{b.cfg.size_mib}M"])
        cbw["create_ms"].append(qmp.cmds(cbw_create(fl)) * 1e3)
    b.s.fio(key, pc.pid, ["--ioengine=nbd", f"--uri={u_c}"] + args, timed=False)
    if v == "D":
        qmp.cmds(CBW_DELETE)
        cbw["fleece_alloc_mib"].setdefault(key, []).append(
            os.stat(fl).st_blocks * 512 / 2**20)
        fl.unlink()


def c2_disk_sample(b, key, qd, flush=False):
    """The disk's own limit for a sequential 1 MiB first overwrite (R): every MiB of new data
    moves three, its pre-image read, the pre-image written elsewhere and the new data written,
    so fio runs that mix (1 read : 2 writes of 1 MiB, libaio O_DIRECT, on the image) and a
    third of what it moves is the first overwrite rate no server can pass on this disk.
    `flush` (Rf): the same with an `fdatasync` every 32 writes, i.e. every 16 MiB of new data,
    as a persistent snapshot's group commit flushes at this rate: its limit."""
    sync = ["--fdatasync=32"] if flush else []
    s = b.s.fio(key, None, ["--ioengine=libaio", "--direct=1", f"--filename={b.img}",
                            "--rw=rw", "--rwmixread=33", "--bs=1M", f"--iodepth={qd}",
                            f"--size={b.cfg.size_mib}M"] + sync)
    s["MB/s"] /= 3
    s["IOPS"] /= 3
    log(f"{key:<28} {s['MB/s']:8.1f} MB/s of new data (a third of the mix)")


def c2_rounds(b, qsd, cbw, fss_info):
    """Every round of case 2; QEMU's C and D and the disk's R only in the first `info_reps`
    rounds."""
    for rep in range(b.cfg.reps):
        for wl in ("fs", "ff"):
            for qd in QDS:
                args = b.s.first_args(wl, qd)
                variants = ["none", "transient", "persistent"]
                if rep < b.cfg.info_reps:
                    variants += ["C", "D"] + (["R", "Rf"] if wl == "fs" else [])
                for v in order(variants, rep):
                    key = f"c2/{v}/{wl}{qd}"
                    if v in ("none", "transient", "persistent"):
                        c2_fss_sample(b, v, key, args, fss_info)
                    elif v in ("R", "Rf"):
                        c2_disk_sample(b, key, qd, flush=v == "Rf")
                    else:
                        c2_qemu_sample(b, v, key, args, qsd, cbw)


def c2_rows(b):
    for wl in ("fs", "ff"):
        goal = (">=", 0.28) if wl == "fs" else (">=", 0.3)
        for qd in QDS:
            w, u, sm = wl_name(wl, qd), WL[wl][2], b.s.samples
            b.rows.add(2, "fss, 1 transient snapshot ÷ none", w, f"c2/transient/{wl}{qd}",
                       f"c2/none/{wl}{qd}", u, sm, goal)
            b.rows.add(2, "fss, 1 persistent snapshot ÷ none", w, f"c2/persistent/{wl}{qd}",
                       f"c2/none/{wl}{qd}", u, sm, goal)
            b.rows.add(2, "fss persistent ÷ transient", w, f"c2/persistent/{wl}{qd}",
                       f"c2/transient/{wl}{qd}", u, sm, (">=", 0.9))
            b.rows.add(2, "QEMU copy-before-write ÷ none (qsd)", w, f"c2/D/{wl}{qd}",
                       f"c2/C/{wl}{qd}", u, sm)
            if wl == "fs":
                b.rows.add(2, "disk limit (fio: 1 read + 2 writes of 1 MiB, ÷ 3) ÷ none", w,
                           f"c2/R/{wl}{qd}", f"c2/none/{wl}{qd}", u, sm)
                b.rows.add(2, "disk limit with a flush per 16 MiB of new data (persistent's) "
                           "÷ none", w, f"c2/Rf/{wl}{qd}", f"c2/none/{wl}{qd}", u, sm)


def case2(b):
    """First overwrite with 1 live snapshot ÷ none, fss and QEMU copy-before-write."""
    log("case 2: first overwrite with 1 live snapshot (fss transient, persistent; QEMU CBW)")
    qsd_sock, qmp_sock = b.w / "qsd.sock", b.w / "qmp.sock"
    pc, u_c = start_qsd(b.procs, b.img, qsd_sock, qmp_sock)
    b.wait_nbd(u_c, pc)
    warm(u_c)
    qmp = QMP(str(qmp_sock))
    cbw = {"create_ms": [], "fleece_alloc_mib": {}}
    fss_info = {}
    try:
        c2_rounds(b, (pc, u_c, qmp, b.w / "fleece.raw"), cbw, fss_info)
    finally:
        qmp.close()
        b.procs.stop(pc)
    b.extra["case2"] = {"fss_snapshot_after_run": fss_info, "qemu_cbw": cbw}
    c2_rows(b)
    b.mem_note("case 2", b.serving_pid())


# ------------------------------------------------------------ case 3
def case3(b):
    """Rewrite of already-preserved blocks (vol2) ÷ the same region of vol, no snapshot."""
    log("case 3: rewrite of already-preserved blocks (vol2, persistent snapshot) vs none")
    half = b.cfg.half
    b.snap("vol2", "c3", False)
    try:
        b.s.fio("c3/setup-preserve", b.serving_pid(), ["--ioengine=nbd", f"--uri={b.u_vol2}",
                "--rw=write", "--bs=1M", "--iodepth=16", f"--size={half}"], timed=False)
        info = b.snap_info("c3")
        want = half // CLUSTER
        if info["clusters_preserved"] != want:
            die(f"case 3 setup: {info['clusters_preserved']} clusters preserved, want {want}")
        region = ["--offset=0", f"--size={half}"]
        for rep in range(b.cfg.reps):
            for wl in ("sw", "rw"):
                for qd in QDS:
                    for v, u in order([("none", b.u_vol), ("kept", b.u_vol2)], rep):
                        b.s.fio(f"c3/{v}/{wl}{qd}", b.serving_pid(), ["--ioengine=nbd",
                                f"--uri={u}", f"--iodepth={qd}"] + WL[wl][1] + region)
        b.extra["case3_snapshot"] = b.snap_info("c3")
    finally:
        b.unsnap("c3")
    for wl in ("sw", "rw"):
        for qd in QDS:
            b.rows.add(3, "rewrite of preserved blocks ÷ no snapshot", wl_name(wl, qd),
                       f"c3/kept/{wl}{qd}", f"c3/none/{wl}{qd}", WL[wl][2], b.s.samples,
                       (">=", 0.98))
    b.mem_note("case 3", b.serving_pid())


# ------------------------------------------------------------ case 4
def c4_sample(b, n, wl, qd, info):
    """One first-overwrite sample with `n` fresh persistent snapshots on `vol`."""
    names = [f"c4-{i}" for i in range(n)]
    for x in names:
        b.snap("vol", x, False)
    try:
        b.s.fio(f"c4/{n}/{wl}{qd}", b.serving_pid(), ["--ioengine=nbd",
                f"--uri={b.u_vol}"] + b.s.first_args(wl, qd), timed=False)
        info.setdefault(f"c4/{n}/{wl}{qd}", []).append(
            [b.snap_info(x)["clusters_preserved"] for x in names])
    finally:
        b.unsnap(*names)   # oldest first: nothing to move


def case4(b):
    """First overwrite with 2, 4, 8, 16 live persistent snapshots ÷ 1, at queue depth 16."""
    log("case 4: first overwrite with N live persistent snapshots vs 1")
    ns = (1, 2, 4, 8, 16)
    info = {}
    for rep in range(b.cfg.reps):
        for wl in b.cfg.c4_wls:
            for n in order(ns, rep):
                if n not in (1, 16) and rep >= b.cfg.info_reps:
                    continue
                c4_sample(b, n, wl, 16, info)
    b.extra["case4_clusters_preserved_per_snapshot"] = info
    for wl in b.cfg.c4_wls:
        for n in ns[1:]:
            b.rows.add(4, f"{n} live snapshots ÷ 1", wl_name(wl, 16), f"c4/{n}/{wl}16",
                       f"c4/1/{wl}16", WL[wl][2], b.s.samples,
                       (">=", 1 / 1.2) if n == 16 else None,
                       note="goal: cost <= 1.2x" if n == 16 else "")
    b.mem_note("case 4", b.serving_pid())


# ------------------------------------------------------------ case 5
def c5_setup(b):
    """Preserve the first 32 KiB of every 64 KiB cluster: every cluster half preserved."""
    size, half = b.cfg.size, b.cfg.half
    b.s.fio("c5/setup-preserve-half", b.serving_pid(), ["--ioengine=nbd",
            f"--uri={b.u_vol2}", "--rw=write:32k", "--bs=32k", "--iodepth=16",
            f"--size={size // 4}", f"--offset_increment={size // 4}",
            f"--io_size={half // 4}"], timed=False, jobs=4)
    info = b.snap_info("c5")
    want = half // 4096
    if info["blocks_preserved"] != want:
        die(f"case 5 setup: {info['blocks_preserved']} blocks preserved, want {want}")


def c5_rounds(b, u_snap, u_empty):
    cfg = b.cfg
    for rep in range(cfg.reps):
        trio = [("vol", b.u_vol2), ("snap", u_snap), ("empty", u_empty)]
        for wl in ("sr", "rr"):
            for qd in QDS:
                for v, u in order(trio, rep):
                    b.s.fio(f"c5/{v}/{wl}{qd}", b.serving_pid(), ["--ioengine=nbd",
                            f"--uri={u}", f"--iodepth={qd}",
                            f"--size={cfg.size_mib}M"] + WL[wl][1])
        for v, u in order(trio, rep) if rep < cfg.info_reps else ():
            b.s.nbdcopy(f"c5/{v}/copy", u, b.serving_pid())


def case5(b):
    """Snapshot read ÷ read of its volume: half the snapshot's blocks preserved, and a second
    snapshot taken after that, with nothing preserved (its reads are all volume reads)."""
    log("case 5: snapshot read vs volume read, half the snapshot's blocks preserved")
    b.snap("vol2", "c5", False)
    try:
        c5_setup(b)
        b.snap("vol2", "c5e", False)
        u_snap, u_empty = nbd_uri("c5", b.fsock), nbd_uri("c5e", b.fsock)
        b.wait_nbd(u_snap, b.pf)
        b.wait_nbd(u_empty, b.pf)
        c5_rounds(b, u_snap, u_empty)
        b.extra["case5_snapshot"] = b.snap_info("c5")
        b.extra["case5_empty_snapshot"] = b.snap_info("c5e")
    finally:
        b.unsnap("c5e", "c5")
    # Goals of issue 17: half preserved moves more bytes than the volume read, hence 0.9x.
    for v, what, goal in (("snap", "snapshot read ÷ volume read", 0.9),
                          ("empty", "snapshot read, nothing preserved ÷ volume read", 1.0)):
        for wl in ("sr", "rr"):
            for qd in QDS:
                b.rows.add(5, what, wl_name(wl, qd), f"c5/{v}/{wl}{qd}",
                           f"c5/vol/{wl}{qd}", WL[wl][2], b.s.samples, (">=", goal))
        b.rows.add(5, what, "whole-device copy (nbdcopy → null:)", f"c5/{v}/copy",
                   "c5/vol/copy", "MB/s", b.s.samples, (">=", goal))
    b.mem_note("case 5", b.serving_pid())


# ------------------------------------------------------------ case 8
def c8_fuse_file(fdir):
    """The FUSE file of `vol`, which appears shortly after the daemon mounts."""
    ffile = Path(fdir) / "vol"
    for _ in range(100):
        if ffile.exists():
            return ffile
        time.sleep(0.05)
    die(f"{ffile} does not appear although fuse_dir is {fdir}")


def c8_rounds(b, lp, lf):
    cfg = b.cfg
    for rep in range(cfg.reps):
        for wl in RW4:
            for qd in QDS:
                for v, dev in order([("plain", lp), ("fuse", lf)], rep):
                    b.s.fio(f"c8/{v}/{wl}{qd}", b.serving_pid() if v == "fuse" else None,
                            ["--ioengine=libaio", "--direct=1", f"--filename={dev}",
                             f"--iodepth={qd}", f"--size={cfg.size_mib}M"] + WL[wl][1])


def case8(b):
    """Loop device over the fss FUSE file ÷ loop over the plain image (skipped without
    FUSE: a row saying so, as other tools expect one row per case)."""
    fdir = b.ctl("status").get("fuse_dir")
    if not fdir:
        b.skipped.append("case 8: skipped: FUSE front-end not available")
        b.rows.add_values(8, "skipped: FUSE front-end not available", "", "", [])
        print("case 8: skipped: FUSE front-end not available", file=sys.stderr)
        return
    log("case 8: FUSE + loop (fio libaio O_DIRECT) vs loop over the plain image")
    ffile = c8_fuse_file(fdir)
    lf = b.losetup(ffile)
    lp = b.losetup(b.img)
    dio = {dev: sh(["losetup", "-n", "-O", "DIO", dev]).strip() for dev in (lf, lp)}
    b.extra["case8_loops"] = {"fuse": lf, "plain": lp, "dio": dio, "fuse_file": str(ffile)}
    try:
        c8_rounds(b, lp, lf)
    finally:
        for dev in (lf, lp):
            subprocess.run(["losetup", "-d", dev], capture_output=True)
            b.loops.remove(dev)
    for wl in RW4:
        for qd in QDS:
            b.rows.add(8, "loop over fss FUSE file ÷ loop over plain image", wl_name(wl, qd),
                       f"c8/fuse/{wl}{qd}", f"c8/plain/{wl}{qd}", WL[wl][2], b.s.samples,
                       (">=", 0.8))
