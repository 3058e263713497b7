"""hub/networks.py without Docker: a fake engine that keeps networks and attachments and,
like Docker, refuses a subnet that overlaps another network. The real engine is in
tests/e2e/test_network_isolation.py."""

import ipaddress
import random

import docker.errors
import pytest

from hub import networks
from hub.spawner import egress_env


class FakeEngine:
    def __init__(self, hub_networks=("gpuhub-users",)):
        self.nets = {}
        self.calls = []
        self.ctrs = {
            "hubid": {"Id": "hubid", "Name": "/p-hub-1", "service": "hub",
                      "networks": set(hub_networks)},
            "proxyid": {"Id": "proxyid", "Name": "/p-proxy-1", "service": "proxy",
                        "networks": {"gpuhub-users"}},
            "egressid": {"Id": "egressid", "Name": "/p-egress-1", "service": "egress",
                         "networks": {"p_egress"}},
            "otherid": {"Id": "otherid", "Name": "/q-proxy-1", "service": "proxy",
                        "networks": set(), "project": "q"},
        }

    # -- the docker.APIClient methods hub/networks.py uses --
    def inspect_network(self, name):
        self.calls.append(("inspect_network", name))
        if name not in self.nets:
            raise docker.errors.NotFound(f"network {name} not found")
        net = self.nets[name]
        return {**net, "Containers": {c: {} for c, v in self.ctrs.items()
                                      if name in v["networks"]}}

    def networks(self, filters=None):
        self.calls.append(("networks", filters))
        return [n for n in self.nets.values() if filters["label"] in n["Labels"]]

    def create_network(self, name, driver, internal, check_duplicate, options, ipam, labels):
        self.calls.append(("create_network", name))
        subnet = ipaddress.ip_network(ipam["Config"][0]["Subnet"])
        if name in self.nets:
            raise docker.errors.APIError(f"network with name {name} already exists")
        for other in self.nets.values():
            if subnet.overlaps(ipaddress.ip_network(other["IPAM"]["Config"][0]["Subnet"])):
                raise docker.errors.APIError(
                    "Pool overlaps with other one on this address space")
        self.nets[name] = {"Name": name, "Internal": internal, "Options": options,
                               "Labels": labels, "IPAM": {"Config": [{"Subnet": str(subnet)}]}}

    def inspect_container(self, name):
        c = self.ctrs.get(name)
        if not c:
            raise docker.errors.NotFound(name)
        return {"Id": c["Id"], "Name": c["Name"],
                "Config": {"Labels": {networks.COMPOSE_PROJECT: "p",
                                      networks.COMPOSE_SERVICE: c["service"]}},
                "NetworkSettings": {"Networks": {n: {} for n in c["networks"]}}}

    def containers(self, filters):
        project = filters["label"].split("=")[1]
        return [{"Id": c["Id"], "Names": [c["Name"]],
                 "Labels": {networks.COMPOSE_PROJECT: c.get("project", "p"),
                            networks.COMPOSE_SERVICE: c["service"]},
                 "NetworkSettings": {"Networks": {n: {} for n in c["networks"]}}}
                for c in self.ctrs.values() if c.get("project", "p") == project]

    def connect_container_to_network(self, container, net, aliases=None):
        self.calls.append(("connect", container, net, tuple(aliases or ())))
        self.ctrs[container]["networks"].add(net)

    def disconnect_container_from_network(self, container, net, force=False):
        self.calls.append(("disconnect", container, net))
        self.ctrs[container]["networks"].discard(net)

    def remove_network(self, name):
        self.calls.append(("remove_network", name))
        del self.nets[name]


Engine = FakeEngine


SERVICES = {"proxy": "", "egress": "egress"}


def peers(engine):
    return networks.find_peers(engine, engine.inspect_container("hubid"), SERVICES)


def test_a_server_network_is_internal_small_and_has_no_host_address():
    engine = Engine()
    net = networks.ensure_network(engine, "gpuhub-alice", "10.128.0.0/16", "alice")
    assert net["Internal"] is True
    assert net["Options"] == {networks.INHIBIT_IPV4: "true"}
    subnet = ipaddress.ip_network(net["IPAM"]["Config"][0]["Subnet"])
    assert subnet.prefixlen == 28 and subnet.subnet_of(ipaddress.ip_network("10.128.0.0/16"))
    assert net["Labels"] == {networks.NETWORK_LABEL: "alice"}
    # found again, not made twice
    assert networks.ensure_network(engine, "gpuhub-alice", "10.128.0.0/16", "alice") == net
    assert [c for c in engine.calls if c[0] == "create_network"] == [("create_network", "gpuhub-alice")]


def test_a_taken_subnet_is_skipped_like_docker_refuses_it():
    engine = Engine()
    # another network (not ours, so not in the label listing) holds most of a tiny pool
    engine.nets["campus"] = {"Name": "campus", "Internal": False, "Options": {}, "Labels": {},
                                 "IPAM": {"Config": [{"Subnet": "10.9.0.0/27"}]}}
    net = networks.ensure_network(engine, "gpuhub-bob", "10.9.0.0/26", "bob", rng=random.Random(1))
    assert ipaddress.ip_network(net["IPAM"]["Config"][0]["Subnet"]).subnet_of(
        ipaddress.ip_network("10.9.0.32/27"))


def test_a_full_pool_fails_naming_the_setting():
    engine = Engine()
    networks.ensure_network(engine, "gpuhub-a", "10.9.0.0/28", "a")
    with pytest.raises(networks.NetworkError, match="GPUHUB_SERVER_SUBNETS=10.9.0.0/28"):
        networks.ensure_network(engine, "gpuhub-b", "10.9.0.0/28", "b")


def test_a_network_of_that_name_that_is_not_isolated_is_refused():
    engine = Engine()
    engine.nets["gpuhub-eve"] = {"Name": "gpuhub-eve", "Internal": False, "Options": {},
                                     "Labels": {}, "IPAM": {"Config": [{"Subnet": "10.8.0.0/28"}]}}
    with pytest.raises(networks.NetworkError, match="not an isolated server network"):
        networks.ensure_network(engine, "gpuhub-eve", "10.128.0.0/16", "eve")


def test_hub_proxy_and_egress_join_with_their_aliases_and_only_this_project():
    engine = Engine()
    networks.ensure_network(engine, "gpuhub-alice", "10.128.0.0/16", "alice")
    found = peers(engine)
    assert {p.name for p in found} == {"p-hub-1", "p-proxy-1", "p-egress-1"}, \
        "q-proxy-1 belongs to another compose project"
    assert networks.attach(engine, "gpuhub-alice", found) == ["p-hub-1", "p-proxy-1", "p-egress-1"]
    connects = {c[1]: c[3] for c in engine.calls if c[0] == "connect"}
    assert connects == {"hubid": ("hub",), "proxyid": (), "egressid": ("egress",)}
    # attached already: nothing to do
    assert networks.attach(engine, "gpuhub-alice", peers(engine)) == []


def test_stop_takes_everybody_off_and_removes_the_network():
    engine = Engine()
    networks.ensure_network(engine, "gpuhub-alice", "10.128.0.0/16", "alice")
    networks.attach(engine, "gpuhub-alice", peers(engine))
    networks.remove_network(engine, "gpuhub-alice")
    assert "gpuhub-alice" not in engine.nets
    assert not any("gpuhub-alice" in c["networks"] for c in engine.ctrs.values())
    networks.remove_network(engine, "gpuhub-alice")  # gone already: fine


def test_reconcile_reattaches_a_recreated_proxy_and_drops_unwanted_egress():
    engine = Engine()
    for user in ("alice", "bob"):
        networks.ensure_network(engine, f"gpuhub-{user}", "10.128.0.0/16", user)
        networks.attach(engine, f"gpuhub-{user}", peers(engine))
    # another hub's server network (other prefix) on the same engine is left alone
    networks.ensure_network(engine, "other-carol", "10.128.0.0/16", "carol")
    # `docker compose up` recreated the proxy: a new container without the attachments
    del engine.ctrs["proxyid"]
    engine.ctrs["proxy2"] = {"Id": "proxy2", "Name": "/p-proxy-1", "service": "proxy",
                                   "networks": {"gpuhub-users"}}
    found = peers(engine)
    wanted = [p for p in found if p.service != "egress"]
    unwanted = [p for p in found if p.service == "egress"]
    changes = networks.reconcile(engine, "gpuhub", wanted, unwanted)
    assert sorted(changes) == [("connected", "p-proxy-1", "gpuhub-alice"),
                               ("connected", "p-proxy-1", "gpuhub-bob"),
                               ("disconnected", "p-egress-1", "gpuhub-alice"),
                               ("disconnected", "p-egress-1", "gpuhub-bob")]
    assert "other-carol" not in engine.ctrs["proxy2"]["networks"]


def test_the_hub_outside_a_compose_container_gets_a_clear_error():
    with pytest.raises(networks.NetworkError, match="cannot find its own container"):
        networks.own_container(Engine(), hostname="laptop")


# 300 seeded random cases (hypothesis is not in tests/requirements.txt yet)
@pytest.mark.parametrize("seed", range(300))
def test_free_subnets_stay_in_the_pool_and_clear_of_every_used_one(seed):
    rng = random.Random(seed)
    pool = ipaddress.ip_network(f"10.77.0.0/{rng.randint(16, 28)}", strict=False)
    taken = [ipaddress.ip_network(f"10.77.{rng.randint(0, 255)}.{rng.randint(0, 255)}/"
                                  f"{rng.randint(20, 30)}", strict=False)
             for _ in range(rng.randint(0, 8))]
    for i, subnet in enumerate(networks.free_subnets(pool, taken)):
        assert subnet.prefixlen == 28 and subnet.subnet_of(pool)
        assert not any(subnet.overlaps(t) for t in taken)
        if i > 50:
            break


def test_students_go_out_through_the_egress_proxy_or_not_at_all():
    env = egress_env("proxy", "http://egress:3128", "gpuhub-alice")
    assert env["HTTPS_PROXY"] == env["https_proxy"] == "http://egress:3128"
    # the hub's API and the server itself are reached directly
    assert {"hub", "gpuhub-alice", "localhost", "127.0.0.1"} <= set(env["NO_PROXY"].split(","))
    assert egress_env("deny", "http://egress:3128", "gpuhub-alice") == {}
