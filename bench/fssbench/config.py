"""The run's configuration: command line and environment, read once, in one place.

`--quick` trades rounds and peers for time (under 5 minutes on a loaded 2-core machine);
every knob can still be overridden through the environment (see bench/README.md).
"""

import os
from pathlib import Path

# bench/fssbench/config.py -> the repository is two levels up from this package
REPO = Path(__file__).resolve().parent.parent.parent
# the peers' reference script sits beside the repository, not at a machine-specific path
PEERS_SH = REPO.parent / "shared" / "anchors" / "peers.sh"
RESULTS = REPO / "bench" / "results"
CLUSTER = 64 * 1024
QDS = (1, 16)
ALL_CASES = "1,2,3,4,5,6,7,8"


def default_peers(quick, env=None):
    """Case 1's peers beside A and fss: `PEERS`, else R (quick) or R, A', B (full)."""
    env = os.environ if env is None else env
    return env.get("PEERS", "R" if quick else "R At B").split()


class Config:
    """Every tunable of a run; `quick` picks the defaults, the environment overrides."""

    def __init__(self, quick, cases, keep, env=None):
        env = os.environ if env is None else env
        q = quick
        self.quick = quick
        self.cases = set(cases)
        self.keep = keep
        self.runtime = float(env.get("RUNTIME", 0.5 if q else 3))
        self.ramp = float(env.get("RAMP", 0.2 if q else 1))
        self.reps = int(env.get("REPS", 2 if q else 3))
        self.size_mib = int(env.get("SIZE_MIB", 1024 if q else 2048))
        self.peers = default_peers(q, env)
        self.snap_trials = 5 if q else 15
        # --quick: case 4 on 4 KiB fresh-cluster writes only, R at queue depth 16 only, and
        # in one round: the rows without a goal (R, QEMU C and D, 2/4/8 snapshots) and the
        # whole-device copies
        self.c4_wls = ("ff",) if q else ("fs", "ff")
        self.r_qds = (16,) if q else QDS
        self.info_reps = 1 if q else self.reps
        self.restarts = 2 if q else 3
        self.size = self.size_mib << 20
        self.half = self.size // 2
        self.base = Path(env.get("BASE") or env.get("TMPDIR") or "/var/tmp")
        self.fss_bin = env.get("FSS_BIN")

    def wants(self, case):
        """Whether a case runs; 6 and 7 share one setup, so either one runs both."""
        if case == 6:
            return 6 in self.cases or 7 in self.cases
        return case in self.cases

    def as_json(self):
        """The `config` object of the results JSON (its keys are read by other tools)."""
        return {"runtime_s": self.runtime, "ramp_s": self.ramp, "reps": self.reps,
                "size_mib": self.size_mib, "queue_depths": QDS, "cluster": CLUSTER,
                "peers": self.peers, "cases": sorted(self.cases)}
