"""The command line of bench/run: flags, the tools it needs, signals, and clean-up in
every outcome (success, a failed setup, Ctrl-C, SIGTERM, SIGHUP)."""

import argparse
import os
import shutil
import signal
import sys

from .bench import Bench
from .config import ALL_CASES, Config, default_peers
from .util import Fatal, log

# command -> the package that provides it (named in the error when it is missing)
NEEDS = (("fio", "fio"), ("qemu-nbd", "qemu-utils"), ("qemu-img", "qemu-utils"),
         ("qemu-storage-daemon", "qemu-system-x86 (or qemu-utils)"),
         ("nbdinfo", "libnbd-bin"), ("nbdcopy", "libnbd-bin"),
         ("findmnt", "util-linux"), ("losetup", "util-linux"),
         ("fallocate", "util-linux"), ("mkfs.ext4", "e2fsprogs"),
         ("cargo", "rustup"))


def parse(argv):
    """Flags as they have always been: --quick, --keep, --cases LIST, -h/--help."""
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--cases", default=ALL_CASES)
    ap.add_argument("-h", "--help", action="store_true")
    return ap.parse_args(argv)


def missing_tool(quick):
    """The first missing tool as an error line, or None: fail before any setup."""
    for cmd, pkg in NEEDS:
        if cmd == "cargo" and os.environ.get("FSS_BIN"):
            continue
        if shutil.which(cmd) is None:
            return f"bench/run: missing {cmd} (apt-get install -y {pkg})"
    if "B" in default_peers(quick) and shutil.which("nbdkit") is None:
        return "bench/run: missing nbdkit (apt-get install -y nbdkit)"
    return None


def main(usage, argv=None):
    """Run the bench; returns the exit status (0, 1 on a failure, 2 on bad flags, 130 on
    an interrupt). `usage` is the entry point's docstring, printed by --help."""
    args = parse(argv)
    if args.help:
        print(usage)
        return 0
    try:
        cases = [int(x) for x in args.cases.split(",") if x]
    except ValueError:
        print("--cases takes numbers, e.g. 1,6", file=sys.stderr)
        return 2
    if os.geteuid() != 0 and 8 in cases:
        log("not root: case 8 (loop devices) will fail if it runs")
    err = missing_tool(args.quick)
    if err:
        print(err, file=sys.stderr)
        return 1
    return run(Config(args.quick, cases, args.keep))


def run(cfg):
    """Run with clean-up guaranteed; SIGTERM and SIGHUP end the run like Ctrl-C."""
    def stop(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    b = None
    try:
        b = Bench(cfg)
        return b.run()
    except Fatal as e:
        print(f"bench/run: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench/run: interrupted", file=sys.stderr)
        return 130
    finally:
        if b is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            b.cleanup()
