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
    assert set(config["services"]) == {"proxy", "hub", "user-image"}


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
