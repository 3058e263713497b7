"""Deployment settings: the one reader of the environment (compose passes `.env`
through) for the hub, the CLI and the tests.

Every setting is defined once, in `SETTINGS` below, with its parser, its default and its
help text; `.env.example` documents the same names with the same defaults (tests keep the
three in step). `load()` checks them all and reports every problem at once, each naming
its variable, so an admin fixes `.env` in one go instead of one restart per typo.

A new setting: one `Setting(...)` line in `SETTINGS` (a parser below if none fits) and a
commented line in `.env.example`. A rule that spans several settings goes in `_derive`.
Start-up checks that need I/O (files, the database, Docker, the network) belong in
`hub.startup`, not here.
"""

import ipaddress
import os
import posixpath
import re
from dataclasses import dataclass, field
from urllib.parse import urlparse

from . import gpus
from .names import DEFAULT_PATTERN as USERNAME_PATTERN, DEFAULT_RULE as USERNAME_RULE


class SettingsError(ValueError):
    """One or more settings are missing or malformed."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__(
            "gpuhub cannot start, fix these settings (in .env):\n"
            + "\n".join(f"  - {p}" for p in self.problems)
        )


# -- parsers: take the raw string, return the value or raise ValueError(expected) --

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_SIZE = re.compile(r"^[1-9][0-9]*[kmgtKMGT]?$")
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")


def text(raw):
    return raw.strip()


def hostname(raw):
    value = raw.strip().lower()
    if _HOSTNAME.match(value):
        return value
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError("a host name such as hub.example.edu, or an IP address") from None


def port(raw):
    value = integer(raw)
    if not 1 <= value <= 65535:
        raise ValueError("a port number from 1 to 65535")
    return value


def integer(raw):
    value = raw.strip()
    # ASCII digits only: int() also takes "٣" and "１"
    if not re.fullmatch(r"-?[0-9]{1,18}", value, re.ASCII):
        raise ValueError("a whole number")
    return int(value)


def non_negative(raw):
    value = integer(raw)
    if value < 0:
        raise ValueError("a whole number, 0 or more")
    return value


def positive_int(raw):
    value = integer(raw)
    if value < 1:
        raise ValueError("a whole number, 1 or more")
    return value


def boolean(raw):
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("true or false")


def size(raw):
    """Docker-style sizes: 512m, 8g, 1073741824; empty means no limit."""
    value = raw.strip()
    if value and not _SIZE.match(value):
        raise ValueError("a size such as 512m or 8g, or empty for none")
    # JupyterHub's ByteSpecification takes only upper-case suffixes; Docker takes both
    return value.upper() or None


def byte_size(raw):
    """A size in bytes from 10G, 500m, 1073741824 (powers of 1024); empty means none."""
    value = size(raw)
    if value is None:
        return None
    factor = 1024 ** (" KMGT".index(value[-1]) if value[-1] in "KMGT" else 0)
    return int(value.rstrip("KMGT")) * factor


def cpus(raw):
    value = raw.strip()
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        raise ValueError("a number of CPUs such as 2 or 0.5, or empty for none") from None
    if not 0 < number <= 1024:
        raise ValueError("a number of CPUs above 0, such as 2 or 0.5")
    return number


def url(raw):
    value = raw.strip()
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError("an http:// or https:// URL")
    return value.rstrip("/")


def docker_name(raw):
    value = raw.strip()
    if not _NAME.match(value):
        raise ValueError("letters, digits, '_', '.' or '-', starting with a letter or digit")
    return value


def image(raw):
    value = raw.strip()
    repository = value.split("@")[0]
    if ":" in repository.rsplit("/", 1)[-1]:
        repository = repository.rsplit(":", 1)[0]  # drop the tag, keep a registry port
    # Docker refuses upper-case repository names: say so now, not at the first spawn.
    if not repository or repository != repository.lower() or any(c.isspace() for c in value):
        raise ValueError("an image reference such as gpuhub/tensorflow-2.9-gpu:2024.1 (lower case, no spaces)")
    return value


def names(raw):
    """Comma- or space-separated names, kept in order without repeats."""
    seen = []
    for item in re.split(r"[,\s]+", raw.strip()):
        if item and item not in seen:
            seen.append(item)
    return tuple(seen)


def regex(raw):
    value = raw.strip()
    try:
        re.compile(value)
    except re.error as e:
        raise ValueError(f"a regular expression ({e})") from None
    return value


def choice(*options):
    def parse(raw):
        value = raw.strip().lower()
        if value not in options:
            raise ValueError("one of: " + ", ".join(options))
        return value

    parse.options = options
    return parse


def non_root(raw):
    value = raw.strip()
    uid, _, gid = value.partition(":")
    if not (uid.isdigit() and (gid == "" or gid.isdigit())) or int(uid) == 0:
        raise ValueError("a numeric UID:GID other than root, such as 1000:100")
    return value


def server_pool(raw):
    """An IPv4 pool for the servers' own /28 networks (hub/networks.py)."""
    try:
        value = ipaddress.IPv4Network(raw.strip())
    except ValueError:
        raise ValueError("an IPv4 subnet such as 10.128.0.0/16") from None
    if value.prefixlen > 28:
        raise ValueError("an IPv4 subnet of /28 or larger, such as 10.128.0.0/16")
    return str(value)


def host_dirs(raw):
    """Absolute host directories, comma-separated, normalised; never / itself."""
    dirs = []
    for item in filter(None, (p.strip() for p in raw.split(","))):
        normal = posixpath.normpath(item)
        if not item.startswith("/") or normal in ("/", "//"):
            raise ValueError("absolute host directories other than /, comma-separated")
        dirs.append(normal)
    return tuple(dirs)


def lower(raw):
    return raw.strip().lower()


def gpu_list(raw):
    """GPUHUB_GPUS: the configured GPUs (NVML completes them at start-up: gpus.inventory)."""
    return tuple(gpus.parse_inventory(raw, "GPUHUB_GPUS"))


def group_caps(raw):
    return gpus.parse_group_caps(raw, "GPUHUB_GPU_GROUP_CAPS")


def percent(raw):
    value = raw.strip()
    # ASCII digits only, as integer(): float() also takes "٣" and "nan"
    if not re.fullmatch(r"[0-9]{1,3}(\.[0-9]{1,6})?", value, re.ASCII):
        raise ValueError("a percentage from 0 to 100, such as 5")
    value = float(value)
    if not 0 <= value <= 100:
        raise ValueError("a percentage from 0 to 100, such as 5")
    return value


def usage_source(raw):
    value = raw.strip()
    if value in ("nvml", "none") or (value.startswith("file:/") and len(value) > 6):
        return value
    raise ValueError("nvml, none, or file:/absolute/path (a JSON file of GPU: percent)")


_TOKEN = re.compile(r"^[A-Za-z0-9_.~-]{32,256}$")
_CPUSET = re.compile(r"^[0-9]{1,4}(-[0-9]{1,4})?(,[0-9]{1,4}(-[0-9]{1,4})?)*$")


def api_token(raw):
    value = raw.strip()
    if value and not _TOKEN.match(value):
        raise ValueError("empty, or 32 to 256 letters, digits, '-', '_', '.' or '~' "
                         "(openssl rand -hex 32)")
    return value


def cpuset(raw):
    value = raw.strip()
    if value and not _CPUSET.match(value):
        raise ValueError("empty, or CPU numbers and ranges as Docker's --cpuset-cpus takes them, e.g. 1 or 1-3,5")
    return value


def database_url(raw):
    """GPUHUB_DB_URL: empty (SQLite on the hub's volume) or a PostgreSQL URL without a password."""
    value = raw.strip()
    if not value:
        return ""
    parsed = urlparse(value)
    if parsed.scheme not in ("postgresql", "postgresql+psycopg2") or not parsed.hostname:
        raise ValueError("empty (SQLite on the hub's volume) or a PostgreSQL URL such as "
                         "postgresql://gpuhub@postgres:5432/gpuhub")
    if parsed.password is not None:
        # the URL shows up in logs and in the gpu-culler's command line
        raise ValueError("a URL without a password: put the password in GPUHUB_POSTGRES_PASSWORD")
    return value


def absolute_path(raw):
    value = raw.strip()
    if not value.startswith("/"):
        raise ValueError("an absolute path")
    return value.rstrip("/") or "/"


@dataclass(frozen=True)
class Setting:
    name: str
    parse: object
    default: str | None  # None: required
    help: str
    attr: str = field(default="")
    secret: bool = False  # never shown: repr(Settings) prints "***" for it
    empty_is_default: bool = False  # NAME= (empty) means the same as leaving NAME out
    quote_bad_value: bool = True  # False: an error does not repeat the value (it may hold a password)

    @property
    def key(self):
        return self.attr or self.name.lower().removeprefix("gpuhub_")


AUTH_PROVIDERS = ("github", "gitlab", "google", "oidc", "dummy")
TLS_MODES = ("selfsigned", "own", "letsencrypt")

SETTINGS = (
    # -- the site --
    Setting("GPUHUB_DOMAIN", hostname, None, "Host name students type in the browser."),
    Setting("GPUHUB_HTTPS_PORT", port, "443", "Public HTTPS port (443 unless behind NAT)."),
    Setting("GPUHUB_LAB_NAME", text, "GPU Hub", "The lab's name on the login and spawn pages."),
    Setting("TLS_MODE", choice(*TLS_MODES), "selfsigned",
            "selfsigned (generated on first start), own (tls/cert.pem + tls/key.pem) or letsencrypt.",
            attr="tls_mode"),
    # -- where user servers live (hub/origins.py) --
    Setting("GPUHUB_USER_SUBDOMAINS", boolean, "true",
            "true (recommended): each user's server on its own origin, "
            "https://<user>.GPUHUB_DOMAIN, so pages from one student's server cannot act "
            "on the hub or other servers; needs a wildcard DNS record (docs/admin.md). false: all on the hub's origin (an IP address as GPUHUB_DOMAIN needs it)."),
    Setting("ACME_DNS_PROVIDER", text, "",
            "With TLS_MODE=letsencrypt and GPUHUB_USER_SUBDOMAINS=true: the DNS provider's "
            "code for Traefik's DNS challenge (e.g. cloudflare, route53, ovh), which a "
            "wildcard certificate needs.", attr="acme_dns_provider"),
    # -- who logs in --
    Setting("AUTH_PROVIDER", choice(*AUTH_PROVIDERS), None,
            "github, gitlab, google, oidc; or dummy (development only: one shared password, "
            "GPUHUB_DUMMY_PASSWORD). No default: a copied .env.example starts no hub.",
            attr="auth_provider"),
    Setting("GPUHUB_USERNAME_PATTERN", regex, USERNAME_PATTERN,
            "Regular expression every user name must match as a whole, after the provider's "
            "name is normalised (NFKC, lower case); the default allows " + USERNAME_RULE
            + ". Others are refused at login (hub/names.py)."),
    Setting("GPUHUB_ADMIN_USERS", names, "", "User names with admin rights, comma-separated."),
    Setting("GPUHUB_DUMMY_PASSWORD", text, "",
            "With AUTH_PROVIDER=dummy: the shared password, at least 16 characters.", secret=True),
    Setting("GPUHUB_ALLOWED_USERS", names, "",
            "User names that may log in, comma-separated (as the provider names them)."),
    Setting("GPUHUB_ALLOWED_GROUPS", names, "",
            "Groups whose members may log in: GitHub organisations or org:team, GitLab group "
            "paths, or OIDC groups from OIDC_GROUPS_CLAIM (not with google)."),
    Setting("GPUHUB_ADMIN_GROUPS", names, "",
            "Groups whose members are admins (GitHub org:team, GitLab group paths, OIDC groups)."),
    Setting("GPUHUB_ALLOW_ALL", boolean, "false",
            "true lets everybody the provider signs in log in (with google: everybody in "
            "GOOGLE_HOSTED_DOMAIN); the deliberate alternative to the allow lists."),
    Setting("OAUTH_CLIENT_ID", text, "", "Client ID of the hub's OAuth application at the provider."),
    Setting("OAUTH_CLIENT_SECRET", text, "", "Client secret of that application.", secret=True),
    Setting("OAUTH_CALLBACK_URL", lambda raw: url(raw) if raw.strip() else "", "",
            "Redirect URL registered with the provider; empty: the public URL + hub/oauth_callback."),
    Setting("OIDC_ISSUER", lambda raw: url(raw) if raw.strip() else "", "",
            "With AUTH_PROVIDER=oidc: the issuer URL; endpoints come from its "
            "/.well-known/openid-configuration at start-up."),
    Setting("OIDC_USERNAME_CLAIM", text, "preferred_username",
            "With AUTH_PROVIDER=oidc: the claim that becomes the user name."),
    Setting("OIDC_GROUPS_CLAIM", text, "groups",
            "With AUTH_PROVIDER=oidc: the claim listing the user's groups (dots for nested "
            "claims, e.g. realm_access.roles)."),
    Setting("OIDC_SCOPES", names, "openid profile email",
            "With AUTH_PROVIDER=oidc: scopes to ask for (add the one that releases the groups "
            "claim if the provider needs one)."),
    Setting("GITLAB_URL", url, "https://gitlab.com", "With AUTH_PROVIDER=gitlab: the GitLab instance."),
    Setting("GOOGLE_HOSTED_DOMAIN", names, "",
            "With AUTH_PROVIDER=google: only accounts of these Google Workspace domains "
            "(comma-separated; one domain also drops @domain from user names)."),
    Setting("JUPYTERHUB_CRYPT_KEY", text, "",
            "Key encrypting login tokens in the hub database (64 hex digits; ;-separated to "
            "rotate); empty: generated on first start and kept on the hub's volume.",
            attr="crypt_key", secret=True),
    Setting("GPUHUB_METRICS_TOKEN", api_token, "",
            "API token of the `metrics` service, which may read /hub/metrics and nothing else "
            "(a role with the one scope read:metrics), for Prometheus; empty: generated on "
            "first start and kept on the hub's volume (metrics-token). docs/metrics.md.",
            secret=True),
    # -- user servers --
    Setting("GPUHUB_USER_IMAGE", image, None, "Image of the user servers."),
    Setting("GPUHUB_USER_NETWORK", docker_name, "gpuhub-users",
            "Docker network of the hub and the proxy (each user server has one of its own)."),
    Setting("GPUHUB_SERVER_SUBNETS", server_pool, "10.128.0.0/16",
            "Address pool of the user servers' own networks, a /28 each (4096 in a /16)."),
    Setting("GPUHUB_NETWORK_POOL", non_negative, "10",
            "Server networks made ahead of time, so that a spawn takes one instead of "
            "waiting for it (each is used by one server once, then removed); 0: each "
            "server's network is made at its spawn."),
    Setting("GPUHUB_USER_EGRESS", choice("proxy", "deny"), "proxy",
            "proxy: user servers reach the outside world through the egress proxy only "
            "(no private, loopback or link-local addresses); deny: not at all (exams)."),
    Setting("GPUHUB_NOTEBOOK_DIR", absolute_path, "/home/jovyan",
            "Notebook directory in the user image; the user's volume is mounted there."),
    Setting("GPUHUB_CONTAINER_PREFIX", docker_name, "gpuhub",
            "Prefix of user container names ({prefix}-{username})."),
    Setting("GPUHUB_VOLUME_PREFIX", docker_name, "gpuhub-user",
            "Prefix of the per-user named volumes ({prefix}-{username})."),
    Setting("GPUHUB_CONTAINER_USER", lambda raw: non_root(raw), "1000:100",
            "UID:GID user servers run as, whatever the image says (never root)."),
    Setting("GPUHUB_MEM_LIMIT", size, "8g", "Memory limit of a user server (empty: none)."),
    Setting("GPUHUB_CPU_LIMIT", cpus, "4", "CPU limit of a user server (empty: none)."),
    Setting("GPUHUB_SHM_SIZE", size, "2g", "/dev/shm of a user server, for input pipelines."),
    Setting("GPUHUB_CPUSET_CPUS", cpuset, "",
            "CPUs user servers may run on, e.g. 1-3 (Docker's --cpuset-cpus); empty: all. "
            "Keeping one core for the hub keeps it answering in a burst (docs/performance.md)."),
    Setting("GPUHUB_PIDS_LIMIT", positive_int, "4096",
            "Processes and threads a user server may run at once (a fork bomb stops there)."),
    Setting("GPUHUB_DISK_LIMIT", size, "",
            "Size of a user server's writable layer, e.g. 20g (empty: none); needs Docker's "
            "overlay2 on xfs mounted with pquota (docs/security.md)."),
    Setting("GPUHUB_HOME_QUOTA", byte_size, "",
            "Soft quota of a student's home volume, e.g. 10g (empty: none): over it, a "
            "spawn is refused saying how much is used; measured with du at each spawn "
            "(docs/operations.md, hard quotas there too)."),
    Setting("GPUHUB_PROXY_SERVICES", names, "proxy",
            "Compose services that are the proxy: the hub attaches them to every user "
            "server's network and the Docker API guard lets them join (Traefik's service; "
            "the tests put configurable-http-proxy there)."),
    Setting("GPUHUB_GUARD_BIND_PATHS", host_dirs, "",
            "Host directories the Docker API guard lets user containers mount read-only, "
            "comma-separated (e.g. /srv/datasets); empty: none, only named volumes."),
    Setting("GPUHUB_START_TIMEOUT", non_negative, "300",
            "Seconds a server may take to start (image pulls of big GPU images are slow)."),
    Setting("GPUHUB_READY_TIMEOUT", positive_int, "120",
            "Seconds a started container's Jupyter server may take to answer; raise it "
            "for big bursts on few cores (docs/performance.md)."),
    Setting("GPUHUB_IDLE_TIMEOUT", non_negative, "3600",
            "Stop servers idle this many seconds (0: never); stopping frees their GPUs."),
    # GPU sessions (hub.culling, enforced by the gpu-culler service; courses may override)
    Setting("GPUHUB_GPU_IDLE_TIMEOUT", non_negative, "1800",
            "Stop a server that holds a GPU when its GPU stayed below GPUHUB_GPU_IDLE_PERCENT "
            "this many seconds, even if the notebook is active; where GPU use is not measured, "
            "after this many seconds without activity (0: never)."),
    Setting("GPUHUB_GPU_MAX_AGE", non_negative, "14400",
            "A GPU session ends this many seconds after the server got its GPU, whatever its "
            "activity (0: no limit). JupyterLab shows the time left."),
    Setting("GPUHUB_GPU_IDLE_PERCENT", percent, "5",
            "GPU utilisation (percent) below which a GPU counts as unused."),
    Setting("GPUHUB_GPU_WARNING", non_negative, "600",
            "JupyterLab warns this many seconds before a GPU session reaches its maximum age."),
    Setting("GPUHUB_GPU_USAGE_SOURCE", usage_source, "nvml",
            "Where GPU utilisation comes from: nvml (needs the hub container to see the GPUs), "
            "none, or file:/path (a JSON file {\"GPU-...\": percent} that something else writes)."),
    # -- courses and GPUs --
    Setting("GPUHUB_CATALOG", lambda raw: absolute_path(raw) if raw.strip() else None, "",
            "Course catalog file inside the hub (catalog/ is mounted at /srv/gpuhub/catalog); "
            "empty: everybody gets GPUHUB_USER_IMAGE."),
    Setting("GPUHUB_GROUPS", names, "",
            "JupyterHub groups the catalog and GPU caps may name, created at start-up "
            "(groups synced from the identity provider count too)."),
    Setting("GPUHUB_GPUS", gpu_list, "",
            "GPU inventory: UUIDs or indexes, comma-separated; empty: discover through NVML."),
    Setting("GPUHUB_GPU_MODE", lower, "exclusive",
            "exclusive (one server per GPU) or shared (up to GPUHUB_GPU_MAX_USERS per GPU).",
            empty_is_default=True),
    Setting("GPUHUB_GPU_MAX_USERS", integer, "1", "With GPUHUB_GPU_MODE=shared: servers per GPU.",
            empty_is_default=True),
    Setting("GPUHUB_GPU_GROUP_CAPS", group_caps, "",
            "GPUs the members of a group may hold at once, e.g. cs101=4,research=8."),
    Setting("GPUHUB_GPU_QUEUE_TIMEOUT", non_negative, "1800",
            "Seconds a spawn may wait in line for a GPU when none is free (first come, first "
            "served); 0: no line, refuse at once."),
    # -- wiring between containers: compose sets the URLs and mounts the paths; the
    # -- more than one server: Docker Swarm mode (hub/swarm.py, docs/scale-out.md) --
    Setting("GPUHUB_MODE", choice("single", "swarm"), "single",
            "single: one Docker host (DockerSpawner); swarm: servers are Swarm services on "
            "any node of the swarm the hub's engine manages (SwarmSpawner).",
            attr="deploy_mode"),
    Setting("GPUHUB_SWARM_NETWORK", docker_name, "gpuhub-swarm",
            "With GPUHUB_MODE=swarm: the attachable overlay network of hub, proxy and "
            "servers (docker network create --driver overlay --attachable gpuhub-swarm)."),
    Setting("GPUHUB_SWARM_HOMES", choice("pinned", "shared"), "pinned",
            "With GPUHUB_MODE=swarm: pinned: a student's volume stays on the node of their "
            "first server, which later servers run on; shared: homes on NFS "
            "(GPUHUB_SWARM_NFS), servers on any node."),
    Setting("GPUHUB_SWARM_NFS", text, "",
            "With GPUHUB_SWARM_HOMES=shared: the NFS export holding one directory per user, "
            "as server:/path, e.g. 10.0.0.5:/export/gpuhub."),
    # defaults are what docker-compose.yml does, so change them only together with it --
    Setting("GPUHUB_HUB_CONNECT_URL", url, "http://hub:8081",
            "How user containers and the proxy reach the hub."),
    Setting("GPUHUB_TRAEFIK_API_URL", url, "http://10.254.254.6:8099",
            "Traefik's API entrypoint: the proxy's address on the control network "
            "(GPUHUB_PROXY_CONTROL_IP), where no user container reaches it."),
    Setting("GPUHUB_ROUTES_FILE", absolute_path, "/srv/traefik-routes/hub-routes.toml",
            "Dynamic configuration file the hub writes for Traefik's file provider."),
    Setting("GPUHUB_TLS_DIR", absolute_path, "/certs",
            "Where the proxy's default certificate is kept (same path in hub and proxy)."),
    Setting("GPUHUB_OWN_TLS_DIR", absolute_path, "/srv/gpuhub/tls",
            "With TLS_MODE=own: where the hub finds cert.pem and key.pem."),
    Setting("GPUHUB_STATE_DIR", absolute_path, "/srv/jupyterhub",
            "Hub state on its named volume: database, cookie secret, generated keys."),
    # -- the database (hub/database.py, docs/postgresql.md) --
    Setting("GPUHUB_DB_URL", database_url, "",
            "Empty: SQLite in GPUHUB_STATE_DIR. PostgreSQL (compose profile postgres, "
            "COMPOSE_PROFILES=postgres): postgresql://gpuhub@postgres:5432/gpuhub, without "
            "the password. JupyterHub and the GPU allocations share it.", attr="database_url",
            quote_bad_value=False),
    Setting("GPUHUB_POSTGRES_PASSWORD", text, "",
            "With GPUHUB_DB_URL: the database user's password (openssl rand -hex 24); compose "
            "gives it to the postgres service and, as PGPASSWORD, to the hub.", secret=True),
)


class Settings:
    """Parsed settings; attributes are named after the variables (GPUHUB_ dropped), plus
    what `_derive` makes of several of them (`gpu_policy`)."""

    def __init__(self, values):
        self.__dict__.update(values)

    def __repr__(self):
        # secrets (client secret, crypt key, password) may end up in a log: never their values
        shown = {k: "***" if k in SECRETS and v else v for k, v in self.__dict__.items()}
        return f"Settings({shown!r})"

    @property
    def database(self):
        """The hub's SQLite database, shared by JupyterHub and the GPU allocations."""
        return f"{self.state_dir}/jupyterhub.sqlite"

    @property
    def db_url(self):
        """GPUHUB_DB_URL, or the SQLite database (also for a tool that read only GPUHUB_STATE_DIR)."""
        return getattr(self, "database_url", "") or f"sqlite:///{self.database}"

    @property
    def public_url(self):
        port = "" if self.https_port == 443 else f":{self.https_port}"
        return f"https://{self.domain}{port}/"


SECRETS = frozenset(setting.key for setting in SETTINGS if setting.secret)
BY_NAME = {setting.name: setting for setting in SETTINGS}


def _parse(setting, environ):
    """(value, None) or (None, problem) for one setting."""
    raw = environ.get(setting.name)
    if raw is None or (raw.strip() == "" and (setting.default is None or setting.empty_is_default)):
        if setting.default is None:
            return None, f"{setting.name} is not set: {setting.help}"
        raw = setting.default
    try:
        return setting.parse(raw), None
    except gpus.GpuConfigError as e:  # a list: the message names the variable and the item
        return None, str(e)
    except ValueError as e:
        shown = f"={raw!r}" if setting.quote_bad_value else ""
        return None, f"{setting.name}{shown} is not valid: expected {e}"


def _derive(values, problems):
    """Values made of several settings, checked together; only when each part parsed."""
    if values.get("database_url") and not values.get("postgres_password", "-"):
        problems.append("GPUHUB_POSTGRES_PASSWORD is not set: GPUHUB_DB_URL names a PostgreSQL "
                        "database, which needs the password of its user")
    if values.get("swarm_homes") == "shared" and values.get("deploy_mode") == "swarm":
        host, _, path = values.get("swarm_nfs", "").partition(":")
        if not host or not path.startswith("/"):
            problems.append("GPUHUB_SWARM_NFS: with GPUHUB_SWARM_HOMES=shared, the NFS export "
                            "as server:/path, e.g. 10.0.0.5:/export/gpuhub")
    parts = ("gpu_mode", "gpu_max_users", "gpu_group_caps")
    if all(part in values for part in parts):
        try:
            values["gpu_policy"] = gpus.Policy(*(values[part] for part in parts))
        except gpus.GpuConfigError as e:
            problems.append(str(e))


def read(environ=None, only=None):
    """(Settings, problems): every setting that parsed, and one line per one that did not
    (its attribute is then missing). `only`: the variable names to read, for a tool that
    needs a few (the CLI); the others are neither read nor required."""
    environ = os.environ if environ is None else environ
    chosen = SETTINGS if only is None else [BY_NAME[name] for name in only]
    values, problems = {}, []
    for setting in chosen:
        value, problem = _parse(setting, environ)
        if problem:
            problems.append(problem)
        else:
            values[setting.key] = value
    _derive(values, problems)
    return Settings(values), problems


def load(environ=None, only=None):
    """Read and check every setting (or those named in `only`); raise SettingsError naming
    each bad variable."""
    loaded, problems = read(environ, only)
    if problems:
        raise SettingsError(problems)
    return loaded


def jupyterhub_service(environ=None):
    """(API URL, API token) that JupyterHub gives a managed service it starts (the
    gpu-culler): JupyterHub's variables, not gpuhub settings, read here with the rest."""
    environ = os.environ if environ is None else environ
    missing = [name for name in ("JUPYTERHUB_API_URL", "JUPYTERHUB_API_TOKEN") if not environ.get(name)]
    if missing:
        raise SettingsError([f"{name} is not set: JupyterHub sets it for the services it "
                             "starts (hub.gpu_culler runs as one)" for name in missing])
    return environ["JUPYTERHUB_API_URL"], environ["JUPYTERHUB_API_TOKEN"]
