"""Apply the settings to JupyterHub's configuration object, in named steps as TLJH's
configurer.py does: `apply(c)` reads the settings (hub.settings), runs the start-up work
inside one error boundary (hub.startup), then calls each `update_*` step below.

The steps only *set* configuration (never append, no I/O), so files in
jupyterhub_config.d/ that run afterwards see a complete, predictable configuration and
may change any of it. A new setting is applied in the step of its concern (proxy, auth,
spawner, services, pages); start-up work that needs I/O or may fail goes in
hub.startup, so its problems are reported with all the others.
"""

import sys

from traitlets.log import get_logger

from . import auth, culling, gpu_culler, metrics, origins, routes_file, settings, startup, stop_reasons
from .gpu_api import GpuAllocationsHandler, GpuUsageHandler

TRAEFIK_API_USER = "gpuhub"


def update_hub(c, s, ready):
    c.JupyterHub.db_url = s.db_url
    c.JupyterHub.cookie_secret_file = f"{s.state_dir}/jupyterhub_cookie_secret"
    # The public URL is Traefik's; the hub itself speaks plain HTTP on the inside.
    c.JupyterHub.bind_url = s.public_url
    c.JupyterHub.hub_bind_url = "http://0.0.0.0:8081"
    c.JupyterHub.hub_connect_url = s.hub_connect_url
    if ready.certificate:
        c.JupyterHub.ssl_cert, c.JupyterHub.ssl_key = ready.certificate
    # leave users' servers running when the hub restarts; it finds them again
    c.JupyterHub.cleanup_servers = False


def update_proxy(c, s, ready):
    # Traefik runs in its own container and reads the routes the hub writes to a file.
    # jupyterhub-traefik-proxy's file provider, refusing routes with rule syntax (hub/proxy.py)
    c.JupyterHub.proxy_class = "hub.proxy.GpuhubTraefikProxy"
    routes_file.install()  # mode 640: Traefik reads it by group, without DAC_OVERRIDE
    c.TraefikFileProviderProxy.should_start = False
    c.TraefikFileProviderProxy.dynamic_config_file = s.routes_file
    c.TraefikFileProviderProxy.traefik_api_url = s.traefik_api_url
    c.TraefikFileProviderProxy.traefik_api_username = TRAEFIK_API_USER
    c.TraefikFileProviderProxy.traefik_api_password = ready.traefik_api_password
    c.TraefikFileProviderProxy.traefik_entrypoint = "https"


def update_origins(c, s, ready):
    # each user's server on its own origin, or all on the hub's (hub/origins.py)
    origins.configure(c, s)


def update_auth(c, s, ready):
    auth.apply(c, s, ready.login, get_logger())
    # with groups synced from the identity provider JupyterHub refuses load_groups; the
    # names in GPUHUB_GROUPS still count as known (startup.known_groups) for catalog and caps
    c.JupyterHub.load_groups = {} if auth.manages_groups(s) else {group: {} for group in s.groups}


def update_spawner(c, s, ready):
    c.JupyterHub.spawner_class = "hub.spawner.GpuhubSpawner"
    c.DockerSpawner.image = s.user_image
    # every server gets a network of its own (hub/networks.py), named like its container
    c.DockerSpawner.use_internal_ip = True
    c.GpuhubSpawner.server_subnets = s.server_subnets
    c.GpuhubSpawner.network_pool_size = s.network_pool
    c.GpuhubSpawner.user_egress = s.user_egress
    c.GpuhubSpawner.proxy_services = list(s.proxy_services)
    c.DockerSpawner.prefix = s.container_prefix
    c.DockerSpawner.notebook_dir = s.notebook_dir
    # a named volume per user: work survives container removal and image upgrades
    c.DockerSpawner.volumes = {f"{s.volume_prefix}-{{username}}": s.notebook_dir}
    # containers go when their server stops; volumes stay
    c.DockerSpawner.remove = True
    c.GpuhubSpawner.container_user = s.container_user
    c.GpuhubSpawner.home_quota = s.home_quota  # soft; hard quotas: docs/operations.md
    c.GpuhubSpawner.security_host_config = {
        # reap kernels' zombies: the TF base image has no init of its own
        "init": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "pids_limit": s.pids_limit,
        **({"storage_opt": {"size": s.disk_limit}} if s.disk_limit else {}),
        **({"shm_size": s.shm_size} if s.shm_size else {}),
        **({"cpuset_cpus": s.cpuset_cpus} if s.cpuset_cpus else {}),
    }
    c.DockerSpawner.mem_limit = s.mem_limit
    c.DockerSpawner.cpu_limit = s.cpu_limit
    c.DockerSpawner.start_timeout = s.start_timeout
    c.DockerSpawner.http_timeout = s.ready_timeout
    # the hub's API opens once every server found at start is checked: spawns a crash cut
    # short are settled at once (hub/spawner.py _settle_cut_short_spawn), so nobody can stop
    # one mid-check (JupyterHub answers 500 then); 30 s instead of 10 for a slow engine
    c.JupyterHub.init_spawners_timeout = 30
    c.Spawner.default_url = "/lab"
    c.GpuhubSpawner.catalog = ready.catalog
    c.GpuhubSpawner.gpu_allocator = ready.allocator
    c.GpuhubSpawner.gpu_queue = ready.queue
    # the spawner tells JupyterLab when the GPU session ends (GPUHUB_GPU_DEADLINE)
    c.GpuhubSpawner.cull_policy = culling.hub_policy(s, ready.catalog, ready.allocator)
    if s.deploy_mode == "swarm":
        # servers as Swarm services on any node; the same names, catalog and GPUs (hub/swarm.py)
        c.JupyterHub.spawner_class = "hub.spawner.GpuhubSwarmSpawner"
        c.SwarmSpawner.network_name = s.swarm_network
        c.GpuhubSwarmSpawner.homes = s.swarm_homes
        c.GpuhubSwarmSpawner.nfs_export = s.swarm_nfs


def update_services(c, s, ready):
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
    more_services, more_roles = gpu_culler.service(
        culling.hub_policy(s, ready.catalog, ready.allocator), s.db_url, s.gpu_usage_source,
        db_password=s.postgres_password)
    # the admin CLI (hub/admin.py, `gpuhub` in the hub container): reads servers, stops
    # them; its token is in the state folder, readable by the hub's user only
    if ready.cli_token:
        services.append({"name": "gpuhub-cli", "api_token": ready.cli_token})
        roles.append({"name": "gpuhub-cli", "services": ["gpuhub-cli"],
                      "scopes": ["list:users", "read:users", "read:servers", "delete:servers"]})
    # Prometheus scrapes /hub/metrics with this token; its role has no other scope
    # (docs/metrics.md)
    metrics_service, metrics_role = metrics.service(ready.metrics_token)
    c.JupyterHub.authenticate_prometheus = True
    c.JupyterHub.services = services + more_services + [metrics_service]
    c.JupyterHub.load_roles = roles + more_roles + [metrics_role]
    # GET /hub/api/gpus (with the line) and /hub/api/gpus/usage, served inside the hub so
    # that they read the spawner's allocator and line
    c.JupyterHub.tornado_settings = {"gpuhub_allocator": ready.allocator,
                                     "gpuhub_queue": ready.queue}
    c.JupyterHub.extra_handlers = [(r"/api/gpus", GpuAllocationsHandler),
                                   (r"/api/gpus/usage", GpuUsageHandler)]


def update_pages(c, s, ready):
    c.JupyterHub.template_vars = {
        "gpuhub_lab_name": s.lab_name,
        "gpuhub_dev_login": s.auth_provider == "dummy",
        # the home page says why the gpu-culler stopped a server, and when servers stop
        "gpuhub_stop_notices": stop_reasons.home_page_notices(stop_reasons.StopReasons(s.db_url)),
        "gpuhub_culling": culling.summary(culling.hub_policy(s, ready.catalog, ready.allocator),
                                          s.idle_timeout),
    }


UPDATES = (update_hub, update_proxy, update_origins, update_auth, update_spawner, update_services,
           update_pages)


class StartupProblems(SystemExit):
    """Every problem that keeps the hub from starting, in one message; exits with 1."""

    def __init__(self, problems):
        self.problems = list(problems)
        self.message = ("gpuhub cannot start, fix these problems (settings are in .env):\n"
                        + "\n".join(f"  - {p}" for p in self.problems))
        super().__init__(1)

    def __str__(self):
        return self.message


def apply(c, environ=None):
    """Configure JupyterHub from the environment; returns the Settings. With any problem
    -- settings, TLS, catalog, GPUs, login -- print them all and exit (the one place)."""
    log = get_logger()
    s, problems = settings.read(environ)
    ready = startup.prepare(s, problems, log)
    if problems:
        # a clear message and one clean exit beat a traceback from deep inside traitlets
        error = StartupProblems(problems)
        print(f"\n{error}\n", file=sys.stderr)
        raise error
    for update in UPDATES:
        update(c, s, ready)
    return s
