"""GET /hub/api/gpus: every GPU, who holds it and since when. Admins only.

Registered with c.JupyterHub.extra_handlers = [(r"/api/gpus", GpuAllocationsHandler)]
(JupyterHub puts its hub prefix in front) and given the allocator through
c.JupyterHub.tornado_settings = {"gpuhub_allocator": allocator}. JupyterHub 5 logs that
extra_handlers is deprecated in favour of services, but still serves them; a handler
inside the hub is what lets this one read the allocator the spawner uses.
"""

import asyncio
import json

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.scopes import needs_scope


class GpuAllocationsHandler(APIHandler):
    @needs_scope("admin:users")
    async def get(self):
        allocator = self.settings.get("gpuhub_allocator")
        if allocator is None:  # a hub without GPUs: an empty inventory, not an error
            self.write(json.dumps({"total": 0, "in_use": 0, "free": 0, "gpus": []}))
            return
        # the allocator blocks on the database: keep the event loop free
        body = await asyncio.get_running_loop().run_in_executor(None, allocator.report)
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(body))
