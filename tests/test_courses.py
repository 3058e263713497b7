"""The course catalog (hub/courses.py) and the image build command (images/build).

A bad catalog must stop the hub with the file, the entry and the field named; the
build command is run with --dry-run and against a stand-in `docker` that records what
it is asked, so no Docker engine is needed."""

import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from hub.courses import SCHEMA, CatalogError, check_groups, load_catalog, parse_catalog

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "images" / "build"
TEMPLATE = ROOT / "images" / "course-template"
BASE_TAG = "gpuhub/tensorflow-2.9-gpu:latest"

GOOD = """\
version: 1
courses:
  - slug: intro
    display_name: Intro
    image: gpuhub/tensorflow-2.9-gpu:latest
  - slug: cs101
    display_name: CS 101
    description: Machine learning
    image: registry.example.edu:5000/gpuhub/cs101:2025
    gpus: 1
    allow_cpu: true
    mem_limit: 8g
    cpu_limit: 0.5
    groups: [cs101, staff]
    nbgitpuller:
      repo: https://github.com/org/cs101-notebooks
      branch: main
      urlpath: lab/tree/cs101-notebooks/week 1.ipynb
  - slug: research
    display_name: Research
    image: gpuhub/research:latest
    gpus: 2
    groups: [research]
"""


def write(tmp_path, text, name="catalog.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problem(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message  # the file, first
    return message


# ---------------------------------------------------------------- a good catalog
def test_example_catalog_loads_where_it_is_meant_to_be_copied():
    catalog = parse_catalog((ROOT / "catalog" / "catalog.example.yaml").read_text(),
                            ROOT / "catalog" / "catalog.yaml")
    assert catalog.default.slug == "tensorflow"
    assert [c.slug for c in catalog.visible_to([])] == ["tensorflow", "cpu"]
    assert [c.slug for c in catalog.visible_to(["cs101-2025"])] == ["tensorflow", "cpu", "cs101"]
    assert catalog.get("cs101").build.context == TEMPLATE


def test_good_catalog_loads_into_frozen_courses(tmp_path):
    catalog = load_catalog(write(tmp_path, GOOD.replace("week 1", "week1")))
    intro, cs101, research = catalog.courses
    assert catalog.default is intro and intro.default and not cs101.default
    assert (intro.gpus, intro.allow_cpu, intro.groups, intro.mem_limit, intro.cpu_limit) == \
        (0, False, (), None, None)
    assert cs101.image == "registry.example.edu:5000/gpuhub/cs101:2025"
    assert cs101.mem_limit == "8G"  # JupyterHub's ByteSpecification takes upper case only
    assert cs101.cpu_limit == 0.5 and cs101.gpus == 1 and cs101.allow_cpu
    assert cs101.groups == ("cs101", "staff")
    assert catalog.get("research") is research and catalog.get("nope") is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        cs101.gpus = 8


def test_marked_default_wins_and_is_the_only_default(tmp_path):
    text = GOOD.replace("    gpus: 2\n", "    gpus: 2\n    default: true\n")
    text = text.replace("    groups: [research]\n", "")
    catalog = load_catalog(write(tmp_path, text.replace("week 1", "week1")))
    assert catalog.default.slug == "research"
    assert [c.slug for c in catalog.courses if c.default] == ["research"]


def test_visible_to_groups(tmp_path):
    catalog = load_catalog(write(tmp_path, GOOD.replace("week 1", "week1")))
    slugs = lambda groups: [c.slug for c in catalog.visible_to(groups)]  # noqa: E731
    # nobody is left with nothing: the default is open to everybody
    assert slugs([]) == ["intro"]
    assert slugs(["unrelated"]) == ["intro"]
    assert slugs(["staff"]) == ["intro", "cs101"]
    assert slugs(iter(["research", "cs101"])) == ["intro", "cs101", "research"]


def test_nbgitpuller_link_is_url_encoded(tmp_path):
    catalog = parse_catalog(GOOD.replace("week 1", "week%201"), "catalog.yaml")
    cs101 = catalog.get("cs101")
    url = cs101.nbgitpuller_url()
    assert url.startswith("/hub/user-redirect/git-pull?repo=https%3A%2F%2Fgithub.com%2Forg%2F")
    parts = urlsplit(url)
    assert parse_qs(parts.query) == {
        "repo": ["https://github.com/org/cs101-notebooks"], "branch": ["main"],
        "urlpath": ["lab/tree/cs101-notebooks/week%201.ipynb"]}
    assert "%252520" not in url and "%2520" in url  # encoded once, not twice
    assert cs101.nbgitpuller_url("/jhub/") .startswith("/jhub/hub/user-redirect/git-pull?")
    assert cs101.git_pull_default_url().startswith("/git-pull?repo=https%3A%2F%2F")
    assert catalog.get("intro").nbgitpuller_url() is None


def test_nbgitpuller_link_leaves_out_what_is_not_set():
    catalog = parse_catalog("""
courses:
  - slug: a
    display_name: A
    image: a/b
    nbgitpuller: {repo: "https://example.edu/git/a b?c=d&e"}
""".replace("a b", "a+b"))
    url = catalog.get("a").nbgitpuller_url()
    assert parse_qs(urlsplit(url).query) == {"repo": ["https://example.edu/git/a+b?c=d&e"]}
    assert "&branch" not in url and "&urlpath" not in url


# ---------------------------------------------------------------- bad catalogs
BAD = {
    "unknown field": ("""
        courses:
          - slug: intro
            display_name: Intro
            image: a/b
          - slug: cs101
            display_name: CS 101
            image: a/b
            gpu: 1
        """, ["courses[1] (slug 'cs101')", "unknown field 'gpu'", "did you mean 'gpus'",
              "expected one of: allow_cpu, build,"]),
    "missing image": ("""
        courses:
          - slug: cs101
            display_name: CS 101
        """, ["courses[0] (slug 'cs101')", "missing required field 'image'"]),
    "bad slug": ("""
        courses:
          - slug: CS_101
            display_name: CS 101
            image: a/b
        """, ["courses[0] (slug 'CS_101')", "field 'slug'", "lowercase letters, digits and '-'"]),
    "two defaults": ("""
        courses:
          - {slug: a, display_name: A, image: a/b, default: true}
          - {slug: b, display_name: B, image: a/b, default: true}
        """, ["courses[1] (slug 'b')", "field 'default'", "only one course may be the default",
              "courses[0] (slug 'a')"]),
    "duplicate slug": ("""
        courses:
          - {slug: a, display_name: A, image: a/b}
          - {slug: a, display_name: B, image: a/c}
        """, ["courses[1] (slug 'a')", "field 'slug'", "duplicate slug 'a'"]),
    "restricted default": ("""
        courses:
          - {slug: a, display_name: A, image: a/b, groups: [staff]}
          - {slug: b, display_name: B, image: a/b}
        """, ["courses[0] (slug 'a')", "field 'groups'", "open to everybody",
              "none says 'default: true'"]),
    "empty catalog": ("courses: []\n", ["field 'courses'", "at least one"]),
    "no courses key": ("version: 1\n", ["missing required field 'courses'"]),
    "unknown top-level key": ("courses: []\ncourse: []\n", ["unknown field 'course'"]),
    "wrong version": ("version: 2\ncourses: [{slug: a, display_name: A, image: a/b}]\n",
                      ["field 'version'", "the integer 2"]),
    "gpus as text": ("courses: [{slug: a, display_name: A, image: a/b, gpus: two}]\n",
                     ["courses[0] (slug 'a')", "field 'gpus'", "expected a whole number",
                      "the string 'two'"]),
    "gpus as bool": ("courses: [{slug: a, display_name: A, image: a/b, gpus: true}]\n",
                     ["field 'gpus'", "expected a whole number", "the boolean True"]),
    "slug read as bool": ("courses: [{slug: no, display_name: A, image: a/b}]\n",
                          ["courses[0]:", "field 'slug'", "quote it"]),
    "slug read as date": ("courses: [{slug: 2025-01-01, display_name: A, image: a/b}]\n",
                          ["field 'slug'", "a date '2025-01-01'"]),
    "groups not a list": ("courses: [{slug: a, display_name: A, image: a/b, groups: staff}]\n",
                          ["field 'groups'", "expected a list"]),
    "group not a string": ("courses:\n  - {slug: x, display_name: A, image: a/b}\n"
                           "  - {slug: a, display_name: A, image: a/b, groups: [1]}\n",
                           ["courses[1] (slug 'a')", "field 'groups[0]'", "expected a string"]),
    "huge gpus": ("courses: [{slug: a, display_name: A, image: a/b, gpus: 100000000000000000000}]\n",
                  ["field 'gpus'", "0 to 16"]),
    "negative gpus": ("courses: [{slug: a, display_name: A, image: a/b, gpus: -1}]\n",
                      ["field 'gpus'", "0 to 16"]),
    "infinite cpus": ("courses: [{slug: a, display_name: A, image: a/b, cpu_limit: .inf}]\n",
                      ["field 'cpu_limit'"]),
    "nan cpus": ("courses: [{slug: a, display_name: A, image: a/b, cpu_limit: .nan}]\n",
                 ["field 'cpu_limit'", "finite"]),
    "zero cpus": ("courses: [{slug: a, display_name: A, image: a/b, cpu_limit: 0}]\n",
                  ["field 'cpu_limit'", "above 0"]),
    "bad memory": ("courses: [{slug: a, display_name: A, image: a/b, mem_limit: 8 GB}]\n",
                   ["field 'mem_limit'", "'8G'"]),
    "memory as number": ("courses: [{slug: a, display_name: A, image: a/b, mem_limit: 8}]\n",
                         ["field 'mem_limit'", "expected a string"]),
    "bad image": ("courses: [{slug: a, display_name: A, image: 'Gpuhub/Course X'}]\n",
                  ["field 'image'", "lowercase repository"]),
    "long description": ("courses: [{slug: a, display_name: A, image: a/b, description: "
                         + "x" * 5000 + "}]\n",
                         ["field 'description'", "5000 characters", "at most 2000"]),
    "bad git url": ("courses: [{slug: a, display_name: A, image: a/b, "
                    "nbgitpuller: {repo: 'file:///etc/passwd'}}]\n",
                    ["field 'nbgitpuller.repo'", "https://"]),
    "unknown nbgitpuller key": ("courses: [{slug: a, display_name: A, image: a/b, "
                                "nbgitpuller: {repo: 'https://x.org/r', ref: main}}]\n",
                                ["field 'nbgitpuller'", "unknown field 'ref'"]),
    "build arg as number": ("courses: [{slug: a, display_name: A, image: a/b, "
                            "build: {context: ., args: {PY: 3.10}}}]\n",
                            ["field 'build.args.PY'", "the number 3.1", "quote values"]),
    "build without context": ("courses: [{slug: a, display_name: A, image: a/b, build: {}}]\n",
                              ["field 'build'", "missing required field 'context'"]),
    "entry not a mapping": ("courses: [{slug: a, display_name: A, image: a/b}, [1, 2]]\n",
                            ["courses[1]:", "expected a mapping, got a list"]),
    "not a mapping": ("- slug: a\n- slug: b\n", ["the file holds a list",
                                                 "expected a mapping with a 'courses' list"]),
    "a bare string": ("just text\n", ["the file holds the string 'just text'"]),
    "empty file": ("", ["the file is empty"]),
    "duplicate key": ("courses:\n  - slug: a\n    slug: b\n",
                      ["line 3", "duplicate key 'slug' (first on line 2)"]),
    "syntax error": ("courses: [\n", ["line 2", "not valid YAML"]),
    "python tag": ("courses: !!python/object/apply:os.system ['true']\n",
                   ["not valid YAML", "python/object/apply"]),
    "deep nesting": ("courses: " + "[" * 3000 + "]" * 3000 + "\n", ["nested"]),
    # 9**7 values once the aliases are expanded
    "billion laughs": ("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n" for prev, name in
        [("a", "b"), ("b", "c"), ("c", "d"), ("d", "e"), ("e", "f"), ("f", "g")])
        + "courses: *g\n", ["too large or too deeply nested"]),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_catalog_names_file_entry_and_field(tmp_path, name):
    text, expected = BAD[name]
    message = problem(tmp_path, text)
    for part in expected:
        assert part in message, f"{part!r} not in: {message}"
    assert len(message) < 3000  # never a dump of the (possibly huge) value


def test_every_problem_is_reported_at_once(tmp_path):
    message = problem(tmp_path, """
        courses:
          - {slug: a, display_name: A, image: a/b, gpu: 1}
          - {slug: B, display_name: B}
        """)
    lines = message.splitlines()
    assert len(lines) == 3, message
    assert "courses[0] (slug 'a')" in lines[0] and "courses[1] (slug 'B')" in lines[1]


def test_unreadable_files(tmp_path):
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "missing.yaml")
    (tmp_path / "latin1.yaml").write_bytes("courses: [{slug: é}]".encode("latin-1"))
    with pytest.raises(CatalogError, match="latin1.yaml: not UTF-8"):
        load_catalog(tmp_path / "latin1.yaml")
    (tmp_path / "big.yaml").write_text("# " + "x" * (2 << 20))
    with pytest.raises(CatalogError, match="larger than"):
        load_catalog(tmp_path / "big.yaml")


def test_check_groups_names_entry_and_group(tmp_path):
    path = write(tmp_path, GOOD.replace("week 1", "week1"))
    catalog = load_catalog(path)
    check_groups(catalog, ["cs101", "staff", "research", "extra"])
    with pytest.raises(CatalogError) as caught:
        check_groups(catalog, {"cs101", "research"})
    message = str(caught.value)
    assert message == (f"{path}: courses[1] (slug 'cs101'): field 'groups': unknown group "
                       "'staff' (existing groups: cs101, research; add it to GPUHUB_GROUPS "
                       "or sync it from the login)")


def test_schema_describes_every_field_and_allows_no_others():
    def walk(node, where):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                assert node.get("additionalProperties") is False, where
                for name, sub in node["properties"].items():
                    assert sub.get("description"), f"{where}.{name} has no description"
            for key, sub in node.items():
                walk(sub, f"{where}.{key}")
    walk(SCHEMA, "schema")
    course = SCHEMA["$defs"]["course"]["properties"]
    assert set(course) == {"slug", "display_name", "description", "image", "default", "gpus",
                           "allow_cpu", "mem_limit", "cpu_limit", "groups", "nbgitpuller",
                           "build", "gpu_hours_per_week", "idle_timeout", "gpu_idle_timeout",
                           "gpu_max_age"}


# ---------------------------------------------------------------- the course template
def test_template_dockerfile_follows_the_house_rules():
    text = (TEMPLATE / "Dockerfile").read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert instructions[0] == "ARG BASE_IMAGE=gpuhub/tensorflow-2.9-gpu:latest"
    assert instructions[1] == "FROM $BASE_IMAGE"
    assert instructions[2] == 'SHELL ["/bin/bash", "-o", "pipefail", "-c"]'
    assert instructions[-1] == "USER ${NB_UID}"
    for arg in ("ARG PIP_INDEX_URL=https://pypi.tuna.tsinghua.edu.cn/simple", "ARG APT_MIRROR="):
        assert arg in instructions
    assert "apt-get install --yes --no-install-recommends" in text
    # CA certificates, apt mirror and the guarded pip install: the step every image shares
    assert "RUN gpuhub-image-setup ca /tmp/course/certs \\" in instructions
    assert ' && gpuhub-image-setup apt-mirror "$APT_MIRROR"' in instructions
    assert "RUN gpuhub-image-setup course-install /tmp/course/requirements.txt \\" in instructions
    assert "EXTRA_CA_BUNDLE" not in text


def read_pins(path):
    return dict(re.findall(r"^([a-z0-9][a-z0-9._-]*)==(\S+) \\$", path.read_text(), re.M))


def test_template_lock_is_hashed_and_agrees_with_the_base_lock():
    lock = TEMPLATE / "requirements.txt"
    text = lock.read_text()
    assert "uv pip compile requirements.in -c ../tensorflow-2.9-gpu/requirements.txt " \
           "--python-version 3.8 --python-platform x86_64-manylinux_2_17" in text
    pins = read_pins(lock)
    assert "sympy" in pins
    assert text.count("==") == len(pins) and text.count("--hash=sha256:") >= len(pins)
    base = read_pins(ROOT / "images" / "tensorflow-2.9-gpu" / "requirements.txt")
    clashes = {n: (v, base[n]) for n, v in pins.items() if n in base and base[n] != v}
    assert not clashes, f"the course would change the base image's packages: {clashes}"


# ---------------------------------------------------------------- images/build
FAKE_DOCKER = """\
#!{python}
# Stands in for docker: records each call, answers `image inspect` from what it "built".
import json, os, sys
state_file = os.environ["FAKE_DOCKER_STATE"]
state = json.load(open(state_file)) if os.path.exists(state_file) else {{"labels": {{}}, "calls": []}}
args = sys.argv[1:]
state["calls"].append({{"args": args, "buildkit": os.environ.get("DOCKER_BUILDKIT")}})
code = 0
if args[:2] == ["image", "inspect"]:
    if args[-1] in state["labels"]:
        print(state["labels"][args[-1]])
    else:
        print("Error: No such image: " + args[-1], file=sys.stderr)
        code = 1
elif args[:1] == ["build"]:
    label = args[args.index("--label") + 1].split("=", 1)[1]
    state["labels"][args[args.index("--tag") + 1]] = label
json.dump(state, open(state_file, "w"))
sys.exit(code)
"""

ENV_FILE = """\
# mirrors for the builds
PIP_INDEX_URL=https://mirror.example.edu/pypi/simple
APT_MIRROR="https://mirror.example.edu/ubuntu"
IMAGE_REGISTRY=registry.example.edu:5000
"""


@pytest.fixture
def project(tmp_path):
    """A catalog with two built courses sharing one template copy, one without build."""
    shutil.copytree(TEMPLATE, tmp_path / "courses" / "cs101")
    (tmp_path / "catalog").mkdir()
    catalog = write(tmp_path / "catalog", """\
        courses:
          - {slug: tf, display_name: TF, image: gpuhub/tensorflow-2.9-gpu:latest, default: true}
          - slug: cs101
            display_name: CS 101
            image: gpuhub/course-cs101:2025
            build:
              context: ../courses/cs101
              args: {COURSE_VERSION: "2025"}
          - slug: cs101-cpu
            display_name: CS 101 without GPU
            image: gpuhub/course-cs101:2025
            build: {context: ../courses/cs101, args: {COURSE_VERSION: "2025"}}
        """)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER.format(python=sys.executable))
    (bin_dir / "docker").chmod(0o755)
    env_file = tmp_path / ".env"
    env_file.write_text(ENV_FILE)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PIP_INDEX_URL", "APT_MIRROR", "EXTRA_CA_BUNDLE", "IMAGE_REGISTRY")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
               FAKE_DOCKER_STATE=str(tmp_path / "docker-state.json"))

    class Project:
        root, catalog_path = tmp_path, catalog

        def build(self, *args, expect=0, **extra_env):
            result = subprocess.run(
                [sys.executable, str(BUILD), "--catalog", str(catalog), "--env-file",
                 str(env_file), *args], capture_output=True, text=True, timeout=120,
                env={**env, **extra_env})
            assert result.returncode == expect, result.stdout + result.stderr
            return result

        def docker_calls(self, verb):
            state_file = tmp_path / "docker-state.json"
            calls = json.loads(state_file.read_text())["calls"] if state_file.exists() else []
            return [c for c in calls if c["args"][:1] == [verb]]

    return Project()


def commands(output):
    return [shlex.split(line) for line in output.splitlines() if line and not line.startswith("#")]


def build_args(command):
    return [command[i + 1] for i, word in enumerate(command) if word == "--build-arg"]


def test_dry_run_prints_the_builds_with_the_mirrors_and_skips_nothing(project):
    out = project.build("--dry-run").stdout
    assert "up to date" not in out
    base, course = commands(out)
    lock_sha = __import__("hashlib").sha256(
        (ROOT / "images/tensorflow-2.9-gpu/requirements.txt").read_bytes()).hexdigest()
    assert base[:7] == ["DOCKER_BUILDKIT=0", "docker", "build", "--file",
                        str(ROOT / "images/tensorflow-2.9-gpu/Dockerfile"), "--tag", BASE_TAG]
    assert base[-1] == str(ROOT)
    assert build_args(base) == ["PIP_INDEX_URL=https://mirror.example.edu/pypi/simple",
                                "APT_MIRROR=https://mirror.example.edu/ubuntu",
                                f"LOCK_SHA256={lock_sha}"]
    context = project.root / "courses" / "cs101"
    assert course[:7] == ["DOCKER_BUILDKIT=0", "docker", "build", "--file",
                          str(context / "Dockerfile"), "--tag", "gpuhub/course-cs101:2025"]
    assert course[-1] == str(context)
    assert build_args(course) == [f"BASE_IMAGE={BASE_TAG}",
                                  "PIP_INDEX_URL=https://mirror.example.edu/pypi/simple",
                                  "APT_MIRROR=https://mirror.example.edu/ubuntu",
                                  "COURSE_VERSION=2025"]
    for command in (base, course):
        label = command[command.index("--label") + 1]
        assert re.fullmatch(r"org\.gpuhub\.inputs-hash=[0-9a-f]{64}", label)
    # the image two courses share is built once, and naming both
    assert "# build: gpuhub/course-cs101:2025 (cs101, cs101-cpu)" in out
    assert not project.docker_calls("build")  # a dry run builds nothing


def test_unchanged_images_are_skipped_and_a_changed_course_is_rebuilt(project):
    project.build()
    assert [c["args"][c["args"].index("--tag") + 1] for c in project.docker_calls("build")] == \
        [BASE_TAG, "gpuhub/course-cs101:2025"]
    assert {c["buildkit"] for c in project.docker_calls("build")} == {"0"}  # legacy builder

    out = project.build().stdout
    assert f"# up to date: {BASE_TAG}" in out and "# up to date: gpuhub/course-cs101:2025" in out
    assert len(project.docker_calls("build")) == 2

    (project.root / "courses" / "cs101" / "apt.txt").write_text("graphviz\n")
    out = project.build().stdout
    assert f"# up to date: {BASE_TAG}" in out and "# build: gpuhub/course-cs101:2025" in out
    # a mirror change changes the build arguments, so everything is rebuilt
    out = project.build(PIP_INDEX_URL="https://other.example/simple").stdout
    assert "up to date" not in out
    assert project.build("--force", "--dry-run").stdout.count("docker build") == 2


def test_push_tags_into_the_registry(project):
    out = project.build("--dry-run", "--push").stdout
    lines = [" ".join(c) for c in commands(out)]
    assert f"docker tag {BASE_TAG} registry.example.edu:5000/{BASE_TAG}" in lines
    assert f"docker push registry.example.edu:5000/{BASE_TAG}" in lines
    assert "docker push registry.example.edu:5000/gpuhub/course-cs101:2025" in lines


def test_push_without_a_registry_says_so(project):
    result = project.build("--dry-run", "--push", IMAGE_REGISTRY="", expect=2)
    assert "IMAGE_REGISTRY is empty" in result.stderr


def test_the_old_extra_ca_bundle_is_refused_naming_certs(project):
    """One way for CA certificates into every image (certs/*.crt); an .env that still
    names a bundle stops the build instead of silently building without it."""
    result = project.build("--dry-run", EXTRA_CA_BUNDLE="/etc/campus-ca.pem", expect=2)
    assert "EXTRA_CA_BUNDLE is no longer read: put each CA certificate in certs/" in result.stderr
    assert not project.docker_calls("build")


def test_the_base_image_is_rebuilt_when_the_shared_setup_step_changes():
    """images/common/image-setup is copied into the base image, so it is one of the inputs
    hashed into its label: a change to it rebuilds the base (and so every course)."""
    import importlib.machinery
    import importlib.util
    loader = importlib.machinery.SourceFileLoader("images_build", str(BUILD))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    base = module.plan(None, dict(module.DEFAULTS), BASE_TAG, None)[0]
    assert ROOT / "images" / "common" / "image-setup" in base.inputs, base.inputs


def test_a_bad_catalog_stops_the_build_naming_the_entry(project):
    text = project.catalog_path.read_text().replace("context: ../courses/cs101\n",
                                                    "context: ../courses/nope\n")
    project.catalog_path.write_text(text)
    result = project.build("--dry-run", expect=2)
    assert "courses[1] (slug 'cs101'): field 'build.context': no folder" in result.stderr
    project.catalog_path.write_text(text.replace("slug: cs101\n", "slug: CS101\n"))
    result = project.build("--dry-run", expect=2)
    assert "courses[1] (slug 'CS101'): field 'slug'" in result.stderr
    assert not project.docker_calls("build")


# -- the instructor's checks: images/build --check, the course locks, the base's name --
def test_check_refuses_a_missing_group_a_duplicate_slug_and_an_unknown_field(project):
    result = project.build("--check", expect=0, GPUHUB_GROUPS="cs101-2025")
    assert "3 course(s) fine" in result.stdout
    text = project.catalog_path.read_text()
    project.catalog_path.write_text(text.replace(
        "image: gpuhub/course-cs101:2025\n    build:",
        "image: gpuhub/course-cs101:2025\n    groups: [cs101-2025]\n    build:", 1))
    assert project.catalog_path.read_text() != text
    missing = project.build("--check", expect=2, GPUHUB_GROUPS="other")
    assert "courses[1] (slug 'cs101'): field 'groups': unknown group 'cs101-2025'" in missing.stderr
    assert not project.docker_calls("build")
    project.build("--check", GPUHUB_GROUPS="other, cs101-2025")
    project.catalog_path.write_text(text.replace("slug: cs101-cpu", "slug: cs101"))
    assert "duplicate slug" in project.build("--check", expect=2).stderr
    project.catalog_path.write_text(text.replace("display_name: CS 101\n",
                                                 "display_name: CS 101\n    colour: red\n"))
    unknown = project.build("--check", expect=2).stderr
    assert "courses[1]" in unknown and "colour" in unknown, unknown


def test_a_course_lock_that_would_change_a_base_package_stops_the_build(project):
    base = read_pins(ROOT / "images" / "tensorflow-2.9-gpu" / "requirements.txt")
    name = "typing-extensions" if "typing-extensions" in base else sorted(base)[0]
    lock = project.root / "courses" / "cs101" / "requirements.txt"
    lock.write_text(lock.read_text() + f"{name}==0.0.1 \\\n    --hash=sha256:{'0' * 64}\n")
    result = project.build("--dry-run", expect=2)
    assert f"{name}==0.0.1 would replace the base image's {name}=={base[name]}" in result.stderr
    assert "re-lock the course with -c images/tensorflow-2.9-gpu/requirements.txt" in result.stderr
    assert "docker build" not in result.stdout


def test_a_course_lock_older_than_the_base_lock_is_a_warning(project):
    lock = project.root / "courses" / "cs101" / "requirements.txt"
    os.utime(lock, (1_000_000_000, 1_000_000_000))  # 2001: older than any base lock
    result = project.build("--dry-run")
    assert f"warning: {lock} is older than images/tensorflow-2.9-gpu/requirements.txt" in result.stderr
    os.utime(lock, None)
    assert "warning" not in project.build("--dry-run").stderr


def test_the_base_image_is_named_by_gpuhub_user_image(project):
    out = project.build("--dry-run", GPUHUB_USER_IMAGE="registry.example.edu/lab/tf29:2026.1").stdout
    base, course = commands(out)
    assert base[base.index("--tag") + 1] == "registry.example.edu/lab/tf29:2026.1"
    assert "BASE_IMAGE=registry.example.edu/lab/tf29:2026.1" in build_args(course)


def test_use_existing_base_builds_only_the_courses(project):
    missing = project.build("--use-existing-base", expect=2)
    assert f"there is no image {BASE_TAG} here" in missing.stderr
    project.build()  # the fake engine now has the base
    out = project.build("--use-existing-base", "--force").stdout
    assert f"# using the existing base image {BASE_TAG}" in out
    built = [c["args"][c["args"].index("--tag") + 1] for c in project.docker_calls("build")]
    assert built[-1] == "gpuhub/course-cs101:2025" and built.count(BASE_TAG) == 1


def test_builds_leave_no_containers_behind(project):
    out = project.build("--dry-run").stdout
    assert all("--force-rm" in c for c in commands(out))


def test_a_catalog_with_build_arguments_survives_the_spawners_deep_copy(tmp_path):
    """traitlets deep-copies c.GpuhubSpawner.catalog into each spawner: a course with
    build args (read-only mappings) once made every spawn fail."""
    import copy
    (tmp_path / "course").mkdir()
    path = write(tmp_path, """\
        courses:
          - {slug: tf, display_name: TF, image: gpuhub/tensorflow-2.9-gpu:latest, default: true}
          - slug: cs101
            display_name: CS 101
            image: gpuhub/course-cs101:2025
            build: {context: course, args: {COURSE_VERSION: "2025"}}
        """)
    catalog = load_catalog(path)
    assert copy.deepcopy(catalog) == catalog
    assert copy.deepcopy(catalog).get("cs101").build.args["COURSE_VERSION"] == "2025"
