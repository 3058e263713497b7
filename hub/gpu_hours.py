"""GPU-hours: what the allocations used, from the usage history that gpu_store keeps (one
row per GPU per allocation, with when it started and ended), and weekly budgets.

Totals are over any period [since, until): an allocation counts with the part of it
inside the period, a running one up to now. One GPU held for an hour is one GPU-hour; a
server with 2 GPUs uses 2 per hour; in shared mode each holder counts its own share.
Budgets are per user per course per week; weeks begin on Monday 00:00 UTC.
"""

import datetime
import json
import re
from dataclasses import dataclass

from prometheus_client.core import REGISTRY, CounterMetricFamily
from sqlalchemy import select

from .gpu_store import gpu_usage
from .gpus import GpuAllocationError, isoformat

BY = ("user", "course", "group", "gpu")
WEEK = datetime.timedelta(days=7)
_RELATIVE = re.compile(r"([0-9]{1,6})([dhm])", re.ASCII)
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


@dataclass(frozen=True)
class Usage:
    user: str
    server_name: str
    gpu_uuid: str
    gpu_index: int
    course: str
    groups: tuple
    started: object  # aware datetimes in UTC
    ended: object = None  # None: still held


class BudgetExceeded(GpuAllocationError):
    """The user used up the course's GPU-hours for this week; str() is for the student."""

    def __init__(self, course, used_hours, budget_hours, resets):
        self.course, self.used_hours, self.budget_hours, self.resets = (
            course, used_hours, budget_hours, resets)
        super().__init__(
            f"You have used {_hours(used_hours)} of your {budget_hours:g} GPU-hours this week "
            f"for {course}. The budget resets on {resets:%A %d %B %Y, %H:%M} UTC "
            f"({isoformat(resets)}).")


def _hours(value):
    return f"{value:.1f}" if value >= 0.1 else f"{value:.2g}"


# -- periods --
def week_start(moment):
    """Monday 00:00 UTC of the week `moment` is in."""
    moment = moment.astimezone(datetime.timezone.utc)
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight - datetime.timedelta(days=midnight.weekday())


def parse_moment(text, now, what="--since"):
    """An aware UTC datetime from "2026-11-30", "2026-11-30T08:00", an ISO time with an
    offset, or "7d" / "12h" / "30m" before `now`; "week" is this week's Monday."""
    value = (text or "").strip()
    match = _RELATIVE.fullmatch(value)
    if match:
        return now - datetime.timedelta(**{_UNITS[match[2]]: int(match[1])})
    if value == "week":
        return week_start(now)
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{what} {value!r}: expected a date (2026-11-30), a time "
                         "(2026-11-30T08:00, UTC unless it says otherwise), 'week', or a span "
                         "back from now such as 7d, 12h or 30m") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc)


def seconds_in(usage, since, until, now):
    """Seconds of `usage` inside [since, until); a running one counts up to `now`."""
    end = usage.ended or now
    start = usage.started if since is None else max(usage.started, since)
    stop = end if until is None else min(end, until)
    return max(0.0, (stop - start).total_seconds())


# -- reading the history --
def load_usage(engine, since=None, until=None, user=None, course=None):
    """The usage rows that overlap [since, until), optionally of one user and course."""
    t = gpu_usage.c
    query = select(gpu_usage).order_by(t.id)
    if since is not None:
        query = query.where(t.ended.is_(None) | (t.ended > since))
    if until is not None:
        query = query.where(t.started < until)
    if user is not None:
        query = query.where(t.user_name == user)
    if course is not None:
        query = query.where(t.course == course)
    with engine.begin() as conn:
        return [Usage(r.user_name, r.server_name, r.gpu_uuid, r.gpu_index, r.course,
                      tuple(json.loads(r.groups or "[]")), r.started, r.ended)
                for r in conn.execute(query)]


def totals(usages, by, since=None, until=None, now=None):
    """[{by: key, "gpu_hours", "gpu_seconds", "allocations"}], largest first. With
    by="group" an allocation counts once for each of its user's groups (none: "")."""
    if by not in BY:
        raise ValueError(f"--by {by!r}: expected one of {', '.join(BY)}")
    sums = {}
    for u in usages:
        seconds = seconds_in(u, since, until, now)
        if by == "group":
            keys = u.groups or ("",)
        else:
            keys = ({"user": u.user, "course": u.course, "gpu": u.gpu_uuid}[by],)
        for key in keys:
            entry = sums.setdefault(key, [0.0, 0])
            entry[0] += seconds
            entry[1] += 1
    rows = [{by: key, "gpu_hours": round(s / 3600, 6), "gpu_seconds": round(s, 3),
             "allocations": n} for key, (s, n) in sums.items()]
    return sorted(rows, key=lambda r: (-r["gpu_seconds"], r[by]))


def report(engine, by="user", since=None, until=None, now=None):
    """What `hub.cli gpu-hours --json` prints and GET /hub/api/gpus/usage returns."""
    rows = totals(load_usage(engine, since, until), by, since, until, now)
    return {"by": by, "since": isoformat(since) if since else None,
            "until": isoformat(until) if until else None, "now": isoformat(now),
            "rows": rows}


# -- budgets --
def check_budget(engine, user, course, budget_hours, now, course_name=None):
    """Raise BudgetExceeded if `user` used `budget_hours` or more of `course` this week."""
    if not budget_hours:
        return
    start = week_start(now)
    used = sum(seconds_in(u, start, None, now)
               for u in load_usage(engine, since=start, user=user, course=course)) / 3600
    if used >= budget_hours:
        raise BudgetExceeded(course_name or course, used, budget_hours, start + WEEK)


# -- metrics --
class GpuSecondsCollector:
    """gpuhub_gpu_seconds_total{course}: GPU seconds used, from the history (so it keeps
    counting across hub restarts), running allocations up to the scrape. No user labels."""

    def __init__(self):
        self.engine, self.clock = None, None

    def describe(self):
        return []  # no sample at registration time: the engine may not be set yet

    def collect(self):
        metric = CounterMetricFamily("gpuhub_gpu_seconds", "GPU seconds used, by course",
                                     labels=["course"])
        if self.engine is not None:
            now = self.clock()
            sums = {}
            for u in load_usage(self.engine):
                sums[u.course] = sums.get(u.course, 0.0) + seconds_in(u, None, None, now)
            for course, seconds in sorted(sums.items()):
                metric.add_metric([course or "none"], seconds)
        yield metric


COLLECTOR = GpuSecondsCollector()
REGISTRY.register(COLLECTOR)


def serve_metrics(allocator):
    """Count the GPU seconds of `allocator`'s database in the hub's /hub/metrics."""
    COLLECTOR.engine, COLLECTOR.clock = allocator.engine, allocator.clock
