"""Sessions end when the student leaves, in a real browser against the test's OpenID
Connect provider (the stack, provider and browser of tests/e2e/test_browser_login.py):

- after *Log out*, *Sign in* asks for the password again (the provider's session ended
  through its end_session_endpoint, hub/logout.py);
- the hub cookie from before the logout, replayed with a plain HTTP client, is refused;
- a refused student switches account from the refusal page;
- `docker compose logs` holds no OAuth code, state or token value.
"""

import re

import pytest
import requests

from .test_browser_login import (browser_stack_options, ACCOUNTS, browser, browser_stack,  # noqa: F401 (fixtures)
                                 sign_in_through_sso, student)
from .stack import wait_for

pytestmark = pytest.mark.e2e

HUB_COOKIE = "jupyterhub-hub-login"


def hub_cookie(student):
    cookies = {c["name"]: c["value"] for c in student.context.cookies()}
    assert HUB_COOKIE in cookies, cookies.keys()
    return cookies[HUB_COOKIE]


def home_with_cookie(student, value):
    """GET /hub/home with only this cookie, as a plain HTTP client: the status code (200
    signed in; 302 to the login page refused)."""
    r = requests.get(f"{student.url}/hub/home", cookies={HUB_COOKIE: value}, verify=False,
                     allow_redirects=False, timeout=30)
    return r.status_code, r.headers.get("Location", "")


def signed_in_at_the_hub(student, user):
    page = student.page
    page.wait_for_url(lambda url: "/hub/spawn-pending/" in url or f"/user/{user}/" in url
                      or "/hub/home" in url, timeout=60_000)
    page.goto(f"{student.url}/hub/home")
    page.wait_for_url("**/hub/home**")


def confirm_sign_out_at_the_provider(student):
    page = student.page
    page.wait_for_url(f"{student.provider.issuer}/session/end**")
    page.click("#sign-out")
    page.wait_for_url("**/hub/login**")


def stop_server(stack, user):
    if stack.api("GET", f"/users/{user}").ok:
        stack.api("DELETE", f"/users/{user}/server")
        wait_for(lambda: "" not in stack.api("GET", f"/users/{user}").json()["servers"], 120,
                 f"{user}'s server to stop")


def test_logout_ends_the_provider_session_and_the_old_cookie(student):
    stack, page = student.stack, student.page
    try:
        sign_in_through_sso(student, "student1")
        signed_in_at_the_hub(student, "student1")
        old = hub_cookie(student)
        assert home_with_cookie(student, old)[0] == 200  # the cookie works while signed in

        page.goto(f"{student.url}/hub/logout")
        # the hub sends the browser to the provider's end-session endpoint, with the ID
        # token as a hint; the provider asks, then sends it back to the hub's login page
        confirm_sign_out_at_the_provider(student)
        student.shot("10-signed-out")

        # the cookie copied before the logout no longer signs anybody in
        status, location = home_with_cookie(student, old)
        assert status == 302 and "/hub/login" in location, (status, location)

        # Sign in: the provider asks for the password again (its session has ended)
        page.get_by_role("button", name="Sign in with single sign-on").click()
        page.wait_for_url(f"{student.provider.issuer}/interaction/**")
        page.locator("#password").wait_for()
        student.shot("11-sign-in-asks-again")
    except Exception as e:
        raise AssertionError(f"{e}\n{student.diagnostics()}") from e
    finally:
        stop_server(stack, "student1")


def test_a_refused_student_switches_account_from_the_refusal_page(student):
    stack, page = student.stack, student.page
    try:
        sign_in_through_sso(student, "outsider")
        page.wait_for_url("**/hub/oauth_callback**")
        page.get_by_text("not allowed to use").wait_for()
        switch = page.locator("#gpuhub-switch-account")
        assert switch.inner_text().strip() == "Sign in with another account"
        student.shot("12-refused-switch-account")
        switch.click()
        # the provider's session (outsider's) ends too, or it would sign outsider in again
        confirm_sign_out_at_the_provider(student)
        page.get_by_role("button", name="Sign in with single sign-on").click()
        page.wait_for_url(f"{student.provider.issuer}/interaction/**")
        page.fill("#login", "student1")
        page.fill("#password", ACCOUNTS["student1"]["password"])
        page.click("#sign-in")
        signed_in_at_the_hub(student, "student1")
        assert stack.api("GET", "/users/outsider").status_code == 404
    except Exception as e:
        raise AssertionError(f"{e}\n{student.diagnostics()}") from e
    finally:
        stop_server(stack, "student1")


SECRET_VALUE = re.compile(r"(?i)\b(code|state|[a-z_]*token)=(?!\[secret\])[^&\s\"'<>]+")


def test_compose_logs_hold_no_oauth_code_state_or_token(browser_stack):  # noqa: F811
    """Runs after the logins above (and the refused one, whose 403 warning used to print
    the callback's code and state)."""
    stack = browser_stack.stack
    logs = stack.compose("logs", "--no-color", timeout=120).stdout
    assert "oauth_callback" in logs, "the logins above should have left callback lines"
    leaks = [line for line in logs.splitlines() if SECRET_VALUE.search(line)]
    assert not leaks, "\n".join(leaks[:20])
