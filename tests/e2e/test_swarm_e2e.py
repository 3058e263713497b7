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
