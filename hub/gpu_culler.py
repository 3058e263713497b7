"""The gpu-culler: a hub-managed service that stops servers by the rules in hub.culling.

Why a service of our own beside jupyterhub-idle-culler, not a patch to it: the idle
culler has one timeout for all servers and only sees the activity servers report
(jupyterhub-idle-culler #45, #25); its code has no hook for a per-server decision. It
keeps doing what it does (GPUHUB_IDLE_TIMEOUT for every server); this service adds what
it lacks, with the same least scopes (list:users, read:users:activity, read:servers,
delete:servers) and nothing more: per-course idle timeouts, the shorter GPU idle timeout,
the GPU maximum age, and GPU utilisation. Each round it

1. samples every GPU's utilisation from a `UsageSource` (NVML in production);
2. reads who holds which GPU since when (the allocator's table, read only);
3. lists the ready servers through the REST API, decides with hub.culling.decide, keeps
   the reason (hub.stop_reasons) and stops the server with DELETE (its volume stays).

Run by the hub (hub.config): python -m hub.gpu_culler --policy JSON --db-url URL --usage nvml
"""

import argparse
import asyncio
import datetime
import json
import logging
import os
import sys
from urllib.parse import quote

from sqlalchemy import create_engine, select
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from . import culling, settings
from .gpu_store import gpu_slots
from .stop_reasons import StopReasons

log = logging.getLogger("gpu-culler")
SCOPES = ["list:users", "read:users:activity", "read:servers", "delete:servers"]
PAGE = "application/jupyterhub-pagination+json"


# -- where utilisation comes from --
class UsageSource:
    """sample() -> {gpu id (lower case): utilisation in percent}; GPUs left out are not
    measured, and their servers fall back to activity (hub.culling.decide)."""

    def sample(self):
        return {}


class NvmlUsage(UsageSource):
    """NVML (nvidia-ml-py), where the hub's container sees the GPUs. Each GPU under its
    UUID and its index, so either form in GPUHUB_GPUS finds it."""

    def __init__(self):
        self.pynvml = None
        try:
            import pynvml
            pynvml.nvmlInit()
            self.pynvml = pynvml
            log.info("GPU utilisation from NVML: %s GPUs", pynvml.nvmlDeviceGetCount())
        except Exception as e:  # no library, no driver, no device: nothing is measured
            log.info("GPU utilisation not measured: NVML did not start (%s); GPU servers "
                     "are judged by their activity and maximum age", e)

    def sample(self):
        if self.pynvml is None:
            return {}
        nvml, usage = self.pynvml, {}
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                uuid = nvml.nvmlDeviceGetUUID(handle)
                uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
                percent = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                usage[uuid.lower()] = usage[str(index)] = percent
        except Exception as e:  # a GPU that fails mid-query is not measured this round
            log.warning("NVML failed while sampling utilisation: %s", e)
        return usage


class FileUsage(UsageSource):
    """A JSON file {"GPU-...": percent, ...} that something else writes (the tests; or an
    exporter of your own). A missing or malformed file measures nothing."""

    def __init__(self, path):
        self.path = path

    def sample(self):
        try:
            with open(self.path) as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("GPU utilisation file %s unreadable: %s", self.path, e)
            return {}
        if not isinstance(data, dict):
            log.warning("GPU utilisation file %s: expected a mapping of GPU to percent", self.path)
            return {}
        return {str(k).lower(): float(v) for k, v in data.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}


def usage_source(spec):
    """GPUHUB_GPU_USAGE_SOURCE: nvml, none, or file:/absolute/path."""
    if spec == "nvml":
        return NvmlUsage()
    if spec.startswith("file:"):
        return FileUsage(spec[len("file:"):])
    return UsageSource()


# -- what the hub knows --
def read_holdings(engine):
    """{(user, server): (gpu ids in lower case, when it got them)} from the allocator's
    table (read only: the allocator alone writes it)."""
    held = {}
    with engine.connect() as conn:
        for r in conn.execute(select(gpu_slots.c.user_name, gpu_slots.c.server_name,
                                     gpu_slots.c.gpu_uuid, gpu_slots.c.since)):
            uuids, since = held.get((r.user_name, r.server_name), ((), r.since))
            held[(r.user_name, r.server_name)] = (uuids + (r.gpu_uuid.lower(),), min(since, r.since))
    return held


def parse_time(text):
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def ready_servers(users, holdings):
    """culling.Server for every ready server in a GET /users answer."""
    for user in users:
        for name, server in (user.get("servers") or {}).items():
            if not server.get("ready"):
                continue
            gpus, since = holdings.get((user["name"], name), ((), None))
            yield culling.Server(user["name"], name, (server.get("user_options") or {}).get("course"),
                                 parse_time(server.get("last_activity")), gpus, since)


class Culler:
    def __init__(self, api_url, token, policy, engine, reasons, source, clock=None):
        self.api_url, self.token, self.policy = api_url.rstrip("/"), token, policy
        self.engine, self.reasons, self.source = engine, reasons, source
        self.clock = clock or (lambda: datetime.datetime.now(datetime.timezone.utc))
        self.low_since = {}
        self.client = AsyncHTTPClient(force_instance=True)

    async def api(self, method, path, **kwargs):
        headers = {"Authorization": f"token {self.token}", "Accept": PAGE}
        return await self.client.fetch(HTTPRequest(f"{self.api_url}{path}", method=method,
                                                   headers=headers, request_timeout=30, **kwargs))

    async def users(self):
        users, offset = [], 0
        while True:
            page = json.loads((await self.api("GET", f"/users?state=ready&offset={offset}")).body)
            users += page["items"]
            nxt = (page.get("_pagination") or {}).get("next")
            if not nxt:
                return users
            offset = nxt["offset"]

    async def round(self):
        loop = asyncio.get_running_loop()
        now = self.clock()
        samples = await loop.run_in_executor(None, self.source.sample)
        default = self.policy.default
        self.low_since = culling.track_low_use(self.low_since, samples,
                                               default.gpu_idle_percent, now)
        holdings = await loop.run_in_executor(None, read_holdings, self.engine)
        kept = await loop.run_in_executor(None, self.reasons.all)
        stopped = []
        for server in ready_servers(await self.users(), holdings):
            if (server.user, server.name) in kept:  # running again: the old reason is old news
                await loop.run_in_executor(None, self.reasons.forget, server.user, server.name)
            limits = self.policy.limits(server.course)
            stop = culling.decide(server, limits, self.low_since, now, self.policy.exclusive)
            if stop:
                await self.stop(server, stop, now)
                stopped.append((server, stop))
        return stopped

    async def stop(self, server, stop, now):
        log.info("Stopping %s/%s: %s (%s)", server.user, server.name, stop.reason, stop.message)
        await asyncio.get_running_loop().run_in_executor(
            None, self.reasons.record, server.user, server.name, stop.reason, stop.message, now)
        user = quote(server.user, safe="")
        path = (f"/users/{user}/servers/{quote(server.name, safe='')}" if server.name
                else f"/users/{user}/server")
        try:
            await self.api("DELETE", path)
        except Exception as e:  # already stopping, or gone: the next round looks again
            log.warning("Stopping %s/%s failed: %s", server.user, server.name, e)

    async def run(self, interval):
        log.info("gpu-culler: a round every %ss; policy %s", interval, self.policy.as_json())
        while True:
            try:
                await self.round()
            except Exception:
                log.exception("gpu-culler round failed; trying again in %ss", interval)
            await asyncio.sleep(interval)


def service(policy, db_url, usage, python=sys.executable, db_password=""):
    """The JupyterHub service and role for this culler, or ([], []) if nothing to enforce.
    `db_password`: PostgreSQL's, for libpq (PGPASSWORD), never on the command line."""
    if not policy.enforced():
        return [], []
    # a managed service gets only the environment given here: find the hub package
    hub_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return ([{
        "name": "gpu-culler",
        "command": [python, "-m", "hub.gpu_culler", "--db-url", db_url, "--usage", usage,
                    "--policy", json.dumps(policy.as_json(), separators=(",", ":"))],
        "environment": {"PYTHONPATH": hub_dir, **({"PGPASSWORD": db_password} if db_password else {})},
    }], [{"name": "gpu-culler", "scopes": list(SCOPES), "services": ["gpu-culler"]}])


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="[%(levelname).1s %(asctime)s gpu-culler] %(message)s")
    parser = argparse.ArgumentParser(prog="python -m hub.gpu_culler")
    parser.add_argument("--policy", required=True, help="hub.culling.Policy as JSON")
    parser.add_argument("--db-url", required=True, help="the hub's database")
    parser.add_argument("--usage", default="nvml", help="nvml, none or file:/path")
    args = parser.parse_args(argv)
    policy = culling.Policy.from_json(json.loads(args.policy))
    engine = create_engine(args.db_url)
    api_url, token = settings.jupyterhub_service()
    culler = Culler(api_url, token, policy, engine, StopReasons(args.db_url),
                    usage_source(args.usage))
    asyncio.run(culler.run(policy.interval()))


if __name__ == "__main__":
    main()
