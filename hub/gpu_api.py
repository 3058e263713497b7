"""GET /hub/api/gpus: who holds which GPU since when (admin scope)."""

import asyncio
import json

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.scopes import needs_scope


def report(allocator):
    """Every GPU with its holders; the same for the REST API and the CLI."""
    holders = {}
    for a in allocator.holdings():
        holders.setdefault(a.gpu_uuid, []).append(
            {"user": a.user, "server": a.server_name, "since": a.since.isoformat()})
    return {
        **allocator.summary(),
        "mode": allocator.policy.mode,
        "gpus": [{"index": g.index, "uuid": g.uuid, "name": g.name, "memory_mib": g.memory_mib,
                  "holders": holders.get(g.uuid, [])} for g in allocator.inventory],
    }


class GpuAllocationsHandler(APIHandler):
    @needs_scope("admin:users")
    async def get(self):
        allocator = self.settings.get("gpuhub_allocator")
        if allocator is None:
            self.write(json.dumps({"total": 0, "in_use": 0, "free": 0, "gpus": []}))
            return
        body = await asyncio.get_running_loop().run_in_executor(None, report, allocator)
        self.write(json.dumps(body))
