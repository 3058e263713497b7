"""gpuhub on a real multi-node Docker Swarm: a manager and two workers, each a dockerd in
a network namespace of its own on this machine (tests/e2e/swarm.py). There is no GPU: the
workers advertise fake GPU UUIDs as the generic resource NVIDIA-GPU (`node-generic-resources`
in their daemon.json), which is all the hub reads; the no-op nvidia hook is on their PATH."""

import shutil
import subprocess
from pathlib import Path

import pytest

from .stack import RUN_ID, wait_for
from .swarm import Swarm

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


# -- gpuhub's placement on the real swarm: the inventory from what the nodes advertise,
# -- the hub's allocator, and services built from hub/swarm.py as GpuhubSwarmSpawner does

def build_service(swarm_, name, command, gpus=(), home_node="", volume=None, network=None):
    """A server's service as GpuhubSwarmSpawner.create_object builds it (SwarmSpawner's
    create_object with gpuhub's extra_* specs), with a command instead of Jupyter."""
    from docker.types import ContainerSpec, EndpointSpec, Placement, TaskTemplate

    from hub import swarm as hs
    env = {"NVIDIA_VISIBLE_DEVICES": ",".join(g.uuid for g in gpus) or "void"}
    labels = {"org.gpuhub.user": name, "org.gpuhub.server": ""}
    mounts = [hs.home_mount(volume, "/var/tmp")] if volume else []
    spec = ContainerSpec(PYTHON_IMAGE, command=["sh", "-c", command], env=env, mounts=mounts,
                         **{**hs.container_spec("1000:100", labels)})
    task = TaskTemplate(spec, placement=Placement(**hs.placement(hs.server_node(list(gpus), home_node))),
                        networks=[network] if network else [], **hs.task_spec())
    return swarm_.manager.client.api.create_service(
        task, name=f"{PREFIX}-{name}", labels=labels, endpoint_spec=EndpointSpec(**hs.endpoint_spec()))


PREFIX = f"gpuhub-sw{RUN_ID}"


def task_of(swarm_, name):
    import docker
    try:
        tasks = swarm_.manager.client.api.tasks(filters={"service": f"{PREFIX}-{name}"})
    except docker.errors.NotFound:
        return None
    return max(tasks, key=lambda t: t["CreatedAt"]) if tasks else None


def running_task(swarm_, name):
    task = task_of(swarm_, name)
    if task and task["Status"]["State"] in ("failed", "rejected"):
        raise AssertionError(f"{name}: {task['Status']}")
    return task if task and task["Status"]["State"] == "running" else None


def remove_service(swarm_, name):
    try:
        swarm_.manager.client.api.remove_service(f"{PREFIX}-{name}")
    except Exception:
        pass


@pytest.fixture(scope="module")
def hub_side(swarm, tmp_path_factory):
    """What the hub holds: the inventory read from the nodes, the allocator's database."""
    from hub import gpus, swarm as hs
    from hub.gpu_store import GpuAllocator
    inventory = hs.node_gpus(swarm.manager.client.api.nodes())
    db = tmp_path_factory.mktemp("hubdb") / "gpus.sqlite"
    return GpuAllocator(f"sqlite:///{db}", inventory, gpus.Policy())


def node_ids(swarm_):
    return {n.hostname: n.node_id() for n in swarm_.nodes}


def test_twelve_students_racing_for_two_plus_two_gpus_get_four_each_on_its_gpus_node(swarm, hub_side):
    import threading

    from hub import gpus, swarm as hs
    ids = node_ids(swarm)
    assert sorted((g.node, g.uuid) for g in hub_side.inventory) == sorted(
        (ids[swarm.nodes[i].hostname], uuid) for i, uuids in GPUS.items() for uuid in uuids)
    ready = hs.ready_nodes(swarm.manager.client.api.nodes())
    won, barrier = {}, threading.Barrier(12)

    def spawn(n):
        barrier.wait()
        try:
            won[f"s{n}"] = hub_side.allocate(f"s{n}", "", 1, nodes=ready)
        except gpus.NoGpuAvailable:
            pass
    threads = [threading.Thread(target=spawn, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(won) == 4
    assert len({g[0].uuid for g in won.values()}) == 4  # none twice
    for student, held in won.items():
        build_service(swarm, student, "env; sleep 3600", gpus=held)
    by_id = {n.node_id(): n for n in swarm.nodes}
    for student, held in won.items():
        task = wait_for(lambda: running_task(swarm, student), 120, f"{student}'s server running")
        assert task["NodeID"] == held[0].node, student  # on the node of its GPU
        # ... where its container sees exactly that GPU
        container = by_id[task["NodeID"]].client.containers.get(
            task["Status"]["ContainerStatus"]["ContainerID"])
        env = dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])
        assert env["NVIDIA_VISIBLE_DEVICES"] == held[0].uuid, student


def test_a_students_files_survive_a_stop_and_a_start_in_pinned_home_mode(swarm):
    from hub import swarm as hs
    student, volume = "pinned-ann", f"{PREFIX}-user-pinned-ann"
    build_service(swarm, student, "echo 'my thesis' > /var/tmp/notes.txt && sleep 3600",
                  volume=volume)
    first = wait_for(lambda: running_task(swarm, student), 120, "the first server running")
    home_node = hs.task_node(first)  # what GpuhubSwarmSpawner.start records
    remove_service(swarm, student)  # the server stops; its volume stays on that node
    wait_for(lambda: task_of(swarm, student) is None, 60, "the first server gone")
    build_service(swarm, student, "cat /var/tmp/notes.txt && sleep 3600", volume=volume,
                  home_node=home_node)
    second = wait_for(lambda: running_task(swarm, student), 120, "the second server running")
    assert second["NodeID"] == home_node
    logs = lambda: swarm.manager.docker("service", "logs", "--raw", f"{PREFIX}-{student}",  # noqa: E731
                                        check=False).stdout
    wait_for(lambda: "my thesis" in logs(), 60, "the second server to read the first's file")
    remove_service(swarm, student)


def test_stopping_a_worker_frees_its_gpus_and_its_students_start_again_elsewhere(swarm, hub_side):
    """Runs last: it stops worker 2's daemon. Its students' servers are reported gone (what
    GpuhubSwarmSpawner.poll says), the hub stops them (GPUs released), and they start again
    on worker 1, whose students stopped meanwhile."""
    from hub import swarm as hs
    ids = node_ids(swarm)
    w1, w2 = (ids[w.hostname] for w in swarm.workers)
    holders = {a.user: a for a in hub_side.holdings()}
    on_w1 = [u for u, a in holders.items() if hub_side.held_by(u, "")[0].node == w1]
    on_w2 = [u for u, a in holders.items() if hub_side.held_by(u, "")[0].node == w2]
    assert len(on_w1) == len(on_w2) == 2, holders  # from the race above
    for student in on_w1:  # worker 1's students go home
        remove_service(swarm, student)
        hub_side.release(student, "")
    swarm.workers[1].stop()
    nodes = lambda: swarm.manager.client.api.nodes()  # noqa: E731
    wait_for(lambda: w2 not in hs.ready_nodes(nodes()), 120, "the manager to see worker 2 down")
    for student in on_w2:
        reason = hs.gone_reason(task_of(swarm, student), nodes())
        assert reason == f"node {w2} is down", student
        remove_service(swarm, student)  # the hub's stop: service removed, GPUs released
        assert hub_side.release(student, "")
    ready = hs.ready_nodes(nodes())
    for student in on_w2:
        held = hub_side.allocate(student, "", 1, nodes=ready)
        assert held[0].node == w1
        wait_for(lambda: task_of(swarm, student) is None, 60, f"{student}'s old service gone")
        build_service(swarm, student, "sleep 3600", gpus=held)
    for student in on_w2:
        task = wait_for(lambda: running_task(swarm, student), 120, f"{student} running again")
        assert task["NodeID"] == w1
    assert {g.uuid for s in on_w2 for g in hub_side.held_by(s, "")} == set(GPUS[1])
