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

import secrets
import subprocess

import pytest
import requests

from .browser import (SCREENSHOTS, Student, browser,  # noqa: F401 (the Chromium fixture)
                      add_service, goto, oidc_deployment, open_lab, run_a_cell)
from .stack import wait_for

pytestmark = pytest.mark.e2e

LAB_NAME = "Lovelace GPU Lab"
ACCOUNTS = {"student1": {"password": secrets.token_urlsafe(12), "groups": ["cs101"]},
            "outsider": {"password": secrets.token_urlsafe(12), "groups": ["other"]}}


@pytest.fixture(scope="module")
def browser_stack_options():
    """What a test module that imports browser_stack adds: {"env": {...}, "prepare":
    callable(stack) run before the build (e.g. to write a catalog)}. Override it there."""
    return {"env": {}, "prepare": None}


@pytest.fixture(scope="module")
def browser_stack(tmp_path_factory, docker_client, standin_bases, browser_stack_options):
    """The deployment, logging in through the test's OpenID Connect provider."""
    env = {"GPUHUB_ALLOWED_GROUPS": "cs101", "GPUHUB_LAB_NAME": LAB_NAME,
           # a hub image tag of our own: other e2e runs on this engine build gpuhub/hub:e2e
           "GPUHUB_VERSION": "browser", **browser_stack_options["env"]}
    tokens = {}

    def prepare(stack):
        if browser_stack_options["prepare"]:
            browser_stack_options["prepare"](stack)
        tokens["auth_state"] = add_service(stack, "e2e-auth-state", ["read:users", "admin:auth_state"],
                                           "a token that may read users' auth state")

    for old in SCREENSHOTS.glob("students-*.png"):
        old.unlink()  # the artifacts show this run only
    with oidc_deployment(tmp_path_factory, docker_client, "gpuhubbrowser", ACCOUNTS, env,
                         prepare) as deployment:
        warnings = [line for line in deployment.stack.logs("hub").splitlines()
                    if line.startswith(("[W", "[E"))]
        print("hub warnings at start-up:" + "".join(f"\n  {w}" for w in warnings) if warnings
              else "hub: no warnings at start-up")
        deployment.auth_state_token = tokens["auth_state"]
        yield deployment


@pytest.fixture
def student(browser, browser_stack):  # noqa: F811
    s = Student(browser, browser_stack)
    yield s
    s.close()


def sign_in_through_sso(student, user):
    """Open the hub, check the lab's name, go to the provider, sign in."""
    page = student.page
    goto(student, f"{student.url}/")
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
        open_lab(student, "student1")
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
        assert run_a_cell(student, "print(6*7*1000+1)") == "42001"
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
        goto(student, f"{student.url}/hub/home")
        page.wait_for_url("**/hub/login**")
    except Exception as e:
        raise AssertionError(f"{e}\n{student.diagnostics()}") from e
    student.publish()


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
