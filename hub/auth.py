"""Who may log in: the authenticator chosen by AUTH_PROVIDER, its allow rules, groups
synced from the provider, the key that encrypts login tokens, and the login page.

Each provider's configuration is a plain function of the settings (`provider_config`),
so tests check it without Docker or a network. `prepare` does what needs I/O and may
fail (the checks, OIDC discovery, the crypt key: hub.startup calls it inside its error
boundary); `apply` only sets configuration; `configure` is the two in a row.
"""

import base64
import binascii
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from . import logout, names
from .secretfiles import read_or_create_secret
from .settings import SettingsError

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
OAUTH_CLASSES = {"github": "GitHubOAuthenticator", "gitlab": "GitLabOAuthenticator",
                 "google": "GoogleOAuthenticator", "oidc": "GenericOAuthenticator"}
# the classes, with gpuhub's one form of user name and its logout (hub/authenticators.py)
AUTHENTICATOR_NAMES = {p: f"hub.authenticators.Gpuhub{cls}" for p, cls in OAUTH_CLASSES.items()}
DUMMY_CLASS = "hub.authenticators.GpuhubDummyAuthenticator"
DUMMY_MIN_PASSWORD = 16
# the claim each provider's user names come from, and whether its owner may change it
# (docs/security.md, "User names"): admins named on a changeable claim get a warning
NAME_CLAIMS = {"github": ("login", True), "gitlab": ("username", True),
               "google": ("email", False)}

DUMMY_WARNING = """
**********************************************************************
*  AUTH_PROVIDER=dummy: DEVELOPMENT AUTHENTICATOR. Anyone who knows  *
*  the shared password can log in as ANY user name. Never use it on  *
*  a reachable host.                                                 *
**********************************************************************"""


def manages_groups(settings):
    """True when group membership comes from the provider at every login (then
    JupyterHub refuses `load_groups`, and membership is not edited in the hub)."""
    return settings.auth_provider in ("github", "gitlab", "oidc")


def check(settings):
    """Every problem of an OAuth provider's settings at once, as SettingsError."""
    s, problems = settings, []
    for name, value in (("OAUTH_CLIENT_ID", s.oauth_client_id),
                        ("OAUTH_CLIENT_SECRET", s.oauth_client_secret)):
        if not value:
            problems.append(f"{name} is not set: register the hub as an OAuth application "
                            f"with the provider ({s.auth_provider}) and copy it from there")
    if s.auth_provider == "oidc" and not s.oidc_issuer:
        problems.append("OIDC_ISSUER is not set: the provider's issuer URL, e.g. "
                        "https://sso.example.edu/realms/lab")
    if s.auth_provider == "google":
        for name, value in (("GPUHUB_ALLOWED_GROUPS", s.allowed_groups),
                            ("GPUHUB_ADMIN_GROUPS", s.admin_groups)):
            if value:
                problems.append(f"{name} does not work with AUTH_PROVIDER=google (Google groups "
                                "need a Workspace service account); use GPUHUB_ALLOWED_USERS, "
                                "or GOOGLE_HOSTED_DOMAIN with GPUHUB_ALLOW_ALL=true")
    elif not (s.allowed_users or s.allowed_groups or s.allow_all):
        # oauthenticator 16+ lets nobody in by default: say so now, not at the first login
        problems.append(f"nobody may log in with AUTH_PROVIDER={s.auth_provider}: set "
                        "GPUHUB_ALLOWED_USERS (user names), GPUHUB_ALLOWED_GROUPS (groups), "
                        "or GPUHUB_ALLOW_ALL=true (everybody the provider signs in)")
    if s.auth_provider == "google" and not (s.allowed_users or s.allow_all):
        problems.append("nobody may log in with AUTH_PROVIDER=google: set GPUHUB_ALLOWED_USERS, "
                        "or GOOGLE_HOSTED_DOMAIN with GPUHUB_ALLOW_ALL=true")
    if problems:
        raise SettingsError(problems)


def check_names(settings, log):
    """Names in the settings that no login could ever give (SettingsError), and admins
    granted by a name the provider lets its owner change (a warning)."""
    s = settings
    bad = [f"{var} names {name!r}, which is not a valid user name here "
           f"({names.describe(s.username_pattern)}; see GPUHUB_USERNAME_PATTERN)"
           for var, values in (("GPUHUB_ADMIN_USERS", s.admin_users),
                               ("GPUHUB_ALLOWED_USERS", s.allowed_users))
           for name in values if not names.valid_username(names.normalize(name), s.username_pattern)]
    if bad:
        raise SettingsError(bad)
    claim, mutable = NAME_CLAIMS.get(s.auth_provider, (s.oidc_username_claim, True))
    if s.auth_provider == "oidc":
        mutable = claim != "sub"  # sub is the one claim OpenID Connect promises is stable
    if s.admin_users and mutable and s.auth_provider != "dummy":
        log.warning("GPUHUB_ADMIN_USERS grants admin rights by user name, which comes from the "
                    "%s claim %r: its owner may be able to change it and so take another "
                    "name. Prefer GPUHUB_ADMIN_GROUPS%s (docs/security.md, User names).",
                    s.auth_provider, claim,
                    ", or OIDC_USERNAME_CLAIM=sub" if s.auth_provider == "oidc" else "")


def github_groups(auth_state):
    """JupyterHub groups of a GitHub user: `org` and `org:team` for each of their teams
    (lower case: GitHub compares names case-insensitively, JupyterHub does not)."""
    groups = set()
    for team in auth_state.get("teams") or []:
        org = team["organization"]["login"].lower()
        groups |= {org, f"{org}:{team['slug'].lower()}"}
    return sorted(groups)


async def gitlab_groups(authenticator, auth_state):
    """Put the user's GitLab group paths into auth_state["gitlab_groups"], from GitLab's
    OpenID userinfo (scope openid), which lists groups inherited from parents too."""
    info = await authenticator.httpfetch(
        f"{authenticator.gitlab_url}/oauth/userinfo", "fetching GitLab groups", method="GET",
        headers={"Authorization": f"Bearer {auth_state['access_token']}",
                 "Accept": "application/json"},
        validate_cert=authenticator.validate_server_cert)
    auth_state["gitlab_groups"] = list(info.get("groups") or [])
    return auth_state


def callback_url(settings):
    return settings.oauth_callback_url or settings.public_url + "hub/oauth_callback"


def provider_config(settings, oidc_metadata=None):
    """{"Section.trait": value} for an OAuth provider (settings already `check`ed)."""
    s, cls = settings, OAUTH_CLASSES[settings.auth_provider]
    config = {
        "JupyterHub.authenticator_class": AUTHENTICATOR_NAMES[s.auth_provider],
        "OAuthenticator.client_id": s.oauth_client_id,
        "OAuthenticator.client_secret": s.oauth_client_secret,
        "OAuthenticator.oauth_callback_url": callback_url(s),
        "Authenticator.allowed_users": set(s.allowed_users),
        "Authenticator.allow_all": s.allow_all,
        # tokens from the provider are kept, encrypted (see crypt_keys)
        "Authenticator.enable_auth_state": True,
        "Authenticator.manage_groups": manages_groups(s),
        # shown to people the provider knows but no allow rule lets in
        "OAuthenticator.custom_403_message": (
            f"Your account is not allowed to use {s.lab_name}: it is not on the list of users "
            "or groups this hub lets in. If it should be, ask the hub's administrators."),
    }
    if s.auth_provider == "github":
        config.update({
            # allowed_organizations asks GitHub's API about each org or org:team at login
            f"{cls}.allowed_organizations": set(s.allowed_groups),
            # read:org: private memberships and teams too, not only public ones
            f"{cls}.scope": ["read:org"],
            f"{cls}.populate_teams_in_auth_state": True,
            f"{cls}.auth_state_groups_key": github_groups,
            f"{cls}.admin_groups": {g.lower() for g in s.admin_groups},
        })
    elif s.auth_provider == "gitlab":
        config.update({
            f"{cls}.gitlab_url": s.gitlab_url,
            # openid: GitLab's userinfo lists the user's groups (register both scopes)
            f"{cls}.scope": ["read_user", "openid"],
            f"{cls}.modify_auth_state_hook": gitlab_groups,
            f"{cls}.auth_state_groups_key": "gitlab_groups",
            f"{cls}.allowed_groups": set(s.allowed_groups),
            f"{cls}.admin_groups": set(s.admin_groups),
        })
    elif s.auth_provider == "google":
        config.update({f"{cls}.hosted_domain": list(s.google_hosted_domain)})
    if s.auth_provider != "oidc":
        config[f"{cls}.provider_logout"] = logout.provider_logout(
            s.auth_provider, gitlab_url=s.gitlab_url)
    elif s.auth_provider == "oidc":
        meta = oidc_metadata
        config.update({
            f"{cls}.login_service": "single sign-on",
            f"{cls}.authorize_url": meta["authorization_endpoint"],
            f"{cls}.token_url": meta["token_endpoint"],
            f"{cls}.scope": list(s.oidc_scopes),
            f"{cls}.username_claim": s.oidc_username_claim,
            # the userinfo response is kept in auth_state under "oauth_user"
            f"{cls}.auth_state_groups_key": f"oauth_user.{s.oidc_groups_claim}",
            f"{cls}.allowed_groups": set(s.allowed_groups),
            f"{cls}.admin_groups": set(s.admin_groups),
        })
        if meta.get("end_session_endpoint"):
            # logout ends the provider's session too; register this URL with the provider
            # as a post-logout redirect URI
            config[f"{cls}.provider_logout"] = logout.provider_logout(
                "oidc", meta["end_session_endpoint"], s.oauth_client_id,
                urllib.parse.urljoin(callback_url(s), "login"))
        if meta.get("userinfo_endpoint"):
            config[f"{cls}.userdata_url"] = meta["userinfo_endpoint"]
        else:  # no userinfo endpoint: the claims come from the ID token instead
            config[f"{cls}.userdata_from_id_token"] = True
    return config


def discover_oidc(issuer, log, attempts=3, delay=2, opener=urllib.request.urlopen, sleep=time.sleep):
    """The issuer's OpenID Connect metadata; SettingsError naming OIDC_ISSUER if it
    cannot be read or is not an issuer's. Retries a little: the provider may be starting."""
    url = f"{issuer}/.well-known/openid-configuration"
    for attempt in range(1, attempts + 1):
        try:
            with opener(url, timeout=10) as response:
                body = response.read()
            break
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = f"HTTP {e.code}" if isinstance(e, urllib.error.HTTPError) else str(
                getattr(e, "reason", e))
            if attempt == attempts:
                raise SettingsError([(
                    f"OIDC_ISSUER={issuer}: cannot read {url} ({reason}); check the URL "
                    "and that the hub container can reach the provider")]) from None
            log.warning("OIDC_ISSUER: %s not readable yet (%s), retrying", url, reason)
            sleep(delay)
    try:
        meta = json.loads(body)
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise SettingsError([(f"OIDC_ISSUER={issuer}: {url} is not JSON metadata; "
                              "is this an OpenID Connect issuer?")])
    missing = [k for k in ("authorization_endpoint", "token_endpoint") if not meta.get(k)]
    if missing:
        raise SettingsError([f"OIDC_ISSUER={issuer}: {url} lacks {', '.join(missing)}"])
    if str(meta.get("issuer", "")).rstrip("/") != issuer.rstrip("/"):
        raise SettingsError([(f"OIDC_ISSUER={issuer}: the provider calls itself "
                              f"{meta.get('issuer')!r}; set OIDC_ISSUER to exactly that")])
    return meta


def _valid_key(key):
    try:
        if len(key) == 64:
            return len(bytes.fromhex(key)) == 32
        return len(key) == 44 and len(base64.urlsafe_b64decode(key)) == 32
    except (ValueError, binascii.Error):
        return False


def crypt_keys(settings, log):
    """Keys for JupyterHub's CryptKeeper: JUPYTERHUB_CRYPT_KEY, else one generated on
    first start and kept on the hub's volume (mode 600), the same after restarts."""
    if settings.crypt_key:
        keys = [k.strip() for k in settings.crypt_key.split(";") if k.strip()]
        if not keys or not all(map(_valid_key, keys)):
            # the value is a secret: never echo it
            raise SettingsError([("JUPYTERHUB_CRYPT_KEY is not valid (value not shown): expected "
                                  "64 hex digits (openssl rand -hex 32), several separated by "
                                  "';' to rotate, or empty to generate one")])
        return keys
    os.makedirs(settings.state_dir, exist_ok=True)
    path = f"{settings.state_dir}/crypt-key"
    if not os.path.exists(path):
        log.info("Generating the key that encrypts login tokens: %s", path)
    return [read_or_create_secret(path)]


@dataclass(frozen=True)
class Login:
    """What `prepare` found out: the issuer's metadata (oidc) and the CryptKeeper keys."""
    oidc_metadata: dict = None
    crypt_keys: tuple = ()


def prepare(settings, log, discover=discover_oidc):
    """Check the login settings, discover the OIDC issuer, read or make the crypt key;
    raise SettingsError with every problem found (for dummy: its password and the names)."""
    problems = []
    try:
        check_names(settings, log)
    except SettingsError as e:
        problems += e.problems
    if settings.auth_provider == "dummy":
        if len(settings.dummy_password) < DUMMY_MIN_PASSWORD:
            # the value is a secret: never echo it
            problems.append(
                f"GPUHUB_DUMMY_PASSWORD must have at least {DUMMY_MIN_PASSWORD} characters "
                f"with AUTH_PROVIDER=dummy (it has {len(settings.dummy_password)}): everyone "
                "who knows it can log in as any user, e.g. openssl rand -hex 12")
        if problems:
            raise SettingsError(problems)
        return Login()
    try:
        check(settings)
    except SettingsError as e:
        problems += e.problems
    try:
        keys = tuple(crypt_keys(settings, log))
    except SettingsError as e:
        problems += e.problems
    if problems:  # discovery needs a checked OIDC_ISSUER, and would only add noise
        raise SettingsError(problems)
    meta = discover(settings.oidc_issuer, log) if settings.auth_provider == "oidc" else None
    return Login(meta, keys)


def apply(c, settings, login, log):
    """Set the authenticator's configuration from the settings and what `prepare` found."""
    c.Authenticator.admin_users = set(settings.admin_users)
    # the lab's name on the login and spawn pages (hub/templates)
    c.JupyterHub.template_paths = [TEMPLATES]
    # one form of user name (hub/names.py), checked at every login and user creation
    c.Authenticator.username_pattern = settings.username_pattern
    c.GpuhubAuthenticator.lab_name = settings.lab_name
    if settings.auth_provider == "dummy":
        c.JupyterHub.authenticator_class = DUMMY_CLASS
        c.DummyAuthenticator.password = settings.dummy_password
        # JupyterHub 5 lets nobody in by default; this mode is explicitly "anybody".
        c.Authenticator.allow_all = True
        for line in DUMMY_WARNING.strip().splitlines():
            log.warning(line)
        return
    for key, value in provider_config(settings, login.oidc_metadata).items():
        section, trait = key.split(".")
        setattr(getattr(c, section), trait, value)
    c.CryptKeeper.keys = list(login.crypt_keys)
    if settings.allow_all:
        log.warning("GPUHUB_ALLOW_ALL=true: everybody %s signs in may log in%s",
                    settings.auth_provider,
                    f" ({', '.join(settings.google_hosted_domain)} only)"
                    if settings.auth_provider == "google" and settings.google_hosted_domain else "")
    log.info("Logins through %s, callback %s", settings.auth_provider, callback_url(settings))


def configure(c, settings, log, discover=discover_oidc):
    """`prepare`, then `apply` (for tests and tools; the hub goes through hub.config)."""
    apply(c, settings, prepare(settings, log, discover), log)
