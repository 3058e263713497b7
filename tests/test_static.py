"""Static checks: the compose file, Traefik's configuration and .env.example, without
running anything but the tools that read them."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from dotenv import dotenv_values

from hub import settings
from tests.e2e.stack import copy_repository

REPO = Path(__file__).resolve().parents[1]
SCHEMA_DIR = Path(os.environ.get("GPUHUB_SCHEMA_DIR", REPO.parent / "shared" / "schemas"))
MODES = ("selfsigned", "own", "letsencrypt")


def schema(name):
    path = SCHEMA_DIR / name
    if not path.exists():
        pytest.fail(f"schema {path} not found: set GPUHUB_SCHEMA_DIR to the folder of "
                    "traefik-v3.json (../shared/schemas in CI)")
    return jsonschema.Draft7Validator(json.loads(path.read_text()))


def render_static(mode, **env):
    """proxy/traefik.yml as the proxy container renders it, through the real script."""
    result = subprocess.run(
        ["sh", str(REPO / "proxy" / "entrypoint.sh"), "--render", str(REPO / "proxy" / "traefik.yml")],
        env={"PATH": os.environ["PATH"], "TLS_MODE": mode, "GPUHUB_DOMAIN": "hub.example.edu",
             "GPUHUB_PROXY_CONTROL_IP": "10.254.254.6", **env},
        capture_output=True, text=True, check=True)
    return yaml.safe_load(result.stdout)


def test_compose_file_follows_the_compose_specification():
    result = subprocess.run(["check-jsonschema", "--builtin-schema", "vendor.compose-spec",
                             str(REPO / "docker-compose.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_config_resolves_with_the_example_env(tmp_path):
    compose = ["docker", "compose"] if subprocess.run(
        ["docker", "compose", "version"], capture_output=True).returncode == 0 else ["docker-compose"]
    if not shutil.which(compose[0]):
        pytest.fail("no docker compose / docker-compose: .ci/run installs it")
    # as an admin does it: a clone with .env.example copied to .env
    copy_repository(tmp_path)
    admin_env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUHUB_", "TLS_"))}
    # copied as shipped, it names the one value nobody can guess for the admin
    shutil.copy(tmp_path / ".env.example", tmp_path / ".env")
    result = subprocess.run(compose + ["config"], cwd=tmp_path, capture_output=True, text=True,
                            env=admin_env)
    assert result.returncode != 0 and "set GPUHUB_DOMAIN in .env" in result.stderr, result.stderr
    (tmp_path / ".env").write_text(example_env_text(GPUHUB_DOMAIN="hub.cs.example.edu"))
    result = subprocess.run(compose + ["config"], cwd=tmp_path, capture_output=True, text=True,
                            env=admin_env)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    proxy, hub = config["services"]["proxy"], config["services"]["hub"]
    assert re.fullmatch(r"traefik:v3\.\d+\.\d+", proxy["image"]), "Traefik pinned to a v3 release"
    # the dashboard is off and Traefik's API port is not published
    assert {int(p["target"]) for p in proxy["ports"]} == {80, 443}
    assert hub["restart"] == "unless-stopped" and "healthcheck" in hub
    assert "ports" not in hub, "the hub is reached only through the proxy"
    # the control network carrying Traefik's API is internal and has no user containers
    control = config["networks"]["control"]
    assert control["internal"] is True
    assert set(config["services"]) == {"proxy", "hub", "guard", "user-image", "egress", "postgres"}
    # PostgreSQL is optional (a profile), pinned, and on an internal network with the hub only
    postgres = config["services"]["postgres"]
    assert postgres["profiles"] == ["postgres"] and "healthcheck" in postgres
    assert re.fullmatch(r"postgres:\d+\.\d+-bookworm(@sha256:[0-9a-f]{64})?", postgres["image"])
    assert config["networks"]["database"]["internal"] is True
    assert {name for name, service in config["services"].items()
            if "database" in (service.get("networks") or {})} == {"hub", "postgres"}
    # the engine's socket is the guard's alone; the hub is locked down (docs/security.md)
    socket_holders = {name for name, service in config["services"].items()
                      if any("docker.sock" in str(v.get("source", v) if isinstance(v, dict) else v)
                             for v in service.get("volumes", []))}
    assert socket_holders == {"guard"}
    assert hub["environment"]["DOCKER_HOST"] == "unix:///run/gpuhub-guard/docker.sock"
    for name in ("hub", "guard"):
        service = config["services"][name]
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
    assert config["services"]["guard"]["network_mode"] == "none"
    assert "env_file" not in config["services"]["guard"], "the guard needs none of the secrets"


@pytest.mark.parametrize("mode", MODES)
def test_traefik_static_configuration_is_valid_in_every_tls_mode(mode):
    config = render_static(mode, ACME_EMAIL="admin@example.edu", GPUHUB_HTTPS_PORT="8443")
    errors = [e.message for e in schema("traefik-v3.json").iter_errors(config)]
    assert not errors, errors
    https = config["entryPoints"]["https"]["http"]
    assert config["entryPoints"]["http"]["http"]["redirections"]["entryPoint"] == {
        "to": ":8443", "scheme": "https", "permanent": True}, "redirects to the public port"
    assert https["middlewares"] == ["security-headers@file"]
    assert config["api"] == {"dashboard": False}
    # Traefik's API listens on the control network's address only
    assert config["entryPoints"]["auth_api"]["address"] == "10.254.254.6:8099"
    if mode == "letsencrypt":
        assert https["tls"]["certResolver"] == "letsencrypt"
        assert https["tls"]["domains"] == [{"main": "hub.example.edu"}]
        assert config["certificatesResolvers"]["letsencrypt"]["acme"]["storage"] == "/acme/acme.json"
    else:
        assert "certResolver" not in https["tls"] and "certificatesResolvers" not in config


def test_acme_staging_switches_the_ca():
    staging = render_static("letsencrypt", ACME_STAGING="true")
    production = render_static("letsencrypt")
    assert "staging" in staging["certificatesResolvers"]["letsencrypt"]["acme"]["caServer"]
    assert "staging" not in production["certificatesResolvers"]["letsencrypt"]["acme"]["caServer"]


def test_proxy_reads_tls_mode_case_insensitively_like_the_hub():
    assert "certificatesResolvers" in render_static("LetsEncrypt")


def test_bad_tls_mode_stops_the_proxy_naming_it():
    result = subprocess.run(["sh", str(REPO / "proxy" / "entrypoint.sh"), "--render"],
                            env={"PATH": os.environ["PATH"], "TLS_MODE": "lets-encrypt",
                                 "GPUHUB_DOMAIN": "x.org", "GPUHUB_PROXY_CONTROL_IP": "10.0.0.6"},
                            capture_output=True, text=True)
    assert result.returncode != 0 and "TLS_MODE=lets-encrypt" in result.stderr


def test_traefik_dynamic_configuration_is_valid():
    config = yaml.safe_load((REPO / "proxy" / "dynamic" / "gpuhub.yml").read_text())
    errors = [e.message for e in schema("traefik-v3-file-provider.json").iter_errors(config)]
    assert not errors, errors
    headers = config["http"]["middlewares"]["security-headers"]["headers"]
    assert headers["stsSeconds"] >= 31536000 and headers["contentTypeNosniff"]


def test_env_example_documents_every_variable():
    text = (REPO / ".env.example").read_text()
    documented = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^#?\s?([A-Z][A-Z0-9_]+)=", line)
        if m:
            documented[m.group(1)] = i
    compose_vars = set(re.findall(r"\$\{([A-Z0-9_]+)", (REPO / "docker-compose.yml").read_text()))
    wanted = {s.name for s in settings.SETTINGS} | compose_vars
    missing = wanted - set(documented)
    assert not missing, f".env.example lacks {sorted(missing)}"
    for name, i in documented.items():
        # a comment above each variable (or above its group of related variables)
        j = i - 1
        while j >= 0 and re.match(r"^#?\s?[A-Z][A-Z0-9_]+=", lines[j]):
            j -= 1
        assert j >= 0 and lines[j].startswith("#"), f"{name} in .env.example has no comment above it"


def example_env(**edits):
    """.env.example as a dict, with an admin's edits."""
    env = dict(dotenv_values(REPO / ".env.example"))
    for key in edits:
        assert key in env, f"{key} is not in .env.example"
    return {**env, **edits}


def example_env_text(**edits):
    return "".join(f"{k}={v}\n" for k, v in example_env(**edits).items())


def test_env_example_settings_load():
    # closed by default: a copied .env.example starts no hub, and says what to choose
    with pytest.raises(settings.SettingsError) as e:
        settings.load(example_env())
    assert set(e.value.problems) == {
        "AUTH_PROVIDER is not set: github, gitlab, google, oidc; or dummy (development only: "
        "one shared password, GPUHUB_DUMMY_PASSWORD). No default: a copied .env.example "
        "starts no hub.",
        "GPUHUB_DOMAIN is not set: Host name students type in the browser."}, e.value.problems
    # the obvious edits: a provider and the domain
    loaded = settings.load(example_env(AUTH_PROVIDER="github", GPUHUB_DOMAIN="hub.example.edu"))
    assert loaded.public_url == "https://hub.example.edu/"


# -- the proxy's timeouts and rate limits (issue 10) --

def duration_seconds(value):
    """Traefik durations: "10m", "1h", "30s" or a number of seconds; 0 is unlimited."""
    if isinstance(value, (int, float)):
        return value
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", value)
    assert m, f"not a Traefik duration: {value!r}"
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def test_no_unlimited_timeouts_in_the_proxy():
    """Every entry point has finite responding timeouts (Traefik's default writeTimeout
    is unlimited, readTimeout was 0s here), and so has the way to the servers."""
    config = render_static("selfsigned")
    for name, entrypoint in config["entryPoints"].items():
        timeouts = entrypoint.get("transport", {}).get("respondingTimeouts", {})
        for key in ("readTimeout", "writeTimeout", "idleTimeout"):
            assert key in timeouts, f"entry point {name} leaves {key} at Traefik's default"
            assert 0 < duration_seconds(timeouts[key]) <= 3600, f"{name}.{key}={timeouts[key]}"
    https = config["entryPoints"]["https"]["transport"]["respondingTimeouts"]
    assert duration_seconds(https["readTimeout"]) >= 300, "uploads over a slow link need minutes"
    forwarding = config["serversTransport"]["forwardingTimeouts"]
    for key in ("dialTimeout", "responseHeaderTimeout", "idleConnTimeout"):
        assert 0 < duration_seconds(forwarding[key]) <= 3600, f"forwardingTimeouts.{key}"


def rate_limited_routers():
    config = yaml.safe_load((REPO / "proxy" / "dynamic" / "gpuhub.yml").read_text())["http"]
    limited = {}
    for name, router in config["routers"].items():
        for middleware in router.get("middlewares", []):
            limit = config["middlewares"][middleware.removesuffix("@file")].get("rateLimit")
            if limit:
                limited[name] = (router, limit)
    return config, limited


def test_login_and_api_are_rate_limited_per_client_address():
    config, limited = rate_limited_routers()
    rules = {name: router["rule"] for name, (router, _) in limited.items()}
    for path in ("/hub/login", "/hub/oauth_login", "/hub/oauth_callback", "/hub/api"):
        assert any(f"PathPrefix(`{path}`)" in rule for rule in rules.values()), \
            f"{path} has no rate limit: {rules}"
    for name, (router, limit) in limited.items():
        assert router["entryPoints"] == ["https"]
        # to the hub, as the hub's own route does
        servers = config["services"][router["service"]]["loadBalancer"]["servers"]
        assert servers == [{"url": "http://hub:8081"}], name
        # per client address: no sourceCriterion means the connection's address
        # (Traefik's default); a request header or host would let a client pick its bucket
        assert "requestHeaderName" not in limit.get("sourceCriterion", {})
        assert not limit.get("sourceCriterion", {}).get("requestHost")
        # generous for a class of 300 behind one NAT, finite for one client
        per_second = limit["average"] / duration_seconds(limit.get("period", 1))
        assert 0 < per_second <= 100 and limit["burst"] >= 300, (name, limit)
        # longer than the hub's PathPrefix(`/`) route, so Traefik (longest rule first) picks it
        assert len(router["rule"]) > len("PathPrefix(`/`)")


# -- the egress proxy's rules (the metadata address is checked here, never sent to) --

def render_squid(**env):
    result = subprocess.run(
        ["sh", str(REPO / "egress" / "entrypoint.sh"), "--render", str(REPO / "egress" / "squid.conf")],
        env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True, check=True)
    return result.stdout


def squid_rules(text):
    acls, access = {}, []
    for line in text.splitlines():
        words = line.split("#")[0].split()
        if words[:1] == ["acl"]:
            acls.setdefault(words[1], []).extend(words[3:])
        elif words[:1] == ["http_access"]:
            access.append((words[1], words[2:]))
    return acls, access


def test_egress_proxy_refuses_the_inside_before_it_allows_anything():
    acls, access = squid_rules(render_squid(GPUHUB_SERVER_SUBNETS="10.128.0.0/16",
                                            PIP_INDEX_URL="https://pypi.example.edu/simple"))
    assert "169.254.169.254/32" in acls["metadata"]
    for blocked in ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                    "169.254.0.0/16", "100.64.0.0/10", "fc00::/7", "fe80::/10", "::1/128",
                    "10.128.0.0/16"):
        assert blocked in acls["inside"], blocked
    assert acls["mirror"] == ["pypi.example.edu"] and acls["students"] == ["10.128.0.0/16"]
    first_allow = next(i for i, (verb, _) in enumerate(access) if verb == "allow")
    denied_first = [args for verb, args in access[:first_allow]]
    assert ["!students"] in denied_first and ["metadata"] in denied_first, access
    # the mirror is the one exception to `inside`; everything after it is refused
    assert access[first_allow] == ("allow", ["mirror"])
    assert access[first_allow + 1] == ("deny", ["inside"])
    assert access[-1] == ("deny", ["all"])


def test_egress_proxy_refuses_a_bad_pool_naming_it():
    result = subprocess.run(["sh", str(REPO / "egress" / "entrypoint.sh"), "--render"],
                            env={"PATH": os.environ["PATH"], "GPUHUB_SERVER_SUBNETS": "all; x"},
                            capture_output=True, text=True)
    assert result.returncode != 0 and "GPUHUB_SERVER_SUBNETS=all; x" in result.stderr


def test_proxy_access_log_prints_no_query():
    """Traefik's access log writes RequestPath with its query, where `?token=` may be
    (issue 12); v3.6 cannot drop only the query, so the path is dropped."""
    fields = render_static("selfsigned")["accessLog"]["fields"]
    assert fields["names"]["RequestPath"] == "drop"
    assert fields.get("defaultMode", "keep") == "keep"  # the router name stays
