"""Hostile user names against the running deployment, through what a student and an admin
use: the REST API (an admin creating users) and the dummy provider's login form. Each name
is refused (400 from the API, the refusal page at login) or gets a server with its own
container and volume; the routes file holds only plain /user/<name>/ prefixes; the hub
stays healthy. Also: a copied .env.example starts no hub.

The stack is the shared `stack` fixture (hub image, user image, DockerSpawner, the routes
file jupyterhub-traefik-proxy writes through hub/proxy.py; Traefik's API is the stand-in).
"""

import re
import subprocess
from urllib.parse import quote

import pytest
import requests

from hub import names

from ..test_proxy_routes import matchers
from .stack import DUMMY_PASSWORD, REPO, wait_for

pytestmark = pytest.mark.e2e

# refused by the default GPUHUB_USERNAME_PATTERN, wherever they come from
HOSTILE = [
    # rule syntax: each of these would add a matcher to the Traefik rule
    "x`) || PathPrefix(`/", "x`)||Host(`evil", 'x") || PathPrefix("/', "x' || Path('/", "x(y)",
    "x`", "x%60", "x%2560", "x&&y", "x||y", "x!y", "x,y",
    # templates: DockerSpawner renders str.format into labels and names
    "{username}", "{0}", "x{", "x}", "{raw_username}x",
    # control characters, invisible and direction-changing characters
    "\x05a", "a\x00", "a\n", "a\r\nb", "a\tb", "a\x7f", "a\u200bb", "a\u202eb", "a\ufeff",
    # look-alikes NFKC does not fold: Cyrillic а, Greek ο, Turkish dotless ı
    "\u0430da", "b\u03bfb", "al\u0131ce",
    # shapes the pattern excludes
    "", "-ada", ".ada", "_ada", "@ada", "..", "a b", " ada", "ada ", "a;b", "a:b", "a#b",
    "a?b", "a*b", "a$b", "a|b", "<b>", "a=b", "a+b", "a~b", "a\\b", "é", "straße", "a\U0001f600",
    # too long
    "a" * 65, "b" * 1000,
]
# names differing from others only in case or in escaped form: allowed, each its own server
ALLOWED = ["e.", "e-2e", "e-", "e-2d", "e_5f", "e@x.example"]
# NFKC and lower case make these one of the ALLOWED-style names at login; the API, which
# does not normalise, refuses them
NORMALISED = {"ＥＶＥ": "eve", "Eve": "eve", "EVE": "eve", "ﬁ": "fi"}


def url_part(name):
    return quote(name, safe="")


def no_server_errors(responses):
    errors = [(name, r.status_code, r.text[:200]) for name, r in responses if r.status_code >= 500]
    assert not errors, f"server errors: {errors}"


def test_at_least_forty_hostile_names():
    assert len(set(HOSTILE)) >= 40
    assert not any(names.valid_username(n) for n in HOSTILE)
    assert all(names.valid_username(n) for n in ALLOWED)


def test_hostile_names_through_the_rest_api(stack):
    responses = []
    try:
        for name in HOSTILE + list(NORMALISED):
            r = stack.api("POST", f"/users/{url_part(name)}")
            responses.append((name, r))
        no_server_errors(responses)
        wrong = [(n, r.status_code, r.text[:160]) for n, r in responses
                 if r.status_code != 400 and not (r.status_code in (404, 405) and name_has_no_route(n))]
        assert not wrong, f"not refused with 400: {wrong}"
        listed = {u["name"] for u in stack.api("GET", "/users").json()}
        assert not listed & set(HOSTILE + list(NORMALISED)), listed
        # the bulk endpoint refuses them too
        r = stack.api("POST", "/users", json={"usernames": ["x`) || PathPrefix(`/", "ok1"]})
        assert r.status_code == 400, r.text
        assert stack.api("GET", "/users/ok1").status_code == 404
    finally:
        for name, r in responses:
            if r.status_code == 201:
                stack.api("DELETE", f"/users/{url_part(name)}")


def name_has_no_route(name):
    """Names that no URL of the API can carry (an empty one, '..': the URL becomes
    /users/): 404 or 405 is the refusal."""
    return name in ("", "..")


def test_allowed_names_get_their_own_container_and_volume_and_plain_routes(stack):
    volume_prefix = stack.env["GPUHUB_VOLUME_PREFIX"]
    try:
        for name in ALLOWED:
            assert stack.api("POST", f"/users/{url_part(name)}").status_code == 201, name
            stack.start_server(url_part(name))
        containers, volumes = {}, {}
        for name in ALLOWED:
            part = names.docker_name_part(name)
            container = stack.client.containers.get(f"{stack.prefix}-{part}")
            assert container.status == "running", name
            assert container.labels["org.gpuhub.user"] == name
            containers[name] = container.id
            mounts = [m["Name"] for m in container.attrs["Mounts"] if m["Type"] == "volume"]
            assert mounts == [f"{volume_prefix}-{part}"], (name, mounts)
            volumes[name] = mounts[0]
        assert len(set(containers.values())) == len(ALLOWED), containers
        assert len(set(volumes.values())) == len(ALLOWED), volumes

        # every route the hub wrote is a plain prefix: / for the hub, /user/<name>/ per server
        routes = stack.routes_file()["http"]["routers"]
        prefixes = set()
        for router in routes.values():
            if router["service"] == "api@internal":
                continue
            found = matchers(router["rule"])
            kinds = [m[0] for m in found]
            assert kinds in (["PathPrefix"], ["PathPrefix", "Path"]), router["rule"]
            prefixes.add(found[0][1][0])
        users = {p for p in prefixes if p != "/"}
        assert users == {f"/user/{n}/" for n in ALLOWED}, prefixes
        assert all(re.fullmatch(r"/user/[a-z0-9._@-]+/", p) for p in users)
    finally:
        for name in ALLOWED:
            stack.api("DELETE", f"/users/{url_part(name)}/server")
        for name in ALLOWED:
            wait_for(lambda n=name: stack.api("DELETE", f"/users/{url_part(n)}").status_code
                     in (204, 404), 120, f"{name!r} to be deleted")
        for name in ALLOWED:
            volume = f"{volume_prefix}-{names.docker_name_part(name)}"
            try:
                stack.client.volumes.get(volume).remove(force=True)
            except Exception:
                pass
    assert stack.api("GET", "/").ok


def login(stack, name):
    """The dummy provider's login form, as a browser submits it."""
    session = requests.Session()
    session.verify = False
    page = session.get(f"{stack.hub_url}/hub/login", timeout=30)
    assert page.ok and 'id="gpuhub-dev-login"' in page.text, page.text[:500]
    xsrf = session.cookies.get("_xsrf")
    r = session.post(f"{stack.hub_url}/hub/login", allow_redirects=False, timeout=30,
                     data={"username": name, "password": DUMMY_PASSWORD, "_xsrf": xsrf})
    return session, r


# what tornado's get_argument does to every form field before the hub sees it: control
# characters other than \t \n \r removed, then (JupyterHub) surrounding white space
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f]")


def as_submitted(name):
    return _CONTROL.sub("", name).strip()


def test_hostile_names_through_the_login_form(stack):
    responses, signed_in = [], {}
    try:
        for name in HOSTILE:
            session, r = login(stack, name)
            responses.append((name, r))
            if r.status_code == 302:
                who = session.get(f"{stack.hub_url}/hub/api/user", timeout=30)
                signed_in[name] = who.json()["name"] if who.ok else who.status_code
        no_server_errors(responses)
        wrong = [(n, r.status_code) for n, r in responses
                 if n not in signed_in and (r.status_code != 403 or "cannot be used on" not in r.text)]
        assert not wrong, f"not refused with the refusal page: {wrong}"
        # a name the form itself cleans (control characters, spaces around it) arrives as
        # the clean name; only a valid one signs in, and it is exactly the cleaned name
        assert all(names.valid_username(user) and user == names.normalize(as_submitted(n))
                   for n, user in signed_in.items()), signed_in
        assert set(signed_in) <= {n for n in HOSTILE if as_submitted(n) != n}, signed_in
    finally:
        for user in set(signed_in.values()):
            stack.api("DELETE", f"/users/{url_part(str(user))}")
    # what the page says: what is allowed and whom to ask
    text = responses[0][1].text
    assert "lower-case letters a-z, digits 0-9" in text and "hub&#39;s administrators" in text
    listed = {u["name"] for u in stack.api("GET", "/users").json()}
    assert not listed & set(HOSTILE)
    assert stack.api("GET", "/").ok


def test_names_differing_only_in_case_or_width_are_one_user_at_login(stack):
    try:
        for raw, normal in NORMALISED.items():
            session, r = login(stack, raw)
            assert r.status_code == 302, (raw, r.status_code, r.text[:300])
            who = session.get(f"{stack.hub_url}/hub/api/user", timeout=30,
                              headers={"Referer": f"{stack.hub_url}/hub/home"})
            assert who.ok and who.json()["name"] == normal, (raw, who.status_code, who.text[:200])
        listed = {u["name"] for u in stack.api("GET", "/users").json()}
        assert {"eve", "fi"} <= listed and not listed & set(NORMALISED)
    finally:
        for name in set(NORMALISED.values()):
            stack.api("DELETE", f"/users/{name}")


def test_a_dummy_password_that_is_too_short_is_refused(stack):
    image = f"gpuhub/hub:{stack.env['GPUHUB_VERSION']}"
    env = {"GPUHUB_DOMAIN": "hub.example.org", "GPUHUB_USER_IMAGE": "gpuhub/user:1",
           "AUTH_PROVIDER": "dummy", "GPUHUB_DUMMY_PASSWORD": "e2e-password"}
    args = [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
    result = subprocess.run(["docker", "run", "--rm", "--network", "none", *args, image],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "GPUHUB_DUMMY_PASSWORD must have at least 16 characters" in result.stderr, result.stderr
    assert "e2e-password" not in result.stderr


def test_a_copied_env_example_starts_no_hub_and_names_auth_provider(stack, tmp_path):
    """.env.example copied as it is, given to the hub image the way compose gives it .env."""
    env_file = tmp_path / ".env"
    env_file.write_text((REPO / ".env.example").read_text())
    image = f"gpuhub/hub:{stack.env['GPUHUB_VERSION']}"
    result = subprocess.run(["docker", "run", "--rm", "--network", "none", "--env-file",
                             str(env_file), image], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "AUTH_PROVIDER is not set: github, gitlab, google, oidc; or dummy" in result.stderr, \
        result.stderr


def test_a_missing_image_without_a_registry_is_an_error_not_a_pull(stack):
    """The user image, untagged for a moment (another tag keeps it): a spawn fails naming
    the image and `make images`; DockerSpawner would have tried Docker Hub instead."""
    image = stack.env["GPUHUB_USER_IMAGE"]  # e.g. gpuhube2e/user:e2e, no registry host
    repository, tag = image.rsplit(":", 1)
    keep = f"{tag}-kept-by-test-names"
    stack.client.images.get(image).tag(repository, keep)
    user = "noimage"
    try:
        stack.client.images.remove(image)  # only the tag goes: `keep` still names it
        assert stack.api("POST", f"/users/{user}").status_code == 201
        r = stack.api("POST", f"/users/{user}/server")

        def failed():
            server = stack.api("GET", f"/users/{user}").json()["servers"].get("")
            return r.status_code >= 400 or not server
        wait_for(failed, 120, "the spawn without an image to fail")
        wait_for(lambda: "make images" in stack.logs("hub"), 30, "the hub to log why")
        line = next(line for line in stack.logs("hub").splitlines() if "make images" in line)
        assert f"The image {image} is not on this host" in line, line
        assert f"pulling image {image}" not in stack.logs("hub")  # DockerSpawner's pull
        assert stack.user_container(user) is None
    finally:
        stack.client.images.get(f"{repository}:{keep}").tag(repository, tag)
        stack.client.images.remove(f"{repository}:{keep}")
        stack.api("DELETE", f"/users/{user}")
