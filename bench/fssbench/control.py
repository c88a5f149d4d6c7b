"""The one client of the fss control protocol (docs/CONTROL.md): JSON lines over
<state-dir>/control.sock.

Every part of the bench that talks to a daemon (readiness polling, volume setup, timed
snapshot creation, restarts) uses this class, so round-trip timing and error reporting are
the same everywhere.
"""

import json
import socket
import time
from pathlib import Path


class ControlError(RuntimeError):
    """The daemon answered `ok: false`; the message names the request and the error."""


class Ctl:
    """One connection to one daemon's control socket, opened lazily, reopened on demand."""

    def __init__(self, state):
        self.path = str(Path(state) / "control.sock")
        self.s = None
        self.f = None
        self.id = 0

    def close(self):
        """Drop the connection; the next call reconnects (a restarted daemon is new)."""
        if self.s:
            self.s.close()
        self.s = self.f = None

    def connect(self):
        """(Re)connect to the socket; raises OSError while the daemon is not listening."""
        self.close()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.path)
        self.s, self.f = s, s.makefile("rwb")

    def call(self, op, **args):
        """One request; returns (result, seconds round trip). Raises on an error answer.

        The round trip is measured around the write and the read only, so it holds no
        connection set-up: case 6 subtracts a `status` round trip from it."""
        if self.s is None:
            self.connect()
        self.id += 1
        req = dict(v=1, id=self.id, op=op, **args)
        t = time.perf_counter()
        self.f.write(json.dumps(req).encode() + b"\n")
        self.f.flush()
        line = self.f.readline()
        dt = time.perf_counter() - t
        if not line:
            self.close()
            raise OSError("fss control connection closed")
        r = json.loads(line)
        if not r.get("ok"):
            raise ControlError(f"fss {op} {args}: {r.get('error')}")
        return r.get("result"), dt

    def __call__(self, op, **args):
        """The result alone, for requests whose timing does not matter."""
        return self.call(op, **args)[0]

    def wait_ready(self, proc, timeout, fail):
        """Poll `status` until the daemon answers. `fail(msg)` (which raises) is called if
        `proc` exits first or nothing answers within `timeout` seconds."""
        t = time.monotonic()
        while True:
            if proc.poll() is not None:
                fail("exited")
            try:
                self.call("status")
                return
            except (OSError, ControlError):
                self.close()
                if time.monotonic() - t > timeout:
                    fail(f"did not answer in {timeout:.0f} s")
                time.sleep(0.001)
