"""gpuhub on a real multi-node Docker Swarm: a manager and two workers, each a dockerd in
a network namespace of its own on this machine (tests/e2e/swarm.py). There is no GPU: the
workers advertise fake GPU UUIDs as the generic resource NVIDIA-GPU (`node-generic-resources`
in their daemon.json), which is all the hub reads; the no-op nvidia hook is on their PATH."""

import asyncio
import json
import shutil
import subprocess
import types
from pathlib import Path

import pytest

from .stack import RUN_ID, Stack, wait_for
from .swarm import Swarm, load_images, netns_request

pytestmark = pytest.mark.e2e

PYTHON_IMAGE = "gpuhub-standin/python:bookworm"
# two fake GPUs on each worker, none on the manager
GPUS = {1: ["GPU-5a000000-0000-4000-8000-000000000001", "GPU-5a000000-0000-4000-8000-000000000002"],
        2: ["GPU-5b000000-0000-4000-8000-000000000001", "GPU-5b000000-0000-4000-8000-000000000002"]}


@pytest.fixture(scope="module")
def swarm(tmp_path_factory, docker_client, standin_bases):
    for tool in ("ip", "nsenter", "unshare", "dockerd"):
        if not shutil.which(tool):
            pytest.skip(f"the multi-node swarm needs {tool!r}")
    s = Swarm(tmp_path_factory.mktemp("swarm"), workers=2, gpus=GPUS)
    try:
        s.up()
        s.load_image(PYTHON_IMAGE)
        yield s
    finally:
        s.down()


def service_tasks(node, service):
    out = node.docker("service", "ps", service, "--filter", "desired-state=running",
                      "--format", "{{.Node}} {{.CurrentState}}").stdout
    return [line.split(" ", 1) for line in out.splitlines()]


def running_on(node, service):
    tasks = service_tasks(node, service)
    return tasks[0][0] if tasks and tasks[0][1].startswith("Running") else None


def test_three_nodes_form_one_swarm_and_workers_advertise_their_gpus(swarm):
    m = swarm.manager
    rows = m.docker("node", "ls", "--format", "{{.Hostname}} {{.Status}} {{.ManagerStatus}}").stdout
    assert sorted(rows.split("\n")[:-1]) == sorted(
        [f"{swarm.manager.hostname} Ready Leader"]
        + [f"{w.hostname} Ready " for w in swarm.workers]), rows
    for index, node in enumerate(swarm.nodes):
        advertised = m.docker("node", "inspect", node.node_id(), "--format",
                              "{{range .Description.Resources.GenericResources}}"
                              "{{.NamedResourceSpec.Value}} {{end}}").stdout.split()
        assert sorted(advertised) == sorted(GPUS.get(index, [])), node.hostname


def test_tasks_on_two_workers_reach_each_other_over_an_attachable_overlay(swarm):
    m = swarm.manager
    net = f"gpuhub-swarm{RUN_ID}-probe"
    m.docker("network", "create", "--driver", "overlay", "--attachable", net)
    try:
        w1, w2 = swarm.workers
        # dnsrr: the service name resolves to the task's address. The default (a virtual IP)
        # needs IPVS, which this machine's kernel lacks (docs/scale-out.md)
        m.docker("service", "create", "--detach", "--name", "probe-server", "--network", net,
                 "--endpoint-mode", "dnsrr",
                 "--constraint", f"node.hostname=={w1.hostname}", PYTHON_IMAGE,
                 "python3", "-m", "http.server", "8000")
        m.docker("service", "create", "--detach", "--name", "probe-client", "--network", net,
                 "--restart-condition", "none",
                 "--constraint", f"node.hostname=={w2.hostname}", PYTHON_IMAGE,
                 "python3", "-u", "-c",
                 "import time, urllib.request\n"
                 "for _ in range(120):\n"
                 "    try:\n"
                 "        print(urllib.request.urlopen('http://probe-server:8000/', timeout=2).status)\n"
                 "        break\n"
                 "    except OSError:\n"
                 "        time.sleep(0.5)\n"
                 "time.sleep(600)")
        wait_for(lambda: running_on(m, "probe-server") == w1.hostname, 90, "the probe server on worker 1")
        wait_for(lambda: running_on(m, "probe-client") == w2.hostname, 90, "the probe client on worker 2")
        logs = lambda: m.docker("service", "logs", "--raw", "probe-client", check=False).stdout  # noqa: E731
        wait_for(lambda: "200" in logs(), 90, "worker 2's task to fetch a page from worker 1's")
    finally:
        m.docker("service", "rm", "probe-server", "probe-client", check=False)
        # the network goes once the tasks have left it
        wait_for(lambda: m.docker("network", "rm", net, check=False).returncode == 0, 60,
                 "the probe network to be removed")


def test_the_swarm_is_gone_after_teardown(tmp_path):
    """A swarm of one node up and down again leaves no namespace, socket or data root."""
    s = Swarm(tmp_path / "solo", workers=0, tag=f"gt{RUN_ID}"[:6])
    try:
        s.up()
        assert s.ready_nodes() == 1
    finally:
        s.down()
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert s.manager.name not in namespaces and s.switch not in namespaces
    assert not (tmp_path / "solo").exists()
    assert not Path(s.manager.sock).exists()


# -- GpuhubSwarmSpawner itself against the real swarm. No hub process: the spawners get a
# -- stand-in user and JupyterHub's Hub object, run a shell command instead of Jupyter
# -- (ready_poll_interval=0: nothing answers HTTP), and talk to the manager's engine directly,
# -- not through the guard (its swarm rows are tests/test_guard_swarm.py).

PREFIX = f"gpuhub-sw{RUN_ID}"
CATALOG = """courses:
  - slug: dl
    display_name: Deep learning
    image: gpuhub-standin/python:bookworm
    gpus: 1
  - slug: cpu
    display_name: Python, no GPU
    image: gpuhub-standin/python:bookworm
"""


@pytest.fixture(scope="module")
def hub_side(swarm, tmp_path_factory, docker_client):
    """What the hub holds: the inventory read from the nodes, the allocator's database, the
    catalog, and the overlay (created as docs/scale-out.md says)."""
    from hub import courses, gpus, swarm as hs
    from hub.gpu_store import GpuAllocator
    api = swarm.manager.client.api
    api.create_network("gpuhub-swarm", driver="overlay", attachable=True)
    work = tmp_path_factory.mktemp("hub")
    (work / "catalog.yaml").write_text(CATALOG)
    allocator = GpuAllocator(f"sqlite:///{work / 'gpus.sqlite'}",
                             hs.node_gpus(api.nodes()), gpus.Policy())
    return types.SimpleNamespace(allocator=allocator, catalog=courses.load_catalog(work / "catalog.yaml"))


def make_spawner(swarm_, hub_side, student, command, course="dl", homes="pinned"):
    """Pinned homes: a volume per student, kept on its node. "shared" stands for homes on
    NFS (no NFS server here): no home volume, servers on any node."""
    from jupyterhub.objects import Hub

    from hub.spawner import GpuhubSwarmSpawner
    user = types.SimpleNamespace(name=student, escaped_name=student, url=f"/user/{student}/",
                                 groups=[], id=1)
    spawner = GpuhubSwarmSpawner(
        user=user, hub=Hub(), orm_spawner=None, catalog=hub_side.catalog,
        gpu_allocator=hub_side.allocator, ready_poll_interval=0, network_name="gpuhub-swarm",
        prefix=PREFIX, use_internal_ip=True, cmd=["sh", "-c", command],
        notebook_dir="/var/tmp", homes=homes,
        volumes={f"{PREFIX}-user-{{username}}": "/var/tmp"} if homes == "pinned" else {},
        client_kwargs={"base_url": swarm_.manager.url}, user_options={"course": course})
    spawner.api_token = "not-used"
    return spawner


async def spawn(spawner):
    """What JupyterHub does: the pre-spawn hook (the GPU), then start()."""
    await spawner.run_pre_spawn_hook()
    return await spawner.start()


async def wait_running(spawner, timeout=120):
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        task = await spawner.get_task()
        if task and task["Status"]["State"] == "running":
            return task
        await asyncio.sleep(0.5)
    raise AssertionError(f"{spawner.user.name}'s task is not running after {timeout}s")


def container_env(swarm_, task):
    node = {n.node_id(): n for n in swarm_.nodes}[task["NodeID"]]
    container = node.client.containers.get(task["Status"]["ContainerStatus"]["ContainerID"])
    return dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])


SPAWNERS = {}  # student -> spawner, shared by the tests below (they run in order)


async def test_twelve_students_racing_for_two_plus_two_gpus_get_four_each_on_its_gpus_node(
        swarm, hub_side):
    from tornado import web
    ids = {n.hostname: n.node_id() for n in swarm.nodes}
    assert sorted((g.node, g.uuid) for g in hub_side.allocator.inventory) == sorted(
        (ids[swarm.nodes[i].hostname], uuid) for i, uuids in GPUS.items() for uuid in uuids)
    spawners = [make_spawner(swarm, hub_side, f"s{n}", "sleep 3600", homes="shared")
                for n in range(12)]
    results = await asyncio.gather(*(spawn(s) for s in spawners), return_exceptions=True)
    started = [s for s, r in zip(spawners, results) if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(started) == 4, results
    assert all(isinstance(r, web.HTTPError) and r.status_code == 503 for r in refused), refused
    assert len({s.gpus[0].uuid for s in started}) == 4  # none twice
    for spawner in started:
        task = await wait_running(spawner)
        assert task["NodeID"] == spawner.gpus[0].node, spawner.user.name  # its GPU's node
        # ... where its container sees exactly that GPU
        assert container_env(swarm, task)["NVIDIA_VISIBLE_DEVICES"] == spawner.gpus[0].uuid
        SPAWNERS[spawner.user.name] = spawner


async def test_a_students_files_survive_a_stop_and_a_start_in_pinned_home_mode(swarm, hub_side):
    # the CPU course: nothing but the home decides where the server goes
    spawner = make_spawner(swarm, hub_side, "pinned-ann",
                           "echo 'my thesis' > /var/tmp/notes.txt && sleep 3600", course="cpu")
    await spawn(spawner)
    first = await wait_running(spawner)
    assert spawner.home_node == first["NodeID"]
    await spawner.stop()  # the service goes, the volume stays on that node
    spawner.clear_state()  # what JupyterHub does after a stop, before it saves the state
    state = spawner.get_state()
    assert state["home_node"] == first["NodeID"]
    # a new spawner from the saved state, as after a hub restart
    again = make_spawner(swarm, hub_side, "pinned-ann", "cat /var/tmp/notes.txt && sleep 3600",
                         course="cpu")
    again.load_state(state)
    await spawn(again)
    second = await wait_running(again)
    assert second["NodeID"] == first["NodeID"]
    logs = lambda: swarm.manager.docker("service", "logs", "--raw", again.service_name,  # noqa: E731
                                        check=False).stdout
    wait_for(lambda: "my thesis" in logs(), 60, "the second server to read the first's file")
    await again.stop()


# -- The hub container itself on the manager (docker-compose.yml with docker-compose.swarm.yml,
# -- images built on this machine's engine and loaded into the nodes), Docker only through
# -- the guard, a real Jupyter server from the test user image on a worker. The hub's API
# -- and the proxy are reached from inside the manager's network namespace (the host has no
# -- route to the bridge networks there). Traefik's API is the stand-in (no traefik:v3 here).

class SwarmStack(Stack):
    """A Stack whose images are built on this machine's engine and whose containers run
    on the swarm's manager, with the guard holding the manager's engine socket."""

    def __init__(self, workdir, swarm_, extra_env):
        self.swarm = swarm_
        self.docker_host = None  # the build: this machine's engine
        super().__init__(workdir, swarm_.manager.client, "gpuhubswarm", real_traefik=False,
                         extra_env=extra_env)
        (self.dir / "swarm-node.yml").write_text(
            "# written by tests/e2e/test_swarm_e2e.py: the guard holds the manager's socket\n"
            "services:\n  guard:\n    volumes:\n"
            f"      - {swarm_.manager.sock}:/var/run/docker.sock\n")
        self.files += ["-f", "docker-compose.swarm.yml", "-f", "swarm-node.yml"]

    def compose(self, *args, **kwargs):
        saved = dict(self.env)
        if self.docker_host:
            self.env["DOCKER_HOST"] = self.docker_host
        try:
            return super().compose(*args, **kwargs)
        finally:
            self.env = saved

    def up(self):
        self.compose("build", "hub", "guard", "user-image")
        version = self.env["GPUHUB_VERSION"]
        load_images([f"gpuhub/hub:{version}", f"gpuhub/guard:{version}",
                     self.env["GPUHUB_USER_IMAGE"]], self.swarm.nodes, self.dir)
        self.docker_host = self.swarm.manager.url
        self.compose("up", "-d", "--no-build", "proxy")
        self.wait_healthy()

    def api(self, method, path, json=None, **kwargs):
        return netns_request(self.swarm.manager, method, f"{self.hub_url}/hub/api{path}",
                             headers={"Authorization": f"token {self.token}"}, json_body=json)

    def server_api(self, user, path, method="GET", **kwargs):
        return netns_request(self.swarm.manager, method, self.server_url(user) + path,
                             headers={"Authorization": f"token {self.token}"})


@pytest.fixture(scope="module")
def swarm_hub(swarm, hub_side, tmp_path_factory):
    all_gpus = [g for uuids in GPUS.values() for g in uuids]
    s = SwarmStack(tmp_path_factory.mktemp("swarmhub"), swarm, {
        "GPUHUB_MODE": "swarm", "GPUHUB_SWARM_NETWORK": "gpuhub-swarm",
        "GPUHUB_SWARM_HOMES": "pinned", "GPUHUB_GPUS": ",".join(all_gpus),
        "GPUHUB_CATALOG": "/srv/gpuhub/catalog/swarm.yaml"})
    (s.dir / "catalog" / "swarm.yaml").write_text(
        "courses:\n  - slug: dl\n    display_name: Deep learning\n"
        f"    image: {s.env['GPUHUB_USER_IMAGE']}\n    gpus: 1\n")
    try:
        s.up()
        yield s
    finally:
        s.down()


def test_the_hub_on_the_manager_spawns_a_students_jupyter_server_on_a_worker(swarm, swarm_hub):
    """Through the hub's REST API only: the hub container on the manager (Docker through
    the guard) starts the student's server as a Swarm service whose task runs on a worker,
    on its GPU's node and seeing only that GPU; Jupyter answers through the proxy over the
    overlay; a stop removes the service and frees the GPU."""
    m, stack = swarm.manager, swarm_hub
    assert stack.api("POST", "/users/ann").status_code in (201, 409)
    stack.start_server("ann", timeout=240, course="dl")
    services = m.client.api.services(filters={"name": f"{stack.prefix}-ann"})
    assert len(services) == 1, services
    tasks = [t for t in m.client.api.tasks(filters={"service": services[0]["ID"]})
             if t["Status"]["State"] == "running"]
    assert len(tasks) == 1, tasks
    workers = {w.node_id() for w in swarm.workers}
    assert tasks[0]["NodeID"] in workers
    gpus = stack.api("GET", "/gpus").json()
    held = [g for g in gpus["gpus"] if any(h["user"] == "ann" for h in g["holders"])]
    assert gpus["in_use"] == 1 and len(held) == 1, gpus
    env = container_env(swarm, tasks[0])
    assert env["NVIDIA_VISIBLE_DEVICES"] == held[0]["uuid"], (env, held)
    assert held[0]["uuid"] in GPUS[1 + [w.node_id() for w in swarm.workers].index(tasks[0]["NodeID"])]
    # Jupyter itself, through the proxy, over the overlay
    r = stack.server_api("ann", "/api/status")
    assert r.status_code == 200 and "started" in r.json(), r.text
    stack.stop_server("ann")
    wait_for(lambda: not m.client.api.services(filters={"name": f"{stack.prefix}-ann"}), 60,
             "ann's service to be removed")
    assert stack.api("GET", "/gpus").json()["in_use"] == 0


def test_attacks_from_the_hub_through_the_guard_on_the_manager_are_refused(swarm, swarm_hub):
    """What the hub's engine access allows on the swarm, seen from the hub container
    itself: no service but a locked-down gpuhub server, no swarm or node control."""
    from .test_guard_e2e import from_hub
    stack, m = swarm_hub, swarm.manager
    worker = swarm.workers[0].node_id()
    image = stack.env["GPUHUB_USER_IMAGE"]

    def service(name, **fields):
        return ("POST", "/v1.41/services/create", json.dumps({
            "Name": name, "TaskTemplate": {"ContainerSpec": {"Image": image}}, **fields}))
    attacks = [
        ("name-prefix", service("evil")),
        ("one-replica", service(f"{stack.prefix}-a1", Mode={"Global": {}})),
        ("no-published-ports", service(f"{stack.prefix}-a2", EndpointSpec={
            "Ports": [{"TargetPort": 22, "PublishedPort": 2222}]})),
        # the join tokens (a node of one's own), leaving, a node's removal
        ("no-swarm", ("GET", "/v1.41/swarm", None)),
        ("no-swarm", ("POST", "/v1.41/swarm/leave?force=1", None)),
        ("no-swarm", ("DELETE", f"/v1.41/nodes/{worker}?force=1", None)),
    ]
    answers = from_hub(stack, [call for _, call in attacks])
    for (rule, call), (status, body) in zip(attacks, answers):
        assert status == 403, (call[:2], status, body)
        assert json.loads(body)["message"].endswith(f"(rule: {rule})"), (call[:2], body)
    made = [sv["Spec"]["Name"] for sv in m.client.api.services()]
    assert not [n for n in made if n == "evil" or n.startswith(f"{stack.prefix}-a")], made
    assert swarm.ready_nodes() == len(swarm.nodes)


async def test_stopping_a_worker_frees_its_gpus_and_its_students_start_again_elsewhere(
        swarm, hub_side):
    """Runs last: it stops worker 2's daemon. poll() reports its students' servers gone,
    JupyterHub then stops them (GPUs released), and they start again on worker 1, whose
    students stopped meanwhile."""
    from hub import swarm as hs
    ids = {n.hostname: n.node_id() for n in swarm.nodes}
    w1, w2 = (ids[w.hostname] for w in swarm.workers)
    on_w1 = [s for s in SPAWNERS.values() if s.gpus[0].node == w1]
    on_w2 = [s for s in SPAWNERS.values() if s.gpus[0].node == w2]
    assert len(on_w1) == len(on_w2) == 2, SPAWNERS  # from the race above
    for spawner in on_w1:  # worker 1's students go home
        await spawner.stop()
    swarm.workers[1].stop()
    api = swarm.manager.client.api
    wait_for(lambda: w2 not in hs.ready_nodes(api.nodes()), 120, "the manager to see worker 2 down")
    for spawner in on_w2:
        assert await spawner.poll() == f"node {w2} is down", spawner.user.name
        await spawner.stop()  # what JupyterHub does with a server whose poll says it ended
        assert not hub_side.allocator.held_by(spawner.user.name, "")
    for spawner in on_w2:
        spawner.clear_state()
        await spawn(spawner)
        task = await wait_running(spawner)
        assert task["NodeID"] == w1 == spawner.gpus[0].node, spawner.user.name
    assert {s.gpus[0].uuid for s in on_w2} == set(GPUS[1])
