"""The same deployment behind real Traefik. Runs where the `traefik:v3` image exists;
elsewhere the `traefik_stack` fixture skips with the reason (no registry here)."""

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import yaml

from .stack import REPO

pytestmark = pytest.mark.e2e


def test_http_redirects_to_https_with_safe_headers(traefik_stack):
    s = traefik_stack
    r = requests.get(f"http://localhost:{s.env['GPUHUB_HTTP_PORT']}/hub/login",
                     allow_redirects=False, timeout=30)
    assert r.status_code in (301, 308) and r.headers["Location"].startswith("https://"), r.headers
    r = requests.get(f"{s.hub_url}/hub/login", verify=False, timeout=30)
    assert r.status_code == 200
    assert "max-age=31536000" in r.headers["Strict-Transport-Security"]
    assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_dashboard_and_api_are_not_public(traefik_stack):
    s = traefik_stack
    for path in ("/dashboard/", "/api/overview", "/api/http/routers"):
        r = requests.get(f"{s.hub_url}{path}", verify=False, timeout=30, allow_redirects=False)
        assert r.status_code in (302, 404), f"{path} answered {r.status_code}"


def test_user_server_through_traefik(traefik_stack):
    s = traefik_stack
    user = "tina"
    assert s.api("POST", f"/users/{user}").status_code in (201, 409)
    s.start_server(user)
    marker = str(uuid.uuid4())
    url = f"{s.server_url(user)}/api/contents/through-traefik.txt"
    headers = {"Authorization": f"token {s.token}"}
    r = requests.put(url, headers=headers, verify=False, timeout=30,
                     json={"type": "file", "format": "text", "content": marker})
    assert r.status_code in (200, 201), r.text
    assert requests.get(url, headers=headers, verify=False, timeout=30).json()["content"] == marker
    s.stop_server(user)


# From inside the hub container: the proxy's https port, as another client address.
OTHER_CLIENT = r"""
import ssl, sys, urllib.request, urllib.error
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
codes = []
for _ in range(int(sys.argv[2])):
    request = urllib.request.Request(sys.argv[1], headers={"Host": "localhost"})
    try:
        codes.append(urllib.request.urlopen(request, context=ctx, timeout=10).status)
    except urllib.error.HTTPError as e:
        codes.append(e.code)
print(" ".join(map(str, codes)))
"""


@pytest.mark.parametrize("path, middleware", [("/hub/login", "login-rate-limit"),
                                              ("/hub/api/", "api-rate-limit")])
def test_login_and_api_are_rate_limited_per_client_address(traefik_stack, path, middleware):
    """A burst from one address past the configured burst gets 429 from Traefik, while
    another address (the hub container, on the users network) is still served."""
    s = traefik_stack
    limit = yaml.safe_load((REPO / "proxy" / "dynamic" / "gpuhub.yml").read_text())[
        "http"]["middlewares"][middleware]["rateLimit"]
    total = 3 * limit["burst"]  # bounded: the bucket holds `burst`, refills `average`/s
    session = requests.Session()

    def one(_):
        return session.get(f"{s.hub_url}{path}", verify=False, timeout=30,
                           allow_redirects=False).status_code

    other = {}

    def other_client():
        hub = s.container("hub")
        code, out = hub.exec_run(["python3", "-c", OTHER_CLIENT, f"https://proxy{path}", "5"])
        other["codes"] = out.decode().split() if code == 0 else [out.decode()]

    with ThreadPoolExecutor(32) as pool:
        futures = pool.map(one, range(total))
        side = threading.Thread(target=other_client)
        side.start()
        codes = list(futures)
        side.join(timeout=120)
    assert 429 in codes, f"no 429 in {total} requests to {path}: {sorted(set(codes))}"
    # the bucket starts full: at least `burst` requests went through
    assert sum(c != 429 for c in codes) >= limit["burst"], codes.count(429)
    assert other.get("codes") and "429" not in other["codes"], other


@pytest.fixture(scope="module")
def traefik_subdomain_stack(tmp_path_factory, docker_client, standin_bases):
    """Real Traefik with users' servers on their own subdomains (GPUHUB_USER_SUBDOMAINS)."""
    from .conftest import make_stack
    from .stack import image_exists, traefik_image
    image = traefik_image()
    if not image_exists(docker_client, image):
        pytest.skip(f"real-Traefik subdomain test skipped: image {image} is not on this machine "
                    "and cannot be pulled here; test_origin_browser.py ran the mode behind "
                    "configurable-http-proxy instead")
    s = make_stack(tmp_path_factory, docker_client, "gpuhubtraefiksub", real_traefik=True,
                   extra_env={"GPUHUB_USER_SUBDOMAINS": "true"})
    with s.running():
        yield s


def via_traefik(stack, host, method, path, **kwargs):
    """A request to Traefik on this machine for `host` (SNI and Host header): Python here
    does not resolve *.localhost as browsers do."""
    import json as jsonlib

    import urllib3
    port = int(stack.env["GPUHUB_HTTPS_PORT"])
    pool = urllib3.HTTPSConnectionPool("127.0.0.1", port, server_hostname=host,
                                       assert_hostname=False, cert_reqs="CERT_NONE")
    headers = {"Host": f"{host}:{port}", "Authorization": f"token {stack.token}"}
    body = jsonlib.dumps(kwargs["json"]) if "json" in kwargs else None
    return pool.request(method, path, headers=headers, body=body, redirect=False, timeout=30)


def test_user_server_on_its_own_subdomain_through_traefik(traefik_subdomain_stack):
    import json

    import jsonschema
    from cryptography import x509

    from .stack import SCHEMA_DIR
    s = traefik_subdomain_stack
    user = "tina"
    assert s.api("POST", f"/users/{user}").status_code in (201, 409)
    s.start_server(user)
    # jupyterhub-traefik-proxy wrote a host rule, and the file is still valid for Traefik
    routes = s.routes_file()
    routes.pop("jupyterhub")
    schema = json.loads((SCHEMA_DIR / "traefik-v3-file-provider.json").read_text())
    jsonschema.Draft7Validator(schema).validate(routes)
    rules = [r["rule"] for r in routes["http"]["routers"].values()]
    assert any(rule.startswith(f"Host(`{user}.localhost`) && ") and f"/user/{user}/" in rule
               for rule in rules), rules
    # through Traefik at tina.localhost: the server, with the wildcard certificate
    marker = str(uuid.uuid4())
    path = f"/user/{user}/api/contents/through-traefik.txt"
    r = via_traefik(s, f"{user}.localhost", "PUT", path,
                    json={"type": "file", "format": "text", "content": marker})
    assert r.status in (200, 201), r.data
    assert json.loads(via_traefik(s, f"{user}.localhost", "GET", path).data)["content"] == marker
    assert "frame-ancestors 'self' https://localhost:" in r.headers["Content-Security-Policy"]
    # the hub's host does not lead to the server
    r = via_traefik(s, "localhost", "GET", path)
    assert r.status != 200 or marker not in r.data.decode(errors="replace")
    import socket
    import ssl
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", int(s.env["GPUHUB_HTTPS_PORT"])), timeout=10) as sock:
        with context.wrap_socket(sock, server_hostname=f"{user}.localhost") as tls:
            cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "*.localhost" in names.get_values_for_type(x509.DNSName)
    s.stop_server(user)
