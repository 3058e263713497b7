"""A Prometheus histogram between two scrapes, and a thread's scheduler statistics
between two readings: plain functions, no Docker.

The hub measures its own event loop (jupyterhub_event_loop_interval_seconds: every 50 ms
it notes how late its sleep woke up). Two scrapes, before and after a burst, give what
happened during the burst: the difference of the cumulative buckets.
"""

import math

from prometheus_client.parser import text_string_to_metric_families


def buckets(exposition, name):
    """{upper bound: cumulative count}, the sum and the count of histogram `name` in a
    /metrics text (summed over its label sets)."""
    cumulative, total, count = {}, 0.0, 0.0
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            if s.name == f"{name}_bucket":
                le = float(s.labels["le"])
                cumulative[le] = cumulative.get(le, 0.0) + s.value
            elif s.name == f"{name}_sum":
                total += s.value
            elif s.name == f"{name}_count":
                count += s.value
    if not cumulative:
        raise ValueError(f"no histogram {name} in the exposition")
    return {"buckets": cumulative, "sum": total, "count": count}


def delta(before, after):
    """What was observed between two scrapes of one histogram (`buckets()` of each)."""
    if set(before["buckets"]) != set(after["buckets"]):
        raise ValueError("the two scrapes have different buckets")
    changed = {le: after["buckets"][le] - before["buckets"][le] for le in after["buckets"]}
    if any(v < 0 for v in changed.values()):
        raise ValueError("a bucket went down between the scrapes: the process restarted")
    return {"buckets": changed, "sum": after["sum"] - before["sum"],
            "count": after["count"] - before["count"]}


def quantile_bound(hist, q):
    """The upper bound of the bucket holding the q-quantile (0 < q <= 1): at least a
    fraction q of the observations were at most this. No interpolation inside a bucket
    (histogram_quantile's would invent a value); None without observations."""
    ordered = sorted(hist["buckets"].items())
    total = ordered[-1][1] if ordered else 0
    if not total:
        return None
    for le, cumulative in ordered:
        if cumulative >= q * total - 1e-9:
            return le
    return math.inf


def share_above(hist, threshold):
    """Fraction of the observations above `threshold` (a bucket bound); None without any."""
    ordered = dict(hist["buckets"])
    if threshold not in ordered:
        raise ValueError(f"{threshold} is not a bucket bound of this histogram")
    total = ordered[max(ordered)]
    return (total - ordered[threshold]) / total if total else None


def loop_summary(hist, resolution=0.05):
    """The event loop during a window: ticks, mean delay, p99 and max as bucket bounds,
    seconds it spent late (sum minus the resolution each tick counts at least)."""
    count = hist["count"]
    return {
        "ticks": int(count),
        "mean_delay_s": round(hist["sum"] / count, 4) if count else None,
        "p99_at_most_s": quantile_bound(hist, 0.99),
        "max_at_most_s": quantile_bound(hist, 1.0),  # the longest block, bounded above
        "share_over_0.1s": round(share_above(hist, 0.1), 4) if count else None,
        "share_over_1s": round(share_above(hist, 1.0), 4) if count else None,
        "late_s": round(max(0.0, hist["sum"] - resolution * count), 2),
    }


# -- the hub's main thread: on the CPU, waiting for one, or neither --
def parse_schedstat(text):
    """/proc/<pid>/task/<tid>/schedstat: (ns on a CPU, ns runnable but waiting for one)."""
    run, wait, _ = text.split()
    return int(run), int(wait)


def thread_time(before, after, wall_s):
    """How a thread spent `wall_s` seconds between two schedstat readings: on a CPU (the
    hub's own work), runnable but waiting for a CPU (starved), or sleeping (idle, or
    blocked on I/O or a lock)."""
    on_cpu = (after[0] - before[0]) / 1e9
    waiting = (after[1] - before[1]) / 1e9
    if on_cpu < 0 or waiting < 0:
        raise ValueError("schedstat went down: another thread or a restarted process")
    return {"wall_s": round(wall_s, 2), "on_cpu_s": round(on_cpu, 2),
            "waiting_for_cpu_s": round(waiting, 2),
            "sleeping_s": round(max(0.0, wall_s - on_cpu - waiting), 2),
            "share_waiting": round(waiting / wall_s, 3) if wall_s else None}
