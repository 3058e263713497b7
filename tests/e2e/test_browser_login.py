"""A student's first session in a real browser: sign in through a real OpenID Connect
provider, get a server, run a notebook cell, stop the server; an outsider is turned away.

What runs, and the one difference from production:

- Identity provider: panva's `oidc-provider` (npm, `tests/e2e/oidc/provider.mjs`), started
  by this test on the host and listening on the gateway address of the test's users
  network, so the browser (on the host) and the hub (in its container) use the same
  issuer URL. Accounts: `student1` in group `cs101`, `outsider` in group `other`.
- The hub: `AUTH_PROVIDER=oidc`, `OIDC_ISSUER`, `GPUHUB_ALLOWED_GROUPS=cs101`; hub image,
  user image, spawner, authenticator and volumes are what users run (`Stack`).
- Proxy: where the `traefik:v3` image exists, the real stack with Traefik. Where it does
  not (no registry here), configurable-http-proxy, JupyterHub's default proxy and a real
  one, replaces the `proxy` service (`tests/e2e/chp/`) and a file in
  `jupyterhub_config.d/` points the hub at it. THAT IS THE ONLY DIFFERENCE.
- Browser: Debian's Chromium, headless, driven by Playwright; it may reach only this
  machine and the test's network (anything else is blocked and listed).

Screenshots of every step go to `test-artifacts/screenshots/` (CI keeps that folder as
artifacts). With GPUHUB_UPDATE_DOCS_IMAGES=1 a pass also copies them to `docs/images/`
for `docs/students.md`; otherwise a test run leaves the docs as they are.
"""

import json
import os
import secrets
import shutil
import subprocess
import time
from types import SimpleNamespace
from urllib.parse import urlparse

import pytest
import requests
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

from .stack import REPO, Stack, free_port, free_subnet, image_exists, traefik_image, wait_for

pytestmark = pytest.mark.e2e

OIDC_DIR = REPO / "tests" / "e2e" / "oidc"
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
DOCS_IMAGES = REPO / "docs" / "images"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
LAB_NAME = "Lovelace GPU Lab"
ACCOUNTS = {"student1": {"password": secrets.token_urlsafe(12), "groups": ["cs101"]},
            "outsider": {"password": secrets.token_urlsafe(12), "groups": ["other"]}}


def free_users_subnet(client):
    """A /24 for the users network that no Docker network overlaps (its gateway, .1, is
    where the identity provider listens)."""
    return free_subnet(client, "10.253.{}.0/24", "the users network")


def install_provider():
    """npm ci from the committed lock file into tests/e2e/oidc/node_modules (gitignored),
    once: later runs reuse it until the lock file changes."""
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.fail("Node.js and npm are needed for the OpenID Connect provider "
                    "(apt-get install nodejs npm)")
    stamp = OIDC_DIR / "node_modules" / ".package-lock.json"
    if stamp.exists() and stamp.stat().st_mtime >= (OIDC_DIR / "package-lock.json").stat().st_mtime:
        return
    result = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=OIDC_DIR,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, f"npm ci in {OIDC_DIR} failed:\n{result.stdout}\n{result.stderr}"


class OidcProvider:
    """tests/e2e/oidc/provider.mjs as a child process of the test."""

    client_id = "gpuhub-e2e"

    def __init__(self, workdir, host, port):
        self.workdir, self.host, self.port = workdir, host, port
        self.issuer = f"http://{host}:{port}"
        self.client_secret = secrets.token_urlsafe(24)
        self.log = workdir / "oidc.log"
        self.process = None

    def start(self, redirect_uri):
        config = self.workdir / "oidc.json"
        config.write_text(json.dumps({
            "issuer": self.issuer, "host": self.host, "port": self.port, "accounts": ACCOUNTS,
            "client": {"client_id": self.client_id, "client_secret": self.client_secret,
                       "redirect_uris": [redirect_uri]}}))
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(["node", "provider.mjs", str(config)], cwd=OIDC_DIR,
                                            stdout=log, stderr=subprocess.STDOUT)

        def ready():
            if self.process.poll() is not None:
                raise AssertionError(f"the OpenID Connect provider exited:\n{self.log.read_text()}")
            return requests.get(f"{self.issuer}/.well-known/openid-configuration", timeout=2).ok
        wait_for(ready, 30, f"the OpenID Connect provider at {self.issuer}")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


CHP_CONFIG = """\
# written by the browser test (tests/e2e/test_browser_login.py): no traefik:v3 image on this
# machine, so configurable-http-proxy (tests/e2e/chp) is the proxy. The only difference.
c.JupyterHub.proxy_class = "configurable-http-proxy"
c.ConfigurableHTTPProxy.should_start = False
c.ConfigurableHTTPProxy.api_url = "http://chp:8001"
# the API token is CONFIGPROXY_AUTH_TOKEN from .env, which ConfigurableHTTPProxy reads itself
c.JupyterHub.bind_url = {public_url!r}
# CHP here speaks plain HTTP on 127.0.0.1; the certificate was for Traefik
c.JupyterHub.ssl_cert = ""
c.JupyterHub.ssl_key = ""
"""


@pytest.fixture(scope="module")
def browser_stack_options():
    """What a test module that imports browser_stack adds: {"env": {...}, "prepare":
    callable(stack) run before the build (e.g. to write a catalog)}. Override it there."""
    return {"env": {}, "prepare": None}


@pytest.fixture(scope="module")
def browser_stack(tmp_path_factory, docker_client, standin_bases, browser_stack_options):
    """The deployment, logging in through the test's OpenID Connect provider."""
    install_provider()
    real_traefik = image_exists(docker_client, traefik_image())
    workdir = tmp_path_factory.mktemp("gpuhubbrowser")
    subnet = free_users_subnet(docker_client)
    provider = OidcProvider(workdir, str(subnet.network_address + 1), free_port())
    env = {"AUTH_PROVIDER": "oidc", "OIDC_ISSUER": provider.issuer,
           "OAUTH_CLIENT_ID": provider.client_id, "OAUTH_CLIENT_SECRET": provider.client_secret,
           "OIDC_SCOPES": "openid profile groups", "GPUHUB_ALLOWED_GROUPS": "cs101",
           "GPUHUB_LAB_NAME": LAB_NAME, "GPUHUB_E2E_USERS_SUBNET": str(subnet),
           # a hub image tag of our own: other e2e runs on this engine build gpuhub/hub:e2e
           "GPUHUB_VERSION": "browser"}
    if not real_traefik:
        chp_port = free_port()
        env.update({"CONFIGPROXY_AUTH_TOKEN": secrets.token_hex(32),
                    "GPUHUB_E2E_CHP_PORT": str(chp_port),
                    # chp is the proxy: it joins every server's network (hub/networks.py)
                    "GPUHUB_PROXY_SERVICES": "chp",
                    "OAUTH_CALLBACK_URL": f"http://127.0.0.1:{chp_port}/hub/oauth_callback"})
    env.update(browser_stack_options["env"])
    stack = Stack(workdir / "repo", docker_client, "gpuhubbrowser", real_traefik, env)
    if browser_stack_options["prepare"]:
        browser_stack_options["prepare"](stack)
    stack.files += ["-f", "tests/e2e/oidc/compose.users-subnet.yml"]
    auth_state_token = secrets.token_hex(16)
    (stack.dir / "jupyterhub_config.d" / "91-e2e-auth-state.py").write_text(
        "# written by the browser test: a token that may read users' auth state\n"
        f"c.JupyterHub.services.append({{'name': 'e2e-auth-state', 'api_token': {auth_state_token!r}}})\n"
        "c.JupyterHub.load_roles.append({'name': 'e2e-auth-state', 'services': ['e2e-auth-state'], "
        "'scopes': ['read:users', 'admin:auth_state']})\n")
    if real_traefik:
        public_url = stack.hub_url  # https://localhost:<GPUHUB_HTTPS_PORT>, through Traefik
        print("\nproxy: real Traefik, docker-compose.yml as users run it")
    else:
        public_url = f"http://127.0.0.1:{chp_port}"
        stack.files += ["-f", "tests/e2e/chp/compose.chp.yml"]
        (stack.dir / "jupyterhub_config.d" / "95-e2e-chp.py").write_text(
            CHP_CONFIG.format(public_url=public_url + "/"))
        print("\nNOTE: no traefik:v3 image on this machine: configurable-http-proxy "
              "(tests/e2e/chp) replaces the proxy service. That is the only difference "
              "from docker-compose.yml.")
    print(f"browser: {public_url}; identity provider: {provider.issuer}")

    for old in SCREENSHOTS.glob("students-*.png"):
        old.unlink()  # the artifacts show this run only
    started = time.monotonic()
    try:
        stack.compose("build")
        print(f"images built in {time.monotonic() - started:.0f}s")
        # creates the users network: the provider listens on its gateway address
        stack.compose("up", "--no-start")
        provider.start(f"{public_url}/hub/oauth_callback")
        stack.compose("up", "-d")
        stack.wait_healthy()
        print(f"stack up in {time.monotonic() - started:.0f}s")
        warnings = [line for line in stack.logs("hub").splitlines() if line.startswith(("[W", "[E"))]
        print("hub warnings at start-up:" + "".join(f"\n  {w}" for w in warnings) if warnings
              else "hub: no warnings at start-up")
        yield SimpleNamespace(stack=stack, url=public_url, provider=provider,
                              auth_state_token=auth_state_token)
    finally:
        provider.stop()
        stack.down()


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/setup does)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


class Student:
    """One person at one browser: a fresh context (no cookies), screenshots per step, and
    no way out to the internet (requests to other hosts are blocked and recorded)."""

    def __init__(self, browser, deployment):
        self.stack, self.url, self.provider = deployment.stack, deployment.url, deployment.provider
        self.auth_state_token = deployment.auth_state_token
        self.context = browser.new_context(viewport={"width": 1100, "height": 680},
                                           ignore_https_errors=True)
        self.context.set_default_timeout(30_000)
        allowed = {"127.0.0.1", "localhost", urlparse(self.provider.issuer).hostname}
        self.blocked = []

        def guard(route):
            if urlparse(route.request.url).hostname in allowed:
                route.continue_()
            else:
                self.blocked.append(route.request.url)
                route.abort()
        self.context.route("**/*", guard)
        self.page = self.context.new_page()
        self.shots = []

    def shot(self, name, page=None):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"students-{name}.png"
        (page or self.page).screenshot(path=str(path))
        self.shots.append(path)

    def diagnostics(self):
        """What went wrong, for the failure message: the page (and a screenshot of it),
        the hub's, the proxy's, the user server's and the provider's logs."""
        try:
            self.shot("failure")
        except PlaywrightError as e:  # the page may be gone
            print(f"no failure screenshot: {e}")
        proxy = "proxy" if self.stack.real_traefik else "chp"
        server = [c for c in self.stack.client.containers.list(all=True,
                                                              filters={"name": self.stack.prefix})]
        hub_logs = "\n".join(line for line in self.stack.logs("hub").splitlines()
                             if "(e2e@" not in line)
        servers = "".join(f"\n{c.name} logs:\n{c.logs(tail=60).decode(errors='replace')}" for c in server)
        return (f"page {self.page.url} (screenshot: {SCREENSHOTS}/students-failure.png)\n"
                f"blocked requests: {self.blocked}\n"
                f"hub logs (without the test's API calls):\n{hub_logs[-4000:]}\n{proxy} logs:\n"
                f"{self.stack.logs(proxy)[-1500:]}{servers}\n"
                f"provider log:\n{self.provider.log.read_text()[-2000:]}")

    def publish(self):
        """After a pass, when asked (GPUHUB_UPDATE_DOCS_IMAGES=1): the screenshots become
        the docs' images."""
        if os.environ.get("GPUHUB_UPDATE_DOCS_IMAGES") != "1":
            return
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        for path in self.shots:
            shutil.copy(path, DOCS_IMAGES / path.name)

    def close(self):
        if self.blocked:
            print(f"blocked (not this machine): {sorted(set(self.blocked))}")
        self.context.close()


@pytest.fixture
def student(browser, browser_stack):
    s = Student(browser, browser_stack)
    yield s
    s.close()


def sign_in_through_sso(student, user):
    """Open the hub, check the lab's name, go to the provider, sign in."""
    page = student.page
    page.goto(f"{student.url}/")
    page.wait_for_url("**/hub/login**")
    assert page.title() == LAB_NAME
    assert page.locator("#gpuhub-lab-name").inner_text() == LAB_NAME
    button = page.get_by_role("button", name="Sign in with single sign-on")
    button.wait_for()
    if user == "student1":
        student.shot("01-login")
    button.click()
    page.wait_for_url(f"{student.provider.issuer}/interaction/**")
    page.fill("#login", user)
    page.fill("#password", ACCOUNTS[user]["password"])
    if user == "student1":
        student.shot("02-university-sso")
    page.click("#sign-in")


def test_student_signs_in_runs_a_notebook_and_stops_the_server(student):
    stack, page = student.stack, student.page
    try:
        sign_in_through_sso(student, "student1")
        # back at the hub, which starts the default server right away
        page.wait_for_url(lambda url: "/hub/spawn-pending/" in url or "/user/student1/" in url,
                          timeout=60_000)
        if "/hub/spawn-pending/" in page.url:
            student.shot("03-starting")
        # JupyterLab
        page.wait_for_url("**/user/student1/lab**", timeout=180_000)
        page.locator(".jp-LauncherCard").first.wait_for(timeout=120_000)
        dismiss_news_toast(page)
        student.shot("04-jupyterlab")

        # the user and the group the provider said they are in
        info = stack.api("GET", "/users/student1").json()
        assert info["groups"] == ["cs101"], info
        # the provider's tokens are kept (JupyterHub stores auth state only encrypted), with
        # the key generated on first start on the hub's volume, readable by nobody else
        r = requests.get(f"{stack.hub_url}/hub/api/users/student1", verify=False, timeout=30,
                         headers={"Authorization": f"token {student.auth_state_token}"})
        state = r.json().get("auth_state") or {}
        assert state.get("access_token") and state["oauth_user"]["groups"] == ["cs101"], r.text
        code, out = stack.container("hub").exec_run(["stat", "-c", "%a", "/srv/jupyterhub/crypt-key"])
        assert code == 0 and out.decode().strip() == "600", out.decode()
        container = stack.user_container("student1")
        assert container is not None and container.status == "running"

        # a new notebook, one cell computed by the kernel
        page.locator('.jp-LauncherCard[data-category="Notebook"]').first.click()
        editor = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell .cm-content").first
        editor.wait_for(timeout=60_000)
        # the kernel must be up: a cell run before it is connected is silently not run
        page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=120_000)
        editor.click()
        page.keyboard.type("print(6*7*1000+1)")
        page.keyboard.press("Shift+Enter")
        output = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output").first
        output.wait_for(timeout=120_000)
        assert output.inner_text().strip() == "42001"
        student.shot("05-notebook")
        # the notebook is in the home folder, which is the user's own volume
        code, out = container.exec_run(["ls", stack.env.get("GPUHUB_NOTEBOOK_DIR", "/home/jovyan")])
        assert code == 0 and "Untitled.ipynb" in out.decode(), out.decode()

        # File -> Hub Control Panel -> Stop My Server
        page.locator(".lm-MenuBar-itemLabel", has_text="File").click()
        item = page.locator(".lm-Menu-itemLabel", has_text="Hub Control Panel")
        item.wait_for()
        student.shot("06-file-menu")
        with student.context.expect_page() as opened:
            item.click()
        hub = opened.value
        hub.wait_for_url("**/hub/home**")
        stop = hub.get_by_role("button", name="Stop My Server")
        stop.wait_for()
        # the button works once the page's scripts have run
        hub.wait_for_load_state("networkidle")
        student.shot("07-hub-control-panel", hub)
        stop.click()
        hub.get_by_text("Start My Server").wait_for(timeout=120_000)
        wait_for(lambda: "" not in stack.api("GET", "/users/student1").json()["servers"], 60,
                 "student1's server to stop")
        wait_for(lambda: stack.user_container("student1") is None, 60,
                 "student1's container to be removed")
        student.shot("08-server-stopped", hub)
        # the volume with the notebook stays
        assert stack.client.volumes.get(f"{stack.env['GPUHUB_VOLUME_PREFIX']}-student1")
    except Exception as e:
        raise AssertionError(f"{e}\n{student.diagnostics()}") from e
    student.publish()


def test_outsider_is_refused_and_gets_no_server(student):
    stack, page = student.stack, student.page
    try:
        responses = []
        page.on("response", lambda r: responses.append(r) if "/hub/oauth_callback" in r.url else None)
        sign_in_through_sso(student, "outsider")
        page.wait_for_url("**/hub/oauth_callback**")
        page.get_by_text(f"not allowed to use {LAB_NAME}").wait_for()
        assert [r.status for r in responses] == [403], [(r.url, r.status) for r in responses]
        student.shot("09-not-allowed")
        # no user, no server, no container
        assert stack.api("GET", "/users/outsider").status_code == 404
        assert stack.user_container("outsider") is None
        # and the hub stays shut: going back to it asks to sign in again
        page.goto(f"{student.url}/hub/home")
        page.wait_for_url("**/hub/login**")
    except Exception as e:
        raise AssertionError(f"{e}\n{student.diagnostics()}") from e
    student.publish()


def dismiss_news_toast(page):
    """JupyterLab asks once whether to fetch Jupyter news; answer no (it would go online)."""
    no = page.locator(".jp-toast-button", has_text="No")
    try:
        no.wait_for(timeout=8_000)
    except PlaywrightTimeout:
        return  # not asked this time
    no.click()
    no.wait_for(state="hidden")


@pytest.mark.parametrize("env, message", [
    ({}, ("nobody may log in with AUTH_PROVIDER=oidc: set GPUHUB_ALLOWED_USERS (user names), "
          "GPUHUB_ALLOWED_GROUPS (groups), or GPUHUB_ALLOW_ALL=true")),
    ({"GPUHUB_ALLOWED_GROUPS": "cs101"},
     "OIDC_ISSUER=http://127.0.0.1:9: cannot read http://127.0.0.1:9/.well-known/openid-configuration"),
], ids=["no-allow-rule", "issuer-unreachable"])
def test_hub_image_refuses_to_start_without_a_usable_login(browser_stack, env, message):
    """The hub image as built for this test: a login nobody could use stops it at once,
    with the variables to fix named."""
    image = f"gpuhub/hub:{browser_stack.stack.env['GPUHUB_VERSION']}"
    base = {"GPUHUB_DOMAIN": "hub.example.org", "GPUHUB_USER_IMAGE": "gpuhub/user:1",
            "AUTH_PROVIDER": "oidc", "OIDC_ISSUER": "http://127.0.0.1:9",
            "OAUTH_CLIENT_ID": "id", "OAUTH_CLIENT_SECRET": "secret", **env}
    args = [arg for k, v in base.items() for arg in ("-e", f"{k}={v}")]
    result = subprocess.run(["docker", "run", "--rm", "--network", "none", *args, image],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0, result.stdout + result.stderr
    assert message in result.stderr, result.stderr
