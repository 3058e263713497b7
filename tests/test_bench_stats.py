"""The benchmark's arithmetic and tables (benchmarks/stats.py, benchmarks/report.py): pure
functions, checked without Docker. The measurements themselves run with `make bench`."""

from benchmarks import report
from benchmarks.stats import paired_ratios, percentile, ratio, summary


def test_nearest_rank_percentile_never_invents_a_value():
    assert percentile([3.0, 1.0, 2.0], 95) == 3.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile(list(range(1, 101)), 95) == 95
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile([], 95) is None


def test_summary_leaves_out_failed_runs_and_counts_the_rest():
    s = summary([2.0, None, 4.0, 3.0], "s", percentiles=(50, 95))
    assert s["runs"] == 3 and s["unit"] == "s"
    assert (s["median"], s["p50"], s["p95"], s["min"], s["max"]) == (3.0, 3.0, 4.0, 2.0, 4.0)
    assert summary([None], "s") == {"unit": "s", "runs": 0}


def test_ratios_of_medians_and_of_pairs():
    assert ratio(summary([4.0, 6.0], "s"), summary([2.0, 2.0], "s")) == 2.5
    assert ratio(summary([], "s"), summary([2.0], "s")) is None
    # a drift that doubles both alternatives' times cancels out of each pair
    assert paired_ratios([2.0, 4.0, 8.0], [1.0, 2.0, 4.0]) == 2.0
    assert paired_ratios([2.0, None], [1.0, 3.0]) == 2.0


def test_tables_show_each_alternative_with_its_failures():
    alt = {"total": summary([5.0, 7.0], "s"), "container_started": summary([1.0], "s"),
           "server_up": summary([3.0], "s"), "route_seen": summary([], "s"),
           "after_server_up": summary([2.0], "s"), "failures": 1}
    results = {"single_spawn": {"alternatives": {"gpuhub": alt, "raw": dict(alt, failures=0)},
                                "ratios": {"gpuhub/raw": 1.0}, "paired_ratios": {"gpuhub/raw": 1.0}}}
    md = report.markdown(results, "# head")
    rows = [line for line in md.splitlines() if line.startswith("| gpuhub") or line.startswith("| raw")]
    assert rows[0].split(" | ")[:3] == ["| gpuhub", "2", "6.00 s"] and rows[0].endswith("| 1 |")
    assert rows[1].endswith("| 0 |")
    assert "gpuhub/raw 1.00" in report.text(results, "head")
