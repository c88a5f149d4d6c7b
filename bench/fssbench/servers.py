"""The servers under test and how each is built, started and reached.

fss is run from a private copy of its binary; the peers (qemu-nbd, nbdkit,
qemu-storage-daemon) are started with the options of peers.sh, on unix sockets only.
Every process goes through `Procs`, so it is stopped by PID in every outcome.
"""

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from .config import REPO
from .control import Ctl
from .util import die, log, sh
from .workloads import nbd_uri


def build_fss(cfg, workdir):
    """Build (or take `FSS_BIN`) and copy the fss binary into the work directory: other
    builds may replace target/release/fss during the run. Returns (path, JSON info)."""
    if cfg.fss_bin:
        src = Path(cfg.fss_bin)
    else:
        log("cargo build --release -p fss-cli")
        r = subprocess.run(["cargo", "build", "--release", "-p", "fss-cli"], cwd=REPO,
                           capture_output=True, text=True)
        if r.returncode != 0:
            die(f"build failed:\n{r.stderr[-3000:]}")
        src = REPO / "target" / "release" / "fss"
    (workdir / "bin").mkdir()
    fss = workdir / "bin" / "fss"
    shutil.copy2(src, fss)
    info = {"binary": str(src), "commit": _git("rev-parse", "HEAD"),
            "dirty_files": len(_git("status", "--porcelain").splitlines()),
            "version": sh([str(fss), "--version"]).strip()}
    return fss, info


def _git(*args):
    """A git query about the repository (the commit measured); empty if git fails."""
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()


def prefill(path, size_mib):
    """Fill a raw image with fio's random data, O_DIRECT, so no read is of a hole."""
    r = subprocess.run(["fio", "--name=prefill", f"--filename={path}",
                        f"--size={size_mib}M", "--bs=1M", "--rw=write",
                        "--ioengine=libaio", "--iodepth=16", "--direct=1",
                        "--end_fsync=1", "--output=/dev/null"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        die(f"prefill failed: {r.stderr}")
    with open(path, "rb") as f:
        if not any(f.read(4096)):
            die("prefill is zero")


def fss_env(state):
    """The environment of an fss process: its own state directory, nothing else changed."""
    return dict(os.environ, FSS_STATE_DIR=str(state))


def start_fss(procs, fss, name, state):
    """Start `fss serve`; returns (process, seconds until `status` answers, its client)."""
    t = time.monotonic()
    p = procs.start(name, [str(fss), "serve"], env=fss_env(state))
    ctl = Ctl(state)

    def fail(why):
        die(f"fss serve {why}:\n{procs.tail(p)}")

    ctl.wait_ready(p, 120, fail)
    return p, time.monotonic() - t, ctl


def wait_nbd(procs, uri, p):
    """Wait until `uri` answers `nbdinfo`; fail with the server's log if it exits."""
    for _ in range(300):
        if p.poll() is not None:
            die(f"{p.name} exited:\n{procs.tail(p)}")
        if subprocess.run(["nbdinfo", "--size", uri], capture_output=True).returncode == 0:
            return
        time.sleep(0.05)
    die(f"server not ready: {uri}")


def start_qemu_nbd(procs, name, sock, img, aio):
    """qemu-nbd on the raw image, O_DIRECT (`aio` native for A, threads for A')."""
    p = procs.start(name, [
        "qemu-nbd", "--format=raw", "--cache=none", f"--aio={aio}", "--persistent",
        "--shared=8", f"--socket={sock}", "--export-name=disk", str(img)])
    return p, nbd_uri("disk", sock)


def start_nbdkit(procs, sock, img):
    """nbdkit's file plugin without the page cache (B)."""
    p = procs.start("nbdkit", ["nbdkit", "--foreground", "--unix", str(sock),
                               "file", str(img), "cache=none"])
    return p, nbd_uri("", sock)


def start_qsd(procs, img, qsd_sock, qmp_sock):
    """qemu-storage-daemon exporting the raw image (C), with a QMP monitor for D."""
    p = procs.start("qsd", [
        "qemu-storage-daemon",
        "--chardev", f"socket,id=qmp0,path={qmp_sock},server=on,wait=off",
        "--monitor", "chardev=qmp0",
        "--blockdev", f"driver=file,node-name=src-file,filename={img},"
                      "cache.direct=on,aio=native",
        "--blockdev", "driver=raw,node-name=origin,file=src-file",
        "--nbd-server", f"addr.type=unix,addr.path={qsd_sock}",
        "--export", "type=nbd,id=exp-origin,node-name=origin,name=origin,writable=on"])
    return p, nbd_uri("origin", qsd_sock)


def cbw_create(fleece):
    """QMP commands that put a copy-before-write fleecing snapshot under `origin` (D)."""
    return ('{"execute": "blockdev-add", "arguments": {"driver": "file", "node-name": '
            f'"fl-tmp", "filename": "{fleece}", "cache": {{"direct": true}}, '
            '"aio": "native"}}\n'
            '{"execute": "blockdev-add", "arguments": {"driver": "copy-before-write", '
            '"node-name": "fl-cbw", "file": "src-file", "target": "fl-tmp"}}\n'
            '{"execute": "blockdev-reopen", "arguments": {"options": [{"driver": "raw", '
            '"node-name": "origin", "file": "fl-cbw"}]}}\n'
            '{"execute": "blockdev-add", "arguments": {"driver": "snapshot-access", '
            '"node-name": "fl-access", "file": "fl-cbw"}}\n'
            '{"execute": "block-export-add", "arguments": {"type": "nbd", "id": '
            '"exp-snap", "node-name": "fl-access", "name": "snap", "writable": false}}')


# the inverse of cbw_create, in reverse order
CBW_DELETE = ('{"execute": "block-export-del", "arguments": {"id": "exp-snap"}}\n'
              '{"execute": "blockdev-del", "arguments": {"node-name": "fl-access"}}\n'
              '{"execute": "blockdev-reopen", "arguments": {"options": [{"driver": "raw", '
              '"node-name": "origin", "file": "src-file"}]}}\n'
              '{"execute": "blockdev-del", "arguments": {"node-name": "fl-cbw"}}\n'
              '{"execute": "blockdev-del", "arguments": {"node-name": "fl-tmp"}}')


class QMP:
    """QEMU monitor: one connection, commands in order, events skipped."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.f = self.s.makefile("rw")
        self._rd()
        self.cmd('{"execute": "qmp_capabilities"}')

    def _rd(self):
        """The next reply, skipping asynchronous events (they carry no answer)."""
        while True:
            m = json.loads(self.f.readline())
            if "event" not in m:
                return m

    def cmd(self, c):
        """One command (a JSON line); a QMP error ends the case."""
        self.f.write(c + "\n")
        self.f.flush()
        r = self._rd()
        if "error" in r:
            die(f"QMP error: {c} -> {r['error']}")
        return r

    def cmds(self, block):
        """A block of commands, one a line; returns the seconds they took together."""
        t = time.perf_counter()
        for c in block.strip().splitlines():
            self.cmd(c)
        return time.perf_counter() - t

    def close(self):
        self.s.close()


def versions():
    """The first line of each tool's `--version`, for the JSON (None when absent)."""
    def first(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True).stdout.split(
                "\n")[0].strip()
        except OSError:
            return None
    return {"fio": first(["fio", "--version"]).replace("fio-", ""),
            "qemu": first(["qemu-storage-daemon", "--version"]),
            "nbdkit": first(["nbdkit", "--version"]),
            "nbdcopy": first(["nbdcopy", "--version"]),
            "hyperfine": first(["hyperfine", "--version"])}
