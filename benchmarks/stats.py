"""Summaries of repeated measurements: plain functions, no Docker."""

import math
import statistics


def percentile(values, p):
    """Nearest-rank percentile: the smallest sample with at least p % of the samples at or
    below it. With 3 runs the p95 is the maximum: it never invents a value between runs."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def summary(values, unit, percentiles=(95,)):
    """Median, percentiles, min and max of the samples that exist (None = failed run)."""
    values = [v for v in values if v is not None]
    result = {"unit": unit, "runs": len(values)}
    if not values:
        return result
    result["median"] = statistics.median(values)
    for p in percentiles:
        result[f"p{p}"] = percentile(values, p)
    result.update({"min": min(values), "max": max(values),
                   "samples": [round(v, 4) for v in values]})
    return result


def ratio(numerator, denominator):
    """numerator / denominator of two summaries' medians, or None when one is missing."""
    a, b = numerator.get("median"), denominator.get("median")
    return round(a / b, 3) if a is not None and b else None


def paired_ratios(a_samples, b_samples):
    """Median of the per-round ratios a[i] / b[i]: rounds ran back to back, so each pair
    saw the same machine load; a drift over the run cancels out of every pair."""
    pairs = [a / b for a, b in zip(a_samples, b_samples) if a is not None and b]
    return round(statistics.median(pairs), 3) if pairs else None
