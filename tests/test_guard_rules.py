"""The Docker API guard's rule table (guard/rules.py, guard/create.py), one test per row,
against a fake engine that answers inspections. The real engine: tests/e2e/test_guard_e2e.py."""

import copy
import json

import docker
import pytest
from hypothesis import given, settings, strategies as st

from guard import rules
from guard.body import Refusal
from guard.create import HOST_CHECKS
from guard.policy import Policy

POLICY = Policy(container_prefix="gpuhub", volume_prefix="gpuhub-user", container_user="1000:100",
                user_network="gpuhub-users", gpus=frozenset({"gpu-aaaa", "gpu-bbbb"}),
                bind_paths=("/srv/datasets",), project="gpuhub")

USER = {"Id": "u" * 64, "Name": "/gpuhub-alice",
        "Config": {"Labels": {"org.gpuhub.user": "alice", "org.gpuhub.server": ""}}}
PROXY = {"Id": "p" * 64, "Name": "/gpuhub_proxy_1", "Config": {"Labels": {
    "com.docker.compose.project": "gpuhub", "com.docker.compose.service": "proxy"}}}
HUB = {"Id": "h" * 64, "Name": "/gpuhub_hub_1", "Config": {"Labels": {
    "com.docker.compose.project": "gpuhub", "com.docker.compose.service": "hub"}}}
GUARD = {"Id": "g" * 64, "Name": "/gpuhub_guard_1", "Config": {"Labels": {
    "com.docker.compose.project": "gpuhub", "com.docker.compose.service": "guard"}}}
OTHER_PROJECT_PROXY = {"Id": "o" * 64, "Name": "/other_proxy_1", "Config": {"Labels": {
    "com.docker.compose.project": "other", "com.docker.compose.service": "proxy"}}}
# looks like a user container by name, but compose made it
FAKE_USER = {"Id": "f" * 64, "Name": "/gpuhub-x", "Config": {"Labels": {
    "org.gpuhub.user": "x", "org.gpuhub.server": "", "com.docker.compose.project": "gpuhub"}}}
# the admin CLI's helper (hub/volumes.py): created, never started, mounts one volume
HELPER = {"Id": "k" * 64, "Name": "/gpuhub-_backup-1a2b3c4d", "State": {"Status": "created"},
          "Config": {"Labels": {"org.gpuhub.user": "", "org.gpuhub.server": "",
                                "org.gpuhub.helper": "backup"}}}
RUNNING_USER = {**USER, "Id": "r" * 64, "Name": "/gpuhub-bob", "State": {"Status": "running"}}
STUDENT_NET = {"Id": "n" * 64, "Name": "gpuhub-alice", "Labels": {}}
CONTROL_NET = {"Id": "c" * 64, "Name": "gpuhub-control",
               "Labels": {"com.docker.compose.project": "gpuhub"}}
USERS_NET = {"Id": "s" * 64, "Name": "gpuhub-users",
             "Labels": {"com.docker.compose.project": "gpuhub"}}
STATE_VOLUME = {"Name": "gpuhub-user-state", "Labels": {"com.docker.compose.project": "gpuhub"}}


class FakeEngine:
    containers = {c["Name"].lstrip("/"): c for c in
                  (USER, PROXY, HUB, GUARD, OTHER_PROJECT_PROXY, FAKE_USER, HELPER,
                   RUNNING_USER)}
    networks = {n["Name"]: n for n in (STUDENT_NET, CONTROL_NET, USERS_NET)}
    volumes = {v["Name"]: v for v in (STATE_VOLUME,)}

    async def container(self, ref):
        return self.containers.get(ref) or next(
            (c for c in self.containers.values() if c["Id"] == ref), None)

    async def network(self, ref):
        return self.networks.get(ref)

    async def volume(self, name):
        return self.volumes.get(name)


def good_body(gpus=()):
    """A create body as the hub sends it: docker-py's own serialisation of what
    hub/config.py and hub/spawner.py ask for."""
    api = docker.APIClient(version="1.41")
    host = api.create_host_config(
        binds={"gpuhub-user-alice": {"bind": "/home/jovyan", "mode": "rw"}},
        network_mode="gpuhub-users", init=True, cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"], pids_limit=4096, shm_size="2g",
        mem_limit="8G", memswap_limit="8G", cpu_period=100000, cpu_quota=400000,
        device_requests=[{"driver": "nvidia", "device_ids": list(gpus),
                          "capabilities": [["gpu"]]}] if gpus else None)
    config = docker.types.ContainerConfig(
        "1.41", "gpuhub/tensorflow-2.9-gpu:latest", ["start-singleuser.sh"], user="1000:100",
        environment={"JUPYTERHUB_API_TOKEN": "x",
                     "NVIDIA_VISIBLE_DEVICES": ",".join(gpus) or "void"},
        labels={"org.gpuhub.user": "alice", "org.gpuhub.server": ""}, volumes=["/home/jovyan"],
        host_config=host)
    return dict(config)


def create(body, name="gpuhub-alice"):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return rules.Request("POST", "/v1.41/containers/create", {"name": [name]}, raw)


async def decide(request, policy=POLICY):
    return await rules.decide(request, policy, FakeEngine())


async def refused(request, rule, status=403, policy=POLICY):
    with pytest.raises(Refusal) as e:
        await decide(request, policy)
    assert e.value.rule == rule, e.value.message
    assert e.value.status == status
    assert f"(rule: {rule})" in e.value.message


def call(method, path, query=None, body=b""):
    return rules.Request(method, path, query or {}, body)


# -- the allowed rows, one test each --

async def test_ping_and_version():
    assert (await decide(call("HEAD", "/_ping"))).rule == "ping"
    assert (await decide(call("GET", "/version"))).rule == "version"
    assert (await decide(call("GET", "/v1.41/version"))).path == "/v1.41/version"


async def test_containers_list_shows_only_user_containers():
    d = await decide(call("GET", "/v1.41/containers/json", {"all": ["1"]}))
    answer = [{"Names": ["/gpuhub-alice"], "Labels": USER["Config"]["Labels"]},
              {"Names": ["/gpuhub_proxy_1"], "Labels": PROXY["Config"]["Labels"]},
              {"Names": ["/gpuhub-x"], "Labels": FAKE_USER["Config"]["Labels"]}]
    answer.append({"Names": ["/gpuhub_guard_1"], "Labels": GUARD["Config"]["Labels"]})
    answer.append({"Names": ["/other_proxy_1"], "Labels": OTHER_PROJECT_PROXY["Config"]["Labels"]})
    # user containers, and the hub's peers of the guard's own project (hub/networks.py)
    assert json.loads(d.filter(json.dumps(answer).encode())) == answer[:2]


async def test_the_hub_may_inspect_itself_and_its_peers_only():
    for peer in ("gpuhub_hub_1", "gpuhub_proxy_1"):
        assert (await decide(call("GET", f"/containers/{peer}/json"))).rule == "container-inspect"
    for other in ("gpuhub_guard_1", "other_proxy_1", "gpuhub-x"):
        await refused(call("GET", f"/containers/{other}/json"), "gpuhub-containers-only")


async def test_container_create_as_the_hub_sends_it():
    assert (await decide(create(good_body()))).rule == "container-create"
    assert (await decide(create(good_body(["GPU-AAAA"])))).rule == "container-create"


@pytest.mark.parametrize("rule, method, suffix", [
    ("container-inspect", "GET", "/json"), ("container-start", "POST", "/start"),
    ("container-stop", "POST", "/stop"), ("container-kill", "POST", "/kill"),
    ("container-wait", "POST", "/wait"), ("container-remove", "DELETE", ""),
    ("container-logs", "GET", "/logs")])
async def test_calls_on_a_user_container_reach_it_by_id(rule, method, suffix):
    d = await decide(call(method, f"/v1.41/containers/gpuhub-alice{suffix}"))
    assert d.rule == rule and d.path == f"/v1.41/containers/{USER['Id']}{suffix}"
    # the proxy, the guard, the hub and compose-made look-alikes are out of reach
    # (inspect only: the hub's peers, see the next test)
    others = ("gpuhub_guard_1", "gpuhub-x") if rule == "container-inspect" else (
        "gpuhub_proxy_1", "gpuhub_guard_1", "gpuhub_hub_1", "gpuhub-x")
    for other in others:
        await refused(call(method, f"/containers/{other}{suffix}"), "gpuhub-containers-only")
    await refused(call(method, f"/containers/nobody{suffix}"), "no-such-container", 404)


async def test_image_inspect_and_pull():
    assert (await decide(call("GET", "/images/gpuhub/tf:1.0/json"))).rule == "image-inspect"
    pull = call("POST", "/images/create", {"fromImage": ["gpuhub/tf"], "tag": ["1.0"]})
    assert (await decide(pull)).rule == "image-pull"
    await refused(call("POST", "/images/create", {"fromSrc": ["http://x/y.tar"]}), "query-params")
    await refused(call("POST", "/images/create", {}), "pull-only")


async def test_volumes():
    body = json.dumps({"Name": "gpuhub-user-bob", "Labels": {}}).encode()
    assert (await decide(call("POST", "/volumes/create", body=body))).rule == "volume-create"
    assert (await decide(call("GET", "/volumes/gpuhub-user-bob"))).rule == "volume-inspect"
    assert (await decide(call("DELETE", "/volumes/gpuhub-user-bob"))).rule == "volume-remove"
    d = await decide(call("GET", "/volumes"))
    listed = {"Volumes": [{"Name": "gpuhub-user-bob"}, {"Name": "gpuhub_hub-state"}, STATE_VOLUME]}
    assert json.loads(d.filter(json.dumps(listed).encode()))["Volumes"] == [{"Name": "gpuhub-user-bob"}]
    await refused(call("DELETE", "/volumes/gpuhub_hub-state"), "volume-prefix")
    await refused(call("DELETE", "/volumes/gpuhub-user-state"), "volume-prefix")
    await refused(call("POST", "/volumes/create", body=b'{"Name": "mine"}'), "volume-prefix")
    bind_root = {"Name": "gpuhub-user-x", "DriverOpts": {"type": "none", "o": "bind", "device": "/"}}
    await refused(call("POST", "/volumes/create", body=json.dumps(bind_root).encode()),
                  "no-volume-options")


async def test_networks():
    body = json.dumps({"Name": "gpuhub-bob", "Driver": "bridge", "Internal": False}).encode()
    assert (await decide(call("POST", "/networks/create", body=body))).rule == "network-create"
    # as hub/networks.py makes a server's network (docker-py's serialisation)
    api_body = {"Name": "gpuhub-bob", "Driver": "bridge", "Internal": True, "CheckDuplicate": True,
                "Options": {"com.docker.network.bridge.inhibit_ipv4": "true"},
                "IPAM": dict(docker.types.IPAMConfig(pool_configs=[
                    docker.types.IPAMPool(subnet="10.64.0.16/28")])),
                "Labels": {"org.gpuhub.server-network": "bob"}}
    assert (await decide(call("POST", "/networks/create", body=json.dumps(api_body).encode()))
            ).rule == "network-create"
    d = await decide(call("GET", "/networks/gpuhub-alice"))
    assert d.rule == "network-inspect" and d.path == f"/networks/{STUDENT_NET['Id']}"
    assert (await decide(call("GET", "/networks/gpuhub-users"))).rule == "network-inspect"
    assert (await decide(call("DELETE", "/networks/gpuhub-alice"))).rule == "network-remove"
    d = await decide(call("GET", "/networks"))
    listed = [STUDENT_NET, CONTROL_NET, USERS_NET, {"Name": "bridge"}]
    assert json.loads(d.filter(json.dumps(listed).encode())) == [STUDENT_NET, USERS_NET]
    await refused(call("DELETE", "/networks/gpuhub-control"), "gpuhub-networks-only")
    await refused(call("DELETE", "/networks/gpuhub-users"), "gpuhub-networks-only")
    await refused(call("POST", "/networks/create", body=b'{"Name": "evil"}'), "network-prefix")
    macvlan = {"Name": "gpuhub-lan", "Driver": "macvlan", "Options": {"parent": "eth0"}}
    await refused(call("POST", "/networks/create", body=json.dumps(macvlan).encode()),
                  "network-driver")


@pytest.mark.parametrize("action", ["connect", "disconnect"])
async def test_network_connect_and_disconnect(action):
    path = f"/v1.41/networks/gpuhub-alice/{action}"
    for joiner in ("gpuhub-alice", "gpuhub_hub_1", "gpuhub_proxy_1"):
        body = json.dumps({"Container": joiner}).encode()
        d = await decide(call("POST", path, body=body))
        assert d.rule == f"network-{action}" and STUDENT_NET["Id"] in d.path
    for outsider in ("gpuhub_guard_1", "other_proxy_1", "gpuhub-x"):
        body = json.dumps({"Container": outsider}).encode()
        await refused(call("POST", path, body=body), "gpuhub-containers-only")
    # the control network shares the prefix but is compose's: never joined
    body = json.dumps({"Container": "gpuhub-alice"}).encode()
    await refused(call("POST", f"/networks/gpuhub-control/{action}", body=body),
                  "gpuhub-networks-only")


@pytest.mark.parametrize("rule, method", [("container-archive-get", "GET"),
                                          ("container-archive-put", "PUT")])
async def test_archive_into_and_out_of_the_cli_helpers_only(rule, method):
    d = await decide(call(method, "/v1.41/containers/gpuhub-_backup-1a2b3c4d/archive",
                          {"path": ["/home/jovyan"]}))
    assert d.rule == rule and d.path == f"/v1.41/containers/{HELPER['Id']}/archive"
    assert d.stream == (method == "PUT")  # a restore's tar streams through, unread
    # a running server's files: neither read nor changed
    await refused(call(method, "/containers/gpuhub-bob/archive", {"path": ["/"]}), "no-archive")
    for other in ("gpuhub_hub_1", "gpuhub_proxy_1", "gpuhub_guard_1", "gpuhub-x"):
        await refused(call(method, f"/containers/{other}/archive", {"path": ["/"]}),
                      "gpuhub-containers-only")
    await refused(call(method, "/containers/gpuhub-_backup-1a2b3c4d/archive",
                       {"path": ["/"], "copyUIDGID": ["1"]}), "query-params")


def test_only_archive_uploads_stream_their_body():
    assert rules.streams("PUT", "/v1.41/containers/x/archive")
    assert rules.streams("PUT", "/containers/x/archive")
    for method, path in (("GET", "/containers/x/archive"), ("POST", "/containers/create"),
                         ("PUT", "/v1.23/containers/x/archive"), ("POST", "/volumes/create")):
        assert not rules.streams(method, path), (method, path)


# -- refused families, one test each --

@pytest.mark.parametrize("rule, method, path", [
    ("no-exec", "POST", "/v1.41/containers/gpuhub-alice/exec"),
    ("no-exec", "POST", "/exec/abc/start"),
    ("no-attach", "POST", "/containers/gpuhub-alice/attach"),
    ("no-archive", "PUT", "/containers/gpuhub-alice/archive"),
    ("no-archive", "HEAD", "/containers/gpuhub-_backup-1a2b3c4d/archive"),
    ("no-archive", "GET", "/containers/gpuhub-alice/export"),
    ("no-commit", "POST", "/commit"),
    ("no-build", "POST", "/build"),
    ("no-swarm", "POST", "/swarm/init"),
    ("no-swarm", "GET", "/services"),
    ("no-plugins", "POST", "/plugins/pull"),
    ("no-secrets", "POST", "/secrets/create"),
    ("no-secrets", "GET", "/configs"),
    ("no-system", "GET", "/info"),
    ("no-system", "GET", "/events"),
    ("no-system", "POST", "/system/prune"),
    ("no-image-changes", "DELETE", "/images/gpuhub/tf:1"),
    ("no-image-changes", "POST", "/images/gpuhub/tf/push"),
    ("not-allowed", "POST", "/containers/gpuhub-alice/update"),
    ("not-allowed", "POST", "/containers/prune"),
    ("not-allowed", "POST", "/volumes/prune"),
])
async def test_refused_families(rule, method, path):
    await refused(call(method, path), rule)


async def test_old_api_versions_and_odd_paths_are_refused():
    await refused(call("POST", "/v1.23/containers/gpuhub-alice/start"), "api-version")
    await refused(call("GET", "/containers/../info"), "malformed-path", 400)
    await refused(call("GET", "//info"), "malformed-path", 400)
    # start takes no body: below 1.24 it was a second HostConfig
    await refused(call("POST", "/containers/gpuhub-alice/start",
                       body=b'{"Privileged": true}'), "no-body")


async def test_unknown_query_parameters_are_refused():
    await refused(call("POST", "/containers/create", {"name": ["gpuhub-a"], "x": ["1"]}),
                  "query-params")


# -- the create body, one test per rule --

def with_host(**fields):
    body = good_body()
    body["HostConfig"].update(fields)
    return body


CREATE_REFUSALS = [
    ("no-privileged", with_host(Privileged=True)),
    ("no-cap-add", with_host(CapAdd=["SYS_ADMIN"])),
    ("cap-drop-all", with_host(CapDrop=["NET_RAW"])),
    ("no-host-paths", with_host(Binds=["/:/host"])),
    ("no-host-paths", with_host(Binds=["/srv/datasets/../../etc:/etc2:ro"])),
    ("host-paths-read-only", with_host(Binds=["/srv/datasets/a:/data"])),
    ("no-host-paths", with_host(Mounts=[{"Type": "bind", "Source": "/", "Target": "/h"}])),
    ("no-host-paths", with_host(Mounts=[{"Type": "npipe", "Source": "x", "Target": "/h"}])),
    ("volume-prefix", with_host(Binds=["gpuhub_hub-state:/state"])),
    ("volume-prefix", with_host(Binds=["gpuhub-user-state:/state"])),  # compose's volume
    ("no-volume-options", with_host(Mounts=[{"Type": "volume", "Source": "gpuhub-user-y",
        "Target": "/y", "VolumeOptions": {"DriverConfig": {"Name": "local", "Options": {
            "type": "none", "o": "bind", "device": "/"}}}}])),
    ("no-volume-options", with_host(VolumeDriver="sshfs")),
    ("no-volumes-from", with_host(VolumesFrom=["gpuhub_hub_1"])),
    ("user-networks-only", with_host(NetworkMode="host")),
    ("user-networks-only", with_host(NetworkMode="container:gpuhub_proxy_1")),
    ("user-networks-only", with_host(NetworkMode="gpuhub-control")),
    ("no-host-namespaces", with_host(PidMode="host")),
    ("no-host-namespaces", with_host(IpcMode="host")),
    ("no-host-namespaces", with_host(IpcMode="container:gpuhub_hub_1")),
    ("no-host-namespaces", with_host(UTSMode="host")),
    ("no-host-namespaces", with_host(UsernsMode="host")),
    ("no-host-namespaces", with_host(CgroupnsMode="host")),
    ("no-cgroup-parent", with_host(CgroupParent="/")),
    ("no-devices", with_host(Devices=[{"PathOnHost": "/dev/sda", "PathInContainer": "/dev/sda",
                                       "CgroupPermissions": "rwm"}])),
    ("no-devices", with_host(DeviceCgroupRules=["b *:* rwm"])),
    ("gpus-from-inventory", with_host(DeviceRequests=[{"Driver": "nvidia", "Count": -1,
                                                       "Capabilities": [["gpu"]]}])),
    ("gpus-from-inventory", with_host(DeviceRequests=[{"Driver": "nvidia",
                                                       "DeviceIDs": ["GPU-cccc"]}])),
    ("gpus-from-inventory", with_host(DeviceRequests=[{"Driver": "cdi", "DeviceIDs": ["x"]}])),
    ("security-opt", with_host(SecurityOpt=["no-new-privileges", "seccomp=unconfined"])),
    ("security-opt", with_host(SecurityOpt=["apparmor=unconfined", "no-new-privileges"])),
    ("security-opt", with_host(SecurityOpt=[])),
    ("no-sysctls", with_host(Sysctls={"net.ipv4.ip_forward": "1"})),
    ("no-unmasked-paths", with_host(MaskedPaths=["/x"])),
    ("no-published-ports", with_host(PortBindings={"8888/tcp": [{"HostPort": "8888"}]})),
    ("no-published-ports", with_host(PublishAllPorts=True)),
    ("no-links", with_host(Links=["gpuhub_hub_1:hub"])),
    ("no-group-add", with_host(GroupAdd=["0"])),
    ("pids-limit", with_host(PidsLimit=0)),
    ("no-oom-kill-disable", with_host(OomKillDisable=True)),
    ("no-oom-score-below-0", with_host(OomScoreAdj=-1000)),
    ("runtime", with_host(Runtime="kata-unsafe")),
    ("log-driver", with_host(LogConfig={"Type": "syslog", "Config": {"syslog-address": "udp://x"}})),
    ("storage-opt", with_host(StorageOpt={"dm.basesize": "1T"})),
    ("no-realtime", with_host(CpuRealtimeRuntime=950000)),
    ("no-annotations", with_host(Annotations={"io.kubernetes.cri-o.Devices": "/dev/sda"})),
    ("unknown-field", with_host(SomethingNew={"a": 1})),
    ("ulimits", with_host(Ulimits=[{"Name": "rtprio", "Soft": 99, "Hard": 99}])),
]


@pytest.mark.parametrize("rule, body", CREATE_REFUSALS, ids=[f"{r}-{i}" for i, (r, _)
                                                            in enumerate(CREATE_REFUSALS)])
async def test_create_refusal(rule, body):
    await refused(create(body), rule)


def test_every_host_rule_has_a_refusal_test():
    rules_with_tests = {rule for rule, _ in CREATE_REFUSALS}
    for name, check in HOST_CHECKS.items():
        assert any(_refuses(check, rule) for rule in rules_with_tests), name


def _refuses(check, rule):
    for bad in (True, ["x"], {"x": "y"}, "host", -1, 0, [{"Driver": "x"}], ["/:/x"]):
        try:
            check(bad, POLICY)
        except Refusal as e:
            return e.rule == rule or e.rule == "malformed-body"
        except Exception:
            continue
    return False


async def test_create_needs_name_labels_user_and_nvidia_env():
    await refused(create(good_body(), name="evil"), "name-prefix")
    await refused(create(good_body(), name=""), "name-prefix")
    body = good_body()
    body["Labels"] = {}
    await refused(create(body), "gpuhub-labels")
    body = good_body()
    body["Labels"]["com.docker.compose.service"] = "proxy"
    await refused(create(body), "gpuhub-labels")
    body = good_body()
    body["User"] = "0"
    await refused(create(body), "container-user")
    body = good_body()
    del body["User"]
    await refused(create(body), "container-user")
    body = good_body()
    body["Env"] = [e for e in body["Env"] if not e.startswith("NVIDIA_VISIBLE_DEVICES=")]
    await refused(create(body), "nvidia-visible-devices")
    body = good_body()
    body["Env"] = ["NVIDIA_VISIBLE_DEVICES=all"]
    await refused(create(body), "nvidia-visible-devices")
    body = good_body(["GPU-aaaa"])
    body["Env"] = ["NVIDIA_VISIBLE_DEVICES=GPU-aaaa,GPU-bbbb"]
    await refused(create(body), "nvidia-visible-devices")
    # the lock-down must be there, not merely not weakened
    for field, rule in (("CapDrop", "cap-drop-all"), ("SecurityOpt", "security-opt"),
                        ("PidsLimit", "pids-limit")):
        body = good_body()
        del body["HostConfig"][field]
        await refused(create(body), rule)


async def test_user_containers_take_no_alias_address_or_mac():
    body = good_body()
    body["NetworkingConfig"] = {"EndpointsConfig": {"gpuhub-users": {"Aliases": ["hub"]}}}
    await refused(create(body), "no-endpoint-config")
    body = good_body()
    body["MacAddress"] = "02:42:ac:11:00:02"
    await refused(create(body), "unknown-field")
    alias = json.dumps({"Container": "gpuhub-alice", "EndpointConfig": {"Aliases": ["hub"]}})
    await refused(call("POST", "/networks/gpuhub-alice/connect", body=alias.encode()),
                  "no-endpoint-config")
    alias = json.dumps({"Container": "gpuhub_hub_1", "EndpointConfig": {"Aliases": ["hub"]}})
    assert (await decide(call("POST", "/networks/gpuhub-alice/connect", body=alias.encode()))
            ).rule == "network-connect"


async def test_engine_json_tricks_are_refused():
    """The engine matches keys case-insensitively and lets the last repeat win."""
    good = json.dumps(good_body())
    await refused(create(good.replace('"HostConfig": {', '"HostConfig": {"privileged": true, ')
                         .encode()), "no-privileged")
    await refused(create(good.replace('"HostConfig": {', '"hostconfig": {"Privileged": true}, '
                                      '"HostConfig": {').encode()), "malformed-body", 400)
    await refused(create(good.replace('"HostConfig": {', '"HostConfig": {"\\u017fysctls": {}, ')
                         .encode()), "malformed-body", 400)
    await refused(create({**good_body(), "HostConfig": [1]}), "malformed-body", 400)
    await refused(create(b"not json"), "malformed-body", 400)
    await refused(create(b"[]"), "malformed-body", 400)
    await refused(create(b"\xff\xfe{}"), "malformed-body", 400)
    await refused(create(b'{"a": NaN}'), "malformed-body", 400)
    await refused(create(b"[" * 100000), "malformed-body", 400)
    await refused(create(b" " * (POLICY.max_body + 1)), "body-too-large", 413)


# -- properties --

BINDS = st.builds(lambda s, t: f"{s}:{t}", st.text(min_size=1, max_size=30).filter(
    lambda s: ":" not in s), st.sampled_from(["/home/jovyan", "/data"]))


@settings(max_examples=300, deadline=None)
@given(source=st.text(min_size=1, max_size=40).filter(lambda s: ":" not in s))
def test_no_bind_source_but_gpuhub_volumes_and_listed_dirs(source):
    import asyncio
    body = with_host(Binds=[f"{source}:/mnt:ro"])
    try:
        asyncio.run(decide(create(body)))
    except Refusal:
        return
    # allowed: a gpuhub volume, or inside a listed host directory
    import posixpath
    assert (source.startswith("gpuhub-user-") and source not in FakeEngine.volumes) or \
        (posixpath.normpath(source) + "/").startswith("/srv/datasets/")


HOST_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) |
                           st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=6)


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(sorted(HOST_CHECKS)), value=HOST_VALUES)
def test_any_value_of_a_guarded_field_is_checked_or_refused(field, value):
    """No value of a guarded field crashes the guard; only safe values pass."""
    import asyncio
    body = copy.deepcopy(good_body())
    host = body["HostConfig"]
    host.update({k: v for k, v in host.items()})
    canonical = next((k for k in host if k.lower() == field), None) or field
    host[canonical] = value
    try:
        asyncio.run(decide(create(body)))
    except Refusal as e:
        assert e.status in (400, 403, 413)
        return
    # what passed is harmless by the table's own standard
    assert value in (None, False, 0, "", [], {}) or field in (
        "capdrop", "securityopt", "pidslimit", "binds", "mounts", "oomscoreadj", "runtime",
        "ipcmode", "cgroupnsmode", "logconfig", "storageopt", "devicerequests")
    if field == "privileged":
        assert value in (None, False)


def casings(word):
    return st.lists(st.booleans(), min_size=len(word), max_size=len(word)).map(
        lambda flags: "".join(c.upper() if f else c.lower() for c, f in zip(word, flags)))


@settings(max_examples=200, deadline=None)
@given(section=casings("HostConfig"), field=casings("Privileged"))
def test_privileged_is_refused_however_its_keys_are_spelt(section, field):
    """The engine matches keys case-insensitively; so must the guard."""
    import asyncio
    body = good_body()
    host = body.pop("HostConfig")
    host.pop("Privileged", None)
    host[field] = True
    body[section] = host
    with pytest.raises(Refusal) as e:
        asyncio.run(decide(create(body)))
    assert e.value.rule == "no-privileged"


def test_policy_from_the_hubs_settings():
    from guard.policy import from_environ
    from hub.settings import SettingsError
    policy = from_environ({"GPUHUB_GPUS": "GPU-AAAA-1, 3", "GPUHUB_GUARD_BIND_PATHS": "/srv/data/"},
                          project="gpuhub")
    assert policy.container_prefix == "gpuhub" and policy.volume_prefix == "gpuhub-user"
    assert policy.container_user == "1000:100" and policy.user_network == "gpuhub-users"
    assert policy.gpus == {"gpu-aaaa-1", "3"} and policy.bind_paths == ("/srv/data",)
    with pytest.raises(SettingsError) as e:
        from_environ({"GPUHUB_CONTAINER_USER": "0", "GPUHUB_GUARD_BIND_PATHS": "/",
                      "GPUHUB_GPUS": "banana"})
    text = str(e.value)
    assert "GPUHUB_CONTAINER_USER" in text and "GPUHUB_GUARD_BIND_PATHS" in text
    assert "GPUHUB_GPUS" in text


def test_the_settings_parser_needs_only_the_guards_requirements():
    """The guard image imports hub/settings.py: the hub modules it pulls in may import the
    standard library and guard/requirements.in's packages only (else the guard cannot start)."""
    import ast
    import sys
    from pathlib import Path
    hub = Path(__file__).resolve().parents[1] / "hub"
    allowed = {"prometheus_client", "aiohttp"}
    seen, todo, outside = set(), ["settings"], set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for node in ast.walk(ast.parse((hub / f"{module}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                todo += [node.module] if node.module else [a.name for a in node.names]
            elif isinstance(node, (ast.Import, ast.ImportFrom)) and node.col_offset == 0:
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                outside |= {n.split(".")[0] for n in names}
    assert outside - set(sys.stdlib_module_names) <= allowed, (seen, outside)


async def test_the_proxy_services_setting_names_who_joins_as_the_proxy():
    """GPUHUB_PROXY_SERVICES: the service that stands in for Traefik (the tests' chp) joins
    students' networks; the default `proxy` service then does not."""
    import dataclasses
    chp = {"Id": "k" * 64, "Name": "/gpuhub_chp_1", "Config": {"Labels": {
        "com.docker.compose.project": "gpuhub", "com.docker.compose.service": "chp"}}}
    FakeEngine.containers["gpuhub_chp_1"] = chp
    try:
        path = "/v1.41/networks/gpuhub-alice/connect"
        body = json.dumps({"Container": "gpuhub_chp_1"}).encode()
        await refused(call("POST", path, body=body), "gpuhub-containers-only")
        with_chp = dataclasses.replace(POLICY, proxy_services=("chp",))
        assert (await decide(call("POST", path, body=body), with_chp)).rule == "network-connect"
        proxy = json.dumps({"Container": "gpuhub_proxy_1"}).encode()
        await refused(call("POST", path, body=proxy), "gpuhub-containers-only", policy=with_chp)
    finally:
        del FakeEngine.containers["gpuhub_chp_1"]
