"""One default per setting: hub.settings, .env.example, docker-compose.yml, images/build
and the Dockerfiles' ARGs give every variable the same default. Where .env.example
deliberately shows another value, `EXAMPLE_DIFFERS` names it and says why."""

import importlib.machinery
import importlib.util
import re
from pathlib import Path

import yaml
from dotenv import dotenv_values

from hub import settings

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_DIFFERS = {
    "GPUHUB_DOMAIN": "required (no default); the example leaves it empty so that nothing starts for a wrong name",
    "AUTH_PROVIDER": "required (no default); the example starts with dummy, to try the hub",
    "GPUHUB_USER_IMAGE": "required (no default); the example names the image compose builds",
}
COMPOSE_REF = re.compile(r"\$\{([A-Z0-9_]+)(?::?([-?]))?([^}]*)\}")


def example():
    """NAME -> value of every variable in .env.example, set or commented out (# NAME=value)."""
    path = REPO / ".env.example"
    values = {m.group(1): m.group(2) for m in
              re.finditer(r"^# ?([A-Z][A-Z0-9_]+)=(.*)$", path.read_text(), re.M)}
    values.update({k: v or "" for k, v in dotenv_values(path).items()})
    return values


def compose_text():
    return (REPO / "docker-compose.yml").read_text()


def resolve(value):
    """A compose value with every ${NAME:-default} replaced by its default."""
    return COMPOSE_REF.sub(lambda m: m.group(3) if m.group(2) == "-" else m.group(0), value)


def test_settings_defaults_are_the_example_values():
    values = example()
    required = {s.name for s in settings.SETTINGS if s.default is None}
    assert required == set(EXAMPLE_DIFFERS), "a required setting is an explained exception"
    wrong = {s.name: (values.get(s.name), s.default) for s in settings.SETTINGS
             if s.name not in EXAMPLE_DIFFERS and values.get(s.name) != s.default}
    assert not wrong, f".env.example value vs the default in hub/settings.py: {wrong}"


def test_compose_defaults_are_the_example_values():
    values = example()
    refs = COMPOSE_REF.findall(compose_text())
    assert refs
    for name, kind, rest in refs:
        if kind == "-":
            assert values.get(name) == rest, f"docker-compose.yml: ${{{name}:-{rest}}}, " \
                                             f".env.example: {values.get(name)!r}"
        elif kind == "?":
            assert name in EXAMPLE_DIFFERS, f"compose requires {name}: say why in EXAMPLE_DIFFERS"


def test_what_compose_sets_for_the_hub_is_the_settings_default():
    """The hub's `environment:` in compose wins over .env: with the example's values it
    must give what hub.settings would take anyway, so both stories agree."""
    environment = yaml.safe_load(compose_text())["services"]["hub"]["environment"]
    assert {"GPUHUB_HUB_CONNECT_URL", "GPUHUB_TRAEFIK_API_URL"} <= set(environment)
    for name, value in environment.items():
        if name in LIBRARY_VARIABLES:
            continue
        assert resolve(value) == settings.BY_NAME[name].default, (name, value)


# variables compose sets for the hub that libraries read, not hub.settings
LIBRARY_VARIABLES = {
    "DOCKER_HOST": "docker-py and DockerSpawner: the Docker API guard's socket",
    "PGPASSWORD": "libpq (psycopg2): GPUHUB_POSTGRES_PASSWORD, for GPUHUB_DB_URL",
}


def test_images_build_and_dockerfile_defaults_are_the_example_values():
    values = example()
    loader = importlib.machinery.SourceFileLoader("images_build", str(REPO / "images" / "build"))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    assert module.DEFAULTS and all(values[k] == v for k, v in module.DEFAULTS.items()), module.DEFAULTS
    dockerfiles = [REPO / "hub" / "Dockerfile", REPO / "guard" / "Dockerfile",
                   REPO / "tests" / "e2e" / "chp" / "Dockerfile",
                   *sorted((REPO / "images").glob("*/Dockerfile"))]
    checked = 0
    for dockerfile in dockerfiles:
        for name, default in re.findall(r"^ARG ([A-Z0-9_]+)=(.*)$", dockerfile.read_text(), re.M):
            if name in values:
                checked += 1
                assert default == values[name], f"{dockerfile.relative_to(REPO)}: ARG {name}={default}"
    assert checked >= 5  # PIP_INDEX_URL, APT_MIRROR and GPUHUB_VERSION in several files
