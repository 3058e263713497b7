"""Run the deployment the way an admin does: a copy of the repository, a `.env`, and
docker-compose. Where the `traefik:v3` image or the official base images are missing
(this machine), `compose.standin.yml` swaps in the stand-ins and says so."""

import ipaddress
import os
import secrets
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import docker
import requests
import yaml

REPO = Path(__file__).resolve().parents[2]
SCHEMA_DIR = Path(os.environ.get("GPUHUB_SCHEMA_DIR", REPO.parent / "shared" / "schemas"))
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
# Suffix for every compose project, image tag and network of this run, so that runs
# from several checkouts on one Docker engine do not share (and break) each other's.
RUN_ID = os.environ.get("GPUHUB_E2E_ID", "")
# the dummy provider's shared password (it needs 16 characters or more)
DUMMY_PASSWORD = "e2e-password-of-the-dummy-login"


def compose_command():
    """`docker compose` (v2) where it exists, else docker-compose 1.29."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise RuntimeError("neither `docker compose` nor `docker-compose` is installed")


def traefik_image():
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    return services["proxy"]["image"]


def image_exists(client, name):
    try:
        client.images.get(name)
        return True
    except docker.errors.ImageNotFound:
        return False


def wait_for(check, timeout, what, interval=0.5):
    """Poll `check` until it returns a true value; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as e:  # keep polling, but report the last error
            last_error = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                         + (f" (last error: {last_error!r})" if last_error else ""))


def free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_subnet(client, pattern="10.254.{}.0/29", what="the control network"):
    """A subnet of `pattern` (its third octet from 200 up) that no Docker network overlaps."""
    used = [ipaddress.ip_network(c["Subnet"]) for n in client.networks.list()
            for c in (n.attrs.get("IPAM", {}).get("Config") or []) if "Subnet" in c]
    for third in range(200, 255):
        candidate = ipaddress.ip_network(pattern.format(third))
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise RuntimeError(f"no free {pattern.format('x')} subnet for {what}")


def copy_repository(dest):
    """The files an admin's clone has (tracked and untracked, not ignored), plus this
    machine's CA bundle as an extra CA: the registries here sit behind an inspecting proxy."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    if HOST_CA.exists():
        shutil.copy(HOST_CA, dest / "certs" / "host-ca.crt")


class Stack:
    """One deployment under test: its own compose project, networks and volumes."""

    # health checks every 2 s (tests/e2e/compose.health.yml): starts wait less
    quick_health = True

    def __init__(self, workdir, client, name, real_traefik, extra_env=None):
        self.dir = Path(workdir)
        self.client = client
        name = f"{name}{RUN_ID}"
        self.project = name
        self.real_traefik = real_traefik
        self.token = secrets.token_hex(16)
        self._cleared = False  # leftovers of this project removed (create())
        subnet = free_subnet(client)
        self.prefix = f"{name}x"
        self.env = {
            "GPUHUB_DOMAIN": "localhost",
            "GPUHUB_HTTP_PORT": str(free_port()),
            "GPUHUB_HTTPS_PORT": str(free_port()),
            "TLS_MODE": "selfsigned",
            # single-origin unless a test asks for subdomains: the stand-in proxy does not
            # route by host, and Python here does not resolve *.localhost (test_origin_browser.py)
            "GPUHUB_USER_SUBDOMAINS": "false",
            "AUTH_PROVIDER": "dummy",
            "GPUHUB_DUMMY_PASSWORD": DUMMY_PASSWORD,
            "GPUHUB_USER_IMAGE": f"{name}/user:e2e",
            "GPUHUB_VERSION": "e2e",
            "GPUHUB_USER_NETWORK": f"{name}-users",
            "GPUHUB_CONTROL_NETWORK": f"{name}-control",
            "GPUHUB_CONTROL_SUBNET": str(subnet),
            "GPUHUB_PROXY_CONTROL_IP": str(subnet.network_address + 6),
            "GPUHUB_CONTAINER_PREFIX": self.prefix,
            "GPUHUB_VOLUME_PREFIX": f"{self.prefix}-user",
            "GPUHUB_MEM_LIMIT": "2g",
            "GPUHUB_CPU_LIMIT": "1",
            "GPUHUB_IDLE_TIMEOUT": "0",
            # the TUNA mirror is unreachable here; pip's default index is
            "PIP_INDEX_URL": "https://pypi.org/simple",
            "GPUHUB_SCHEMA_DIR": str(SCHEMA_DIR),
        }
        self.env.update(extra_env or {})
        if RUN_ID and not self.env["GPUHUB_VERSION"].endswith(RUN_ID):
            self.env["GPUHUB_VERSION"] += RUN_ID
        copy_repository(self.dir)
        self.write_env()
        (self.dir / "jupyterhub_config.d" / "90-e2e-service.py").write_text(
            "# written by the end-to-end tests: a scoped service token for their API calls\n"
            f"c.JupyterHub.services.append({{'name': 'e2e', 'api_token': {self.token!r}}})\n"
            "c.JupyterHub.load_roles.append({'name': 'e2e', 'services': ['e2e'], 'scopes': "
            "['admin:users', 'admin:servers', 'admin:groups', 'access:servers', 'list:users', 'read:metrics']})\n"
        )
        self.files = ["-f", "docker-compose.yml"]
        if self.quick_health:
            self.files += ["-f", "tests/e2e/compose.health.yml"]
        if not real_traefik:
            self.files += ["-f", "tests/e2e/compose.standin.yml"]

    # -- compose --
    def compose(self, *args, timeout=900, check=True):
        cmd = compose_command() + ["-p", self.project] + self.files + list(args)
        result = subprocess.run(cmd, cwd=self.dir, capture_output=True, text=True,
                                timeout=timeout, env={**os.environ, **self.env})
        if check and result.returncode:
            raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def write_env(self):
        (self.dir / ".env").write_text("".join(f"{k}={v}\n" for k, v in self.env.items()))

    def up(self):
        self.compose("build")
        self.create("-d")
        self.wait_healthy()

    def create(self, *args):
        """`compose up` (by default --no-start: networks, volumes, containers; with "-d"
        started), again with another control subnet where it was taken meanwhile."""
        args = args or ("--no-start",)
        if not self._cleared:
            # what a run killed half-way left of this project on the engine (its containers
            # still attached to a control network of another subnet, its servers, volumes):
            # compose would recreate the containers on the old network and fail
            self.down()
            self._cleared = True
        for attempt in range(3):
            result = self.compose("up", *args, check=False)
            # another stack on this engine took the control subnet between free_subnet()
            # and now (several checkouts' runs share one engine): take another one
            if result.returncode and "Pool overlaps" in result.stderr and attempt < 2:
                self.compose("down", "--remove-orphans", check=False)
                subnet = free_subnet(self.client)
                self.env.update(GPUHUB_CONTROL_SUBNET=str(subnet),
                                GPUHUB_PROXY_CONTROL_IP=str(subnet.network_address + 6))
                self.write_env()
                continue
            break
        if result.returncode:
            raise AssertionError(f"compose up failed ({result.returncode}):\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")

    @contextmanager
    def running(self):
        """The stack up (built, started, healthy) for the `with` block; down after it,
        however it ends (a failed start too)."""
        try:
            self.up()
            yield self
        finally:
            self.down()

    def gpu_holders(self):
        """user -> the GPU the hub says it holds (GET /hub/api/gpus)."""
        r = self.api("GET", "/gpus")
        assert r.status_code == 200, r.text
        return {h["user"]: gpu["uuid"] for gpu in r.json()["gpus"] for h in gpu["holders"]}

    def running_gpu_containers(self):
        """user -> the GPU its running container got from Docker."""
        found = {}
        for c in self.client.containers.list(filters={"label": "org.gpuhub.user"}):
            if c.name.startswith(self.prefix):
                ids = [i for r in c.attrs["HostConfig"].get("DeviceRequests") or []
                       for i in r.get("DeviceIDs") or []]
                if ids:
                    found[c.labels["org.gpuhub.user"]] = ids[0]
        return found

    def container(self, service):
        found = self.client.containers.list(all=True, filters={
            "label": [f"com.docker.compose.project={self.project}",
                      f"com.docker.compose.service={service}"]})
        assert found, f"no container for service {service} in project {self.project}"
        return found[0]

    def logs(self, service):
        return self.container(service).logs(tail=200).decode(errors="replace")

    def wait_healthy(self, timeout=180):
        def healthy():
            hub = self.container("hub")
            hub.reload()
            state = hub.attrs["State"]
            if state["Status"] == "exited":
                raise AssertionError(f"hub exited:\n{self.logs('hub')}")
            return state.get("Health", {}).get("Status") == "healthy"
        try:
            wait_for(healthy, timeout, "the hub's health check")
        except AssertionError as e:
            raise AssertionError(f"{e}\nhub logs:\n{self.logs('hub')}") from None
        wait_for(lambda: self.api("GET", "/").ok, 30, "the hub's REST API")

    def down(self):
        for c in self.client.containers.list(all=True, filters={"name": self.prefix}):
            c.remove(force=True)
        # --timeout 1: nothing is kept after a down, so no service needs a grace period
        self.compose("down", "-v", "--remove-orphans", "--timeout", "1", check=False, timeout=300)
        # the servers' own networks (hub/networks.py): the hub removes one when its server
        # stops, not when the stack goes with servers still running; left, they take /28s
        # of GPUHUB_SERVER_SUBNETS from every later stack on this engine
        for n in self.client.networks.list(filters={"name": f"{self.prefix}-"}):
            if n.name.startswith(f"{self.prefix}-"):
                try:
                    n.remove()
                except docker.errors.APIError as e:
                    print(f"network {n.name} left: {e}")
        for v in self.client.volumes.list(filters={"name": self.prefix}):
            v.remove(force=True)
        # the servers' own networks and the hub's pool of them (hub/netpool.py): left on the
        # engine, they would take the shared address pool's /28s run after run
        for n in self.client.networks.list(filters={"label": "org.gpuhub.server-network"}):
            if n.name.startswith(f"{self.prefix}-"):
                try:
                    n.remove()
                except docker.errors.APIError:  # still in use somewhere: not ours to force
                    pass

    # -- what users and admins reach --
    def ip(self, container, network=None):
        """The container's address on `network`; by default on the users network (hub,
        proxy), or on its own network (a user server has only that one)."""
        container.reload()
        networks = container.attrs["NetworkSettings"]["Networks"]
        if network is None:
            network = self.env["GPUHUB_USER_NETWORK"]
            if network not in networks and len(networks) == 1:
                network = next(iter(networks))
        return networks[network]["IPAddress"]

    @property
    def hub_url(self):
        if self.real_traefik:
            return f"https://localhost:{self.env['GPUHUB_HTTPS_PORT']}"
        # no Traefik here: the hub's own port, on the users network
        return f"http://{self.ip(self.container('hub'))}:8081"

    def api(self, method, path, **kwargs):
        return requests.request(method, f"{self.hub_url}/hub/api{path}", verify=False,
                                headers={"Authorization": f"token {self.token}"},
                                timeout=30, **kwargs)

    def routes_file(self):
        """The dynamic configuration the hub wrote, read from the proxy's side of the volume."""
        import io
        import tarfile
        import tomllib
        stream, _ = self.container("proxy").get_archive("/etc/traefik/dynamic/hub-routes.toml")
        tar = tarfile.open(fileobj=io.BytesIO(b"".join(stream)))
        return tomllib.loads(tar.extractfile(tar.getmembers()[0]).read().decode())

    def server_url(self, user):
        """Where a user's server is reached: through Traefik, or through the stand-in's
        forwarder at the proxy's address (user servers' own networks are out of the
        host's reach; see tests/e2e/traefik_api_standin.py)."""
        if self.real_traefik:
            return f"{self.hub_url}/user/{user}"
        return f"http://{self.ip(self.container('proxy'))}:8080/user/{user}"

    def server_api(self, user, path, method="GET", **kwargs):
        """A request to a user's server (its REST API), with the tests' service token."""
        return requests.request(method, self.server_url(user) + path, verify=False,
                                headers={"Authorization": f"token {self.token}"},
                                timeout=30, **kwargs)

    def route_target(self, user):
        routes = self.routes_file()["http"]
        for router in routes["routers"].values():
            if f"/user/{user}/" in router["rule"]:
                return routes["services"][router["service"]]["loadBalancer"]["servers"][0]["url"]
        raise AssertionError(f"no route for /user/{user}/ in the hub's routes file: {routes}")

    def start_server(self, user, timeout=180, **options):
        r = self.api("POST", f"/users/{user}/server", json=options)
        assert r.status_code in (201, 202), \
            f"start {user}: {r.status_code} {r.text}\nhub logs:\n{self.logs('hub')[-4000:]}"
        wait_for(lambda: self.api("GET", f"/users/{user}").json()["servers"].get("", {}).get("ready"),
                 timeout, f"{user}'s server to be ready")

    def refused_start(self, user, course):
        """Ask to start `user`'s server with `course` as the user's spawn form would; check
        that it is refused with 403 and nothing starts; return the refusal's message."""
        assert self.api("POST", f"/users/{user}").status_code in (201, 409)
        r = self.api("POST", f"/users/{user}/server", json={"course": course})
        assert r.status_code == 403, r.text
        assert self.user_container(user) is None, f"{user}'s refused server started"
        return r.json()["message"]

    def stop_server(self, user, timeout=120):
        r = self.api("DELETE", f"/users/{user}/server")
        assert r.status_code in (202, 204), f"stop {user}: {r.status_code} {r.text}"
        wait_for(lambda: "" not in self.api("GET", f"/users/{user}").json()["servers"],
                 timeout, f"{user}'s server to stop")

    def user_container(self, user):
        # exactly the name: Docker's name filter also matches longer ones (s1 finds s10)
        name = f"{self.prefix}-{user}"
        found = [c for c in self.client.containers.list(all=True, filters={"name": name})
                 if c.name == name]
        return found[0] if found else None
