"""`gpuhub export z2jh` (hub/z2jh.py): the values file for the zero-to-jupyterhub chart.

The file is checked against the chart's own schema (../shared/schemas, GPUHUB_SCHEMA_DIR),
and real KubeSpawner turns each exported profile into the pod it would ask Kubernetes
for: get_pod_manifest builds the manifest without a cluster (a kubeconfig naming
127.0.0.1 satisfies its start-up; no request is sent). The group-gating snippet is run
as the chart runs hub.extraConfig, against KubeSpawner with users in and out of the
course's group; a student outside the group who names the course anyway is refused.
"""

import argparse
import asyncio
import io
import os
import subprocess
import sys
from pathlib import Path
from unittest.mock import Mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from hub import courses, imagerefs, settings, z2jh

REPO = Path(__file__).resolve().parents[1]
SCHEMA_DIR = Path(os.environ.get("GPUHUB_SCHEMA_DIR", REPO.parent / "shared" / "schemas"))
EXAMPLE = REPO / "catalog" / "catalog.example.yaml"
SECRET = "s3cr3t-client-value-never-in-the-file"
METADATA = {"issuer": "https://sso.example.edu/realms/lab",
            "authorization_endpoint": "https://sso.example.edu/auth",
            "token_endpoint": "https://sso.example.edu/token",
            "userinfo_endpoint": "https://sso.example.edu/userinfo"}
ENV = {"GPUHUB_DOMAIN": "hub.example.edu", "OAUTH_CLIENT_ID": "gpuhub-client",
       "OAUTH_CLIENT_SECRET": SECRET, "GPUHUB_USER_IMAGE": "gpuhub/tensorflow-2.9-gpu:latest",
       "GPUHUB_ADMIN_USERS": "ada", "GPUHUB_CATALOG": str(EXAMPLE)}
PROVIDERS = {
    "github": {"GPUHUB_ALLOWED_GROUPS": "lab-org,lab-org:staff", "GPUHUB_ADMIN_GROUPS": "lab-org:admins"},
    "gitlab": {"GPUHUB_ALLOWED_GROUPS": "lab/students", "GITLAB_URL": "https://gitlab.example.edu"},
    "google": {"GPUHUB_ALLOWED_USERS": "ada@example.edu,bob@example.edu",
               "GOOGLE_HOSTED_DOMAIN": "example.edu"},
    "oidc": {"OIDC_ISSUER": METADATA["issuer"], "GPUHUB_ALLOWED_GROUPS": "students",
             "GPUHUB_ADMIN_GROUPS": "staff"},
}
TWO_GPUS = """\
version: 1
courses:
  - slug: intro
    display_name: Intro
    image: gpuhub/tensorflow-2.9-gpu:latest
  - slug: research
    display_name: Research
    image: registry.example.edu:5000/gpuhub/research:2025
    gpus: 2
    mem_limit: 32g
    cpu_limit: 8
    gpu_max_age: 3600
    groups: [research]
"""


REGISTRY = "registry.example.edu/lab"


def pulled(ref):
    """What the cluster pulls for a catalog image: its own registry, else REGISTRY's."""
    return ref if imagerefs.registry(ref) else f"{REGISTRY}/{ref}"


def env(provider="github", **more):
    return {**ENV, "AUTH_PROVIDER": provider, **PROVIDERS[provider], **more}


def export(provider="github", catalog_text=None, **more):
    """The exported values (a dict), through the real settings and catalog readers."""
    s = settings.load(env(provider, **more), only=z2jh.EXPORT_SETTINGS)
    catalog = (courses.parse_catalog(catalog_text, str(REPO / "catalog" / "x.yaml"))
               if catalog_text else courses.load_catalog(EXAMPLE))
    return z2jh.values(s, catalog, METADATA if provider == "oidc" else None,
                       registry=REGISTRY)


@pytest.fixture(scope="module")
def schema():
    path = SCHEMA_DIR / "z2jh-values.schema.yaml"
    if not path.exists():
        pytest.fail(f"schema {path} not found: set GPUHUB_SCHEMA_DIR to the folder of "
                    "z2jh-values.schema.yaml (../shared/schemas in CI)")
    return yaml.safe_load(path.read_text())


# ------------------------------------------------------------------ the chart's schema
def complete_objects(schema):
    """The schema with `required` dropped only where the chart's defaults are sure to
    supply the keys (the top level: proxy, prePuller...; hub.baseUrl): then every object
    the export writes must be complete by itself, not only as an overlay."""
    out = {k: v for k, v in schema.items() if k != "required"}
    out["properties"] = dict(schema["properties"], hub={
        k: v for k, v in schema["properties"]["hub"].items() if k != "required"})
    return out


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_export_fits_the_charts_schema(schema, provider):
    import jsonschema
    values = export(provider)
    assert z2jh.check_values(values, schema) == []
    assert [e.message for e in jsonschema.Draft7Validator(
        complete_objects(schema)).iter_errors(values)] == []


def test_export_of_a_two_gpu_course_fits_the_schema(schema):
    assert z2jh.check_values(export(catalog_text=TWO_GPUS), schema) == []


@pytest.mark.parametrize("where, bad, field", [
    (("cull", "timeout"), "1h", "cull.timeout"),
    (("singleuser", "storage", "type"), "nfs", "singleuser.storage.type"),
    (("singleuser", "cpu", "limit"), "four", "singleuser.cpu.limit"),
    (("singleuser", "profilelist"), [], "singleuser"),  # a misspelt key
    (("hub", "config", "authenticator"), {}, "hub.config"),  # a section must be a class name
])
def test_a_bad_value_is_caught_naming_the_field(schema, where, bad, field):
    values = export()
    node = values
    for key in where[:-1]:
        node = node.setdefault(key, {})
    node[where[-1]] = bad
    problems = z2jh.check_values(values, schema)
    assert problems and all(p.startswith(f"{field}: ") for p in problems), problems
    if where[-1] == "profilelist":
        assert "'profilelist' was unexpected" in problems[0]


def test_the_cli_refuses_values_the_schema_refuses(tmp_path, monkeypatch, schema):
    """--schema: the export stops before writing, naming the field."""
    broken = dict(schema)
    broken["properties"] = dict(schema["properties"], cull={
        **schema["properties"]["cull"], "properties": {
            **schema["properties"]["cull"]["properties"], "timeout": {"type": "string"}}})
    path = tmp_path / "schema.yaml"
    path.write_text(yaml.safe_dump(broken))
    out = tmp_path / "values.yaml"
    with pytest.raises(z2jh.ExportError, match=r"cull\.timeout: 3600 is not of type 'string'"):
        z2jh.run(args(output=str(out), schema=str(path)), env())
    assert not out.exists()


# ------------------------------------------------------------------ what is exported
def args(**kw):
    return argparse.Namespace(**{"output": "-", "catalog": None, "home_size": "10Gi",
                                 "storage_class": None, "schema": None,
                                 "registry": REGISTRY, **kw})


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_the_client_secret_is_referenced_never_written(provider):
    out = io.StringIO()
    z2jh.run(args(), env(provider), discover=lambda issuer, log: METADATA, out=out)
    text = out.getvalue()
    assert SECRET not in text
    values = yaml.safe_load(text)
    assert values["hub"]["extraEnv"]["OAUTH_CLIENT_SECRET"] == {"valueFrom": {"secretKeyRef": {
        "name": z2jh.SECRET_NAME, "key": z2jh.SECRET_KEY}}}
    # oauthenticator reads OAUTH_CLIENT_SECRET when client_secret is not configured
    assert "client_secret" not in str(values["hub"]["config"])
    assert values["hub"]["config"]["OAuthenticator"]["client_id"] == "gpuhub-client"


def test_github_allow_rules_admins_and_team_groups():
    config = export("github")["hub"]["config"]
    assert config["JupyterHub"]["authenticator_class"] == "oauthenticator.github.GitHubOAuthenticator"
    assert config["GitHubOAuthenticator"]["allowed_organizations"] == ["lab-org", "lab-org:staff"]
    assert config["GitHubOAuthenticator"]["admin_groups"] == ["lab-org:admins"]
    assert config["Authenticator"]["admin_users"] == ["ada"]
    assert config["Authenticator"]["allow_all"] is False
    assert config["Authenticator"]["manage_groups"] is True
    # teams become groups with the hub's own function, run by the chart's hub
    snippet = export("github")["hub"]["extraConfig"]["gpuhub-auth_state_groups_key.py"]
    from traitlets.config import Config
    c = Config()
    scope = {"c": c}
    exec(snippet, scope)  # noqa: S102 (the exported snippet, as the chart runs it)
    teams = {"teams": [{"organization": {"login": "Lab-Org"}, "slug": "Staff"}]}
    assert c.GitHubOAuthenticator.auth_state_groups_key(teams) == ["lab-org", "lab-org:staff"]


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_every_snippet_runs_as_the_chart_runs_it(provider):
    """hub.extraConfig is exec'd with `c` and `get_config` defined; each snippet sets the
    trait its name says to the function it defines."""
    from traitlets.config import Config
    values = export(provider)
    for name, snippet in values["hub"].get("extraConfig", {}).items():
        c = Config()
        exec(compile(snippet, name, "exec"), {"c": c, "get_config": lambda k, d=None: d})  # noqa: S102
        section = next(iter(c.values()))
        assert len(c) == 1 and all(callable(v) for v in section.values()), name


def test_gitlab_oidc_and_google_rules():
    gitlab = export("gitlab")["hub"]["config"]["GitLabOAuthenticator"]
    assert gitlab["allowed_groups"] == ["lab/students"]
    assert gitlab["gitlab_url"] == "https://gitlab.example.edu"
    assert "gpuhub-modify_auth_state_hook.py" in export("gitlab")["hub"]["extraConfig"]
    oidc = export("oidc")["hub"]["config"]["GenericOAuthenticator"]
    assert (oidc["authorize_url"], oidc["token_url"], oidc["userdata_url"]) == (
        METADATA["authorization_endpoint"], METADATA["token_endpoint"],
        METADATA["userinfo_endpoint"])
    assert oidc["allowed_groups"] == ["students"] and oidc["admin_groups"] == ["staff"]
    assert oidc["auth_state_groups_key"] == "oauth_user.groups"
    google = export("google")["hub"]["config"]
    assert google["GoogleOAuthenticator"]["hosted_domain"] == ["example.edu"]
    assert google["Authenticator"]["allowed_users"] == ["ada@example.edu", "bob@example.edu"]


def test_the_username_pattern_holds_for_the_whole_name():
    """JupyterHub matches username_pattern at the start only; the export anchors it."""
    import re
    pattern = export()["hub"]["config"]["Authenticator"]["username_pattern"]
    assert re.match(pattern, "alice")
    for hostile in ("alice/../bob", "alice\n", "alice bob", "alice%2f"):
        assert not re.match(pattern, hostile), hostile


def test_dummy_is_not_exported():
    s = settings.load({**ENV, "AUTH_PROVIDER": "dummy"}, only=z2jh.EXPORT_SETTINGS)
    with pytest.raises(z2jh.ExportError, match="AUTH_PROVIDER=dummy"):
        z2jh.values(s, None)


def test_images_without_a_registry_are_not_left_to_docker_hub():
    s = settings.load(env(), only=z2jh.EXPORT_SETTINGS)
    catalog = courses.parse_catalog(TWO_GPUS, str(REPO / "catalog" / "x.yaml"))
    with pytest.raises(z2jh.ExportError, match="gpuhub/tensorflow-2.9-gpu:latest. Push them"):
        z2jh.values(s, catalog)
    with pytest.raises(z2jh.ExportError, match="--registry lab: expected a registry host"):
        z2jh.values(s, catalog, registry="lab")
    profiles = z2jh.values(s, catalog, registry="localhost:5000")["singleuser"]["profileList"]
    assert [p["kubespawner_override"]["image"] for p in profiles] == [
        "localhost:5000/gpuhub/tensorflow-2.9-gpu:latest",
        "registry.example.edu:5000/gpuhub/research:2025"]  # named its own: unchanged


def test_profiles_culling_image_and_storage():
    values = export()
    single = values["singleuser"]
    assert single["image"] == {"name": f"{REGISTRY}/gpuhub/tensorflow-2.9-gpu", "tag": "latest"}
    assert single["storage"]["type"] == "dynamic" and single["storage"]["capacity"] == "10Gi"
    assert single["storage"]["homeMountPath"] == "/home/jovyan"
    assert (single["uid"], single["fsGid"]) == (1000, 100)
    profiles = {p["slug"]: p for p in single["profileList"]}
    assert list(profiles) == ["tensorflow", "cpu", "cs101"]
    assert profiles["tensorflow"]["default"] is True
    assert profiles["tensorflow"]["kubespawner_override"]["extra_resource_limits"] == {
        "nvidia.com/gpu": "1"}
    assert "extra_resource_limits" not in profiles["cpu"]["kubespawner_override"]
    assert values["custom"]["gpuhub"]["courseGroups"] == {"cs101": ["cs101-2025"]}
    assert values["cull"] == {"enabled": True, "users": False, "timeout": 3600}
    # a CPU course in the catalog: the GPU maximum age is not the culler's maxAge
    assert any("GPUHUB_GPU_MAX_AGE" in n for n in z2jh.notes(
        settings.load(env(), only=z2jh.EXPORT_SETTINGS), courses.load_catalog(EXAMPLE)))


def test_gpu_max_age_becomes_max_age_when_every_course_has_a_gpu():
    every_gpu = TWO_GPUS.replace("image: gpuhub/tensorflow-2.9-gpu:latest",
                                 "image: gpuhub/tensorflow-2.9-gpu:latest\n    gpus: 1", 1)
    assert export(catalog_text=every_gpu.replace("    gpu_max_age: 3600\n", ""))["cull"][
        "maxAge"] == 14400
    # a course with an age of its own: not expressible, so not set
    assert "maxAge" not in export(catalog_text=every_gpu)["cull"]
    assert export(GPUHUB_IDLE_TIMEOUT="0")["cull"]["enabled"] is False


def test_egress_follows_gpuhub_user_egress():
    rules = export()["singleuser"]["networkPolicy"]["egressAllowRules"]
    assert rules == {"nonPrivateIPs": True, "privateIPs": False, "cloudMetadataServer": False}
    s = settings.load(env(GPUHUB_USER_EGRESS="deny"), only=z2jh.EXPORT_SETTINGS)
    assert z2jh.values(s, None, registry=REGISTRY)["singleuser"]["networkPolicy"][
        "egressAllowRules"]["nonPrivateIPs"] is False
    assert any("GPUHUB_USER_EGRESS=deny" in n for n in z2jh.notes(s))


def test_sizes_become_kubernetes_quantities():
    values = export(GPUHUB_SHM_SIZE="1g", GPUHUB_DISK_LIMIT="20g")
    assert values["singleuser"]["storage"]["extraVolumes"][0]["emptyDir"]["sizeLimit"] == "1Gi"
    assert values["singleuser"]["extraResource"]["limits"] == {"ephemeral-storage": "20Gi"}


def test_the_command_line_writes_the_file(tmp_path):
    out = tmp_path / "values.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "hub.cli", "export", "z2jh", "--output", str(out),
         "--registry", REGISTRY,
         "--schema", str(SCHEMA_DIR / "z2jh-values.schema.yaml")],
        env={"PATH": os.environ["PATH"], **env("github")}, cwd=REPO,
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert text.startswith("# Values for the zero-to-jupyterhub Helm chart")
    assert "course cs101: gpu_idle_timeout 900, gpu_max_age 7200" in text
    assert yaml.safe_load(text)["singleuser"]["profileList"][2]["slug"] == "cs101"
    assert SECRET not in text + result.stdout + result.stderr


def test_the_command_line_names_a_bad_setting():
    result = subprocess.run(
        [sys.executable, "-m", "hub.cli", "export", "z2jh"],
        env={"PATH": os.environ["PATH"], **env("github", GPUHUB_IDLE_TIMEOUT="an hour")},
        cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert "GPUHUB_IDLE_TIMEOUT='an hour' is not valid" in result.stderr


def test_the_documented_snippet_is_the_exported_one():
    text = (REPO / "docs" / "scale-out.md").read_text()
    shown = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert shown.strip() and shown in z2jh.GROUP_GATING


# ------------------------------------------------------------------ KubeSpawner
def kube_spawner(config, user):
    try:
        from kubespawner import KubeSpawner
    except ImportError:  # a venv from before it was added: fail with the fix, do not skip
        pytest.fail("jupyterhub-kubespawner is missing: it is in tests/requirements.txt, "
                    "run `make setup`")
    from jupyterhub.objects import Hub
    return KubeSpawner(config=config, hub=Hub(), user=user, _mock=True)


@pytest.fixture(scope="module", autouse=True)
def kubeconfig(tmp_path_factory):
    """KubeSpawner loads a kubeconfig when it is made; this one names a port on
    127.0.0.1 that nothing listens on. Building a manifest sends no request."""
    path = tmp_path_factory.mktemp("kube") / "config"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "none",
        "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "none", "user": {"token": "unused"}}],
        "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}]}))
    old = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(path)
    yield
    if old is None:
        os.environ.pop("KUBECONFIG", None)
    else:
        os.environ["KUBECONFIG"] = old


class Group:
    def __init__(self, name):
        self.name = name


class MockUser(Mock):
    """What KubeSpawner and the snippet read of a JupyterHub user."""

    def __init__(self, name, groups=()):
        from jupyterhub.objects import Server
        super().__init__()
        self.name = name
        self.id = 7
        self.groups = [Group(g) for g in groups]
        self.server = Server()
        self.url = self.server.url
        self.escaped_name = name


def chart_config(values, gating=True):
    """KubeSpawner's configuration as the chart's jupyterhub_config.py makes it from the
    keys the export sets, then hub.extraConfig run in sorted order (as the chart does)."""
    from traitlets.config import Config
    c = Config()
    single = values["singleuser"]
    c.KubeSpawner.image = f"{single['image']['name']}:{single['image']['tag']}"
    c.KubeSpawner.mem_limit = single["memory"]["limit"]
    c.KubeSpawner.cpu_limit = single["cpu"]["limit"]
    c.KubeSpawner.uid = single["uid"]
    c.KubeSpawner.fs_gid = single["fsGid"]
    c.KubeSpawner.profile_list = single.get("profileList", [])
    c.KubeSpawner.extra_resource_limits = dict(single.get("extraResource", {}).get("limits", {}))

    def get_config(key, default=None):  # the chart's z2jh.get_config: dotted keys
        node = values
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    if gating:
        for name, snippet in sorted(values["hub"].get("extraConfig", {}).items()):
            if name == "gpuhub-course-groups.py":
                exec(snippet, {"c": c, "get_config": get_config})  # noqa: S102
    return c


def spawner(values, user):
    return kube_spawner(chart_config(values), user)


async def pod(values, user, options):
    s = spawner(values, user)
    s.user_options = options
    await s.load_user_options()
    return await s.get_pod_manifest(), s


def catalog_of(text):
    return (courses.parse_catalog(text, str(REPO / "catalog" / "x.yaml")) if text
            else courses.load_catalog(EXAMPLE))


@pytest.mark.parametrize("catalog_text", [None, TWO_GPUS], ids=["example", "two-gpus"])
async def test_each_profile_renders_its_pod(catalog_text):
    """For every course: the pod has the course's image, limits and GPUs (a member of
    every group asks, so the gating lets each through)."""
    values = export(catalog_text=catalog_text)
    catalog = catalog_of(catalog_text)
    member = MockUser("ada", groups=[g for c in catalog.courses for g in c.groups])
    for course in catalog.courses:
        manifest, _ = await pod(values, member, {"profile": course.slug})
        container = manifest.spec.containers[0]
        assert container.image == pulled(course.image), course.slug
        limits = container.resources.limits
        if course.gpus:
            assert limits["nvidia.com/gpu"] == str(course.gpus), course.slug
        else:
            assert "nvidia.com/gpu" not in limits, course.slug
        mem = course.mem_limit or "8G"
        assert limits["memory"] == int(mem[:-1]) * 1024 ** 3, course.slug
        assert float(limits["cpu"]) == (course.cpu_limit or 4.0), course.slug
        env = {e.name: e.value for e in container.env}
        if course.nbgitpuller:
            assert env["JUPYTERHUB_DEFAULT_URL"] == course.git_pull_default_url()
        assert container.security_context["runAsUser"] == 1000
        assert manifest.spec.security_context["fsGroup"] == 100
        # the student's pod gets no token for the Kubernetes API
        assert manifest.spec.automount_service_account_token is False


async def test_no_profile_named_starts_the_default_course():
    manifest, _ = await pod(export(), MockUser("bob"), {})
    assert manifest.spec.containers[0].image == pulled(courses.load_catalog(EXAMPLE).default.image)
    assert manifest.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"


async def test_group_gated_course_is_hidden_from_outsiders():
    values = export()
    outsider = spawner(values, MockUser("bob", groups=["other"]))
    member = spawner(values, MockUser("ada", groups=["cs101-2025"]))
    outsider_form = await outsider.get_options_form()
    member_form = await member.get_options_form()
    assert 'value="cs101"' not in outsider_form and "CS 101" not in outsider_form
    assert 'value="tensorflow"' in outsider_form and 'value="cpu"' in outsider_form
    assert 'value="cs101"' in member_form
    # without the snippet the outsider would see it: the snippet is what hides it
    ungated = kube_spawner(chart_config(values, gating=False), MockUser("bob"))
    assert 'value="cs101"' in await ungated.get_options_form()


@pytest.mark.parametrize("through", ["rest-api", "form"])
async def test_outsider_naming_the_course_is_refused(through):
    """A student outside cs101-2025 sends the slug anyway (POST /users/bob/server with
    {"profile": "cs101"}, or a hand-made form): the start fails before any pod exists,
    and the course's image is never applied. A member with the same request starts it."""
    values = export()
    outsider = spawner(values, MockUser("bob", groups=["cs101-2024"]))
    options = ({"profile": "cs101"} if through == "rest-api"
               else outsider.options_from_form({"profile": ["cs101"]}))
    outsider.user_options = options
    with pytest.raises(ValueError, match="cs101"):
        await outsider.load_user_options()
    assert outsider.image != pulled("gpuhub/course-cs101:2025")
    manifest, _ = await pod(values, MockUser("ada", groups=["cs101-2025"]), options)
    assert manifest.spec.containers[0].image == pulled("gpuhub/course-cs101:2025")


EXAMPLE_VALUES = export()


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(slug=st.one_of(st.sampled_from(["cs101", "CS101", " cs101", "cs101 ", "cs101\n",
                                       "cs101/", "cs10", "cs1011"]), st.text(max_size=12)))
def test_no_slug_gives_an_outsider_the_gated_course(slug):
    """Whatever a student outside the group sends as the profile, they get an open course
    or a refusal, never cs101's image."""
    async def attempt():
        s = spawner(EXAMPLE_VALUES, MockUser("bob"))
        s.user_options = {"profile": slug}
        try:
            await s.load_user_options()
        except ValueError:
            return None
        return (await s.get_pod_manifest()).spec.containers[0].image

    image = asyncio.run(attempt())
    assert image in (None, pulled("gpuhub/tensorflow-2.9-gpu:latest"))
