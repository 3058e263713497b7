"""Swarm mode's plain logic (hub/swarm.py) and the allocator's (node, GPU) pairs; the real
swarm is tests/e2e/test_swarm_e2e.py."""

import threading

import pytest
from hypothesis import given, settings as hsettings, strategies as st
from traitlets.config import Config

from hub import config, gpus, settings, startup, swarm
from hub.gpu_store import GpuAllocator

from .test_startup import environ


def node(node_id, hostname, values=(), state="ready", availability="active"):
    return {"ID": node_id, "Status": {"State": state}, "Spec": {"Availability": availability},
            "Description": {"Hostname": hostname, "Resources": {"GenericResources": [
                {"NamedResourceSpec": {"Kind": swarm.GPU_KIND, "Value": v}} for v in values]
                + [{"DiscreteResourceSpec": {"Kind": "other", "Value": 3}}]}}}


A1, A2, B1, B2 = (f"GPU-{x}0000000-0000-4000-8000-00000000000{i}" for x, i in
                  (("a", 1), ("a", 2), ("b", 1), ("b", 2)))
NODES = [node("idb", "worker2", [B1, B2]), node("idm", "manager"), node("ida", "worker1", [A1, A2])]


def test_the_inventory_is_what_each_node_advertises():
    found = swarm.node_gpus(NODES)
    assert [(g.node, g.uuid, g.index) for g in found] == [
        ("ida", A1, 0), ("ida", A2, 1), ("idb", B1, 0), ("idb", B2, 1)]


def test_a_gpu_advertised_by_two_nodes_is_refused_naming_both():
    with pytest.raises(gpus.GpuConfigError, match="node worker2.*also advertised by node worker1"):
        swarm.node_gpus([node("ida", "worker1", [A1]), node("idb", "worker2", [A1.upper()])])


@pytest.mark.parametrize("value, expected", [
    ("0", "name the GPU by its UUID"), ("GPU-xyz", "neither a GPU index"),
    ("GPU-a1,GPU-a1", "listed twice")])
def test_a_bad_advertised_gpu_names_the_node(value, expected):
    with pytest.raises(gpus.GpuConfigError, match=f"node worker1: node-generic-resources.*{expected}"):
        swarm.node_gpus([node("ida", "worker1", value.split(","))])


def test_only_ready_active_nodes_take_servers():
    nodes = NODES + [node("idd", "down", state="down"), node("idx", "drained", availability="drain")]
    assert swarm.ready_nodes(nodes) == {"ida", "idb", "idm"}


def test_a_server_runs_on_its_gpus_node_or_its_homes():
    a1, a2, b1 = (gpus.Gpu(0, A1, node="ida"), gpus.Gpu(1, A2, node="ida"),
                  gpus.Gpu(0, B1, node="idb"))
    assert swarm.server_node([a1, a2]) == "ida"
    assert swarm.server_node([], "idb") == "idb"
    assert swarm.server_node([]) == ""
    assert swarm.placement("ida") == {"constraints": ["node.id==ida"]}
    assert swarm.placement("") == {"constraints": []}
    with pytest.raises(ValueError, match="2 nodes"):
        swarm.server_node([a1, b1])
    with pytest.raises(ValueError, match="home is on node idb"):
        swarm.server_node([a1], "idb")


def test_homes_pinned_are_volumes_shared_are_nfs_per_user():
    pinned = swarm.home_mount("gpuhub-user-ann", "/home/jovyan")
    assert (pinned["Type"], pinned["Source"], pinned["Target"]) == ("volume", "gpuhub-user-ann",
                                                                    "/home/jovyan")
    assert "VolumeOptions" not in pinned
    shared = swarm.home_mount("gpuhub-user-ann", "/home/jovyan", "shared",
                              "10.0.0.5:/export/gpuhub/", "ann")
    driver = shared["VolumeOptions"]["DriverConfig"]
    assert driver == {"Name": "local", "Options": {
        "type": "nfs", "o": "addr=10.0.0.5,rw,nfsvers=4", "device": ":/export/gpuhub/ann"}}
    with pytest.raises(ValueError, match="server:/path"):
        swarm.home_mount("v", "/home/jovyan", "shared", "export/gpuhub", "ann")


def test_a_servers_gpus_are_on_one_node_the_one_with_most_room():
    inventory = swarm.node_gpus(NODES + [node("idc", "worker3", [
        "GPU-c0000000-0000-4000-8000-000000000001", "GPU-c0000000-0000-4000-8000-000000000002",
        "GPU-c0000000-0000-4000-8000-000000000003"])])
    picks = gpus.choose_gpus(inventory, gpus.Policy(), {}, 2)
    assert {g.node for g, _ in picks} == {"idc"}
    # worker3 full but one: two GPUs must come from worker1 or worker2, not split
    taken = {g.uuid: {0} for g in inventory if g.node == "idc" and g.index < 2}
    picks = gpus.choose_gpus(inventory, gpus.Policy(), taken, 2)
    assert len({g.node for g, _ in picks}) == 1 and picks[0][0].node in {"ida", "idb"}
    with pytest.raises(gpus.NoGpuAvailable):
        gpus.choose_gpus(inventory, gpus.Policy(), {}, 4)  # no node has four


def test_the_allocator_hands_out_gpus_only_on_the_nodes_given(tmp_path):
    allocator = GpuAllocator(f"sqlite:///{tmp_path}/g.sqlite", swarm.node_gpus(NODES), gpus.Policy())
    assert {g.node for g in allocator.allocate("ann", "", 1, nodes={"idb"})} == {"idb"}
    with pytest.raises(gpus.NoGpuAvailable):
        allocator.allocate("bob", "", 1, nodes={"idm"})  # the manager has none
    assert allocator.allocate("cy", "", 2, nodes={"ida", "idb"})[0].node == "ida"


@hsettings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=4),
       st.lists(st.integers(min_value=1, max_value=3), max_size=12))
def test_no_gpu_is_handed_out_twice_and_no_server_spans_nodes(per_node, wants):
    inventory = [gpus.Gpu(i, f"GPU-{n:x}{i:x}000000-0000-4000-8000-000000000000", node=f"n{n}")
                 for n, count in enumerate(per_node) for i in range(count)]
    taken, held = {}, {}
    for server, want in enumerate(wants):
        try:
            picks = gpus.choose_gpus(inventory, gpus.Policy(), taken, want)
        except gpus.NoGpuAvailable:
            # refused only when no node has `want` free GPUs
            free = {}
            for g in inventory:
                if g.uuid not in taken:
                    free[g.node] = free.get(g.node, 0) + 1
            assert all(n < want for n in free.values())
            continue
        assert len(picks) == want and len({g.node for g, _ in picks}) == 1
        for g, slot in picks:
            assert g.uuid not in taken
            taken[g.uuid] = {slot}
        held[server] = picks


def test_twelve_students_racing_for_two_plus_two_gpus_get_exactly_four(tmp_path):
    allocator = GpuAllocator(f"sqlite:///{tmp_path}/g.sqlite", swarm.node_gpus(NODES), gpus.Policy())
    results, barrier = {}, threading.Barrier(12)

    def spawn(n):
        barrier.wait()
        try:
            results[n] = allocator.allocate(f"s{n}", "", 1, nodes={"ida", "idb", "idm"})
        except gpus.NoGpuAvailable:
            results[n] = []
    threads = [threading.Thread(target=spawn, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    won = [g for picks in results.values() for g in picks]
    assert len(results) == 12 and len(won) == 4
    assert sorted((g.node, g.uuid) for g in won) == sorted((g.node, g.uuid)
                                                           for g in swarm.node_gpus(NODES))


def test_swarm_mode_selects_the_swarm_spawner_with_the_nodes_gpus(tmp_path, monkeypatch):
    monkeypatch.setattr(startup, "swarm_nodes", lambda: NODES)
    monkeypatch.setattr(startup, "running_servers", lambda prefix, mode: set())
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("courses:\n  - {slug: dl, display_name: DL, image: a/b:1, gpus: 1}\n")
    c = Config()
    config.apply(c, environ(tmp_path, GPUHUB_MODE="swarm", GPUHUB_SWARM_NETWORK="lab-net",
                            GPUHUB_CATALOG=str(catalog)))
    assert c.JupyterHub.spawner_class == "hub.spawner.GpuhubSwarmSpawner"
    assert c.SwarmSpawner.network_name == "lab-net"
    assert c.GpuhubSwarmSpawner.homes == "pinned"
    assert [(g.node, g.uuid) for g in c.GpuhubSpawner.gpu_allocator.inventory] == [
        ("ida", A1), ("ida", A2), ("idb", B1), ("idb", B2)]


def test_single_mode_keeps_the_docker_spawner(tmp_path):
    c = Config()
    config.apply(c, environ(tmp_path))
    assert c.JupyterHub.spawner_class == "hub.spawner.GpuhubSpawner"


def test_shared_homes_need_an_nfs_export():
    _, problems = settings.read({**environ_min(), "GPUHUB_MODE": "swarm",
                                 "GPUHUB_SWARM_HOMES": "shared"})
    assert any(p.startswith("GPUHUB_SWARM_NFS: with GPUHUB_SWARM_HOMES=shared") for p in problems)
    _, problems = settings.read({**environ_min(), "GPUHUB_MODE": "swarm",
                                 "GPUHUB_SWARM_HOMES": "shared", "GPUHUB_SWARM_NFS": "nfs:/e"})
    assert not problems


def environ_min():
    return {"GPUHUB_DOMAIN": "hub.example.edu", "AUTH_PROVIDER": "dummy",
            "GPUHUB_DUMMY_PASSWORD": "sixteen-or-more-characters",
            "GPUHUB_USER_IMAGE": "gpuhub/tensorflow-2.9-gpu:1"}


def test_a_server_on_a_node_that_is_down_is_gone():
    nodes = [node("ida", "worker1"), node("idb", "worker2", state="down")]
    assert swarm.gone_reason({"NodeID": "ida"}, nodes) is None
    assert swarm.gone_reason({"NodeID": "idb"}, nodes) == "node idb is down"
    assert swarm.gone_reason({}, nodes) is None  # not placed yet


def swarm_spawner(homes="pinned"):
    import types

    from jupyterhub.objects import Hub

    from hub.spawner import GpuhubSwarmSpawner
    user = types.SimpleNamespace(name="ann", escaped_name="ann", url="/user/ann/", groups=[], id=1)
    spawner = GpuhubSwarmSpawner(user=user, hub=Hub(), orm_spawner=None, homes=homes)

    async def nodes():
        return [node("ida", "worker1"), node("idb", "worker2", state="down")]
    spawner._nodes = nodes
    return spawner


async def test_a_pinned_home_on_a_node_that_is_down_refuses_with_a_clear_message():
    from tornado import web
    spawner = swarm_spawner()
    assert await spawner._gpu_nodes() == {"ida"}  # no home yet: any node that is up
    spawner.home_node = "idb"
    with pytest.raises(web.HTTPError) as e:
        await spawner._gpu_nodes()
    assert e.value.status_code == 503 and "down" in e.value.log_message
    spawner.home_node = "ida"
    assert await spawner._gpu_nodes() == {"ida"}


async def test_the_home_node_outlives_a_stop_and_is_saved():
    spawner = swarm_spawner()
    spawner.home_node = "ida"
    spawner.clear_state()
    assert spawner.get_state()["home_node"] == "ida"
    other = swarm_spawner()
    other.load_state({"home_node": "ida"})
    assert other.home_node == "ida"
    shared = swarm_spawner("shared")
    assert await shared._gpu_nodes() == {"ida"}
