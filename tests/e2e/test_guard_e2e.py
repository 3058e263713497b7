"""The Docker API guard, attacked from inside the hub container: what code running in
the hub (a bad dependency, a hostile config file) could ask of Docker through the only
Docker endpoint the hub has. Each attack is refused with 403 and changes nothing."""

import json

import docker
import pytest

from .stack import wait_for

pytestmark = pytest.mark.e2e

# runs inside the hub container: raw HTTP over the guard's socket, so that the tests
# control every byte (docker-py would refuse some of these bodies itself)
CLIENT = r"""
import http.client, json, socket, sys
class Guard(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect("/run/gpuhub-guard/docker.sock")
answers = []
for method, path, body in json.load(sys.stdin):
    c = Guard("guard")
    data = body.encode("latin-1") if body is not None else None
    c.request(method, path, body=data, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    answers.append([r.status, r.read().decode(errors="replace")[:2000]])
print(json.dumps(answers))
"""


def from_hub(stack, calls):
    """[(status, body)] for each (method, path, body) sent by the hub's container."""
    hub = stack.container("hub")
    exec_id = stack.client.api.exec_create(hub.id, ["python3", "-c", CLIENT], stdin=True)["Id"]
    sock = stack.client.api.exec_start(exec_id, socket=True)
    raw = sock._sock
    raw.sendall(json.dumps(calls).encode())
    raw.shutdown(1)  # end of stdin
    out = b""
    while chunk := raw.recv(65536):
        out += chunk
    raw.close()
    # the exec stream is multiplexed: 8-byte headers, then the payload
    payload, i = b"", 0
    while i + 8 <= len(out):
        size = int.from_bytes(out[i + 4:i + 8], "big")
        if out[i] == 1:
            payload += out[i + 8:i + 8 + size]
        i += 8 + size
    code = stack.client.api.exec_inspect(exec_id)["ExitCode"]
    assert code == 0, out.decode(errors="replace")
    return [(status, body) for status, body in json.loads(payload)]


def user_body(stack, **host):
    """A create body like the hub's own (docker-py's serialisation), changed by `host`."""
    api = docker.APIClient(version="1.41")
    host_config = api.create_host_config(
        binds={f"{stack.env['GPUHUB_VOLUME_PREFIX']}-probe": {"bind": "/home/jovyan", "mode": "rw"}},
        network_mode=stack.env["GPUHUB_USER_NETWORK"], init=True, cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"], pids_limit=64, mem_limit="256m")
    config = dict(docker.types.ContainerConfig(
        "1.41", stack.env["GPUHUB_USER_IMAGE"], ["sleep", "60"], user="1000:100",
        environment={"NVIDIA_VISIBLE_DEVICES": "void"},
        labels={"org.gpuhub.user": "probe", "org.gpuhub.server": ""}, host_config=host_config))
    config["HostConfig"].update(host)
    return config


def create(stack, name, body):
    raw = body if isinstance(body, str) else json.dumps(body)
    return ("POST", f"/v1.41/containers/create?name={stack.prefix}-{name}", raw)


def test_the_hub_has_no_docker_socket_and_no_root(stack):
    hub = stack.container("hub")
    mounts = [m.get("Source", "") + " " + m.get("Destination", "") for m in hub.attrs["Mounts"]]
    assert not any("docker.sock" in m for m in mounts), mounts
    host = hub.attrs["HostConfig"]
    assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"], host
    assert "no-new-privileges:true" in host["SecurityOpt"]
    code, out = hub.exec_run(["sh", "-c", "id -u; grep NoNewPrivs /proc/self/status; "
                                          "grep CapEff /proc/self/status; touch /x 2>&1; "
                                          "ls -l /var/run/docker.sock 2>&1"])
    text = out.decode()
    assert text.splitlines()[0] == "10001", text
    assert "NoNewPrivs:\t1" in text and "CapEff:\t0000000000000000" in text, text
    assert "Read-only file system" in text and "No such file" in text, text


def test_attacks_from_the_hub_are_refused_and_change_nothing(stack):
    proxy = stack.container("proxy")
    started = proxy.attrs["State"]["StartedAt"]
    gpu = "GPU-00000000-0000-0000-0000-0000000000ff"
    no_labels = user_body(stack)
    no_labels["Labels"] = {}
    stranger_gpu = user_body(stack, DeviceRequests=[{"Driver": "nvidia", "DeviceIDs": [gpu],
                                                     "Capabilities": [["gpu"]]}])
    stranger_gpu["Env"] = [f"NVIDIA_VISIBLE_DEVICES={gpu}"]
    attacks = [
        ("no-privileged", create(stack, "a1", user_body(stack, Privileged=True))),
        ("no-host-paths", create(stack, "a2", user_body(stack, Binds=["/:/host"]))),
        ("user-networks-only", create(stack, "a3", user_body(stack, NetworkMode="host"))),
        ("no-cap-add", create(stack, "a4", user_body(stack, CapAdd=["SYS_ADMIN"]))),
        ("no-devices", create(stack, "a5", user_body(stack, Devices=[{
            "PathOnHost": "/dev/kmsg", "PathInContainer": "/dev/kmsg",
            "CgroupPermissions": "rwm"}]))),
        ("gpus-from-inventory", create(stack, "a6", stranger_gpu)),
        ("gpuhub-labels", create(stack, "a7", no_labels)),
        ("no-exec", ("POST", f"/v1.41/containers/{proxy.id}/exec",
                     json.dumps({"Cmd": ["cat", "/etc/hostname"]}))),
        ("gpuhub-containers-only", ("POST", f"/v1.41/containers/{proxy.id}/stop", None)),
        ("gpuhub-containers-only", ("POST", f"/v1.41/containers/{proxy.name}/kill", None)),
        ("no-build", ("POST", f"/v1.41/build?t={stack.project}-evil", "FROM scratch")),
        ("no-swarm", ("POST", "/v1.41/swarm/init", json.dumps({"ListenAddr": "0.0.0.0:2377"}))),
        # the engine reads keys case-insensitively: so does the guard
        ("no-privileged", create(stack, "a8", json.dumps(user_body(stack)).replace(
            '"HostConfig": {', '"HostConfig": {"privileged": true, '))),
    ]
    answers = from_hub(stack, [call for _, call in attacks])
    for (rule, call), (status, body) in zip(attacks, answers):
        assert status == 403, (call[:2], status, body)
        assert json.loads(body)["message"].endswith(f"(rule: {rule})"), (call[:2], body)

    # nothing changed: no container, the proxy untouched, no image, no swarm
    assert not stack.client.containers.list(all=True, filters={"name": f"{stack.prefix}-a"})
    proxy.reload()
    assert proxy.status == "running" and proxy.attrs["State"]["StartedAt"] == started
    # (the stand-in proxy runs the hub image, whose health check Docker runs as an exec)
    for exec_id in proxy.attrs.get("ExecIDs") or []:
        try:
            process = stack.client.api.exec_inspect(exec_id)["ProcessConfig"]
        except docker.errors.NotFound:
            continue
        assert "/etc/hostname" not in process.get("arguments", []), "the attack's exec was made"
    # (other builds share this engine: look for the attack's own tag)
    assert not stack.client.images.list(name=f"{stack.project}-evil")
    assert stack.client.info()["Swarm"]["LocalNodeState"] == "inactive"


def test_the_hubs_own_body_is_allowed(stack):
    """The control: the body the attacks changed passes, so each refusal is the change's."""
    name = f"{stack.prefix}-allowed"
    try:
        body = user_body(stack)
        body["Cmd"] = ["sh", "-c", "sleep 2; echo hello-through-the-guard"]
        (status, answer), = from_hub(stack, [create(stack, "allowed", body)])
        assert status == 201, answer
        container = stack.client.containers.get(name)
        assert container.attrs["HostConfig"]["CapDrop"] == ["ALL"]
        # wait blocks until the container exits; logs stream its output: both pass through
        answers = from_hub(stack, [
            ("POST", f"/v1.41/containers/{name}/start", None),
            ("POST", f"/v1.41/containers/{name}/wait", None),
            ("GET", f"/v1.41/containers/{name}/logs?stdout=1", None),
            ("DELETE", f"/v1.41/containers/{name}?force=1", None)])
        assert [s for s, _ in answers] == [204, 200, 200, 204], answers
        assert json.loads(answers[1][1])["StatusCode"] == 0
        assert "hello-through-the-guard" in answers[2][1]
    finally:
        for c in stack.client.containers.list(all=True, filters={"name": name}):
            c.remove(force=True)
        for v in stack.client.volumes.list(filters={"name": f"{stack.env['GPUHUB_VOLUME_PREFIX']}-probe"}):
            v.remove(force=True)


def test_malformed_and_oversized_bodies_are_refused_and_the_guard_keeps_serving(stack):
    guard = stack.container("guard")
    answers = from_hub(stack, [
        create(stack, "m1", "{not json"),
        create(stack, "m2", '{"HostConfig": {"Privileged": false, "privileged": true}}'),
        create(stack, "m3", '{"Image": "' + "x" * (2 << 20) + '"}'),
        ("POST", f"/v1.41/containers/create?name={stack.prefix}-m4", "\xff\xfe"),
        ("GET", "/_ping", None),
        ("GET", "/v1.41/version", None),
    ])
    statuses = [status for status, _ in answers]
    assert statuses[:4] == [400, 400, 413, 400], answers
    assert all("(rule: " in json.loads(body)["message"] for _, body in answers[:4]), answers
    assert statuses[4:] == [200, 200], answers
    guard.reload()
    assert guard.status == "running" and guard.attrs["RestartCount"] == 0
    assert not stack.client.containers.list(all=True, filters={"name": f"{stack.prefix}-m"})


def test_the_hub_and_proxy_may_join_a_students_network_nothing_else(stack):
    """The per-student networks: gpuhub's name prefix, joined by the hub's and the proxy's
    containers (found by compose's labels on the guard's own project) and user containers."""
    name = f"{stack.prefix}-netprobe"
    hub, proxy, guard = (stack.container(s) for s in ("hub", "proxy", "guard"))
    control = stack.env["GPUHUB_CONTROL_NETWORK"]
    try:
        answers = from_hub(stack, [
            ("POST", "/v1.41/networks/create", json.dumps({"Name": name, "Driver": "bridge"})),
            ("POST", f"/v1.41/networks/{name}/connect", json.dumps({"Container": hub.id})),
            ("POST", f"/v1.41/networks/{name}/connect", json.dumps({"Container": proxy.id})),
            ("POST", f"/v1.41/networks/{name}/connect", json.dumps({"Container": guard.id})),
            ("POST", f"/v1.41/networks/{control}/disconnect", json.dumps({"Container": proxy.id})),
            ("POST", f"/v1.41/networks/{name}/disconnect", json.dumps({"Container": hub.id})),
            ("POST", f"/v1.41/networks/{name}/disconnect", json.dumps({"Container": proxy.id})),
            ("DELETE", f"/v1.41/networks/{name}", None),
        ])
        assert [s for s, _ in answers] == [201, 200, 200, 403, 403, 200, 200, 204], answers
        proxy.reload()
        assert control in proxy.attrs["NetworkSettings"]["Networks"]
    finally:
        for n in stack.client.networks.list(names=[name]):
            for c in n.attrs.get("Containers") or {}:
                n.disconnect(c, force=True)
            n.remove()


def test_a_user_server_runs_and_streams_logs_through_the_guard(stack):
    user = "guardlogs"
    assert stack.api("POST", f"/users/{user}").status_code in (201, 409)
    stack.start_server(user)
    try:
        container = stack.user_container(user)
        (status, body), = from_hub(stack, [
            ("GET", f"/v1.41/containers/{container.name}/logs?stdout=1&stderr=1&tail=50", None)])
        assert status == 200 and "Jupyter" in body, body[:500]
        guard_log = stack.logs("guard")
        assert "rule: container-create" in guard_log and "rule: container-start" in guard_log
    finally:
        stack.stop_server(user)
    wait_for(lambda: stack.user_container(user) is None, 60, "the container to be removed")


def test_root_owned_volumes_from_an_older_hub_are_named_at_start_and_the_documented_fix_works(stack):
    """An upgrade: the hub's volumes were made by a hub that ran as root. The new hub
    stops naming them and the command; that command (docs/admin.md) makes them usable."""
    import subprocess
    image = f"gpuhub/hub:{stack.env['GPUHUB_VERSION']}"
    volume = f"{stack.project}-oldstate"
    client = stack.client
    client.volumes.create(volume)
    try:
        # what an old, root-run hub left behind
        client.containers.run(image, ["sh", "-c", "chown 0:0 /srv/jupyterhub && chmod 755 "
                              "/srv/jupyterhub && touch /srv/jupyterhub/jupyterhub.sqlite"],
                              user="0", remove=True, volumes={volume: {"bind": "/srv/jupyterhub"}})
        run = ["docker", "run", "--rm", "-v", f"{volume}:/srv/jupyterhub",
               "-e", "GPUHUB_DOMAIN=hub.example.org", "-e", "AUTH_PROVIDER=dummy",
               "-e", "GPUHUB_USER_IMAGE=gpuhub/user:x", "--network", "none"]
        result = subprocess.run(run + [image], capture_output=True, text=True, timeout=120)
        assert result.returncode != 0
        assert "cannot write to /srv/jupyterhub (owned by uid 0)" in result.stderr, result.stderr
        assert "docker run --rm --user 0 --entrypoint chown" in result.stderr, result.stderr
        # the documented one-off command, with this volume's name
        fix = ["docker", "run", "--rm", "--user", "0", "--entrypoint", "chown",
               "-v", f"{volume}:/srv/jupyterhub", image, "-R", "10001:10001", "/srv/jupyterhub"]
        subprocess.run(fix, check=True, capture_output=True, timeout=120)
        check = subprocess.run(run + [image, "python3", "-c", "from hub import state_dirs; "
                               "state_dirs.check_writable(['/srv/jupyterhub']); print('ok')"],
                               capture_output=True, text=True, timeout=120)
        assert check.stdout.strip() == "ok", check.stderr
    finally:
        client.volumes.get(volume).remove(force=True)


def test_the_proxy_as_root_without_dac_override_reads_what_the_hub_writes(stack):
    """Traefik runs as root with every capability dropped but NET_BIND_SERVICE: files of
    the hub's user are readable to it only through the hub's group (group_add). An exec
    as root in the proxy's container has exactly Traefik's capabilities and groups."""
    hub, proxy = stack.container("hub"), stack.container("proxy")
    assert hub.exec_run(["sh", "-c", "umask 077 && echo secret > /certs/probe"])[0] == 0
    try:
        def as_traefik(path):
            return proxy.exec_run(["cat", path], user="0")
        # the control: a file only the hub's user may read stays closed to root here
        code, out = as_traefik("/certs/probe")
        assert code != 0 and b"Permission denied" in out, out
        for path in ("/certs/tls.key", "/certs/tls.crt", "/etc/traefik/dynamic/hub-routes.toml"):
            code, out = as_traefik(path)
            assert code == 0 and out.strip(), (path, out)
    finally:
        hub.exec_run(["rm", "-f", "/certs/probe"])
