"""Unit tests of the bench's ratio arithmetic (bench/fssbench/report.py).

Run from the repository root: python3 -m unittest discover -s bench/tests
"""

import math
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fssbench import report  # noqa: E402  (after the path it is found on)
from fssbench.workloads import order  # noqa: E402


def row(values, baseline, goal=None, unit="IOPS", case=1):
    """A finished row built the way the cases build them: from samples by key."""
    samples = {"s": [{unit: v} for v in values], "b": [{unit: v} for v in baseline]}
    rows = report.Rows()
    rows.add(case, "subject ÷ baseline", "randwrite 4K, qd1", "s", "b", unit, samples, goal)
    rows.finish()
    return rows.rows[0]


class PerSampleRatios(unittest.TestCase):
    def test_pairs_sample_i_with_baseline_i(self):
        self.assertEqual(report.per_sample_ratios([100, 200, 90], [50, 400, 90]),
                         [2.0, 0.5, 1.0])

    def test_zero_baseline_is_nan_not_an_error(self):
        r = report.per_sample_ratios([1, 2], [0, 4])
        self.assertTrue(math.isnan(r[0]))
        self.assertEqual(r[1], 0.5)

    def test_negative_baseline_counts_unless_positive_only(self):
        self.assertEqual(report.per_sample_ratios([2], [-4]), [-0.5])
        self.assertTrue(math.isnan(report.per_sample_ratios([2], [-4], positive_only=True)[0]))

    def test_samples_without_a_partner_are_left_out(self):
        # rows without a goal may have fewer baseline rounds
        self.assertEqual(report.per_sample_ratios([1, 2, 3], [1]), [1.0])


class RowSummary(unittest.TestCase):
    def test_ratio_is_median_of_ratios_not_ratio_of_medians(self):
        r = row([100, 200, 300], [50, 400, 300])
        self.assertEqual(r["ratios"], [2.0, 0.5, 1.0])
        self.assertEqual(r["ratio"], 1.0)
        self.assertEqual(r["median"], 200)
        self.assertEqual(r["baseline_median"], 300)   # 200 / 300 would be 0.67

    def test_even_count_median_is_the_mean_of_the_middle_two(self):
        r = row([100, 200], [50, 400])
        self.assertEqual(r["ratio"], 1.25)
        self.assertEqual(r["median"], 150)

    def test_nan_ratios_are_ignored(self):
        r = row([100, 300, 90], [0, 100, 90])
        self.assertEqual(r["ratio"], 2.0)
        self.assertEqual(r["spread_pct"], 50.0)

    def test_spread_is_half_the_range_in_percent_of_the_median(self):
        r = row([90, 110, 100], [100, 100, 100])
        self.assertEqual(r["ratio"], 1.0)
        self.assertEqual(r["spread_pct"], 10.0)
        self.assertEqual(report.spread_pct([0.5, 0.6, 0.9], 0.6), 33.3)

    def test_no_spread_from_one_ratio(self):
        self.assertIsNone(row([90], [100])["spread_pct"])
        self.assertIsNone(report.spread_pct([1.0, 2.0], None))

    def test_no_samples_no_figures(self):
        r = row([], [])
        for k in ("median", "baseline_median", "ratio", "spread_pct", "met"):
            self.assertIsNone(r[k], k)

    def test_keys_in_schema_order(self):
        self.assertEqual(list(row([1], [1], (">=", 1.0))), [
            "case", "what", "workload", "unit", "subject", "baseline", "values",
            "baseline_values", "ratios", "goal", "note", "median", "baseline_median",
            "ratio", "spread_pct", "met"])


class Goals(unittest.TestCase):
    def test_at_least_goal_on_the_ratio(self):
        self.assertTrue(row([100, 100], [100, 100], (">=", 1.0))["met"])
        self.assertFalse(row([99, 99], [100, 100], (">=", 1.0))["met"])
        self.assertTrue(row([30, 29], [100, 100], (">=", 0.28))["met"])

    def test_ms_goal_applies_to_the_value_not_the_ratio(self):
        # 5 ms is under 10 ms although it is 5x its baseline
        self.assertTrue(row([5, 5], [1, 1], ("<", 10.0), unit="ms")["met"])
        self.assertFalse(row([12, 12], [24, 24], ("<", 10.0), unit="ms")["met"])
        self.assertFalse(row([10, 10], [1, 1], ("<", 10.0), unit="ms")["met"])

    def test_bytes_goal_is_an_upper_bound_on_the_value(self):
        rows = report.Rows()
        rows.add_values(7, "RSS per cluster", "1M", "B", [16.0], goal=("<=", 16.0))
        rows.add_values(7, "RSS per cluster", "1M", "B", [16.5], goal=("<=", 16.0))
        rows.finish()
        self.assertEqual([r["met"] for r in rows.rows], [True, False])
        self.assertEqual(report.fmt_goal(rows.rows[0]), "≤ 16 B")

    def test_no_goal_no_verdict(self):
        self.assertIsNone(row([1], [2])["met"])
        self.assertIsNone(report.goal_met((">=", 1.0), "IOPS", 5, None))

    def test_case4_goal_is_a_cost_bound(self):
        r = row([83, 84], [100, 100], (">=", 1 / 1.2), case=4)
        self.assertTrue(r["met"])            # 0.835 >= 0.8333: cost 1.198x
        self.assertFalse(row([80, 80], [100, 100], (">=", 1 / 1.2), case=4)["met"])
        self.assertEqual(report.fmt_goal(r), "cost ≤ 1.2x")


class Slope(unittest.TestCase):
    def test_least_squares_slope(self):
        self.assertAlmostEqual(report.slope([1, 2, 3, 4], [10, 12, 14, 16]), 2.0)
        # noise around 6 per step: the fit, not the end points
        self.assertAlmostEqual(report.slope([0, 1, 2, 3], [0, 7, 11, 18]), 5.8)
        self.assertIsNone(report.slope([5], [1]))
        self.assertIsNone(report.slope([5, 5], [1, 2]))


class TableLine(unittest.TestCase):
    def test_miss_ratio_and_spread_are_shown(self):
        line = report.table_line(row([90, 100], [100, 200], (">=", 1.0)))
        self.assertIn("| 0.70x | 29% | ≥ 1x | **MISS** |", line)
        self.assertIn("0.1k IOPS", line)

    def test_values_row_without_baseline(self):
        rows = report.Rows()
        rows.add_values(7, "daemon RSS", "1 GiB", "KiB", [2048])
        rows.finish()
        r = rows.rows[0]
        self.assertEqual((r["median"], r["ratio"], r["met"]), (2048, None, None))
        self.assertIn("| 2,048 KiB | — |", report.table_line(r))


class Interleaving(unittest.TestCase):
    def test_order_alternates_every_round(self):
        self.assertEqual(order(["A", "F"], 0), ["A", "F"])
        self.assertEqual(order(["A", "F"], 1), ["F", "A"])
        self.assertEqual(order(("none", "t", "p"), 2), ["none", "t", "p"])


if __name__ == "__main__":
    unittest.main()
