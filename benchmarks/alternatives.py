"""What a spawn is measured on: gpuhub, a plain DockerSpawner hub, and raw `docker run`.

Each alternative has the same three calls: `spawn(user)` (start one server and wait until
GET /user/<name>/api/status answers 200 with a token, timed from the request that starts
it), `stop(users)` and `container(user)`. The hubs are the e2e tests' `Stack` (the real
docker-compose.yml in a copy of the repository), subclassed here rather than edited.
"""

import datetime
import io
import os
import re
import secrets
import subprocess
import tarfile
import threading
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import requests

from tests.e2e.stack import RUN_ID, Stack, wait_for

PROJECT = "gpuhubbench"
NOTEBOOK_DIR = "/home/jovyan"
ROUTES_PATH = "/etc/traefik/dynamic/hub-routes.toml"
POLL = 0.1  # seconds between readiness checks; the same for every alternative
RELAY_PORT = 8181  # benchmarks/relay.py in the proxy's network namespace


class BenchStack(Stack):
    """The e2e Stack under the benchmark's names: project gpuhubbench*, images tagged
    `bench` (so a test run building `e2e` at the same time cannot swap them), and the
    shipped limits (8g, 4 CPUs) instead of the tests' smaller ones."""

    via = None  # the HTTP proxy that reaches the user servers; None: the host reaches them
    # the shipped health-check intervals, so that stacks_up_s stays comparable
    quick_health = False

    def __init__(self, workdir, client, name, real_traefik, extra_env=None, extra_files=()):
        env = {
            "GPUHUB_VERSION": "bench",
            "GPUHUB_USER_IMAGE": f"{PROJECT}{RUN_ID}/user:bench",
            "GPUHUB_MEM_LIMIT": "8g",
            "GPUHUB_CPU_LIMIT": "4",
            **(extra_env or {}),
        }
        super().__init__(workdir, client, name, real_traefik, env)
        for path in extra_files:
            self.files += ["-f", path]

    def start(self, build=True):
        """`compose up -d` without waiting for health (see wait_healthy)."""
        if build:
            self.compose("build")
        self.compose("up", "-d", *([] if build else ["--no-build"]))

    def start_relay(self):
        """gpuhub's servers are on networks of their own that the host has no address on
        (hub/networks.py): run benchmarks/relay.py in the proxy container's network
        namespace, so that the benchmark reaches them from where the proxy does."""
        proxy = self.container("proxy")
        self.client.containers.run(
            f"gpuhub/hub:{self.env['GPUHUB_VERSION']}",
            ["python3", "/relay.py", str(RELAY_PORT), self.env.get("GPUHUB_SERVER_SUBNETS", "10.128.0.0/16")],
            name=f"{self.prefix}-relay", network_mode=f"container:{proxy.id}", detach=True,
            entrypoint=[], user="nobody", read_only=True, cap_drop=["ALL"],
            volumes={str(self.dir / "benchmarks" / "relay.py"): {"bind": "/relay.py", "mode": "ro"}})
        self.via = f"http://{self.ip(proxy)}:{RELAY_PORT}"
        # it refuses anything but a server's address: a 403 means it listens
        wait_for(lambda: requests.get(self.via, timeout=2).status_code == 403, 30, "the benchmark's relay")


class PlainStack(BenchStack):
    """The same compose stack, hub image and user image (not rebuilt), with the hub
    configured by benchmarks/plain_jupyterhub_config.py (compose.plain.yml)."""

    def __init__(self, workdir, client, name, real_traefik, user_image):
        super().__init__(workdir, client, name, real_traefik,
                         extra_env={"GPUHUB_USER_IMAGE": user_image,
                                    # compose.plain.yml: the hub reaches the engine's socket itself
                                    "GPUHUB_BENCH_DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid)},
                         extra_files=["benchmarks/compose.plain.yml"])

    def start(self, build=False):
        super().start(build=False)


def docker_time(text):
    """Docker's RFC 3339 time (nanoseconds, Z or an offset) as a Unix timestamp."""
    base, fraction, zone = re.fullmatch(
        r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text).groups()
    stamp = datetime.datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    return stamp.timestamp() + float(f"0.{fraction or 0}")


class Routes:
    """The route targets the hub wrote, as Traefik's file provider reads them, cached for
    POLL seconds so that a burst's pollers share reads. Read on the host from the routes
    volume where the engine is local (cheap); else copied out of the proxy container,
    less often, since every copy costs the engine a mount."""

    def __init__(self, stack):
        self.proxy = stack.container("proxy")
        self.lock = threading.Lock()
        self.fetched = 0.0
        self.targets = {}
        self.file = None
        try:
            volume = stack.client.volumes.get(f"{stack.project}_routes")
            path = Path(volume.attrs["Mountpoint"]) / Path(ROUTES_PATH).name
            if os.access(path.parent, os.R_OK):
                self.file = path
        except docker.errors.APIError:
            pass
        self.ttl = POLL if self.file else 5 * POLL

    def _read(self):
        if self.file:
            text = self.file.read_text() if self.file.exists() else ""
        else:
            stream, _ = self.proxy.get_archive(ROUTES_PATH)
            tar = tarfile.open(fileobj=io.BytesIO(b"".join(stream)))
            text = tar.extractfile(tar.getmembers()[0]).read().decode()
        routes = tomllib.loads(text).get("http", {})
        targets = {}
        for router in routes.get("routers", {}).values():
            found = re.search(r"/user/([^/`]+)/", router.get("rule", ""))
            service = routes.get("services", {}).get(router.get("service"), {})
            if found and service:
                targets[found.group(1)] = service["loadBalancer"]["servers"][0]["url"]
        return targets

    def target(self, user):
        with self.lock:
            if time.monotonic() - self.fetched > self.ttl:
                try:
                    self.targets = self._read()
                except (OSError, docker.errors.APIError, tomllib.TOMLDecodeError, KeyError, IndexError):
                    pass  # not there yet, or caught mid-write: the next poll reads again
                self.fetched = time.monotonic()
            return self.targets.get(user)


def answers(url, token=None, timeout=5, via=None):
    """GET `url` answers 200; `via`: through that HTTP proxy (BenchStack.start_relay)."""
    headers = {"Authorization": f"token {token}"} if token else {}
    proxies = {"http": via} if via else None
    try:
        return requests.get(url, headers=headers, timeout=timeout, verify=False,
                            proxies=proxies).status_code == 200
    except requests.RequestException:
        return False


class ServerUp:
    """When the user's Jupyter server itself first answers: unauthenticated GET
    /user/<name>/api (its version) at the container's address, whatever the hub or the
    proxy know. Splits a spawn into the server's own start-up and what comes after it."""

    def __init__(self, find_container, network, user, t0, via=None):
        self.find, self.network, self.user, self.t0 = find_container, network, user, t0
        self.via = via
        self.url = self.at = None

    def poll(self):
        if self.at is not None:
            return
        if self.url is None:
            container = self.find()
            ip = container and container.attrs["NetworkSettings"]["Networks"].get(
                self.network, {}).get("IPAddress")
            if ip:
                self.url = f"http://{ip}:8888/user/{self.user}/api"
        if self.url and answers(self.url, timeout=1, via=self.via):
            self.at = time.monotonic() - self.t0


def started_after(container, t0_wall):
    """Seconds from the request to the container's process starting (Docker's StartedAt)."""
    if container is None:
        return None
    try:
        container.reload()
        return docker_time(container.attrs["State"]["StartedAt"]) - t0_wall
    except (docker.errors.APIError, KeyError, ValueError):
        return None


class HubAlternative:
    """A hub (gpuhub or plain): spawn through the REST API, reach the server by its route."""

    def __init__(self, label, stack):
        self.label = label
        self.stack = stack
        self.routes = None if stack.real_traefik else Routes(stack)

    def create_users(self, users):
        r = self.stack.api("POST", "/users", json={"usernames": list(users)})
        assert r.status_code in (201, 409), f"{self.label}: create users: {r.status_code} {r.text}"

    def status_url(self, user):
        if self.stack.real_traefik:  # through Traefik itself
            return f"{self.stack.hub_url}/user/{user}/api/status"
        target = self.routes.target(user)
        return target and target.rstrip("/") + f"/user/{user}/api/status"

    def spawn_failed(self, user):
        """The hub gave up: no server, none pending (a failed spawn removes the entry)."""
        try:
            model = self.stack.api("GET", f"/users/{user}").json()
        except (requests.RequestException, ValueError):
            return False
        return "" not in model.get("servers", {}) and not model.get("pending")

    def spawn(self, user, timeout, probe=True):
        """Start `user`'s server; `probe` also watches the container itself (ServerUp),
        which a burst leaves out: a hundred pollers asking Docker would be a load of its own."""
        t0_wall, t0 = time.time(), time.monotonic()
        # The hub answers the POST only when the spawn is done or after slow_spawn_timeout
        # (10 s): send it from a thread and watch the container and the route meanwhile.
        post = {}

        def send():
            try:
                post["response"] = self.stack.api("POST", f"/users/{user}/server", json={})
            except requests.RequestException as e:
                post["error"] = repr(e)
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        # gpuhub: the server's own network (named like its container), reached by the relay
        via = self.stack.via
        network = f"{self.stack.prefix}-{user}" if via else self.stack.env["GPUHUB_USER_NETWORK"]
        up = ServerUp(lambda: self.container(user), network, user, t0, via)
        route_seen, next_check = None, t0 + 2
        while (now := time.monotonic()) < t0 + timeout:
            if not sender.is_alive() and "checked" not in post:
                post["checked"] = True
                r = post.get("response")
                if r is None or r.status_code not in (201, 202):
                    return {"ok": False, "t0": t0, "error": f"POST: {post.get('error') or r.status_code}"
                            + ("" if r is None else f" {r.text[:300]}")}
            if probe:
                up.poll()
            url = self.status_url(user)
            if url:
                if route_seen is None and not self.stack.real_traefik:
                    route_seen = now - t0
                if answers(url, self.stack.token, via=None if self.stack.real_traefik else via):
                    total = time.monotonic() - t0
                    sender.join(timeout=60)  # untimed: the hub finishes the request before a stop
                    return {"ok": True, "t0": t0, "total": total, "route_seen": route_seen,
                            "server_up": up.at,
                            "container_started": started_after(self.container(user), t0_wall)}
            elif now > next_check and "checked" in post:
                next_check = now + 2
                if self.spawn_failed(user):
                    return {"ok": False, "t0": t0, "error": "the hub reports the spawn failed: "
                            + self.stack.logs("hub")[-1500:]}
            time.sleep(POLL)
        return {"ok": False, "t0": t0, "error": f"not answering after {timeout}s"}

    def container(self, user):
        # by exact name (Stack.user_container's filter also matches burst0u10 for burst0u1);
        # the benchmark's user names are letters and digits, which DockerSpawner keeps as is
        try:
            return self.stack.client.containers.get(f"{self.stack.prefix}-{user}")
        except docker.errors.NotFound:
            return None

    def _delete(self, user, attempts=60):
        """DELETE the server; a spawn still finishing answers 400 "pending", so ask again."""
        for _ in range(attempts):
            r = self.stack.api("DELETE", f"/users/{user}/server")
            if r.status_code != 400 or "pending" not in r.text:
                return
            time.sleep(0.5)

    def stop(self, users, timeout=300):
        users = set(users)
        with ThreadPoolExecutor(min(16, len(users))) as pool:
            list(pool.map(self._delete, users))

        def all_stopped():
            active = self.stack.api("GET", "/users", params={"state": "active"}).json()
            return not users & {u["name"] for u in active}
        wait_for(all_stopped, timeout, f"{self.label}: {len(users)} servers to stop")
        wait_for(lambda: not any(self.container(u) for u in users), 60,
                 f"{self.label}: the stopped containers to be removed")


class RawAlternative:
    """`docker run` of the user image with the command the spawner uses
    (start-singleuser.sh: JupyterLab when no hub token is given), on the same network,
    with a fresh named volume on the notebook directory, as the spawner mounts one."""

    label = "raw"

    def __init__(self, client, image, network, prefix):
        self.client = client
        self.image = image
        self.network = network
        self.prefix = f"{prefix}-raw"
        self.token = secrets.token_hex(16)

    def name(self, user):
        return f"{self.prefix}-{user}"

    def create_users(self, users):
        pass  # no hub, no users

    def spawn(self, user, timeout, probe=True):
        name = self.name(user)
        t0_wall, t0 = time.time(), time.monotonic()
        result = subprocess.run(
            ["docker", "run", "-d", "--name", name, "--network", self.network,
             "-v", f"{name}:{NOTEBOOK_DIR}", self.image, "start-singleuser.sh",
             f"--ServerApp.base_url=/user/{user}/", f"--IdentityProvider.token={self.token}"],
            capture_output=True, text=True, timeout=timeout)
        if result.returncode:
            return {"ok": False, "t0": t0, "error": f"docker run: {result.stderr[-500:]}"}
        container = self.client.containers.get(name)
        ip = container.attrs["NetworkSettings"]["Networks"][self.network]["IPAddress"]
        url = f"http://{ip}:8888/user/{user}/api/status"
        up = ServerUp(lambda: container, self.network, user, t0)
        while time.monotonic() < t0 + timeout:
            if probe:
                up.poll()
            if answers(url, self.token):
                total = time.monotonic() - t0
                return {"ok": True, "t0": t0, "total": total, "route_seen": None,
                        "server_up": up.at if probe else None,
                        "container_started": started_after(container, t0_wall)}
            container.reload()
            if container.status == "exited":
                return {"ok": False, "t0": t0, "error": "exited: "
                        + container.logs(tail=30).decode(errors="replace")}
            time.sleep(POLL)
        return {"ok": False, "t0": t0, "error": f"not answering after {timeout}s"}

    def container(self, user):
        try:
            return self.client.containers.get(self.name(user))
        except docker.errors.NotFound:
            return None

    def stop(self, users, timeout=300):
        def remove(user):
            container = self.container(user)
            if container:
                container.remove(force=True, v=False)
            try:
                self.client.volumes.get(self.name(user)).remove(force=True)
            except docker.errors.NotFound:
                pass
        users = list(users)
        with ThreadPoolExecutor(min(16, len(users))) as pool:
            list(pool.map(remove, users))

    def cleanup(self):
        for container in self.client.containers.list(all=True, filters={"name": self.prefix}):
            container.remove(force=True)
        for volume in self.client.volumes.list(filters={"name": self.prefix}):
            volume.remove(force=True)


def sweep_leftovers(client, log=print):
    """Remove what an earlier, killed run left (containers, networks, volumes and compose
    projects named gpuhubbench*): a stale network with another subnet would make
    `compose up` fail. Only this benchmark's names are touched."""
    removed = []
    # with GPUHUB_E2E_ID set, only this run id's names: another session's benchmark may be
    # running on the same engine (gpuhubbench<id>, gpuhubbenchplain<id>)
    ours = (f"{PROJECT}{RUN_ID}", f"{PROJECT}plain{RUN_ID}")
    for container in client.containers.list(all=True, filters={"name": PROJECT}):
        if container.name.startswith(ours):
            container.remove(force=True)
            removed.append(container.name)
    for network in client.networks.list(names=[PROJECT]):
        if network.name.startswith(ours):
            try:
                network.remove()
            except docker.errors.NotFound:  # removed meanwhile
                continue
            removed.append(network.name)
    for volume in client.volumes.list(filters={"name": PROJECT}):
        if volume.name.startswith(ours):
            volume.remove(force=True)
            removed.append(volume.name)
    if removed:
        log(f"removed {len(removed)} leftovers of an earlier run: {', '.join(removed[:6])}"
            + (" ..." if len(removed) > 6 else ""))
    return removed


def memory_mib(container):
    """Memory in use: docker stats' memory_stats.usage minus the page cache (`cache` on
    cgroup v1, `inactive_file` on v2), as `docker stats` shows it; None if unknown."""
    try:
        stats = container.stats(stream=False, one_shot=True)
    except docker.errors.APIError:
        return None
    memory = stats.get("memory_stats") or {}
    if "usage" not in memory:
        return None
    detail = memory.get("stats") or {}
    cache = detail.get("cache", detail.get("inactive_file", 0))
    return round((memory["usage"] - cache) / 2**20, 1)


def workdir_for(root, name):
    path = Path(root) / name
    path.mkdir(parents=True)
    return path
