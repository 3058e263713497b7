# The benchmarks' baseline hub: JupyterHub with a plain DockerSpawner, configured like
# jupyterhub-deploy-docker's basic example (basic-example/jupyterhub_config.py). Used as
# the hub's configuration file by benchmarks/compose.plain.yml, in the same hub image,
# with the same user image and the same proxy arrangement as gpuhub; nothing of the
# `hub` package runs. Not a deployment: there is no login (services only).
import glob
import os
import secrets

c = get_config()  # noqa: F821 (provided by JupyterHub)

# -- as in the basic example: image, network, one volume per user, remove on stop --
c.JupyterHub.spawner_class = "dockerspawner.DockerSpawner"
c.DockerSpawner.image = os.environ["GPUHUB_USER_IMAGE"]
c.DockerSpawner.cmd = "start-singleuser.sh"
c.DockerSpawner.use_internal_ip = True
c.DockerSpawner.network_name = os.environ["GPUHUB_USER_NETWORK"]
notebook_dir = "/home/jovyan"
c.DockerSpawner.notebook_dir = notebook_dir
# the names gpuhub would use, so that the benchmark finds and removes what this hub made
c.DockerSpawner.prefix = os.environ["GPUHUB_CONTAINER_PREFIX"]
c.DockerSpawner.volumes = {f"{os.environ['GPUHUB_VOLUME_PREFIX']}-{{username}}": notebook_dir}
c.DockerSpawner.remove = True
# (the example's `DockerSpawner.debug = True` is left out: it makes the user's server log
# at debug level, which is a development setting, not part of spawning)
c.JupyterHub.cookie_secret_file = "/srv/jupyterhub/jupyterhub_cookie_secret"
c.JupyterHub.db_url = "sqlite:////srv/jupyterhub/jupyterhub.sqlite"
# the example's NativeAuthenticator is not in the hub image; the benchmark only uses a
# service token, so no one logs in
c.JupyterHub.authenticator_class = "dummy"

# -- the proxy arrangement gpuhub has (hub/config.py), so the route wait is the same --
https_port = os.environ.get("GPUHUB_HTTPS_PORT", "443")
c.JupyterHub.bind_url = f"https://{os.environ['GPUHUB_DOMAIN']}:{https_port}/"
c.JupyterHub.hub_bind_url = "http://0.0.0.0:8081"
c.JupyterHub.hub_connect_url = os.environ["GPUHUB_HUB_CONNECT_URL"]
c.JupyterHub.proxy_class = "traefik_file"
c.TraefikFileProviderProxy.should_start = False
c.TraefikFileProviderProxy.dynamic_config_file = "/srv/traefik-routes/hub-routes.toml"
c.TraefikFileProviderProxy.traefik_api_url = os.environ["GPUHUB_TRAEFIK_API_URL"]
c.TraefikFileProviderProxy.traefik_api_username = "gpuhub"
# the hub writes the API's basic-auth entry into the routes file at each start
c.TraefikFileProviderProxy.traefik_api_password = secrets.token_hex(32)
c.TraefikFileProviderProxy.traefik_entrypoint = "https"

# -- the benchmark's service token, from jupyterhub_config.d/ as for gpuhub --
c.JupyterHub.services = []
c.JupyterHub.load_roles = []
for path in sorted(glob.glob("/srv/gpuhub/jupyterhub_config.d/*.py")):
    load_subconfig(path)  # noqa: F821 (provided by traitlets)
