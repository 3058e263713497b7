"""GET /hub/api/gpus: every GPU, who holds it and since when, and the line waiting for
one. GET /hub/api/gpus/usage: GPU-hours over a period. Admins only.

Registered with c.JupyterHub.extra_handlers = [(r"/api/gpus", GpuAllocationsHandler),
(r"/api/gpus/usage", GpuUsageHandler)] (JupyterHub puts its hub prefix in front) and given
the allocator and the line through c.JupyterHub.tornado_settings = {"gpuhub_allocator":
allocator, "gpuhub_queue": queue}. JupyterHub 5 logs that extra_handlers is deprecated in
favour of services, but still serves them; a handler inside the hub is what lets this one
read the allocator the spawner uses.
"""

import asyncio
import json

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.scopes import needs_scope
from tornado import web

from . import gpu_hours


class GpuAllocationsHandler(APIHandler):
    @needs_scope("admin:users")
    async def get(self):
        allocator = self.settings.get("gpuhub_allocator")
        if allocator is None:  # a hub without GPUs: an empty inventory, not an error
            self.write(json.dumps({"total": 0, "in_use": 0, "free": 0, "gpus": [],
                                   "queue_length": 0, "queue": []}))
            return
        queue = self.settings.get("gpuhub_queue")

        def report():
            body = allocator.report()
            body["queue"] = queue.report() if queue is not None else []
            body["queue_length"] = len(body["queue"])
            return body
        # the allocator blocks on the database: keep the event loop free
        body = await asyncio.get_running_loop().run_in_executor(None, report)
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(body))


class GpuUsageHandler(APIHandler):
    """?by=user|course|group|gpu (default user), ?since= and ?until= as the CLI takes
    them (2026-11-30, 2026-11-30T08:00Z, week, 7d, 12h, 30m); no since: all time."""

    @needs_scope("admin:users")
    async def get(self):
        allocator = self.settings.get("gpuhub_allocator")
        by = self.get_argument("by", "user")
        now = allocator.clock() if allocator is not None else None
        try:
            if by not in gpu_hours.BY:
                raise ValueError(f"by={by!r}: expected one of {', '.join(gpu_hours.BY)}")
            since, until = (gpu_hours.parse_moment(self.get_argument(name), now, name)
                            if self.get_argument(name, "") else None
                            for name in ("since", "until"))
        except ValueError as e:
            raise web.HTTPError(400, str(e)) from None
        if allocator is None:
            body = {"by": by, "since": None, "until": None, "now": None, "rows": []}
        else:
            body = await asyncio.get_running_loop().run_in_executor(
                None, gpu_hours.report, allocator.engine, by, since, until, now)
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(body))
