"""gpuhub's own metrics next to JupyterHub's at /hub/metrics, and who may read them.

All of them live in prometheus_client's default REGISTRY, which JupyterHub serves:
- here: the spawn duration by course;
- hub.gpus: GPUs total and in use, refusals, the length of the line for GPUs;
- hub.gpu_hours: GPU seconds by course (a collector reading the allocation history).

docs/metrics.md lists them; monitoring/grafana-dashboard.json queries them (a test checks
that every metric it queries exists on a running hub).
"""

import time
from contextlib import contextmanager

from prometheus_client import Histogram

SERVICE = "metrics"
SCOPES = ["read:metrics"]  # nothing else: not users, not servers, not even the user list

# JupyterHub's own spawn-duration buckets, so both histograms read alike in one panel
SPAWN_DURATION = Histogram(
    "gpuhub_spawn_duration_seconds",
    "Seconds the spawner took to start a server (after any wait in line for a GPU), by course",
    ["course", "status"],
    buckets=[0.5, 1, 2.5, 5, 10, 15, 30, 60, 120, 180, 300, 600, float("inf")])
NO_COURSE = "none"  # the label without a catalog, as gpuhub_gpu_seconds has it


def service(token):
    """(service, role) for JupyterHub: the `metrics` service with `token`, and a role whose
    only scope is read:metrics."""
    return ({"name": SERVICE, "api_token": token},
            {"name": SERVICE, "scopes": list(SCOPES), "services": [SERVICE]})


@contextmanager
def spawn_timer(course_slug, clock=time.monotonic):
    """Time a spawn: observed as status=success if the block returns, failure if it
    raises (a cancelled start too). Course slugs come from the admin's catalog, so the
    label has as many values as there are courses; user names never become labels."""
    started = clock()
    status = "failure"
    try:
        yield
        status = "success"
    finally:
        SPAWN_DURATION.labels(course=course_slug or NO_COURSE, status=status).observe(clock() - started)
