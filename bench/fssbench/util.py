"""Process plumbing shared by every module: logging, failing, running commands, and the
registry of the long-running processes this run started.

Everything that must be undone in every outcome (Ctrl-C, a failed case) goes through
`Procs`, which stops only what it started, by PID.
"""

import signal
import subprocess
import sys
import time
from pathlib import Path

T0 = time.monotonic()


def log(msg):
    """Progress on stderr, stamped with seconds since start: stdout is the table only."""
    print(f"[{time.monotonic() - T0:5.0f}s] {msg}", file=sys.stderr, flush=True)


class Fatal(Exception):
    """A setup failure: the run (or the current case) stops, after cleaning up."""


def die(msg):
    """Raise `Fatal`; a function so it can end an expression-heavy check in one line."""
    raise Fatal(msg)


def sh(argv, **kw):
    """Run a command, fail loudly with its output (the tail of stderr says why)."""
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        die(f"{' '.join(map(str, argv))} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return r.stdout


class Procs:
    """Every long-running process this script starts, by PID, stopped in every outcome."""

    def __init__(self, workdir):
        self.w = workdir
        self.live = {}  # pid -> Popen

    def start(self, name, argv, env=None):
        """Start `argv` with its output in <workdir>/<name>.log (read back by `tail`)."""
        logf = open(self.w / f"{name}.log", "ab")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                             stderr=subprocess.STDOUT, env=env)
        logf.close()
        p.name = name
        self.live[p.pid] = p
        return p

    def stop(self, p, timeout=30.0):
        """SIGTERM, wait; SIGKILL only if it does not go. Returns seconds to exit."""
        t = time.monotonic()
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{p.name} (pid {p.pid}) ignored SIGTERM for {timeout:.0f}s: SIGKILL")
                p.kill()
                p.wait()
        self.live.pop(p.pid, None)
        return time.monotonic() - t

    def stop_all(self):
        """Stop everything still running; errors are logged so cleanup goes on."""
        for p in list(self.live.values()):
            try:
                self.stop(p, timeout=20.0)
            except Exception as e:  # keep cleaning up
                log(f"stopping {p.pid}: {e}")

    def tail(self, p, n=20):
        """The last lines of a process's log, for the error that says why it died."""
        try:
            lines = (self.w / f"{p.name}.log").read_text(errors="replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return ""


def ticks(pid):
    """utime + stime of a process (all its threads), in clock ticks."""
    try:
        s = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    f = s[s.rindex(")") + 2:].split()
    return int(f[11]) + int(f[12])


def mem_kib(pid):
    """VmRSS and VmHWM of a process, KiB."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def loadavg():
    """The 1-minute load average: recorded beside each sample, since the machine is shared."""
    return float(Path("/proc/loadavg").read_text().split()[0])
