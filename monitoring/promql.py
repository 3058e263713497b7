"""The metric names a PromQL expression reads: what a dashboard needs the hub to expose.

Not a full PromQL parser: it drops what cannot be a metric name (strings, label
matchers in braces, ranges in brackets, label lists after by/without/on/ignoring/
group_left/group_right, numbers with units) and keeps the identifiers that are not a
function call, an aggregation, a keyword or an operator. Enough for the expressions of
monitoring/grafana-dashboard.json; tests/test_monitoring.py checks it on cases of each kind.
"""

import json
import re

KEYWORDS = frozenset("""
by without on ignoring group_left group_right bool offset and or unless atan2
sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk limit_ratio
inf nan
""".split())
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.$:])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")


def metric_names(expr):
    """The set of metric names `expr` selects."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries, $__rate_interval too
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\b\d+(\.\d+)?(e[+-]?\d+)?[a-z]*\b", " ", text, flags=re.I)  # numbers, 5m
    names = set()
    for m in _IDENT.finditer(text):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


def dashboard_exprs(dashboard):
    """Every query expression in a Grafana dashboard (panels, rows' panels)."""
    def panels(items):
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))
    return [t["expr"] for p in panels(dashboard.get("panels", [])) for t in p.get("targets", [])
            if t.get("expr")]


def dashboard_metrics(path):
    """Every metric name the dashboard at `path` queries."""
    with open(path) as f:
        dashboard = json.load(f)
    return set().union(*(metric_names(e) for e in dashboard_exprs(dashboard)))
