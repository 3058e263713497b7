"""Apply the settings to JupyterHub's configuration object.

Only *sets* configuration (never appends), so files in jupyterhub_config.d/ that run
afterwards see a complete, predictable configuration and may change any of it.
"""

import os
import secrets
import sqlite3
import sys

import docker
from traitlets.log import get_logger

from . import auth, courses, culling, gpu_culler, gpus, stop_reasons, tls
from .gpu_api import GpuAllocationsHandler
from .settings import SettingsError, load

TRAEFIK_API_USER = "gpuhub"


def read_or_create_secret(path, nbytes=32):
    """A secret kept on the hub's volume: generated once, the same after restarts."""
    if not os.path.exists(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(nbytes))
    with open(path) as f:
        return f.read().strip()


def known_groups(settings):
    """Groups a catalog or a GPU cap may name: configured ones and those already in the
    hub's database (e.g. synced from the identity provider at earlier logins)."""
    names = set(settings.groups)
    if os.path.exists(settings.database):
        try:
            with sqlite3.connect(settings.database) as db:
                names |= {row[0] for row in db.execute("SELECT name FROM groups")}
        except sqlite3.Error:
            pass  # a fresh database has no groups table yet
    return names


def running_servers(prefix):
    """(user, server) of every user container of this hub that really runs."""
    client = docker.from_env()
    return {(c.labels["org.gpuhub.user"], c.labels.get("org.gpuhub.server", ""))
            for c in client.containers.list(filters={"label": "org.gpuhub.user"})
            if c.name.startswith(f"{prefix}-")}


def courses_and_gpus(s, log):
    """Load and check the catalog and the GPU inventory; reconcile allocations."""
    catalog = courses.load_catalog(s.catalog) if s.catalog else None
    groups = known_groups(s)
    if catalog:
        courses.check_groups(catalog, groups)
        log.info("Courses from %s: %s", s.catalog, ", ".join(c.slug for c in catalog.courses))
    policy = gpus.parse_policy(s.gpu_mode, s.gpu_max_users, s.gpu_group_caps)
    for group in policy.group_caps:
        if group not in groups:
            raise gpus.GpuConfigError(f"GPUHUB_GPU_GROUP_CAPS: group {group!r} does not exist "
                                      "(add it to GPUHUB_GROUPS)")
    inventory = (gpus.parse_inventory(s.gpus, "GPUHUB_GPUS in .env") if s.gpus
                 else gpus.discover_nvml(log))
    gpu_courses = [c.slug for c in catalog.courses if c.gpus] if catalog else []
    if gpu_courses and not inventory:
        raise gpus.GpuConfigError(
            f"courses {', '.join(gpu_courses)} want GPUs, but there are none: list them in "
            "GPUHUB_GPUS (nvidia-smi -L) or let the hub see them through NVML")
    if not inventory:
        return catalog, None
    for gpu in inventory:
        log.info("GPU %s: %s %s %s", gpu.index, gpu.uuid, gpu.name,
                 f"{gpu.memory_mib} MiB" if gpu.memory_mib else "")
    allocator = gpus.GpuAllocator(f"sqlite:///{s.database}", inventory, policy)
    # a crash mid-spawn leaks nothing: what no running container holds is freed now
    for stale in allocator.reconcile(running_servers(s.container_prefix)):
        log.warning("GPU %s released from %s/%s: its server is not running",
                    stale.gpu_uuid, stale.user, stale.server_name)
    log.info("GPUs: %s, policy %s (max %s per GPU), %s held", len(inventory), policy.mode,
             policy.slots, allocator.summary()["in_use"])
    return catalog, allocator


def apply(c, environ=None):
    log = get_logger()
    try:
        s = load(environ)
        certificate = tls.prepare(s.tls_mode, s.domain, s.tls_dir, s.own_tls_dir, log)
        catalog, allocator = courses_and_gpus(s, log)
    except (SettingsError, tls.TLSError, courses.CatalogError, gpus.GpuConfigError) as e:
        # A clear message and a clean exit beat a traceback from deep inside traitlets.
        print(f"\n{e}\n", file=sys.stderr)
        sys.exit(1)

    os.makedirs(s.state_dir, exist_ok=True)
    c.JupyterHub.db_url = f"sqlite:///{s.database}"
    c.JupyterHub.cookie_secret_file = f"{s.state_dir}/jupyterhub_cookie_secret"

    # The public URL is Traefik's; the hub itself speaks plain HTTP on the inside.
    c.JupyterHub.bind_url = s.public_url
    c.JupyterHub.hub_bind_url = "http://0.0.0.0:8081"
    c.JupyterHub.hub_connect_url = s.hub_connect_url
    if certificate:
        c.JupyterHub.ssl_cert, c.JupyterHub.ssl_key = certificate

    # Traefik runs in its own container and reads the routes the hub writes to a file.
    c.JupyterHub.proxy_class = "traefik_file"
    c.TraefikFileProviderProxy.should_start = False
    c.TraefikFileProviderProxy.dynamic_config_file = s.routes_file
    c.TraefikFileProviderProxy.traefik_api_url = s.traefik_api_url
    c.TraefikFileProviderProxy.traefik_api_username = TRAEFIK_API_USER
    c.TraefikFileProviderProxy.traefik_api_password = read_or_create_secret(
        f"{s.state_dir}/traefik-api-password"
    )
    c.TraefikFileProviderProxy.traefik_entrypoint = "https"

    try:
        auth.configure(c, s, log)
    except (SettingsError, NotImplementedError) as e:
        print(f"\n{e}\n", file=sys.stderr)
        sys.exit(1)

    c.JupyterHub.spawner_class = "hub.spawner.GpuhubSpawner"
    c.DockerSpawner.image = s.user_image
    c.DockerSpawner.network_name = s.user_network
    c.DockerSpawner.use_internal_ip = True
    c.DockerSpawner.prefix = s.container_prefix
    c.DockerSpawner.notebook_dir = s.notebook_dir
    # a named volume per user: work survives container removal and image upgrades
    c.DockerSpawner.volumes = {f"{s.volume_prefix}-{{username}}": s.notebook_dir}
    # containers go when their server stops; volumes stay
    c.DockerSpawner.remove = True
    c.GpuhubSpawner.container_user = s.container_user
    c.GpuhubSpawner.security_host_config = {
        # reap kernels' zombies: the TF base image has no init of its own
        "init": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "pids_limit": 4096,
        **({"shm_size": s.shm_size} if s.shm_size else {}),
    }
    c.DockerSpawner.mem_limit = s.mem_limit
    c.DockerSpawner.cpu_limit = s.cpu_limit
    c.DockerSpawner.start_timeout = s.start_timeout
    c.DockerSpawner.http_timeout = s.ready_timeout
    c.Spawner.default_url = "/lab"
    # leave users' servers running when the hub restarts; it finds them again
    c.JupyterHub.cleanup_servers = False

    services, roles = [], []
    if s.idle_timeout:
        services = [{
            "name": "idle-culler",
            "command": [sys.executable, "-m", "jupyterhub_idle_culler",
                        f"--timeout={s.idle_timeout}"],
        }]
        roles = [{
            "name": "idle-culler",
            "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
            "services": ["idle-culler"],
        }]
    # what jupyterhub-idle-culler lacks: GPU sessions, per-course timeouts (hub.gpu_culler)
    cull_policy = culling.hub_policy(s, catalog, allocator)
    more_services, more_roles = gpu_culler.service(cull_policy, f"sqlite:///{s.database}",
                                                   s.gpu_usage_source)
    c.JupyterHub.services = services + more_services
    c.JupyterHub.load_roles = roles + more_roles
    c.GpuhubSpawner.cull_policy = cull_policy

    # with groups synced from the identity provider JupyterHub refuses load_groups; the
    # names in GPUHUB_GROUPS still count as known (known_groups) for catalog and caps
    c.JupyterHub.load_groups = {} if auth.manages_groups(s) else {group: {} for group in s.groups}
    c.GpuhubSpawner.catalog = catalog
    c.GpuhubSpawner.gpu_allocator = allocator
    c.JupyterHub.tornado_settings = {"gpuhub_allocator": allocator}
    c.JupyterHub.extra_handlers = [(r"/api/gpus", GpuAllocationsHandler)]

    c.JupyterHub.template_vars = {
        "gpuhub_lab_name": s.lab_name,
        # the home page says why the culler stopped a server, and when servers stop
        "gpuhub_stop_notices": stop_reasons.home_page_notices(
            stop_reasons.StopReasons(f"sqlite:///{s.database}")),
        "gpuhub_culling": culling.summary(cull_policy, s.idle_timeout),
    }
    return s
