"""gpuhub on a real multi-node Docker Swarm: a manager and two workers, each a dockerd in
a network namespace of its own on this machine (tests/e2e/swarm.py). There is no GPU: the
workers advertise fake GPU UUIDs as the generic resource NVIDIA-GPU (`node-generic-resources`
in their daemon.json), which is all the hub reads; the no-op nvidia hook is on their PATH."""

import json
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
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


@pytest.fixture(scope="module")
def overlay(swarm):
    """The attachable overlay of hub, proxy and servers, created as docs/scale-out.md says."""
    swarm.manager.client.api.create_network("gpuhub-swarm", driver="overlay", attachable=True)
    return "gpuhub-swarm"


def services_named(swarm_, name):
    """The services called exactly `name` (Docker's name filter also matches longer names:
    s1 would find s10 and s11)."""
    return [sv for sv in swarm_.manager.client.api.services(filters={"name": name})
            if sv["Spec"]["Name"] == name]


def container_env(swarm_, task):
    node = {n.node_id(): n for n in swarm_.nodes}[task["NodeID"]]
    container = node.client.containers.get(task["Status"]["ContainerStatus"]["ContainerID"])
    return dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])


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

    def server_api(self, user, path, method="GET", json=None, **kwargs):
        return netns_request(self.swarm.manager, method, self.server_url(user) + path,
                             headers={"Authorization": f"token {self.token}"}, json_body=json)


@pytest.fixture(scope="module")
def swarm_hub(swarm, overlay, tmp_path_factory):
    all_gpus = [g for uuids in GPUS.values() for g in uuids]
    s = SwarmStack(tmp_path_factory.mktemp("swarmhub"), swarm, {
        "GPUHUB_MODE": "swarm", "GPUHUB_SWARM_NETWORK": "gpuhub-swarm",
        "GPUHUB_SWARM_HOMES": "pinned", "GPUHUB_GPUS": ",".join(all_gpus),
        # no line: a student without a free GPU is refused at once (503)
        "GPUHUB_GPU_QUEUE_TIMEOUT": "0",
        "GPUHUB_CATALOG": "/srv/gpuhub/catalog/swarm.yaml"})
    image = s.env["GPUHUB_USER_IMAGE"]
    (s.dir / "catalog" / "swarm.yaml").write_text(
        f"courses:\n  - slug: dl\n    display_name: Deep learning\n    image: {image}\n    gpus: 1\n"
        f"  - slug: cpu\n    display_name: Python, no GPU\n    image: {image}\n")
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
    services = services_named(swarm, f"{stack.prefix}-ann")
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
    wait_for(lambda: not services_named(swarm, f"{stack.prefix}-ann"), 60,
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


def running_task(swarm_, service_name, timeout=60):
    """The running task of a student's service; fails listing its tasks if none runs
    within `timeout` s."""
    api = swarm_.manager.client.api

    def tasks():
        services = services_named(swarm_, service_name)
        return api.tasks(filters={"service": services[0]["ID"]}) if len(services) == 1 else []

    def running():
        found = [t for t in tasks() if t["Status"]["State"] == "running"]
        return found[0] if len(found) == 1 else None
    try:
        return wait_for(running, timeout, f"a running task of {service_name}")
    except AssertionError as e:
        states = [(t["NodeID"][:8], t["Status"]["State"], t["Status"].get("Err", ""),
                   t["DesiredState"]) for t in tasks()]
        raise AssertionError(f"{e}; its tasks: {states}") from None


def gpu_of(stack, user):
    held = [g["uuid"] for g in stack.api("GET", "/gpus").json()["gpus"]
            if any(h["user"] == user for h in g["holders"])]
    return held[0] if len(held) == 1 else None


def is_ready(stack, user):
    return bool(stack.api("GET", f"/users/{user}").json()["servers"].get("", {}).get("ready"))


RACERS = [f"s{n}" for n in range(12)]
RACE = {}  # racer -> its GPU, for the dead-worker test (the tests run in order)


def test_twelve_students_racing_through_the_hub_for_two_plus_two_gpus_get_four(swarm, swarm_hub):
    """12 students ask the hub at once for the GPU course; 2 + 2 GPUs on two workers: 4
    servers start, each on its GPU's node and seeing only it, none twice; the 8 others are
    refused with 503 (no line here) and nothing of theirs runs."""
    stack = swarm_hub
    for user in RACERS:
        assert stack.api("POST", f"/users/{user}").status_code in (201, 409)
    with ThreadPoolExecutor(len(RACERS)) as pool:
        answers = dict(zip(RACERS, pool.map(
            lambda u: stack.api("POST", f"/users/{u}/server", json={"course": "dl"}), RACERS)))
    started = [u for u, r in answers.items() if r.status_code in (201, 202)]
    refused = [u for u, r in answers.items() if r.status_code == 503]
    assert len(started) == 4 and len(refused) == 8, {u: (r.status_code, r.text[:200])
                                                      for u, r in answers.items()}
    wait_for(lambda: all(is_ready(stack, u) for u in started), 300,
             "the four students' servers to be ready")
    ids = {w.node_id(): index for index, w in enumerate(swarm.nodes)}
    given = {}
    for user in started:
        task = running_task(swarm, f"{stack.prefix}-{user}")
        uuid = gpu_of(stack, user)
        assert uuid in GPUS[ids[task["NodeID"]]], (user, uuid, task["NodeID"])  # its GPU's node
        assert container_env(swarm, task)["NVIDIA_VISIBLE_DEVICES"] == uuid, user
        given[user] = uuid
    assert len(set(given.values())) == 4, given  # none twice
    for user in refused:
        assert not services_named(swarm, f"{stack.prefix}-{user}"), user
        wait_for(lambda: "" not in stack.api("GET", f"/users/{user}").json()["servers"], 30,
                 f"{user}'s refused spawn to be cleared")
    RACE.update(given)


def test_a_students_files_survive_a_stop_and_a_start_in_pinned_home_mode(swarm, swarm_hub):
    """GPUHUB_SWARM_HOMES=pinned: the student writes a file through Jupyter, the hub stops
    the server, the next start lands on the node that holds the home volume, and the
    file is there."""
    stack = swarm_hub
    assert stack.api("POST", "/users/pia").status_code in (201, 409)
    stack.start_server("pia", timeout=300, course="cpu")
    first = running_task(swarm, f"{stack.prefix}-pia")
    r = stack.server_api("pia", "/api/contents/thesis.txt", method="PUT",
                         json={"type": "file", "format": "text", "content": "my thesis"})
    assert r.status_code in (200, 201), r.text
    stack.stop_server("pia")
    wait_for(lambda: not services_named(swarm, f"{stack.prefix}-pia"),
             60, "pia's service to be removed")
    stack.start_server("pia", timeout=300, course="cpu")
    second = running_task(swarm, f"{stack.prefix}-pia")
    assert second["NodeID"] == first["NodeID"], "the server follows its home"
    r = stack.server_api("pia", "/api/contents/thesis.txt")
    assert r.status_code == 200 and r.json()["content"] == "my thesis", r.text
    stack.stop_server("pia")


def test_stopping_a_worker_frees_its_gpus_and_its_students_start_again_elsewhere(swarm, swarm_hub):
    """Runs last: it stops worker 2's daemon. The hub's poll reports its students' servers
    gone; their GPUs are freed and their services removed. Pinned homes: a student whose
    files are on worker 2 is told so (503) rather than given an empty home elsewhere;
    students whose homes are not there start GPU servers through the hub on worker 1, and
    worker 2's GPUs, free in the database, are not handed out."""
    from hub import swarm as hs
    stack, api = swarm_hub, swarm.manager.client.api
    w1, w2 = (w.node_id() for w in swarm.workers)
    on_w1 = [u for u, uuid in RACE.items() if uuid in GPUS[1]]
    on_w2 = [u for u, uuid in RACE.items() if uuid in GPUS[2]]
    assert len(on_w1) == len(on_w2) == 2, RACE  # from the race above
    for user in on_w1:  # worker 1's students go home
        stack.stop_server(user)
    swarm.workers[1].stop()
    wait_for(lambda: w2 not in hs.ready_nodes(api.nodes()), 120, "the manager to see worker 2 down")
    # JupyterHub polls each server every 30 s (Spawner.poll_interval)
    for user in on_w2:
        wait_for(lambda: "" not in stack.api("GET", f"/users/{user}").json()["servers"], 180,
                 f"the hub to report {user}'s server gone")
        wait_for(lambda: gpu_of(stack, user) is None, 30, f"{user}'s GPU to be freed")
        assert not services_named(swarm, f"{stack.prefix}-{user}"), user
    r = stack.api("POST", f"/users/{on_w2[0]}/server", json={"course": "dl"})
    assert r.status_code == 503 and "down" in r.json()["message"], r.text
    newcomers = ["n1", "n2"]
    for user in newcomers:
        assert stack.api("POST", f"/users/{user}").status_code in (201, 409)
        stack.start_server(user, timeout=300, course="dl")
        assert running_task(swarm, f"{stack.prefix}-{user}")["NodeID"] == w1, user
    assert {gpu_of(stack, u) for u in newcomers} == set(GPUS[1])
