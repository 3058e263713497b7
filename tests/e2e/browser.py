"""What the browser tests share: the deployment that logs in through the test's OpenID
Connect provider (tests/e2e/oidc), the Chromium fixture, and a student at a browser.

The proxy: real Traefik where the `traefik:v3` image exists; elsewhere
configurable-http-proxy (tests/e2e/chp), JupyterHub's default proxy and a real one,
replaces the `proxy` service, and a file in `jupyterhub_config.d/` points the hub at it.
test_browser_login.py's docstring says what else differs from production (nothing)."""

import json
import os
import re
import secrets
import shutil
import subprocess
import time
from contextlib import contextmanager
from types import SimpleNamespace
from urllib.parse import urlparse

import pytest
import requests
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

from .stack import REPO, Stack, free_port, free_subnet, image_exists, traefik_image, wait_for

OIDC_DIR = REPO / "tests" / "e2e" / "oidc"
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
DOCS_IMAGES = REPO / "docs" / "images"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
NETWORK_CHANGED = "net::ERR_NETWORK_CHANGED"

CHP_CONFIG = """\
# written by the browser tests (tests/e2e/browser.py): no traefik:v3 image on this
# machine, so configurable-http-proxy (tests/e2e/chp) is the proxy. The only difference.
c.JupyterHub.proxy_class = "configurable-http-proxy"
c.ConfigurableHTTPProxy.should_start = False
c.ConfigurableHTTPProxy.api_url = "http://chp:8001"
# the API token is CONFIGPROXY_AUTH_TOKEN from .env, which ConfigurableHTTPProxy reads itself
"""
# single-origin: the browser reaches the hub on chp's port, plain HTTP on 127.0.0.1
CHP_SINGLE_ORIGIN = """\
c.JupyterHub.bind_url = {public_url!r}
# CHP here speaks plain HTTP on 127.0.0.1; the certificate was for Traefik
c.JupyterHub.ssl_cert = ""
c.JupyterHub.ssl_key = ""
"""


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
    """tests/e2e/oidc/provider.mjs as a child process of the test, with `accounts`
    ({name: {"password": ..., "groups": [...]}}, read when it starts)."""

    client_id = "gpuhub-e2e"

    def __init__(self, workdir, host, port, accounts):
        self.workdir, self.host, self.port, self.accounts = workdir, host, port, accounts
        self.issuer = f"http://{host}:{port}"
        self.client_secret = secrets.token_urlsafe(24)
        self.log = workdir / "oidc.log"
        self.process = None

    def start(self, redirect_uri):
        config = self.workdir / "oidc.json"
        config.write_text(json.dumps({
            "issuer": self.issuer, "host": self.host, "port": self.port, "accounts": self.accounts,
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


def add_service(stack, name, scopes, why):
    """A JupyterHub service with its own token and only `scopes`, in a config file the
    test writes into the stack's jupyterhub_config.d/ (before it starts); the token."""
    token = secrets.token_hex(16)
    (stack.dir / "jupyterhub_config.d" / f"91-{name}.py").write_text(
        f"# written by the browser tests: {why}\n"
        f"c.JupyterHub.services.append({{'name': {name!r}, 'api_token': {token!r}}})\n"
        f"c.JupyterHub.load_roles.append({{'name': {name!r}, 'services': [{name!r}], "
        f"'scopes': {scopes!r}}})\n")
    return token


@contextmanager
def oidc_deployment(tmp_path_factory, docker_client, name, accounts, env, prepare=None,
                    subdomains=False):
    """The deployment, logging in through the test's OpenID Connect provider (with
    `accounts`), built and started; `env` is added to the stack's .env and `prepare(stack)`
    runs before the build. Yields a namespace: stack, url (where the browser opens the
    hub), port (the public port), provider. With `subdomains` users' servers are on
    their own origin (GPUHUB_USER_SUBDOMAINS=true, HTTPS on the public port)."""
    install_provider()
    real_traefik = image_exists(docker_client, traefik_image())
    workdir = tmp_path_factory.mktemp(name)
    subnet = free_users_subnet(docker_client)
    provider = OidcProvider(workdir, str(subnet.network_address + 1), free_port(), accounts)
    port = free_port()
    settings = {"AUTH_PROVIDER": "oidc", "OIDC_ISSUER": provider.issuer,
                "OAUTH_CLIENT_ID": provider.client_id, "OAUTH_CLIENT_SECRET": provider.client_secret,
                "OIDC_SCOPES": "openid profile groups", "GPUHUB_E2E_USERS_SUBNET": str(subnet),
                # Chromium runs on the Docker host and drops requests in flight whenever an
                # interface comes or goes (steadily). The network pool makes its first 10
                # networks at the first spawn, for seconds, just while the first student's
                # JupyterLab loads (two CI failures). Here each server's network is made on
                # its spawn path; the pool has its own e2e tests (test_network_isolation.py)
                "GPUHUB_NETWORK_POOL": "0"}
    if subdomains:
        settings.update({"GPUHUB_USER_SUBDOMAINS": "true", "GPUHUB_HTTPS_PORT": str(port)})
    if not real_traefik:
        settings.update({"CONFIGPROXY_AUTH_TOKEN": secrets.token_hex(32),
                         "GPUHUB_E2E_CHP_PORT": str(port),
                         # chp is the proxy: it joins every server's network (hub/networks.py)
                         "GPUHUB_PROXY_SERVICES": "chp"})
        settings.update({"GPUHUB_E2E_CHP_ROUTING": "--host-routing"} if subdomains else
                        {"OAUTH_CALLBACK_URL": f"http://127.0.0.1:{port}/hub/oauth_callback"})
    stack = Stack(workdir / "repo", docker_client, name, real_traefik, {**settings, **env})
    stack.files += ["-f", "tests/e2e/oidc/compose.users-subnet.yml"]
    if real_traefik:
        url = stack.hub_url  # https://localhost:<GPUHUB_HTTPS_PORT>, through Traefik
        print("\nproxy: real Traefik, docker-compose.yml as users run it")
    else:
        stack.files += ["-f", "tests/e2e/chp/compose.chp.yml"]
        chp_config = CHP_CONFIG
        if subdomains:  # on the public port with the hub's certificate, routing by host
            url = f"https://localhost:{port}"
            stack.files += ["-f", "tests/e2e/chp/compose.chp-subdomains.yml"]
        else:
            url = f"http://127.0.0.1:{port}"
            chp_config += CHP_SINGLE_ORIGIN.format(public_url=url + "/")
        (stack.dir / "jupyterhub_config.d" / "95-e2e-chp.py").write_text(chp_config)
        print("\nNOTE: no traefik:v3 image on this machine: configurable-http-proxy "
              "(tests/e2e/chp) replaces the proxy service. That is the only difference "
              "from docker-compose.yml.")
    print(f"browser: {url}; identity provider: {provider.issuer}")
    if prepare:
        prepare(stack)
    started = time.monotonic()
    try:
        stack.compose("build")
        print(f"images built in {time.monotonic() - started:.0f}s")
        # creates the users network: the provider listens on its gateway address
        stack.create()
        provider.start(f"{url}/hub/oauth_callback")
        stack.compose("up", "-d")
        stack.wait_healthy()
        print(f"stack up in {time.monotonic() - started:.0f}s")
        yield SimpleNamespace(stack=stack, url=url, port=port, provider=provider)
    finally:
        provider.stop()
        stack.down()


# new interfaces get no IPv6 address while set (the kernel's default for them)
NEW_INTERFACES_IPV6_OFF = "/proc/sys/net/ipv6/conf/default/disable_ipv6"


@contextmanager
def no_ipv6_on_new_interfaces():
    """While browsers run: Chromium, on the Docker host, aborts requests in flight
    (ERR_NETWORK_CHANGED) at every change of the host's addresses, and every bridge and
    veth Docker makes gets an IPv6 link-local address, also the servers' networks that
    have no IPv4 one (hub/networks.py). Measured here: a server network and a container
    on it made 8 address events on the host, none with this. Restored afterwards; where
    it cannot be set, the browser steps' retries (steadily) are all there is."""
    try:
        with open(NEW_INTERFACES_IPV6_OFF) as f:
            before = f.read().strip()
        with open(NEW_INTERFACES_IPV6_OFF, "w") as f:
            f.write("1")
    except OSError as e:
        print(f"\nnew interfaces keep IPv6 ({e}): browser steps may need their retries")
        before = None
    try:
        yield
    finally:
        if before is not None:
            with open(NEW_INTERFACES_IPV6_OFF, "w") as f:
                f.write(before)


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/setup does)")
    with no_ipv6_on_new_interfaces(), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


class Student:
    """One person at one browser: a fresh context (no cookies), screenshots per step, and
    no way out to the internet (requests to other hosts are blocked and recorded), nor
    to other hosts than `also` allows (a callable taking the host name)."""

    def __init__(self, browser, deployment, also=None):
        self.stack, self.url, self.provider = deployment.stack, deployment.url, deployment.provider
        self.auth_state_token = getattr(deployment, "auth_state_token", None)
        self.context = browser.new_context(viewport={"width": 1100, "height": 680},
                                           ignore_https_errors=True)
        self.context.set_default_timeout(30_000)
        allowed = {"127.0.0.1", "localhost", urlparse(self.provider.issuer).hostname}
        self.blocked = []

        def guard(route):
            host = urlparse(route.request.url).hostname or ""
            if host in allowed or (also and also(host)):
                route.continue_()
            else:
                self.blocked.append(route.request.url)
                route.abort()
        self.context.route("**/*", guard)
        self.failed = []
        self.context.on("requestfailed", lambda r: self.failed.append(f"{r.url}: {r.failure}"))
        self.page = self.context.new_page()
        # JupyterLab asks whether to restart the server when a request of its failed, as
        # when Chromium dropped it on a network change (steadily) or a status poll timed
        # out on this busy machine; the question would block the next click. Where the hub
        # says the server is up, answer it as a student would: Dismiss.
        self.page.add_locator_handler(
            self.page.locator(".jp-Dialog", has_text="Server unavailable"), self._server_unavailable)
        self.shots = []

    def _server_unavailable(self, question):
        user = re.search(r"/user/([^/?#]+)/", self.page.url)
        if user:
            wait_for(lambda: self.stack.api("GET", f"/users/{user[1]}").json()["servers"][""]["ready"],
                     60, f"{user[1]}'s server to be reported ready")
        print("\nJupyterLab asked whether to restart the server (a request of its failed); dismissed")
        question.get_by_role("button", name="Dismiss").click()

    def shot(self, name, page=None):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"students-{name}.png"
        (page or self.page).screenshot(path=str(path))
        self.shots.append(path)

    def diagnostics(self):
        """What went wrong, for the failure message: the page (and a screenshot of it),
        the failed requests, the hub's, the proxy's, the user server's and the provider's logs."""
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
                f"blocked requests: {self.blocked}\nfailed requests: {self.failed[-20:]}\n"
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


class NetworkChanged(Exception):
    pass


def steadily(student, action, what, attempts=5, strict=True):
    """Run a browser step again when Chromium dropped requests because the host's network
    changed: Docker adds a network interface for every container it starts (on this shared
    engine, other runs' too), and Chromium then aborts requests in flight with
    ERR_NETWORK_CHANGED. Any other failure fails at once. `action(attempt)` gets 0, 1, ...
    `strict`: a step that passed is made again too if a request of it was dropped (a page
    loaded so may lack a part, a dropped request may look like a refusal); else, where
    the step's result shows it worked, a passed step stands."""
    for attempt in range(attempts):
        mark = len(student.failed)
        try:
            result = action(attempt)
            if strict and any(NETWORK_CHANGED in f for f in student.failed[mark:]):
                raise NetworkChanged(student.failed[mark:])
            return result
        except Exception as e:
            # a dropped request of this step, or a navigation it waits for that was dropped
            # before (Playwright then raises with Chromium's error). A navigation that
            # lands on Chromium's error page may be raised before its failed request is
            # reported: let the browser's events in first
            if "chrome-error://" in str(e):
                student.page.wait_for_timeout(1000)
            changed = NETWORK_CHANGED in str(e) or any(NETWORK_CHANGED in f
                                                       for f in student.failed[mark:])
            if attempt + 1 == attempts or not changed:
                raise
            print(f"\n{what}: Chromium saw the network change (a container started); again")


def goto(student, url, page=None):
    """page.goto, again where the network changed under Chromium (steadily)."""
    return steadily(student, lambda attempt: (page or student.page).goto(url), f"opening {url}")


def open_lab(student, user, origin=None):
    """After signing in, the hub starts the server and its spawn page sends the browser on
    to JupyterLab (at `origin`, by default the hub's); where Chromium dropped that because
    the new container changed the host's network, the test opens JupyterLab again, as a
    student whose page stalls reloads it."""
    wait_for(lambda: student.stack.api("GET", f"/users/{user}").json()["servers"].get("", {}).get("ready"),
             240, f"{user}'s server to be ready")
    url = f"{origin or student.url}/user/{user}/lab"

    def arrive(attempt):
        if attempt:
            student.page.goto(url + "?reset")  # JupyterLab with the launcher, no tabs restored
        student.page.wait_for_url(url + "**", timeout=60_000)
        student.page.locator(".jp-LauncherCard").first.wait_for(timeout=120_000)
    steadily(student, arrive, f"{user}'s JupyterLab")
    dismiss_news_toast(student.page)


def run_a_cell(student, code):
    """A new notebook from the JupyterLab launcher, one cell run by the kernel; its output.
    Where the network changed under Chromium (steadily), JupyterLab is opened afresh and
    the step made again, in another new notebook."""
    page = student.page

    def run(attempt):
        if attempt:
            page.goto(page.url.split("/lab")[0] + "/lab?reset")
            page.locator(".jp-LauncherCard").first.wait_for(timeout=120_000)
        page.locator('.jp-LauncherCard[data-category="Notebook"]').first.click()
        editor = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell .cm-content").first
        editor.wait_for(timeout=60_000)
        # the kernel must be up: a cell run before it is connected is silently not run
        page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=120_000)
        editor.click()
        page.keyboard.type(code)
        page.keyboard.press("Shift+Enter")
        output = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output").first
        output.wait_for(timeout=120_000)
        return output.inner_text().strip()
    return steadily(student, run, "the notebook", strict=False)


def dismiss_news_toast(page):
    """JupyterLab asks once whether to fetch Jupyter news; answer no (it would go online)."""
    no = page.locator(".jp-toast-button", has_text="No")
    try:
        no.wait_for(timeout=8_000)
    except PlaywrightTimeout:
        return  # not asked this time
    no.click()
    no.wait_for(state="hidden")
