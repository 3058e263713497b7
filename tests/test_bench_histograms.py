"""The arithmetic of benchmarks/histograms.py (the hub's event loop between two scrapes)
and of the CPU split in benchmarks/cpusets.py."""

import math

import pytest

from benchmarks.histograms import buckets, delta, loop_summary, quantile_bound, share_above

LOOP = "jupyterhub_event_loop_interval_seconds"


def exposition(counts, total):
    """A /metrics text of the loop histogram with cumulative `counts` per bound."""
    lines = [f"# HELP {LOOP} Distribution of measured event loop intervals", f"# TYPE {LOOP} histogram"]
    for le, v in counts.items():
        bound = "+Inf" if le == math.inf else repr(float(le))
        lines.append(f'{LOOP}_bucket{{le="{bound}"}} {v}')
    lines += [f"{LOOP}_count {list(counts.values())[-1]}", f"{LOOP}_sum {total}"]
    return "\n".join(lines) + "\n"


BEFORE = exposition({0.05: 100, 0.1: 100, 1.0: 100, 2.5: 100, math.inf: 100}, 5.0)
# then: 96 ticks on time, 2 up to 0.1 s late, 1 up to 1 s, 1 up to 2.5 s
AFTER = exposition({0.05: 196, 0.1: 198, 1.0: 199, 2.5: 200, math.inf: 200}, 5.0 + 4.8 + 0.15 + 0.6 + 2.0)


def test_the_burst_is_the_difference_of_two_scrapes():
    d = delta(buckets(BEFORE, LOOP), buckets(AFTER, LOOP))
    assert d["buckets"] == {0.05: 96, 0.1: 98, 1.0: 99, 2.5: 100, math.inf: 100}
    assert d["count"] == 100
    assert d["sum"] == pytest.approx(7.55)


def test_quantiles_are_bucket_bounds_not_interpolated():
    d = delta(buckets(BEFORE, LOOP), buckets(AFTER, LOOP))
    assert quantile_bound(d, 0.5) == 0.05
    assert quantile_bound(d, 0.97) == 0.1
    assert quantile_bound(d, 0.99) == 1.0
    assert quantile_bound(d, 1.0) == 2.5
    assert share_above(d, 0.1) == pytest.approx(0.02)
    assert share_above(d, 1.0) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="bucket bound"):
        share_above(d, 0.3)


def test_the_loop_summary_of_a_burst():
    summary = loop_summary(delta(buckets(BEFORE, LOOP), buckets(AFTER, LOOP)))
    assert summary == {"ticks": 100, "mean_delay_s": 0.0755, "p99_at_most_s": 1.0,
                       "max_at_most_s": 2.5, "share_over_0.1s": 0.02, "share_over_1s": 0.01,
                       "late_s": 2.55}


def test_no_ticks_no_numbers_and_a_restart_is_an_error():
    same = buckets(BEFORE, LOOP)
    summary = loop_summary(delta(same, same))
    assert summary["ticks"] == 0 and summary["p99_at_most_s"] is None and summary["mean_delay_s"] is None
    with pytest.raises(ValueError, match="restarted"):
        delta(buckets(AFTER, LOOP), buckets(BEFORE, LOOP))
    with pytest.raises(ValueError, match="no histogram"):
        buckets("# nothing here\n", LOOP)


def test_the_split_gives_the_users_every_cpu_but_the_hubs(monkeypatch):
    from benchmarks import cpusets
    monkeypatch.setattr(cpusets.os, "cpu_count", lambda: 4)
    args = cpusets.parse_args(["--hub-cpus", "0"])
    assert cpusets.variants(args) == {"shared": {"hub": "0-3", "users": ""},
                                      "split": {"hub": "0", "users": "1,2,3"}}
    monkeypatch.setattr(cpusets.os, "cpu_count", lambda: 1)
    with pytest.raises(SystemExit):
        cpusets.parse_args([])


def test_a_threads_time_on_the_cpu_waiting_for_it_and_asleep():
    from benchmarks.histograms import parse_schedstat, thread_time
    before = parse_schedstat("1000000000 500000000 40\n")
    after = parse_schedstat("4000000000 6500000000 90\n")
    assert thread_time(before, after, 10.0) == {
        "wall_s": 10.0, "on_cpu_s": 3.0, "waiting_for_cpu_s": 6.0, "sleeping_s": 1.0,
        "share_waiting": 0.6}
    with pytest.raises(ValueError, match="went down"):
        thread_time(after, before, 10.0)
