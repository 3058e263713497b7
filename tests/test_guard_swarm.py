"""The guard's swarm rows (GPUHUB_MODE=swarm): one test per allowed row, one per refusal
of a service body; in single mode every swarm call stays refused (no-swarm)."""

import copy
import dataclasses
import json

import docker
import pytest
from docker.types import ContainerSpec, EndpointSpec, Placement, Resources, TaskTemplate

from guard import rules
from guard.body import Refusal
from hub import swarm

from .test_guard_rules import POLICY, FakeEngine

GPU = "GPU-5a000000-0000-4000-8000-000000000001"
SWARM = dataclasses.replace(POLICY, deploy_mode="swarm", swarm_network="gpuhub-swarm",
                            gpus=frozenset({GPU.lower()}), swarm_nfs="10.0.0.5:/export/gpuhub")
USER_SERVICE = {"ID": "u" * 25, "Spec": {"Name": "gpuhub-alice", "Labels": {
    "org.gpuhub.user": "alice", "org.gpuhub.server": ""}}}
COMPOSE_SERVICE = {"ID": "c" * 25, "Spec": {"Name": "gpuhub_hub", "Labels": {
    "com.docker.compose.project": "gpuhub"}}}


class SwarmEngine(FakeEngine):
    services = {s["Spec"]["Name"]: s for s in (USER_SERVICE, COMPOSE_SERVICE)}

    async def service(self, ref):
        return self.services.get(ref) or next(
            (s for s in self.services.values() if s["ID"] == ref), None)


def service_body(gpus=(), home="", nfs=False, node="nodeid1"):
    """The body SwarmSpawner.create_object posts with GpuhubSwarmSpawner's specs, as
    docker-py serialises it."""
    labels = {"org.gpuhub.user": "alice", "org.gpuhub.server": ""}
    mount = swarm.home_mount("gpuhub-user-alice", "/home/jovyan", "shared" if nfs else "pinned",
                             SWARM.swarm_nfs, "alice")
    spec = ContainerSpec("gpuhub/tensorflow-2.9-gpu:1", args=["start-singleuser.sh"],
                         env={"JUPYTERHUB_API_TOKEN": "x",
                              "NVIDIA_VISIBLE_DEVICES": ",".join(gpus) or "void"},
                         mounts=[mount], **swarm.container_spec("1000:100", labels))
    task = TaskTemplate(spec, resources=Resources(mem_limit=8 << 30, cpu_limit=4 * 10**9),
                        networks=["gpuhub-swarm"], placement=Placement(**swarm.placement(node)),
                        **swarm.task_spec())
    captured = {}
    api = docker.APIClient(version="1.41")
    api._post_json = lambda url, data, **kw: captured.update(data) or _Answer()
    api.create_service(task, name="gpuhub-alice", labels=labels,
                       endpoint_spec=EndpointSpec(**swarm.endpoint_spec()))
    return captured


class _Answer:
    status_code = 201

    def raise_for_status(self):
        pass

    def json(self):
        return {"ID": "x"}


def call(method, path, query=None, body=None):
    raw = b"" if body is None else json.dumps(body).encode()
    return rules.Request(method, path, query or {}, raw)


async def decide(request, policy=SWARM):
    return await rules.decide(request, policy, SwarmEngine())


async def refused(request, rule, policy=SWARM, status=403):
    with pytest.raises(Refusal) as e:
        await decide(request, policy)
    assert e.value.rule == rule, e.value.message
    assert e.value.status == status


# -- the allowed rows --

async def test_service_create_as_the_hub_sends_it():
    for body in (service_body(), service_body(gpus=[GPU]), service_body(nfs=True)):
        d = await decide(call("POST", "/v1.41/services/create", body=body))
        assert d.rule == "service-create"


async def test_services_list_shows_only_user_servers():
    d = await decide(call("GET", "/v1.41/services", {"filters": ["{}"]}))
    assert d.rule == "services-list"
    answer = json.loads(d.filter(json.dumps([USER_SERVICE, COMPOSE_SERVICE]).encode()))
    assert answer == [USER_SERVICE]


@pytest.mark.parametrize("rule, method", [("service-inspect", "GET"), ("service-remove", "DELETE")])
async def test_calls_on_a_user_service_reach_it_by_id(rule, method):
    d = await decide(call(method, "/v1.41/services/gpuhub-alice"))
    assert d.rule == rule and d.path == f"/v1.41/services/{USER_SERVICE['ID']}"
    await refused(call(method, "/v1.41/services/gpuhub_hub"), "gpuhub-services-only")
    await refused(call(method, "/v1.41/services/nope"), "no-such-service", status=404)


async def test_tasks_list_shows_only_user_servers_tasks():
    d = await decide(call("GET", "/tasks", {"filters": ['{"service": ["gpuhub-alice"]}']}))
    ours = {"ID": "t1", "Spec": {"ContainerSpec": {"Labels": {"org.gpuhub.user": "alice"}}}}
    other = {"ID": "t2", "Spec": {"ContainerSpec": {"Labels": {}}}}
    assert d.rule == "tasks-list"
    assert json.loads(d.filter(json.dumps([ours, other]).encode())) == [ours]


async def test_nodes_list():
    assert (await decide(call("GET", "/nodes"))).rule == "nodes-list"


@pytest.mark.parametrize("method, path", [
    ("POST", "/services/create"), ("GET", "/services"), ("GET", "/services/gpuhub-alice"),
    ("DELETE", "/services/gpuhub-alice"), ("GET", "/tasks"), ("GET", "/nodes")])
async def test_in_single_mode_every_swarm_call_stays_refused(method, path):
    body = service_body() if path.endswith("create") else None
    await refused(call(method, path, body=body), "no-swarm", policy=POLICY)


@pytest.mark.parametrize("method, path", [
    ("POST", "/swarm/init"), ("POST", "/swarm/leave"), ("POST", "/services/gpuhub-alice/update"),
    ("GET", "/services/gpuhub-alice/logs"), ("POST", "/nodes/abc/update"),
    ("DELETE", "/nodes/abc"), ("GET", "/tasks/abc/logs"), ("POST", "/secrets/create")])
async def test_the_rest_of_swarm_stays_refused_in_swarm_mode(method, path):
    with pytest.raises(Refusal) as e:
        await decide(call(method, path))
    assert e.value.rule in ("no-swarm", "no-secrets", "not-allowed")


# -- what a service may not be, one refusal each --

def spec_of(body):
    return body["TaskTemplate"]["ContainerSpec"]


def changed(change):
    body = service_body()
    change(body)
    return body


REFUSALS = [
    ("name-prefix", lambda b: b.update(Name="evil")),
    ("gpuhub-labels", lambda b: spec_of(b).update(Labels={})),
    ("gpuhub-labels", lambda b: b["Labels"].update({"com.docker.compose.project": "gpuhub"})),
    ("container-user", lambda b: spec_of(b).update(User="0:0")),
    ("cap-drop-all", lambda b: spec_of(b).update(CapabilityDrop=["NET_RAW"])),
    ("no-cap-add", lambda b: spec_of(b).update(CapabilityAdd=["SYS_ADMIN"])),
    ("no-privileged", lambda b: spec_of(b).update(Privileges={"SELinuxContext": {"Disable": True}})),
    ("no-sysctls", lambda b: spec_of(b).update(Sysctls={"net.ipv4.ip_forward": "1"})),
    ("no-group-add", lambda b: spec_of(b).update(Groups=["docker"])),
    ("no-secrets", lambda b: spec_of(b).update(Secrets=[{"SecretName": "hub-token"}])),
    ("no-host-paths", lambda b: spec_of(b)["Mounts"].append(
        {"Type": "bind", "Source": "/var/run/docker.sock", "Target": "/d"})),
    ("volume-prefix", lambda b: spec_of(b)["Mounts"].append(
        {"Type": "volume", "Source": "gpuhub_hub-state", "Target": "/d"})),
    ("no-volume-options", lambda b: spec_of(b)["Mounts"][0].update(VolumeOptions={"DriverConfig": {
        "Name": "local", "Options": {"type": "none", "o": "bind", "device": "/"}}})),
    ("no-volume-options", lambda b: spec_of(b)["Mounts"][0].update(VolumeOptions={"DriverConfig": {
        "Name": "local", "Options": {"type": "nfs", "o": "addr=10.0.0.5,rw,nfsvers=4",
                                     "device": ":/export/gpuhub/../other"}}})),
    ("nvidia-visible-devices", lambda b: spec_of(b).update(Env=["A=1"])),
    ("gpus-from-inventory", lambda b: spec_of(b).update(Env=["NVIDIA_VISIBLE_DEVICES=all"])),
    ("gpus-from-inventory", lambda b: b["TaskTemplate"]["Resources"].update(Reservations={
        "GenericResources": [{"NamedResourceSpec": {"Kind": "NVIDIA-GPU", "Value": "GPU-other"}}]})),
    ("one-replica", lambda b: b.update(Mode={"Global": {}})),
    ("one-replica", lambda b: b.update(Mode={"Replicated": {"Replicas": 3}})),
    ("no-published-ports", lambda b: b["EndpointSpec"].update(Ports=[{"TargetPort": 8888}])),
    ("network-prefix", lambda b: b["TaskTemplate"].update(Networks=[{"Target": "ingress"}])),
    ("no-endpoint-config", lambda b: b["TaskTemplate"].update(
        Networks=[{"Target": "gpuhub-swarm", "Aliases": ["hub"]}])),
    ("placement-by-node", lambda b: b["TaskTemplate"]["Placement"].update(
        Constraints=["engine.labels.x==1"])),
    ("log-driver", lambda b: b["TaskTemplate"].update(LogDriver={"Name": "syslog"})),
    ("unknown-field", lambda b: b["TaskTemplate"].update(PluginSpec={"Name": "x"})),
    ("unknown-field", lambda b: b["TaskTemplate"].update(Runtime="plugin")),
    ("unknown-field", lambda b: b.update(Networks=[{"Target": "ingress"}])),
]


@pytest.mark.parametrize("rule, change", REFUSALS, ids=[f"{r}-{i}" for i, (r, _) in enumerate(REFUSALS)])
async def test_service_create_refusal(rule, change):
    await refused(call("POST", "/services/create", body=changed(change)), rule)


def test_the_hubs_body_is_what_the_refusals_change():
    body = service_body(gpus=[GPU])
    assert spec_of(body)["CapabilityDrop"] == ["ALL"] and spec_of(body)["User"] == "1000:100"
    assert body["EndpointSpec"] == {"Mode": "dnsrr"}
    assert body["TaskTemplate"]["Placement"]["Constraints"] == ["node.id==nodeid1"]
    assert f"NVIDIA_VISIBLE_DEVICES={GPU}" in spec_of(body)["Env"]
    assert copy.deepcopy(body) == body
