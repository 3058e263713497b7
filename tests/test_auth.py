"""Logins: the configuration each AUTH_PROVIDER produces, refusals that name the
variables to set, OIDC discovery, and the key that encrypts login tokens."""

import asyncio
import importlib
import json
import logging
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PrefixLoader
from jupyterhub._data import DATA_FILES_PATH
from traitlets.config import Config

from hub import auth, config, settings

LOG = logging.getLogger("test")
BASE = {"GPUHUB_DOMAIN": "hub.example.edu", "GPUHUB_USER_IMAGE": "gpuhub/tensorflow-2.9-gpu:1",
        "OAUTH_CLIENT_ID": "client-id", "OAUTH_CLIENT_SECRET": "client-secret"}
METADATA = {"issuer": "https://sso.example.edu/realms/lab",
            "authorization_endpoint": "https://sso.example.edu/realms/lab/auth",
            "token_endpoint": "https://sso.example.edu/realms/lab/token",
            "userinfo_endpoint": "https://sso.example.edu/realms/lab/userinfo"}


def load(tmp_path, **env):
    return settings.load({**BASE, "GPUHUB_STATE_DIR": str(tmp_path / "state"), **env})


def configure(s, metadata=METADATA):
    c = Config()
    auth.configure(c, s, LOG, discover=lambda issuer, log: metadata)
    return c


def test_github_organisations_and_teams(tmp_path):
    s = load(tmp_path, AUTH_PROVIDER="github", GPUHUB_ALLOWED_GROUPS="ml-lab, ml-lab:cs101",
             GPUHUB_ADMIN_GROUPS="ML-Lab:Staff", GPUHUB_ADMIN_USERS="ada")
    c = configure(s)
    assert c.JupyterHub.authenticator_class == auth.AUTHENTICATOR_NAMES["github"]
    gh = c.GitHubOAuthenticator
    assert gh.allowed_organizations == {"ml-lab", "ml-lab:cs101"}
    assert gh.admin_groups == {"ml-lab:staff"}
    assert "read:org" in gh.scope and gh.populate_teams_in_auth_state
    assert c.Authenticator.manage_groups and c.Authenticator.admin_users == {"ada"}
    assert c.OAuthenticator.client_id == "client-id"
    assert c.OAuthenticator.oauth_callback_url == "https://hub.example.edu/hub/oauth_callback"
    assert "not allowed to use GPU Hub" in c.OAuthenticator.custom_403_message
    # groups synced into JupyterHub: each team's org and org:team, in lower case
    teams = [{"slug": "Staff", "organization": {"login": "ML-Lab"}},
             {"slug": "cs101", "organization": {"login": "ml-lab"}}]
    assert gh.auth_state_groups_key({"teams": teams}) == ["ml-lab", "ml-lab:cs101", "ml-lab:staff"]
    assert gh.auth_state_groups_key({}) == []


def test_gitlab_groups_from_userinfo(tmp_path):
    s = load(tmp_path, AUTH_PROVIDER="gitlab", GITLAB_URL="https://git.example.edu/",
             GPUHUB_ALLOWED_GROUPS="teaching/cs101", GPUHUB_ADMIN_GROUPS="teaching/staff")
    c = configure(s)
    gl = c.GitLabOAuthenticator
    assert c.JupyterHub.authenticator_class == auth.AUTHENTICATOR_NAMES["gitlab"]
    assert gl.gitlab_url == "https://git.example.edu"
    assert gl.allowed_groups == {"teaching/cs101"} and gl.admin_groups == {"teaching/staff"}
    assert gl.auth_state_groups_key == "gitlab_groups" and "openid" in gl.scope

    class FakeGitLab:
        gitlab_url, validate_server_cert = "https://git.example.edu", True

        async def httpfetch(self, url, label, **kwargs):
            self.asked = (url, kwargs["headers"]["Authorization"])
            return {"sub": "7", "groups": ["teaching", "teaching/cs101"]}

    fake = FakeGitLab()
    state = asyncio.run(gl.modify_auth_state_hook(fake, {"access_token": "tok"}))
    assert state["gitlab_groups"] == ["teaching", "teaching/cs101"]
    assert fake.asked == ("https://git.example.edu/oauth/userinfo", "Bearer tok")


def test_google_hosted_domain_and_allow_all(tmp_path):
    s = load(tmp_path, AUTH_PROVIDER="google", GOOGLE_HOSTED_DOMAIN="uni.example.edu",
             GPUHUB_ALLOW_ALL="true")
    c = configure(s)
    assert c.JupyterHub.authenticator_class == auth.AUTHENTICATOR_NAMES["google"]
    assert c.GoogleOAuthenticator.hosted_domain == ["uni.example.edu"]
    assert c.Authenticator.allow_all is True
    # no group source without a Workspace service account: groups stay the hub's own
    assert c.Authenticator.manage_groups is False


def test_google_refuses_groups_naming_them(tmp_path):
    s = load(tmp_path, AUTH_PROVIDER="google", GPUHUB_ALLOWED_GROUPS="cs101",
             GPUHUB_ADMIN_GROUPS="staff", GPUHUB_ALLOWED_USERS="ada@uni.example.edu")
    with pytest.raises(settings.SettingsError) as e:
        configure(s)
    assert "GPUHUB_ALLOWED_GROUPS does not work with AUTH_PROVIDER=google" in str(e.value)
    assert "GPUHUB_ADMIN_GROUPS does not work" in str(e.value)


def test_oidc_endpoints_claims_and_groups(tmp_path):
    s = load(tmp_path, AUTH_PROVIDER="oidc", OIDC_ISSUER="https://sso.example.edu/realms/lab",
             GPUHUB_ALLOWED_GROUPS="cs101", GPUHUB_ADMIN_GROUPS="staff",
             OIDC_GROUPS_CLAIM="realm_access.roles", OIDC_SCOPES="openid profile roles",
             OAUTH_CALLBACK_URL="https://hub.example.edu:8443/hub/oauth_callback")
    c = configure(s)
    g = c.GenericOAuthenticator
    assert c.JupyterHub.authenticator_class == "hub.authenticators.GpuhubGenericOAuthenticator"
    assert (g.authorize_url, g.token_url, g.userdata_url) == (
        METADATA["authorization_endpoint"], METADATA["token_endpoint"], METADATA["userinfo_endpoint"])
    assert g.username_claim == "preferred_username"
    assert g.scope == ["openid", "profile", "roles"]
    assert g.auth_state_groups_key == "oauth_user.realm_access.roles"
    assert g.allowed_groups == {"cs101"} and g.admin_groups == {"staff"}
    assert c.Authenticator.manage_groups and c.Authenticator.enable_auth_state
    assert c.OAuthenticator.oauth_callback_url == "https://hub.example.edu:8443/hub/oauth_callback"


def test_oidc_without_userinfo_reads_the_id_token(tmp_path):
    s = load(tmp_path, AUTH_PROVIDER="oidc", OIDC_ISSUER=METADATA["issuer"], GPUHUB_ALLOW_ALL="1")
    meta = {k: v for k, v in METADATA.items() if k != "userinfo_endpoint"}
    g = configure(s, meta).GenericOAuthenticator
    assert g.userdata_from_id_token is True and "userdata_url" not in g


@pytest.mark.parametrize("provider", ["github", "gitlab", "oidc"])
def test_no_allow_rule_refuses_to_start_naming_the_variables(tmp_path, provider):
    s = load(tmp_path, AUTH_PROVIDER=provider, OIDC_ISSUER=METADATA["issuer"],
             GPUHUB_ADMIN_USERS="ada", GPUHUB_ADMIN_GROUPS="staff")
    with pytest.raises(settings.SettingsError) as e:
        configure(s)
    message = str(e.value)
    assert f"nobody may log in with AUTH_PROVIDER={provider}" in message
    for name in ("GPUHUB_ALLOWED_USERS", "GPUHUB_ALLOWED_GROUPS", "GPUHUB_ALLOW_ALL=true"):
        assert name in message, message


def test_missing_client_and_issuer_are_all_named(tmp_path):
    s = settings.load({**BASE, "AUTH_PROVIDER": "oidc", "OAUTH_CLIENT_ID": "",
                       "OAUTH_CLIENT_SECRET": "", "GPUHUB_ALLOWED_USERS": "ada"})
    with pytest.raises(settings.SettingsError) as e:
        configure(s)
    assert [p.split(" ")[0] for p in e.value.problems] == [
        "OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET", "OIDC_ISSUER"]


def test_dummy_needs_no_allow_rule_and_keeps_its_warning(tmp_path):
    c = configure(load(tmp_path, AUTH_PROVIDER="dummy", OAUTH_CLIENT_ID="",
                       GPUHUB_DUMMY_PASSWORD="a" * 16))
    assert c.JupyterHub.authenticator_class == auth.DUMMY_CLASS and c.Authenticator.allow_all is True
    assert "enable_auth_state" not in c.Authenticator
    assert c.JupyterHub.template_paths == [auth.TEMPLATES]


@pytest.fixture
def issuer():
    """A real HTTP server on 127.0.0.1 serving whatever metadata the test puts in it."""
    served = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = served.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write((body or "").encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/realms/lab"
    yield url, lambda body: served.__setitem__("/realms/lab/.well-known/openid-configuration", body)
    server.shutdown()
    server.server_close()


def test_discovery_reads_the_issuers_metadata(issuer):
    url, serve = issuer
    serve(json.dumps({**METADATA, "issuer": url}))
    assert auth.discover_oidc(url, LOG)["token_endpoint"] == METADATA["token_endpoint"]


@pytest.mark.parametrize("body, expected", [
    (None, "cannot read"),
    ("<html>login</html>", "is not JSON metadata"),
    (json.dumps({"issuer": "x"}), "lacks authorization_endpoint, token_endpoint"),
    (json.dumps(METADATA), "the provider calls itself 'https://sso.example.edu/realms/lab'"),
])
def test_bad_issuer_stops_the_hub_naming_oidc_issuer(issuer, body, expected):
    url, serve = issuer
    if body is not None:
        serve(body)
    waits = []
    with pytest.raises(settings.SettingsError) as e:
        auth.discover_oidc(url, LOG, sleep=waits.append)
    assert f"OIDC_ISSUER={url}" in str(e.value) and expected in str(e.value), str(e.value)
    assert waits == ([2, 2] if body is None else []), "retries only while unreadable"


def test_crypt_key_generated_once_and_reused(tmp_path):
    s = load(tmp_path, AUTH_PROVIDER="oidc", OIDC_ISSUER=METADATA["issuer"], GPUHUB_ALLOW_ALL="1")
    first = configure(s).CryptKeeper["keys"]
    path = tmp_path / "state" / "crypt-key"
    assert len(first) == 1 and len(bytes.fromhex(first[0])) == 32
    assert path.read_text().strip() == first[0]
    assert path.stat().st_mode & 0o777 == 0o600
    assert configure(s).CryptKeeper["keys"] == first, "the same key after a restart"


def test_crypt_key_from_the_environment(tmp_path):
    keys = "ab" * 32 + ";" + "cd" * 32
    s = load(tmp_path, AUTH_PROVIDER="github", GPUHUB_ALLOW_ALL="1", JUPYTERHUB_CRYPT_KEY=keys)
    assert configure(s).CryptKeeper["keys"] == ["ab" * 32, "cd" * 32]
    assert not (tmp_path / "state" / "crypt-key").exists()
    s = load(tmp_path, AUTH_PROVIDER="github", GPUHUB_ALLOW_ALL="1", JUPYTERHUB_CRYPT_KEY="hunter2")
    with pytest.raises(settings.SettingsError) as e:
        configure(s)
    assert "JUPYTERHUB_CRYPT_KEY is not valid" in str(e.value) and "hunter2" not in str(e.value)


@pytest.mark.parametrize("provider", ["github", "gitlab", "google", "oidc"])
def test_real_authenticator_classes_accept_the_configuration(tmp_path, provider):
    """The trait names exist in oauthenticator 17 and pass its own checks (e.g. that
    group options need manage_groups)."""
    pytest.importorskip("oauthenticator", minversion="17")
    s = load(tmp_path, AUTH_PROVIDER=provider, OIDC_ISSUER=METADATA["issuer"],
             GPUHUB_ALLOWED_USERS="ada", GPUHUB_ALLOWED_GROUPS="" if provider == "google" else "cs101",
             GPUHUB_ADMIN_GROUPS="" if provider == "google" else "staff")
    c = configure(s)
    module, name = auth.AUTHENTICATOR_NAMES[provider].rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    authenticator = cls(config=c)
    for key in auth.provider_config(s, METADATA):
        section, trait = key.split(".")
        if section != "JupyterHub":
            assert authenticator.has_trait(trait), f"{cls.__name__} has no trait {trait}"
    assert authenticator.client_id == "client-id" and authenticator.enable_auth_state
    if provider != "google":
        assert authenticator.manage_groups and authenticator.admin_groups


def test_hub_config_with_an_oidc_issuer(tmp_path, issuer):
    """hub.config.apply end to end with a real issuer: groups come from the provider, so
    GPUHUB_GROUPS is not loaded (JupyterHub refuses load_groups then)."""
    url, serve = issuer
    serve(json.dumps({**METADATA, "issuer": url}))
    c = Config()
    config.apply(c, {**BASE, "AUTH_PROVIDER": "oidc", "OIDC_ISSUER": url,
                     "GPUHUB_ALLOWED_GROUPS": "cs101", "GPUHUB_GROUPS": "cs101,research",
                     "GPUHUB_STATE_DIR": str(tmp_path / "state"), "GPUHUB_TLS_DIR": str(tmp_path / "tls")})
    assert c.JupyterHub.authenticator_class == "hub.authenticators.GpuhubGenericOAuthenticator"
    assert c.JupyterHub.load_groups == {}
    assert c.CryptKeeper["keys"] == [(tmp_path / "state" / "crypt-key").read_text()]
    assert c.JupyterHub.template_vars["gpuhub_lab_name"] == "GPU Hub"
    assert c.JupyterHub.template_vars["gpuhub_dev_login"] is False


@pytest.mark.parametrize("name, title", [("login.html", "Ada&#39;s &lt;GPU&gt; Lab"),
                                         ("spawn.html", "Ada&#39;s &lt;GPU&gt; Lab: start your server")])
def test_pages_carry_the_lab_name(name, title):
    """hub/templates extend JupyterHub's own, loaded the way JupyterHub loads them."""
    default = os.path.join(DATA_FILES_PATH, "templates")
    env = Environment(autoescape=True, loader=ChoiceLoader([
        PrefixLoader({"templates": FileSystemLoader([default])}, "/"),
        FileSystemLoader([auth.TEMPLATES, default])]))
    page = env.get_template(name).render(
        gpuhub_lab_name="Ada's <GPU> Lab", static_url=lambda *a, **k: "/static", base_url="/",
        login_service="single sign-on", authenticator_login_url="/hub/oauth_login",
        url="/hub/spawn", spawner_options_form="<p>courses</p>")
    assert re.search(r"<title>\s*(.*?)\s*</title>", page, re.DOTALL).group(1) == title
    assert '<h1 id="gpuhub-lab-name" class="text-center mb-4">Ada&#39;s' in page or \
        '<h1 id="gpuhub-lab-name">Ada&#39;s' in page
    # JupyterHub's own page is still there underneath
    assert ("Sign in with single sign-on" if name == "login.html" else "<p>courses</p>") in page
