"""Start-up work that needs I/O, inside one error boundary.

`prepare(settings, problems, log)` runs every step the hub needs before it can be
configured: the TLS certificate, the Traefik API password, the login (checks, OIDC
discovery, crypt key), the course catalog, the known groups, the GPU inventory and its
allocations. A step that fails adds its problems (each naming its variable, file or
field) to `problems` and the next step runs anyway, so the admin sees every problem in
one message (hub.config prints it and exits once). A step whose settings did not parse
is skipped: those settings are already in `problems`.

A new start-up step: a function `_step_x(settings, ready, log)` here, added to `STEPS`
with the settings it needs; it raises one of `ERRORS` for a problem an admin can fix and
lets anything else (a bug, a full disk) through as a traceback.
"""

import os
from dataclasses import dataclass

import docker
from sqlalchemy import create_engine, inspect, select

from . import auth, courses, database, gpu_queue_store, gpus, origins, state_dirs, swarm, tls
from .gpu_store import GpuAllocator
from .secretfiles import read_or_create_secret
from .settings import SettingsError

# the problems an admin can fix; each carries a message naming the variable, file or field
ERRORS = (SettingsError, tls.TLSError, courses.CatalogError, gpus.GpuConfigError,
          state_dirs.StateDirError, database.DatabaseError)


@dataclass
class Ready:
    """What the steps produced, for hub.config to apply."""
    certificate: tuple = None  # (cert, key) paths, or None with letsencrypt
    traefik_api_password: str = ""
    metrics_token: str = ""  # the `metrics` service's token (GPUHUB_METRICS_TOKEN or generated)
    login: auth.Login = None
    catalog: courses.Catalog = None
    groups: frozenset = frozenset()  # known group names: GPUHUB_GROUPS and the database's
    inventory: tuple = ()
    allocator: GpuAllocator = None
    queue: object = None  # hub.gpu_queue_store.GpuQueue, the line in front of the allocator
    volumes_writable: bool = True  # false: the volume step named them; nothing writes there
    cli_token: str = ""  # the admin CLI's API token (hub/admin.py), in the state folder
    database_reachable: bool = True  # false: the database step said why; nothing reads it


def problems_of(error):
    """The lines of one error: SettingsError and CatalogError carry several."""
    return list(getattr(error, "problems", None) or [str(error)])


def known_groups(configured, db_url):
    """Groups a catalog or a GPU cap may name: configured ones and those already in the
    hub's database (e.g. synced from the identity provider at earlier logins).

    Read through JupyterHub's own ORM model (its table and column names) on a plain
    engine: jupyterhub.orm.new_session_factory would create or upgrade the schema before
    JupyterHub itself does. A fresh database has no groups table yet: then none."""
    from jupyterhub import orm  # the hub's heavy import, needed only here

    names = set(configured)
    path = database.sqlite_path(db_url)
    if path is not None and not os.path.exists(path):
        return frozenset(names)  # first start: create nothing before JupyterHub does
    engine = create_engine(db_url)
    try:
        if inspect(engine).has_table(orm.Group.__tablename__):
            with engine.connect() as conn:
                names |= set(conn.execute(select(orm.Group.name)).scalars())
    finally:
        engine.dispose()
    return frozenset(names)


def running_servers(prefix, deploy_mode="single"):
    """(user, server) of every user container of this hub that really runs (on a swarm:
    every user service, whose task the spawner's poll checks once the hub runs)."""
    client = docker.from_env()
    if deploy_mode == "swarm":
        return {(sv.attrs["Spec"]["Labels"]["org.gpuhub.user"],
                 sv.attrs["Spec"]["Labels"].get("org.gpuhub.server", ""))
                for sv in client.services.list(filters={"label": "org.gpuhub.user"})
                if sv.name.startswith(f"{prefix}-")}
    return {(c.labels["org.gpuhub.user"], c.labels.get("org.gpuhub.server", ""))
            for c in client.containers.list(filters={"label": "org.gpuhub.user"})
            if c.name.startswith(f"{prefix}-")}


def swarm_nodes():
    """The swarm's nodes as the hub's engine (a manager) lists them."""
    return docker.from_env().api.nodes()


# -- the steps, in order; each reads `settings` and fills in `ready` --
def _step_origins(s, ready, log):
    origins.check(s)
    origins.report(s, log)


def _step_tls(s, ready, log):
    if not ready.volumes_writable:
        return  # writing there would be a traceback, not the message that says what to do
    # with users' servers on subdomains the certificate also covers *.domain (hub/origins.py)
    ready.certificate = tls.prepare(s.tls_mode, s.domain, s.tls_dir, s.own_tls_dir, log,
                                    wildcard=s.user_subdomains)


def _step_volumes(s, ready, log):
    # the hub runs as uid 10001: volumes of an older, root-run hub are named with the fix
    ready.volumes_writable = False
    state_dirs.check_writable([s.state_dir, os.path.dirname(s.routes_file), s.tls_dir])
    ready.volumes_writable = True


def _step_state(s, ready, log):
    if not ready.volumes_writable:
        return
    os.makedirs(s.state_dir, exist_ok=True)
    ready.traefik_api_password = read_or_create_secret(f"{s.state_dir}/traefik-api-password")
    ready.cli_token = read_or_create_secret(f"{s.state_dir}/admin-cli-token")
    ready.metrics_token = s.metrics_token or read_or_create_secret(f"{s.state_dir}/metrics-token")


def _step_login(s, ready, log):
    ready.login = auth.prepare(s, log)


def _step_catalog(s, ready, log):
    if s.catalog:
        ready.catalog = courses.load_catalog(s.catalog)


def _step_database(s, ready, log):
    # PostgreSQL may still be starting (compose cannot make the hub wait for a service
    # of a profile): wait for it here, with a message that says what is awaited
    ready.database_reachable = False
    database.wait_until_reachable(s.db_url, log)
    ready.database_reachable = True


def _step_groups(s, ready, log):
    if not ready.database_reachable:
        return  # the database step said why
    ready.groups = known_groups(s.groups, s.db_url)
    if ready.catalog:
        courses.check_groups(ready.catalog, ready.groups)
        log.info("Courses from %s: %s", s.catalog,
                 ", ".join(c.slug for c in ready.catalog.courses))


def _step_gpus(s, ready, log):
    problems = [f"GPUHUB_GPU_GROUP_CAPS: group {group!r} does not exist (add it to GPUHUB_GROUPS)"
                for group in s.gpu_policy.group_caps if group not in ready.groups]
    if s.deploy_mode == "swarm":
        # the GPUs each node advertises (node-generic-resources), not NVML: the hub's own
        # machine is one node of several (hub/swarm.py)
        try:
            ready.inventory = tuple(swarm.node_gpus(swarm_nodes()))
        except gpus.GpuConfigError as e:
            raise SettingsError([str(e)]) from None
        except docker.errors.DockerException as e:
            raise SettingsError([f"GPUHUB_MODE=swarm, but the hub's Docker engine does not list "
                                 f"the swarm's nodes (is it a swarm manager?): {e}"]) from None
    else:
        ready.inventory = tuple(gpus.inventory(s.gpus, log=log))
    gpu_courses = [c.slug for c in ready.catalog.courses if c.gpus] if ready.catalog else []
    if gpu_courses and not ready.inventory:
        problems.append(f"courses {', '.join(gpu_courses)} want GPUs, but there are none: list "
                        "them in GPUHUB_GPUS (nvidia-smi -L) or let the hub see them through NVML")
    if problems:
        raise SettingsError(problems)
    listed = {g.uuid.lower() for g in s.gpus}
    if s.deploy_mode == "single" and any(g.uuid.lower() not in listed for g in ready.inventory):
        log.warning("GPUs found through NVML: list them in GPUHUB_GPUS too, the Docker API "
                    "guard allows only GPUs listed there (guard/README.md)")
    for gpu in ready.inventory:
        log.info("GPU %s: %s %s %s", gpu.index, gpu.uuid, gpu.name,
                 f"{gpu.memory_mib} MiB" if gpu.memory_mib else "")


def _step_allocations(s, ready, log):
    """Open the GPU tables and free what no running container holds (a crash mid-spawn
    leaks nothing). It writes to the database: only when every other step succeeded."""
    if not ready.inventory:
        return
    policy = s.gpu_policy
    ready.allocator = GpuAllocator(s.db_url, ready.inventory, policy)
    for stale in ready.allocator.reconcile(running_servers(s.container_prefix, s.deploy_mode)):
        log.warning("GPU %s released from %s/%s: its server is not running",
                    stale.gpu_uuid, stale.user, stale.server_name)
    log.info("GPUs: %s, policy %s (max %s per GPU), %s held", len(ready.inventory),
             policy.mode, policy.slots, ready.allocator.summary()["in_use"])
    # the line for GPUs, emptied (no spawn survives a restart), and GPU seconds in the metrics
    ready.queue = gpu_queue_store.start_line(ready.allocator, s, log)


_LOGIN = ("auth_provider", "oauth_client_id", "oauth_client_secret", "oidc_issuer",
          "allowed_users", "allowed_groups", "admin_groups", "allow_all", "crypt_key",
          "state_dir", "username_pattern", "admin_users", "dummy_password", "oidc_username_claim")
# (step, the settings it reads, whether it runs only when nothing failed before it)
STEPS = (
    (_step_volumes, ("state_dir", "routes_file", "tls_dir"), False),
    (_step_origins, ("user_subdomains", "domain", "tls_mode", "acme_dns_provider"), False),
    (_step_tls, ("tls_mode", "domain", "tls_dir", "own_tls_dir", "user_subdomains"), False),
    (_step_state, ("state_dir", "metrics_token"), False),
    (_step_login, _LOGIN, False),
    (_step_catalog, ("catalog",), False),
    (_step_database, ("state_dir", "database_url"), False),
    (_step_groups, ("groups", "state_dir", "database_url", "catalog"), False),
    (_step_gpus, ("gpus", "gpu_policy", "deploy_mode"), False),
    (_step_allocations, ("state_dir", "database_url", "container_prefix", "gpu_policy",
                         "gpu_queue_timeout", "deploy_mode"), True),
)


def prepare(settings, problems, log, steps=STEPS):
    """Run every step; add what goes wrong to `problems`. Returns the Ready values."""
    ready = Ready()
    for step, needs, only_if_clean in steps:
        if not all(hasattr(settings, name) for name in needs) or (only_if_clean and problems):
            continue
        try:
            step(settings, ready, log)
        except ERRORS as e:
            problems.extend(problems_of(e))
    return ready
