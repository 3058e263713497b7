"""Logins and sessions without Docker: the authenticators' name checks, the dummy
provider's password, the logout that ends every session, and logs without secrets."""

import asyncio
import logging
from types import SimpleNamespace

import pytest
from jupyterhub import orm
from tornado import web
from traitlets.config import Application, Config

from hub import auth, logout, settings
from hub.authenticators import GpuhubDummyAuthenticator, GpuhubGenericOAuthenticator
from hub.logscrub import LOGGING_CONFIG, scrub

BASE = {"GPUHUB_DOMAIN": "hub.example.edu", "GPUHUB_USER_IMAGE": "gpuhub/tensorflow-2.9-gpu:1",
        "OAUTH_CLIENT_ID": "client-id", "OAUTH_CLIENT_SECRET": "client-secret"}
METADATA = {"issuer": "https://sso.example.edu/realms/lab",
            "authorization_endpoint": "https://sso.example.edu/realms/lab/auth",
            "token_endpoint": "https://sso.example.edu/realms/lab/token",
            "end_session_endpoint": "https://sso.example.edu/realms/lab/logout"}
LOG = logging.getLogger("test")


def configure(tmp_path, **env):
    c = Config()
    s = settings.load({**BASE, "GPUHUB_STATE_DIR": str(tmp_path), **env})
    auth.configure(c, s, LOG, discover=lambda issuer, log: METADATA)
    return c


def dummy(password="a-long-shared-password"):
    c = Config()
    c.DummyAuthenticator.password = password
    c.GpuhubAuthenticator.lab_name = "Lovelace Lab"
    return GpuhubDummyAuthenticator(config=c)


# -- the dummy provider --

@pytest.mark.parametrize("password", ["", "fifteen-chars!!"])
def test_dummy_needs_a_password_of_16_characters_and_never_shows_it(tmp_path, password):
    with pytest.raises(settings.SettingsError) as e:
        configure(tmp_path, AUTH_PROVIDER="dummy", GPUHUB_DUMMY_PASSWORD=password)
    assert "GPUHUB_DUMMY_PASSWORD must have at least 16 characters" in str(e.value)
    assert not password or password not in str(e.value)


def test_dummy_login_page_says_it_is_a_development_login(tmp_path):
    from hub import config
    c = Config()
    config.apply(c, {**BASE, "AUTH_PROVIDER": "dummy", "GPUHUB_DUMMY_PASSWORD": "x" * 16,
                     "GPUHUB_STATE_DIR": str(tmp_path / "state"),
                     "GPUHUB_TLS_DIR": str(tmp_path / "tls")})
    assert c.JupyterHub.template_vars["gpuhub_dev_login"] is True  # the page: see below


def test_dummy_refuses_a_wrong_password_and_accepts_the_right_one():
    a = dummy()
    assert asyncio.run(a.authenticate(None, {"username": "ada", "password": "wrong"})) is None
    assert asyncio.run(a.authenticate(None, {"username": "ada", "password": ""})) is None
    assert asyncio.run(a.authenticate(None, {"username": "ada",
                                             "password": "a-long-shared-password"})) == "ada"


# -- one form of user name at login and at user creation --

@pytest.mark.parametrize("name", ["ada`) || PathPrefix(`/", "ada{0}", "аda", "ada\n", "-ada",
                                  "a" * 65, "ada lovelace"])
def test_a_refused_name_gets_a_page_that_says_what_is_allowed(name):
    with pytest.raises(web.HTTPError) as e:
        asyncio.run(dummy().authenticate(None, {"username": name,
                                                "password": "a-long-shared-password"}))
    assert e.value.status_code == 403
    assert "cannot be used on Lovelace Lab" in e.value.log_message
    assert "lower-case letters a-z, digits 0-9" in e.value.log_message
    assert "Ask the hub's administrators" in e.value.log_message


def test_names_are_normalised_before_they_are_checked():
    a = dummy()
    assert a.normalize_username("ＡＤＡ") == "ada" and a.validate_username("ada")
    assert asyncio.run(a.authenticate(None, {"username": "ＡＤＡ",
                                             "password": "a-long-shared-password"})) == "ＡＤＡ"


def test_users_created_through_the_api_are_checked_too():
    with pytest.raises(ValueError, match="cannot be used"):
        dummy().add_user(SimpleNamespace(name="Ada"))  # the API does not normalise


def test_a_custom_pattern_replaces_the_default(tmp_path):
    c = configure(tmp_path, AUTH_PROVIDER="github", GPUHUB_ALLOW_ALL="1",
                  GPUHUB_USERNAME_PATTERN=r"s[0-9]{7}")
    a = GpuhubGenericOAuthenticator(config=c)
    assert a.validate_username("s1234567") and not a.validate_username("ada")
    assert "regular expression s[0-9]{7}" in a.refusal("ada")


def test_admins_and_allowed_users_must_be_valid_names(tmp_path):
    with pytest.raises(settings.SettingsError) as e:
        configure(tmp_path, AUTH_PROVIDER="github", GPUHUB_ALLOWED_USERS="ada,bob`",
                  GPUHUB_ADMIN_USERS="root;")
    assert [p.split(" ")[0] for p in e.value.problems] == ["GPUHUB_ADMIN_USERS", "GPUHUB_ALLOWED_USERS"]


@pytest.mark.parametrize("env, warned", [
    ({"AUTH_PROVIDER": "oidc"}, True),
    ({"AUTH_PROVIDER": "oidc", "OIDC_USERNAME_CLAIM": "sub"}, False),
    ({"AUTH_PROVIDER": "github"}, True),
    ({"AUTH_PROVIDER": "google"}, False),
])
def test_admins_named_on_a_claim_their_owner_can_change_get_a_warning(tmp_path, caplog, env, warned):
    configure(tmp_path, OIDC_ISSUER=METADATA["issuer"], GPUHUB_ALLOWED_USERS="ada",
              GPUHUB_ADMIN_USERS="ada", **env)
    text = caplog.text
    assert ("GPUHUB_ADMIN_USERS grants admin rights by user name" in text) is warned


# -- logout --

def test_oidc_logout_goes_to_the_end_session_endpoint_with_the_id_token(tmp_path):
    c = configure(tmp_path, AUTH_PROVIDER="oidc", OIDC_ISSUER=METADATA["issuer"],
                  GPUHUB_ALLOW_ALL="1")
    config = c.GenericOAuthenticator.provider_logout
    assert config == {"kind": "oidc", "end_session_endpoint": METADATA["end_session_endpoint"],
                      "client_id": "client-id",
                      "post_logout_redirect_uri": "https://hub.example.edu/hub/login"}
    kind, url = logout.logout_target(config, "the.id.token")
    assert kind == "redirect" and url == (
        "https://sso.example.edu/realms/lab/logout?client_id=client-id&post_logout_redirect_uri="
        "https%3A%2F%2Fhub.example.edu%2Fhub%2Flogin&id_token_hint=the.id.token")
    # a refused student has no ID token: client_id alone lets the provider send them back
    assert "id_token_hint" not in logout.logout_target(config)[1]


@pytest.mark.parametrize("provider, name, url", [
    ("github", "GitHub", "https://github.com/logout"),
    ("google", "Google", "https://accounts.google.com/Logout"),
    ("gitlab", "GitLab", "https://git.example.edu/"),
])
def test_providers_that_cannot_be_signed_out_from_here_get_a_page_saying_so(tmp_path, provider, name, url):
    c = configure(tmp_path, AUTH_PROVIDER=provider, GPUHUB_ALLOWED_USERS="ada",
                  GITLAB_URL="https://git.example.edu")
    cls = auth.OAUTH_CLASSES[provider]
    assert logout.logout_target(c[cls].provider_logout) == ("page", name, url)


def test_ending_the_sessions_invalidates_every_cookie_and_session_token():
    db = orm.new_session_factory("sqlite://")()
    db.add(orm.OAuthClient(identifier="jupyterhub"))  # the hub's own client, as at start-up
    user = orm.User(name="ada")
    db.add(user)
    db.commit()
    old_cookie = user.cookie_id
    kept = orm.APIToken.new(user=user, note="made on the token page", scopes=[])
    session = orm.APIToken.new(user=user, session_id="s1", note="server OAuth token", scopes=[])
    other = orm.APIToken.new(user=user, session_id="s2", note="another browser", scopes=[])
    assert logout.end_hub_sessions(db, user) == 2
    assert user.cookie_id != old_cookie
    assert db.query(orm.User).filter_by(cookie_id=old_cookie).first() is None
    assert orm.APIToken.find(db, kept) is not None
    assert orm.APIToken.find(db, session) is None and orm.APIToken.find(db, other) is None


# -- logs --

@pytest.mark.parametrize("line", [
    "403 GET /hub/oauth_callback?code=SECRET1&state=SECRET2 (1.2.3.4) 12ms",
    "200 GET /user/ada/api/status?token=SECRET1 (ada@1.2.3.4)",
    'token response {"access_token": "SECRET1", "id_token": "SECRET2", "refresh_token": "SECRET3"}',
    "GET /hub/api/authorizations/token/SECRET1 (1.2.3.4)",
])
def test_no_log_line_carries_a_code_state_or_token(line):
    assert "SECRET" not in scrub(line)


def test_the_filter_sits_on_the_hubs_log_handler(capsys):
    app = Application(logging_config=LOGGING_CONFIG)
    # tornado's HTTP-error warning reaches JupyterHub's handler the same way (init_logging)
    child = logging.getLogger("tornado.test-gpuhub")
    child.parent, child.propagate = app.log, True
    child.warning("%d %s: %s", 403, "GET /hub/oauth_callback?code=abc123&state=xyz789", "no")
    err = capsys.readouterr().err
    assert "code=[secret]&state=[secret]" in err and "abc123" not in err and "xyz789" not in err


def render(name, **ns):
    """A page of hub/templates, loaded the way JupyterHub loads them."""
    import os

    from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PrefixLoader
    from jupyterhub._data import DATA_FILES_PATH
    default = os.path.join(DATA_FILES_PATH, "templates")
    env = Environment(autoescape=True, loader=ChoiceLoader([
        PrefixLoader({"templates": FileSystemLoader([default])}, "/"),
        FileSystemLoader([auth.TEMPLATES, default])]))
    return env.get_template(name).render(static_url=lambda *a, **k: "/static", base_url="/hub/",
                                         **ns)


def test_the_logout_page_says_to_sign_out_at_github():
    page = render("logout.html", gpuhub_lab_name="Lovelace Lab", gpuhub_provider_name="GitHub",
                  gpuhub_provider_url="https://github.com/logout")
    assert "You are signed out of Lovelace Lab" in page
    assert "GitHub does not let the hub sign you out there" in page
    assert 'href="https://github.com/logout"' in page and 'href="/hub/login"' in page


@pytest.mark.parametrize("status, offered", [(403, True), (500, False)])
def test_the_refusal_page_offers_another_account(status, offered):
    page = render("error.html", status_code=status, status_message="Forbidden",
                  message="The user name 'x`' cannot be used")
    assert ('id="gpuhub-switch-account"' in page and 'href="/hub/logout"' in page) is offered
    assert "cannot be used" in page


def test_the_login_page_says_development_login_only_for_dummy():
    kw = dict(gpuhub_lab_name="Lab", login_service="", authenticator_login_url="/hub/login",
              authenticator=SimpleNamespace(login_service=""))
    assert 'id="gpuhub-dev-login"' in render("login.html", gpuhub_dev_login=True, **kw)
    assert 'id="gpuhub-dev-login"' not in render("login.html", gpuhub_dev_login=False, **kw)
