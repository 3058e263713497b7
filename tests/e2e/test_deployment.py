"""The deployment end to end: compose stack, hub, routes, persistent user servers."""

import subprocess
import uuid

import jsonschema
import pytest
import requests

from .stack import SCHEMA_DIR, wait_for

pytestmark = pytest.mark.e2e


def contents_api(stack, user, path):
    return f"{stack.server_url(user)}/api/contents/{path}"


def auth(stack):
    return {"Authorization": f"token {stack.token}"}


def test_hub_answers_with_jupyterhub_5_5(stack):
    info = stack.api("GET", "/").json()
    assert info["version"].startswith("5.5."), info


def test_routes_file_is_valid_traefik_configuration(stack):
    import json
    routes = stack.routes_file()
    routes.pop("jupyterhub")  # jupyterhub-traefik-proxy's bookkeeping; Traefik ignores it
    schema = json.loads((SCHEMA_DIR / "traefik-v3-file-provider.json").read_text())
    jsonschema.Draft7Validator(schema).validate(routes)
    # the hub route and the basic-auth-protected API route are there from the start
    rules = {r["rule"]: r for r in routes["http"]["routers"].values()}
    assert any("PathPrefix(`/`)" in rule for rule in rules), rules
    api = [r for r in rules.values() if r["service"] == "api@internal"]
    assert api and api[0]["entryPoints"] == ["auth_api"], rules


def test_user_server_persists_work_across_removal_and_hub_restart(stack):
    user = "alice"
    assert stack.api("POST", f"/users/{user}").status_code in (201, 409)
    stack.start_server(user)

    # the route the hub wrote for Traefik points at the live container
    container = stack.user_container(user)
    assert container is not None and container.status == "running"
    target = stack.route_target(user)
    assert target == f"http://{stack.ip(container)}:8888", target

    # the container is locked down as promised
    host = container.attrs["HostConfig"]
    assert container.attrs["Config"]["User"] == "1000:100"
    assert host["CapDrop"] == ["ALL"] and not host["Privileged"]
    assert not any("docker.sock" in (m.get("Source") or "") for m in container.attrs["Mounts"])
    # on a network of its own (hub/networks.py): one of the pool's (hub/netpool.py) or,
    # when none was ready, one named like the container
    own = container.attrs["HostConfig"]["NetworkMode"]
    assert set(container.attrs["NetworkSettings"]["Networks"]) == {own}
    assert own == container.name or own.startswith(f"{stack.prefix}-pool_"), own

    # no path from the user's container to the proxy's API (control network only)
    proxy = stack.container("proxy")
    probe = ("import socket,sys\n"
             "for host in sys.argv[1:]:\n"
             "    try: socket.create_connection((host, 8099), timeout=3); print('OPEN', host)\n"
             "    except OSError: print('closed', host)\n")
    addresses = [stack.ip(proxy), stack.env["GPUHUB_PROXY_CONTROL_IP"]]
    code, out = container.exec_run(["python3", "-c", probe, *addresses])
    assert code == 0 and "OPEN" not in out.decode(), out.decode()

    # reach the user's Jupyter server through that target and write a file
    marker = f"written by the e2e test {uuid.uuid4()}"
    r = requests.put(contents_api(stack, user, "persist.txt"), headers=auth(stack), timeout=30,
                     json={"type": "file", "format": "text", "content": marker})
    assert r.status_code in (200, 201), r.text

    # stop: the container is removed, the named volume stays
    first_id = container.id
    stack.stop_server(user)
    wait_for(lambda: stack.user_container(user) is None, 60, "the stopped container to be removed")
    volume = f"{stack.env['GPUHUB_VOLUME_PREFIX']}-{user}"
    assert stack.client.volumes.get(volume)

    # start again: a new container, the same file
    stack.start_server(user)
    assert stack.user_container(user).id != first_id
    r = requests.get(contents_api(stack, user, "persist.txt"), headers=auth(stack), timeout=30)
    assert r.status_code == 200 and r.json()["content"] == marker, r.text

    # restart the hub: the server keeps running, still routed, still reachable
    running_id = stack.user_container(user).id
    # a new container on a new network of its own: a new address
    target = stack.route_target(user)
    stack.compose("restart", "hub")
    stack.wait_healthy()
    assert stack.user_container(user).id == running_id
    assert stack.user_container(user).status == "running"
    assert stack.api("GET", f"/users/{user}").json()["servers"][""]["ready"]
    assert stack.route_target(user) == target
    r = requests.get(contents_api(stack, user, "persist.txt"), headers=auth(stack), timeout=30)
    assert r.status_code == 200 and r.json()["content"] == marker, r.text

    stack.stop_server(user)


def test_bad_settings_stop_the_hub_naming_the_variable(stack):
    """A malformed .env value stops the hub at once with the variable named."""
    image = f"gpuhub/hub:{stack.env['GPUHUB_VERSION']}"
    result = subprocess.run(
        ["docker", "run", "--rm", "-e", "GPUHUB_DOMAIN=hub.example.org", "-e", "AUTH_PROVIDER=dummy",
         "-e", "GPUHUB_USER_IMAGE=Not A/Valid Image", "-e", "GPUHUB_MEM_LIMIT=lots", image],
        capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "GPUHUB_USER_IMAGE='Not A/Valid Image' is not valid" in result.stderr, result.stderr
    assert "GPUHUB_MEM_LIMIT='lots' is not valid" in result.stderr, result.stderr
