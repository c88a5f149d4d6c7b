"""Rows, their arithmetic, and the two outputs: the markdown table and the results JSON.

The arithmetic is pure (no I/O) so bench/tests can check it: a row's ratio is the median
of per-round ratios, each a subject sample divided by the baseline sample taken right
beside it, never a ratio of medians; ± is half the range of those ratios in % of the
median. Row keys and their order are the JSON schema other tools read.
"""

import math
import os
import statistics

from .util import loadavg


def per_sample_ratios(values, baseline, positive_only=False):
    """Sample i ÷ baseline sample i (round i of each), NaN where the baseline is zero (or,
    with `positive_only`, not positive: a difference of two timings can be negative).
    Rows without a goal may have fewer rounds: the extra samples have no partner."""
    def ok(y):
        return y > 0 if positive_only else bool(y)
    return [x / y if ok(y) else float("nan") for x, y in zip(values, baseline)]


def median_or_none(xs):
    """The median, or None for no samples (a row of a case that did not run)."""
    return statistics.median(xs) if xs else None


def ratio_of(ratios):
    """The row's ratio: the median of its per-round ratios, NaN ones left out."""
    return median_or_none([x for x in ratios if not math.isnan(x)])


def spread_pct(ratios, ratio):
    """± : half the range of the per-round ratios, in % of their median; None with fewer
    than two ratios (nothing to spread) or no ratio."""
    rs = [x for x in ratios if not math.isnan(x)]
    if len(rs) < 2 or not ratio:
        return None
    return round((max(rs) - min(rs)) / 2 / ratio * 100, 1)


# Units whose goals bound the value itself (a time, a size), not a ratio to a baseline.
VALUE_GOAL_UNITS = ("ms", "B")


def goal_met(goal, unit, median, ratio):
    """Whether a row meets its goal (">=", "<" or "<=", bound): ms and B goals apply to the
    value (a time, a size), the others to the ratio. None without a goal or a figure."""
    if not goal:
        return None
    x = median if unit in VALUE_GOAL_UNITS else ratio
    if x is None:
        return None
    op, bound = goal
    return {">=": x >= bound, "<": x < bound, "<=": x <= bound}[op]


def slope(xs, ys):
    """The least-squares slope of ys over xs (memory per cluster over a fill); None for
    fewer than two distinct xs."""
    n = len(xs)
    if n < 2 or len(set(xs)) < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def finish_row(r):
    """Add the summary fields to a row, in the order the JSON has always had them."""
    r["median"] = median_or_none(r["values"])
    r["baseline_median"] = median_or_none(r["baseline_values"])
    r["ratio"] = ratio_of(r["ratios"])
    r["spread_pct"] = spread_pct(r["ratios"], r["ratio"])
    r["met"] = goal_met(r["goal"], r["unit"], r["median"], r["ratio"])
    return r


class Rows:
    """The table's rows, in the order the cases add them."""

    def __init__(self):
        self.rows = []

    def add(self, case, what, workload, key, base, unit, samples, goal=None, note=""):
        """A row from sample keys: key's samples against base's, sample by sample."""
        s = [x[unit] for x in samples.get(key, [])]
        b = [x[unit] for x in samples.get(base, [])] if base else []
        ratios = per_sample_ratios(s, b) if base else []
        self.rows.append(dict(case=case, what=what, workload=workload, unit=unit,
                              subject=key, baseline=base, values=s, baseline_values=b,
                              ratios=ratios, goal=goal, note=note))

    def add_values(self, case, what, workload, unit, values, base_values=None,
                   ratios=None, goal=None, note="", subject="", baseline=""):
        """A row from figures computed by the case itself (timings, memory)."""
        self.rows.append(dict(case=case, what=what, workload=workload, unit=unit,
                              subject=subject, baseline=baseline, values=list(values),
                              baseline_values=list(base_values or []),
                              ratios=list(ratios or []), goal=goal, note=note))

    def finish(self):
        """Summarize every row (medians, ratio, ±, met)."""
        for r in self.rows:
            finish_row(r)


def fmt_value(v, unit):
    """A median in the table: k IOPS, MB/s, ms, KiB/B with separators."""
    if v is None:
        return "—"
    if unit == "IOPS":
        return f"{v / 1000:.1f}k IOPS"
    if unit == "MB/s":
        return f"{v:.0f} MB/s"
    if unit == "ms":
        return f"{v:.2f} ms"
    if unit in ("KiB", "B"):
        return f"{v:,.0f} {unit}"
    return f"{v:g}"


def fmt_goal(r):
    """The goal column; case 4's goal reads as a cost, the inverse of its ratio."""
    g = r["goal"]
    if not g:
        return ""
    if r["unit"] in VALUE_GOAL_UNITS:
        return f"{g[0].replace('<=', '≤')} {g[1]:g} {r['unit']}"
    if r["case"] == 4:
        return "cost ≤ 1.2x"
    return f"{g[0].replace('>=', '≥')} {g[1]:g}x"


def table_line(r):
    """One markdown line of a row (a skipped case has no unit and only its `what`)."""
    if not r["unit"]:
        return f"| {r['case']} | {r['what']} | | | | | | | |"
    ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else ""
    sp = f"{r['spread_pct']:.0f}%" if r["spread_pct"] is not None else ""
    met = {True: "met", False: "**MISS**", None: ""}[r["met"]]
    what = r["what"] + (f" ({r['note']})" if r["note"] else "")
    return (f"| {r['case']} | {what} | {r['workload']} | "
            f"{fmt_value(r['median'], r['unit'])} | "
            f"{fmt_value(r['baseline_median'], r['unit'])} | {ratio} | {sp} | "
            f"{fmt_goal(r)} | {met} |")


def table(cfg, rows, extra, loads, fstype, notes):
    """The markdown table printed on stdout, with a header giving the run's conditions."""
    la = sorted(loads) or [loadavg()]  # no sample taken (e.g. only case 8, skipped)
    fss = extra["fss"]
    lines = [f"## fss beside its peers ({extra['started']}, "
             f"{'quick' if cfg.quick else 'full'} run)", "",
             f"{os.cpu_count()} cores, kernel {os.uname().release}, work dir on "
             f"{fstype}; load average (1 min) during samples: min {la[0]:.1f}, "
             f"median {statistics.median(la):.1f}, max {la[-1]:.1f} — other work "
             f"shares this machine, figures are noisy.  ",
             f"Client: fio {extra['versions']['fio']} ioengine=nbd, 1 job; "
             f"{cfg.reps} rounds interleaved; time-based samples {cfg.runtime:g} s "
             f"+ {cfg.ramp:g} s ramp; first-overwrite samples stop after "
             f"{cfg.runtime + cfg.ramp:g} s. {cfg.size_mib} MiB pre-filled raw image. "
             f"fss {fss['commit'][:10]}"
             f"{' + uncommitted changes' if fss['dirty_files'] else ''}.", "",
             "| case | what | workload | fss / subject | baseline | ratio | ± | goal | |",
             "|---|---|---|---:|---:|---:|---:|---|---|"]
    lines += [table_line(r) for r in rows]
    lines += ["", "ratio: the median of per-round ratios (subject ÷ baseline taken side by "
              "side); ±: half their range, in % of the median. MB/s for 1 MiB rows, IOPS "
              "for 4 KiB rows. QEMU rows: qemu-storage-daemon with and without a "
              "copy-before-write fleecing snapshot, as peers.sh."]
    if cfg.info_reps < cfg.reps:
        lines.append(f"- quick run: rows without a goal (R, QEMU, 2/4/8 snapshots) and "
                     f"whole-device copies are {cfg.info_reps} round; run without --quick "
                     "for spreads everywhere.")
    lines += notes
    return "\n".join(lines)


def results_doc(cfg, extra, host, rows, samples, memory, skipped, errors, table_md):
    """The results JSON document; its keys and their order are the schema (schema 1)."""
    return {
        "schema": 1, "quick": cfg.quick, **extra, "host": host,
        "config": cfg.as_json(),
        "rows": rows, "samples": samples,
        "main_daemon_memory_kib": memory,
        "skipped": skipped, "errors": errors, "table_markdown": table_md,
    }


def host_info(fstype, loads):
    """The `host` object: cores, kernel, the work dir's file system, load during samples."""
    return {"cores": os.cpu_count(), "kernel": os.uname().release,
            "workdir_fs": fstype,
            "load1_during_samples": {"min": min(loads, default=None),
                                     "median": median_or_none(loads),
                                     "max": max(loads, default=None)}}
