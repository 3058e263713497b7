"""What the guard allows: gpuhub's names, its container user and its GPUs.

Read once at start-up from the variables the hub reads (`.env`, passed by compose),
parsed by the hub's own parsers (hub/settings.py is copied into the guard's image), so
the hub and the guard cannot disagree about what a setting means.
"""

import os
from dataclasses import dataclass

from hub.settings import SETTINGS, SettingsError

# the services of the guard's own compose project that may join a student's network,
# besides the proxy services (GPUHUB_PROXY_SERVICES)
JOINING_SERVICES = ("hub", "egress")
COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"
USER_LABEL = "org.gpuhub.user"
SERVER_LABEL = "org.gpuhub.server"
MAX_BODY = 1 << 20  # DockerSpawner's create body is about 3 KiB
# older API versions change meanings (below 1.24, `start` still takes a HostConfig)
MIN_API_VERSION = (1, 40)

@dataclass(frozen=True)
class Policy:
    container_prefix: str
    volume_prefix: str
    container_user: str
    user_network: str
    gpus: frozenset = frozenset()
    bind_paths: tuple = ()
    project: str = ""  # the guard's own compose project, whose hub and proxy join networks
    proxy_services: tuple = ("proxy",)
    max_body: int = MAX_BODY
    deploy_mode: str = "single"  # "swarm": the service rows are open (guard/service.py)
    swarm_network: str = "gpuhub-swarm"
    swarm_nfs: str = ""

    @property
    def joining_services(self):
        return JOINING_SERVICES + tuple(self.proxy_services)


# setting (hub/settings.py) -> Policy field
FROM_SETTINGS = {
    "GPUHUB_CONTAINER_PREFIX": "container_prefix",
    "GPUHUB_VOLUME_PREFIX": "volume_prefix",
    "GPUHUB_CONTAINER_USER": "container_user",
    "GPUHUB_USER_NETWORK": "user_network",
    "GPUHUB_GUARD_BIND_PATHS": "bind_paths",
    "GPUHUB_PROXY_SERVICES": "proxy_services",
    "GPUHUB_MODE": "deploy_mode",
    "GPUHUB_SWARM_NETWORK": "swarm_network",
    "GPUHUB_SWARM_NFS": "swarm_nfs",
}


def from_environ(environ=None, project=""):
    """The policy from the environment; SettingsError naming each bad variable."""
    environ = os.environ if environ is None else environ
    values, problems = {"project": project}, []
    by_name = {s.name: s for s in SETTINGS}
    for name, key in FROM_SETTINGS.items():
        setting = by_name[name]
        raw = environ.get(name) or setting.default
        try:
            values[key] = setting.parse(raw)
        except ValueError as e:
            problems.append(f"{name}={raw!r} is not valid: expected {e}")
    # the inventory as the hub's parser reads it; the hub names GPUs by these `uuid`s
    setting, raw = by_name["GPUHUB_GPUS"], environ.get("GPUHUB_GPUS", "")
    try:
        values["gpus"] = frozenset(g.uuid.lower() for g in setting.parse(raw))
    except ValueError as e:
        problems.append(f"GPUHUB_GPUS={raw!r} is not valid: expected {e}")
    if problems:
        raise SettingsError(problems)
    return Policy(**values)
