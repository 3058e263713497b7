"""hub/netpool.py without Docker, on tests/test_networks.py's fake engine: a ready
network goes to one server only, never one with a foreign container on it, the pool stays
bounded, and the start-up sweep removes only what nobody uses. The real engine:
tests/e2e/test_network_isolation.py (servers there get their networks from the pool)."""

import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub import names, netpool, networks
from tests.test_networks import SERVICES, FakeEngine

POOL = "10.128.0.0/16"


class Engine(FakeEngine):
    """The fake engine, safe to call from threads (Docker itself creates one network at
    a time per name and subnet), slow enough on inspect to let claims interleave, and
    with user containers that a sweep lists."""

    def __init__(self):
        super().__init__()
        self.lock = threading.RLock()
        self.user_containers = []  # what GET /containers/json?all=1 lists

    def create_network(self, *args, **kwargs):
        with self.lock:
            return super().create_network(*args, **kwargs)

    def inspect_network(self, name):
        time.sleep(0.001)  # a claim's check takes a while: other threads get in meanwhile
        with self.lock:
            return super().inspect_network(name)

    def containers(self, filters, all=False):
        if filters.get("label") == netpool.USER_LABEL:
            return [{"Id": c, "HostConfig": {"NetworkMode": mode}}
                    for c, mode in self.user_containers]
        return super().containers(filters)

    def run_user_container(self, cid, network):
        self.ctrs[cid] = {"Id": cid, "Name": f"/gpuhub-{cid}", "service": "",
                          "networks": {network}, "project": "none"}
        self.user_containers.append((cid, network))


def peers(engine):
    return networks.find_peers(engine, engine.inspect_container("hubid"), SERVICES)


def filled(size, engine=None):
    engine = engine or Engine()
    pool = netpool.NetworkPool("gpuhub", POOL, size)
    pool.refill(engine, peers(engine))
    return engine, pool


def in_threads(n, fn):
    barrier = threading.Barrier(n)
    results = [None] * n

    def run(i):
        barrier.wait()
        results[i] = fn()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


def test_a_pool_network_is_isolated_like_a_servers_own_with_hub_proxy_and_egress_on_it():
    engine, pool = filled(2)
    assert len(pool.ready()) == 2
    for name in pool.ready():
        assert netpool.is_pool_network(name, "gpuhub")
        net = networks.checked(engine.inspect_network(name))
        assert net["Internal"] is True
        assert net["Labels"] == {networks.NETWORK_LABEL: ""}
        assert set(net["Containers"]) == {"hubid", "proxyid", "egressid"}


def test_claims_at_once_each_get_a_different_network_and_none_twice():
    engine, pool = filled(8)
    made = set(pool.ready())
    claims = in_threads(16, lambda: pool.claim(engine, peers(engine))[0])
    got = [c for c in claims if c]
    assert len(got) == 8 and len(set(got)) == 8 and set(got) == made
    assert pool.ready() == []
    assert pool.claim(engine, peers(engine)) == (None, [])


def test_a_network_with_a_foreign_container_on_it_is_never_handed_out():
    engine, pool = filled(2)
    first, second = pool.ready()
    engine.run_user_container("mallory", first)  # e.g. attached by hand
    name, dropped = pool.claim(engine, peers(engine))
    assert name == second and dropped == [first]
    assert pool.claim(engine, peers(engine)) == (None, [])  # and not later either
    # nor does the sweep take it from under the container
    assert pool.sweep(engine, peers(engine)) == []
    assert first in engine.nets


def test_a_network_no_longer_isolated_is_dropped():
    engine, pool = filled(1)
    name = pool.ready()[0]
    engine.nets[name]["Internal"] = False
    assert pool.claim(engine, peers(engine)) == (None, [name])


def test_a_network_removed_meanwhile_is_skipped():
    engine, pool = filled(2)
    first, second = pool.ready()
    del engine.nets[first]
    assert pool.claim(engine, peers(engine)) == (second, [])


def test_a_claim_attaches_a_proxy_that_was_recreated_since_and_drops_unwanted_egress():
    engine, pool = filled(1)
    del engine.ctrs["proxyid"]
    engine.ctrs["proxy2"] = {"Id": "proxy2", "Name": "/p-proxy-1", "service": "proxy",
                             "networks": {"gpuhub-users"}}
    found = peers(engine)
    wanted = [p for p in found if p.service != "egress"]
    unwanted = [p for p in found if p.service == "egress"]
    name, _ = pool.claim(engine, wanted, unwanted)
    assert set(engine.inspect_network(name)["Containers"]) == {"hubid", "proxy2"}


def test_refills_at_once_never_grow_the_pool_past_its_size():
    engine = Engine()
    pool = netpool.NetworkPool("gpuhub", POOL, 3)
    made = in_threads(5, lambda: pool.refill(engine, peers(engine)))
    assert sum(len(m) for m in made) == 3
    assert len(pool.ready()) == 3 and len(engine.nets) == 3 and pool.wanted() == 0
    assert sorted(pool.unclaimed()) == sorted(pool.ready())
    assert pool.refill(engine, peers(engine)) == []
    pool.claim(engine, peers(engine))
    assert pool.wanted() == 1
    assert len(pool.refill(engine, peers(engine))) == 1
    assert len(engine.nets) == 4  # the claimed one stays its server's


def test_a_failed_refill_leaves_no_half_made_network_and_no_count_behind():
    engine = Engine()
    pool = netpool.NetworkPool("gpuhub", "10.128.0.0/28", 2)  # room for one network
    with pytest.raises(networks.NetworkError, match="no free /28"):
        pool.refill(engine, peers(engine))
    assert len(pool.ready()) == 1 and pool.wanted() == 1
    assert list(engine.nets) == pool.ready()


def test_size_zero_makes_nothing():
    engine, pool = filled(0)
    assert pool.ready() == [] and engine.nets == {}
    assert pool.claim(engine, peers(engine)) == (None, [])


def test_teardown_removes_the_network_with_everybody_off_it():
    engine, pool = filled(1)
    name, _ = pool.claim(engine, peers(engine))
    engine.run_user_container("alice", name)
    del engine.ctrs["alice"]  # the server stopped and its container was removed
    pool.teardown(engine, name)
    assert name not in engine.nets
    assert not any(name in c["networks"] for c in engine.ctrs.values())


def test_the_sweep_at_start_removes_only_networks_nobody_uses_or_names():
    engine = Engine()
    # what a former hub left
    old_pool = netpool.pool_network_name("gpuhub")  # never claimed
    gone = "gpuhub-dave"  # its server stopped, the teardown did not finish
    running = netpool.pool_network_name("gpuhub")  # a running server's
    stopped = "gpuhub-erin"  # a stopped (not removed) container's
    for name in (old_pool, gone, running, stopped):
        networks.ensure_network(engine, name, POOL, "")
        networks.attach(engine, name, peers(engine))
    engine.run_user_container("carol", running)
    engine.user_containers.append(("erin", stopped))
    # something that is not a user container (not listed as one) but is on a network
    networks.ensure_network(engine, "gpuhub-henry", POOL, "henry")
    engine.ctrs["tool"] = {"Id": "tool", "Name": "/tool", "service": "", "networks":
                           {"gpuhub-henry"}, "project": "none"}
    networks.ensure_network(engine, "other-frank", POOL, "frank")  # another hub's
    # this hub's own: a ready pool network and one held by a spawn in progress
    pool = netpool.NetworkPool("gpuhub", POOL, 1)
    pool.refill(engine, peers(engine))
    pool.hold("gpuhub-grace")
    networks.ensure_network(engine, "gpuhub-grace", POOL, "grace")

    removed = pool.sweep(engine, peers(engine))
    assert sorted(removed) == sorted([old_pool, gone])
    assert set(engine.nets) == {running, stopped, "other-frank", "gpuhub-grace", "gpuhub-henry",
                                *pool.ready()}


@given(st.text(max_size=40))
def test_no_container_name_is_a_pool_network_name(user):
    # escaped names hold only a-z, 0-9 and '-' (hub/names.py): never the pool's '_'
    assert not netpool.is_pool_network(f"gpuhub-{names.docker_name_part(user)}", "gpuhub")


def test_the_sweep_and_first_fill_run_although_a_running_server_made_the_pool_first(
        monkeypatch):
    """At a hub start, poll() of a server still running holds its network in the pool
    (GpuhubSpawner._rejoin) before any spawn: the pool's sweep and first fill must still
    run at the first spawn, or the pool stays empty and leftovers stay for good."""
    import asyncio

    from hub.spawner import GpuhubSpawner
    monkeypatch.setattr(GpuhubSpawner, "_network_pool", None)
    monkeypatch.setattr(GpuhubSpawner, "_pool_started", False)

    class Recorder(GpuhubSpawner):
        ran = []

        async def _in_pool_thread(self, fn, *args):
            self.ran.append(fn.__name__)
            return []

    spawner = Recorder(network_pool_size=2)
    spawner._pool().hold("gpuhub-pool_running")  # what _rejoin does at the hub's start

    async def first_spawn():
        spawner._start_network_pool()
        spawner._start_network_pool()  # once per hub process
        for _ in range(10):
            await asyncio.sleep(0)
    asyncio.run(first_spawn())
    assert Recorder.ran == ["sweep", "_refill"]
