"""Apply the settings to JupyterHub's configuration object.

Only *sets* configuration (never appends), so files in jupyterhub_config.d/ that run
afterwards see a complete, predictable configuration and may change any of it.
"""

import os
import secrets
import sys

from traitlets.log import get_logger

from . import auth, tls
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


def apply(c, environ=None):
    log = get_logger()
    try:
        s = load(environ)
        certificate = tls.prepare(s.tls_mode, s.domain, s.tls_dir, s.own_tls_dir, log)
    except (SettingsError, tls.TLSError) as e:
        # A clear message and a clean exit beat a traceback from deep inside traitlets.
        print(f"\n{e}\n", file=sys.stderr)
        sys.exit(1)

    os.makedirs(s.state_dir, exist_ok=True)
    c.JupyterHub.db_url = f"sqlite:///{s.state_dir}/jupyterhub.sqlite"
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

    auth.configure(c, s, log)

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
    c.DockerSpawner.extra_create_kwargs = {"user": s.container_user}
    c.DockerSpawner.extra_host_config = {
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
    c.DockerSpawner.http_timeout = 120
    c.Spawner.default_url = "/lab"
    # leave users' servers running when the hub restarts; it finds them again
    c.JupyterHub.cleanup_servers = False

    c.JupyterHub.services = []
    c.JupyterHub.load_roles = []
    if s.idle_timeout:
        c.JupyterHub.services = [{
            "name": "idle-culler",
            "command": [sys.executable, "-m", "jupyterhub_idle_culler",
                        f"--timeout={s.idle_timeout}"],
        }]
        c.JupyterHub.load_roles = [{
            "name": "idle-culler",
            "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
            "services": ["idle-culler"],
        }]

    c.JupyterHub.template_vars = {"gpuhub_lab_name": s.lab_name}
    return s
