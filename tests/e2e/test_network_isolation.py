"""Students cannot reach each other or the host (issue 10, hub/networks.py, egress/).

Attacks run from inside student A's container (`docker exec`, as the student's own UID),
the way a student's notebook or terminal would: TCP to student B's container, to the
gateway of A's network and the host's other addresses, to the control network; HTTP
through the egress proxy to the same places. Each attack has a control that shows the
target really listens (from the hub, which is allowed to reach it).

NETWORK RULE: every address tried belongs to this machine's own containers, networks and
loopback. The cloud metadata address is never sent to: the egress proxy's rule that
blocks it is inspected instead (here on the running container, and in tests/test_static.py).
"""

import ipaddress
import json
import socket
import threading

import pytest
import requests

from .conftest import make_stack
from .stack import free_port, wait_for

pytestmark = pytest.mark.e2e

# Tries each host:port at once (threads), 2 s each: "open" or why not.
PROBE = r"""
import json, socket, sys, threading
result = {}
def probe(target):
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        result[target] = "open"
    except OSError as e:
        result[target] = f"closed ({e})"
threads = [threading.Thread(target=probe, args=(t,)) for t in sys.argv[1:]]
[t.start() for t in threads]; [t.join() for t in threads]
print(json.dumps(result))
"""

# Fetches URLs through the egress proxy (from the container's HTTP_PROXY): status or error.
THROUGH_EGRESS = r"""
import json, sys, urllib.request, urllib.error
result = {}
for url in sys.argv[1:]:
    try:
        result[url] = urllib.request.urlopen(url, timeout=10).status
    except urllib.error.HTTPError as e:
        result[url] = e.code
    except OSError as e:
        result[url] = f"error ({e})"
print(json.dumps(result))
"""


def probe(container, *targets):
    code, out = container.exec_run(["python3", "-c", PROBE, *targets])
    assert code == 0, out.decode()
    return json.loads(out.decode().strip().splitlines()[-1])


def auth(stack):
    return {"Authorization": f"token {stack.token}"}


@pytest.fixture(scope="module")
def host_listener():
    """A TCP port on every address of this machine (0.0.0.0), as sshd or a database
    would be: what a student must not reach through the host's addresses."""
    port = free_port()
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", port))
    server.listen(16)
    stop = threading.Event()

    def accept():
        server.settimeout(0.5)
        while not stop.is_set():
            try:
                server.accept()[0].close()
            except OSError:
                pass
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield port
    stop.set()
    thread.join(timeout=5)
    server.close()


@pytest.fixture(scope="module")
def two_students(stack):
    for user in ("amy", "ben"):
        assert stack.api("POST", f"/users/{user}").status_code in (201, 409)
        stack.start_server(user)
    a, b = stack.user_container("amy"), stack.user_container("ben")
    # B runs something unauthenticated, as a TensorBoard on 6006 would be
    b.exec_run(["python3", "-m", "http.server", "6006", "--bind", "0.0.0.0"], detach=True)
    hub = stack.container("hub")
    wait_for(lambda: probe(hub, f"{stack.ip(b)}:6006")[f"{stack.ip(b)}:6006"] == "open", 30,
             "B's port 6006 to listen (seen from the hub)")
    yield a, b
    for user in ("amy", "ben"):
        stack.stop_server(user)


def gateway(network):
    """The network's gateway address (Docker's first host address unless it says)."""
    config = network["IPAM"]["Config"][0]
    return config.get("Gateway") or str(next(ipaddress.ip_network(config["Subnet"]).hosts()))


def network_name(container):
    """The network a server's container was created on: from the hub's pool of ready
    networks ({prefix}-pool_...), or one named like the container when the pool was empty."""
    container.reload()
    return container.attrs["HostConfig"]["NetworkMode"]


def network_of(stack, container):
    return stack.client.networks.get(network_name(container)).attrs


def test_each_server_has_an_isolated_network_of_its_own(stack, two_students):
    a, b = two_students
    for c in (a, b):
        c.reload()
        assert set(c.attrs["NetworkSettings"]["Networks"]) == {network_name(c)}
        net = network_of(stack, c)
        assert net["Internal"] is True
        assert net["Options"]["com.docker.network.bridge.inhibit_ipv4"] == "true"
        members = {m["Name"] for m in net["Containers"].values()}
        assert members == {c.name, stack.container("hub").name, stack.container("proxy").name,
                           stack.container("egress").name}, members
    assert network_name(a) != network_name(b)


def test_the_networks_kept_ready_are_isolated_and_nobody_elses(stack, two_students):
    """hub/netpool.py: GPUHUB_NETWORK_POOL (10 here, the default) networks made ahead of
    time, each like a server's own, with only the hub, proxy and egress proxy on them; a
    server's network (taken from them or made at its spawn) is in none of them."""
    a, b = two_students
    taken = {network_name(a), network_name(b)}
    peers = {stack.container(s).name for s in ("hub", "proxy", "egress")}

    def ready():
        found = [stack.client.networks.get(n.id).attrs for n in stack.client.networks.list(
            filters={"label": "org.gpuhub.server-network"})
            if n.name.startswith(f"{stack.prefix}-pool_") and n.name not in taken]
        return [n for n in found
                if {m["Name"] for m in (n["Containers"] or {}).values()} == peers]
    wait_for(lambda: len(ready()) == 10, 120, "the pool to hold 10 ready networks")
    for net in ready():
        assert net["Internal"] is True, net["Name"]
        assert net["Options"]["com.docker.network.bridge.inhibit_ipv4"] == "true", net["Name"]
        assert net["Labels"]["org.gpuhub.server-network"] == "", net["Name"]


def test_student_a_reaches_neither_b_nor_the_host_nor_the_control_network(
        stack, two_students, host_listener):
    a, b = two_students
    hub, proxy = stack.container("hub"), stack.container("proxy")
    a_net = network_of(stack, a)
    users_net = stack.client.networks.get(stack.env["GPUHUB_USER_NETWORK"]).attrs
    control = stack.env["GPUHUB_CONTROL_NETWORK"]
    a_gateway = gateway(a_net)
    host_addresses = [gateway(users_net), "172.17.0.1"]
    attacks = [
        f"{stack.ip(b)}:8888", f"{stack.ip(b)}:6006", f"{b.name}:8888", f"{b.name}:6006",
        # the host: the gateway of A's own network, and the host's addresses on others
        *(f"{a_gateway}:{p}" for p in (host_listener, 22, 80, 443, 2375,
                                       stack.env["GPUHUB_HTTPS_PORT"])),
        *(f"{h}:{host_listener}" for h in host_addresses),
        # the control network: Traefik's API, the hub there
        f"{stack.env['GPUHUB_PROXY_CONTROL_IP']}:8099", f"{stack.ip(hub, control)}:8081",
        # the proxy's API from A's network, and the hub and proxy on the users network
        f"{stack.ip(proxy, network_name(a))}:8099", f"{stack.ip(hub)}:8081",
        f"{stack.ip(proxy)}:8080",
    ]
    allowed = ["hub:8081", "egress:3128", f"{stack.ip(proxy, network_name(a))}:8080"]
    seen = probe(a, *attacks, *allowed)
    assert all(seen[t] == "open" for t in allowed), {t: seen[t] for t in allowed}
    opened = {t: seen[t] for t in attacks if seen[t] == "open"}
    assert not opened, f"student A reached {opened}"

    # the controls: the same targets do listen, for those allowed to reach them
    from_hub = probe(hub, f"{stack.ip(b)}:8888", f"{stack.ip(b)}:6006",
                     f"{gateway(users_net)}:{host_listener}")
    assert set(from_hub.values()) == {"open"}, from_hub


def test_the_egress_proxy_refuses_the_inside(stack, two_students, host_listener):
    a, b = two_students
    users_gateway = gateway(stack.client.networks.get(stack.env["GPUHUB_USER_NETWORK"]).attrs)
    urls = [f"http://{stack.ip(b)}:6006/", f"http://{b.name}:8888/",
            f"http://{users_gateway}:{host_listener}/", "http://hub:8081/hub/api/",
            "http://127.0.0.1:8888/", "http://localhost:3128/"]
    code, out = a.exec_run(["python3", "-c", THROUGH_EGRESS, *urls],
                           environment={"NO_PROXY": "", "no_proxy": ""})
    assert code == 0, out.decode()
    seen = json.loads(out.decode().strip().splitlines()[-1])
    assert all(status == 403 for status in seen.values()), seen
    # the rule for the metadata address, as the running proxy has it (never sent to)
    egress = stack.container("egress")
    code, out = egress.exec_run(["cat", "/tmp/squid.conf"])
    rules = [line.split() for line in out.decode().splitlines() if line.startswith(("acl", "http_access"))]
    assert ["acl", "metadata", "dst", "169.254.169.254/32", "fd00:ec2::254/128"] in rules
    access = [r for r in rules if r[0] == "http_access"]
    assert access.index(["http_access", "deny", "metadata"]) < min(
        i for i, r in enumerate(access) if r[1] == "allow")


def test_pip_installs_through_the_egress_proxy_only(stack, two_students):
    a, _ = two_students
    env = dict(e.split("=", 1) for e in a.attrs["Config"]["Env"])
    assert env["HTTPS_PROXY"] == "http://egress:3128"
    code, out = a.exec_run(["python3", "-m", "pip", "install", "--no-deps", "--target",
                            "/tmp/pip-probe", "six==1.16.0"])
    assert code == 0, out.decode()[-2000:]
    code, out = a.exec_run(["python3", "-c", "import sys; sys.path.insert(0, '/tmp/pip-probe'); "
                            "import six; print(six.__version__)"])
    assert out.decode().strip() == "1.16.0", out.decode()
    wait_for(lambda: f"{stack.ip(a)} " in stack.logs("egress") and "pypi.org:443" in stack.logs("egress"),
             30, "the egress proxy's log to show A's tunnel to pypi.org")
    # without the proxy there is no way out: no DNS, no route
    code, out = a.exec_run(["python3", "-m", "pip", "download", "--no-deps", "-d", "/tmp/pip-direct",
                            "--retries", "0", "--timeout", "3", "six==1.16.0"],
                           environment={"HTTPS_PROXY": "", "https_proxy": "",
                                        "HTTP_PROXY": "", "http_proxy": ""})
    assert code != 0, out.decode()[-2000:]


def test_servers_still_answer_through_the_proxy(stack, two_students):
    """Isolated from each other, both servers still work for their users: a file written
    through the proxy reads back."""
    for user in ("amy", "ben"):
        url = f"{stack.server_url(user)}/api/contents/isolated-{user}.txt"
        r = requests.put(url, headers=auth(stack), timeout=30,
                         json={"type": "file", "format": "text", "content": f"hello {user}"})
        assert r.status_code in (200, 201), (user, r.status_code, r.text[:300])
        r = requests.get(url, headers=auth(stack), timeout=30)
        assert r.status_code == 200 and r.json()["content"] == f"hello {user}", r.text[:300]


def test_a_recreated_proxy_finds_its_way_back_to_every_server(stack, two_students):
    """`docker compose up` recreates the proxy without its attachments to the servers'
    networks; the hub puts it back (hub/spawner.py, _network_watch_loop)."""
    old = stack.container("proxy").id
    stack.compose("up", "-d", "--no-deps", "--force-recreate", "proxy")
    assert stack.container("proxy").id != old

    def answers():
        r = requests.get(f"{stack.server_url('amy')}/api/status", headers=auth(stack), timeout=5)
        return r.status_code == 200
    wait_for(answers, 60, "amy's server to answer through the recreated proxy")
    logs = stack.container("hub").logs().decode(errors="replace")
    assert "connected" in logs and "(it had lost it)" in logs, logs[-3000:]
    assert "Checking the servers' networks failed" not in logs, logs[-3000:]
    a, b = two_students
    for c in (a, b):  # one round of the watch may not have reached both yet
        wait_for(lambda: stack.container("proxy").name in {
            m["Name"] for m in network_of(stack, c)["Containers"].values()}, 60,
            f"the recreated proxy on {network_name(c)}")


def test_a_stopped_server_takes_its_network_with_it(stack):
    user = "cleo"
    assert stack.api("POST", f"/users/{user}").status_code in (201, 409)
    stack.start_server(user)
    name = network_name(stack.user_container(user))
    assert stack.client.networks.list(names=[name])
    stack.stop_server(user)
    wait_for(lambda: not [n for n in stack.client.networks.list(names=[name]) if n.name == name],
             60, f"the network {name} to be removed")


@pytest.fixture(scope="module")
def exam_stack(tmp_path_factory, docker_client, standin_bases):
    """A second deployment with GPUHUB_USER_EGRESS=deny (same images)."""
    s = make_stack(tmp_path_factory, docker_client, "gpuhubexam", real_traefik=False,
                   extra_env={"GPUHUB_USER_EGRESS": "deny"})
    with s.running():
        yield s


def test_exam_mode_cuts_every_way_out(exam_stack):
    s = exam_stack
    user = "eva"
    assert s.api("POST", f"/users/{user}").status_code in (201, 409)
    s.start_server(user)
    c = s.user_container(user)
    env = dict(e.split("=", 1) for e in c.attrs["Config"]["Env"])
    assert not {"HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"} & set(env)
    members = {m["Name"] for m in network_of(s, c)["Containers"].values()}
    assert s.container("egress").name not in members
    egress = s.container("egress")
    egress_ip = next(iter(egress.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
    seen = probe(c, "egress:3128", f"{egress_ip}:3128", "hub:8081")
    assert seen["hub:8081"] == "open", seen
    assert [t for t, v in seen.items() if v == "open"] == ["hub:8081"], seen
    code, out = c.exec_run(["python3", "-m", "pip", "download", "--no-deps", "-d", "/tmp/pip-direct",
                            "--retries", "0", "--timeout", "3", "--proxy", "http://egress:3128",
                            "six==1.16.0"])
    assert code != 0, out.decode()[-2000:]
    r = requests.get(f"{s.server_url(user)}/api/status", headers=auth(s), timeout=30)
    assert r.status_code == 200, r.text[:300]
    s.stop_server(user)
