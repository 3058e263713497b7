"""Subdomain mode (GPUHUB_USER_SUBDOMAINS=true) with the stand-in for Traefik's API: the
routes jupyterhub-traefik-proxy writes, checked as Traefik would load them, and user
servers that ignore the student's own ~/.jupyter configuration.

The stand-in (tests/e2e/traefik_api_standin.py) loads only schema-valid route files, so a
server that starts at all had its host rule accepted. Traefik itself, where its image
exists, runs the same mode in test_traefik_real.py; the browser in test_origin_browser.py.
"""

import json

import jsonschema
import pytest
import requests

from .conftest import make_stack
from .stack import SCHEMA_DIR

pytestmark = pytest.mark.e2e

# a student's own server configuration: if the server loaded it, the marker file appears
USER_CONFIG = ("open('/home/jovyan/user-config-was-loaded', 'w').write('yes')\n"
               "c.ServerApp.tornado_settings = {'headers': {'Content-Security-Policy': 'frame-ancestors *'}}\n")


@pytest.fixture(scope="module")
def subdomain_stack(tmp_path_factory, docker_client, standin_bases):
    s = make_stack(tmp_path_factory, docker_client, "gpuhubsub", real_traefik=False,
                   extra_env={"GPUHUB_USER_SUBDOMAINS": "true"})
    with s.running():
        yield s


def test_routes_are_host_rules_and_stay_valid_traefik_configuration(subdomain_stack):
    s = subdomain_stack
    assert s.api("POST", "/users/rosa").status_code in (201, 409)
    s.start_server("rosa")
    routes = s.routes_file()
    bookkeeping = routes.pop("jupyterhub")
    schema = json.loads((SCHEMA_DIR / "traefik-v3-file-provider.json").read_text())
    jsonschema.Draft7Validator(schema).validate(routes)
    rules = {r["rule"] for r in routes["http"]["routers"].values()}
    # the user's server on its own host; the hub catches every other host and path
    assert ("Host(`rosa.localhost`) && ( PathPrefix(`/user/rosa/`) || Path(`/user/rosa`) )"
            in rules), rules
    assert "PathPrefix(`/`)" in rules, rules
    assert {r["routespec"] for r in bookkeeping["routes"].values()} == {
        "/", "rosa.localhost/user/rosa/"}, bookkeeping
    s.stop_server("rosa")


def test_a_students_own_jupyter_config_is_ignored(subdomain_stack):
    """disable_user_config: ~/.jupyter/jupyter_server_config.py, written by the student,
    is not run by their server at its next start, and cannot lift the frame-ancestors."""
    s = subdomain_stack
    user = "vera"
    assert s.api("POST", f"/users/{user}").status_code in (201, 409)
    s.start_server(user)
    container = s.user_container(user)
    script = ("import os, sys\nos.makedirs(os.path.expanduser('~/.jupyter'), exist_ok=True)\n"
              "open(os.path.expanduser('~/.jupyter/jupyter_server_config.py'), 'w').write(sys.argv[1])\n")
    code, out = container.exec_run(["python3", "-c", script, USER_CONFIG], user="1000:100")
    assert code == 0, out
    s.stop_server(user)
    s.start_server(user)
    container = s.user_container(user)
    code, out = container.exec_run(["ls", "-A", "/home/jovyan"])
    assert code == 0 and "user-config-was-loaded" not in out.decode(), out.decode()
    assert ".jupyter" in out.decode()
    # straight to the server (the stand-in proxy does not route by host): the test, not the
    # product, attaches it to the users network, which this machine reaches
    network = s.env["GPUHUB_USER_NETWORK"]
    s.client.networks.get(network).connect(container)
    r = requests.get(f"http://{s.ip(container, network)}:8888/user/{user}/api/status", timeout=30,
                     headers={"Authorization": f"token {s.token}"})
    assert r.ok, r.text
    assert r.headers["Content-Security-Policy"].startswith(
        f"frame-ancestors 'self' https://localhost:{s.env['GPUHUB_HTTPS_PORT']}"), r.headers
    s.stop_server(user)
