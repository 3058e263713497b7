"""Course images end to end: an instructor's image built from images/course-template on
top of the user image, listed in the catalog, picked (or not) at spawn time."""

import hashlib
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from .stack import REPO

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def course_stack(tmp_path_factory, docker_client, standin_bases):
    from .conftest import make_stack
    s = make_stack(tmp_path_factory, docker_client, "gpuhubcourse", real_traefik=False, extra_env={
        "GPUHUB_CATALOG": "/srv/gpuhub/catalog/catalog.yaml",
        "GPUHUB_GROUPS": "group-a",
    })
    base, course = s.env["GPUHUB_USER_IMAGE"], f"{s.project}/course-a:e2e"
    (s.dir / "catalog" / "catalog.yaml").write_text(yaml.safe_dump({"courses": [
        {"slug": "base", "display_name": "TensorFlow 2.9", "image": base, "default": True},
        {"slug": "course-a", "display_name": "Course A", "description": "with sympy",
         "image": course, "groups": ["group-a"]},
    ]}))
    try:
        s.up()  # builds the user image the course derives from
        # the instructor's step: copy the template, build it FROM the user image (which
        # already trusts the repository's certs/*.crt, so no extra CA is passed here)
        context = tmp_path_factory.mktemp("course-a")
        shutil.copytree(REPO / "images" / "course-template", context, dirs_exist_ok=True)
        # the instructor's course material, in files/ as docs/instructors.md says
        (context / "files" / "week1").mkdir(parents=True)
        (context / "files" / "week1" / "intro.md").write_text("# Week 1\n")
        subprocess.run(
            ["docker", "build", "-q", "-t", course, "--build-arg", f"BASE_IMAGE={base}",
             "--build-arg", "PIP_INDEX_URL=https://pypi.org/simple",
             str(context)], check=True, capture_output=True, timeout=900)
        s.course_image = course
        yield s
    finally:
        s.down()
        subprocess.run(["docker", "rmi", "-f", course], capture_output=True)


def image_of(stack, user):
    return stack.user_container(user).attrs["Config"]["Image"]


def test_student_in_the_group_gets_the_course_image(course_stack):
    s = course_stack
    assert s.api("POST", "/users/amy").status_code in (201, 409)
    r = s.api("POST", "/groups/group-a/users", json={"users": ["amy"]})
    assert r.ok, r.text
    s.start_server("amy", course="course-a")
    assert image_of(s, "amy") == s.course_image
    code, out = s.user_container("amy").exec_run(["python3", "-c", "import sympy; print(sympy.__version__)"])
    assert code == 0, out.decode()
    code, out = s.user_container("amy").exec_run(["id", "-u"])
    assert out.decode().strip() == "1000", "course images run as the student, not root"
    # the course's files are in the student's home (JupyterLab's root), without the
    # template's build files, and the student may edit them
    contents = s.server_api("amy", "/api/contents/course-a")
    assert contents.ok, contents.text
    listed = {item["name"] for item in contents.json()["content"]}
    assert listed == {"README.md", "week1"}, listed
    edited = s.server_api("amy", "/api/contents/course-a/week1/intro.md", method="PUT",
                          json={"type": "file", "format": "text", "content": "# mine\n"})
    assert edited.ok, edited.text
    s.stop_server("amy")
    # a second start adds nothing over the student's own edit
    s.start_server("amy", course="course-a")
    again = s.server_api("amy", "/api/contents/course-a/week1/intro.md")
    assert again.json()["content"] == "# mine\n"
    s.stop_server("amy")


def test_student_in_no_group_gets_the_default_and_cannot_pick_the_course(course_stack):
    s = course_stack
    assert "'course-a' is not offered to noah" in s.refused_start("noah", "course-a")
    s.start_server("noah")
    assert image_of(s, "noah") == s.env["GPUHUB_USER_IMAGE"]
    s.stop_server("noah")


def test_a_bad_catalog_stops_the_hub_naming_file_entry_and_field(course_stack, tmp_path):
    s = course_stack
    bad = tmp_path / "catalog.yaml"
    bad.write_text(yaml.safe_dump({"courses": [
        {"slug": "base", "display_name": "Base", "image": s.env["GPUHUB_USER_IMAGE"], "gpu": 1}]}))
    result = subprocess.run(
        ["docker", "run", "--rm", "-v", f"{bad}:/srv/gpuhub/catalog/catalog.yaml:ro",
         "-e", "GPUHUB_DOMAIN=hub.example.org", "-e", "AUTH_PROVIDER=dummy",
         "-e", f"GPUHUB_USER_IMAGE={s.env['GPUHUB_USER_IMAGE']}",
         "-e", "GPUHUB_CATALOG=/srv/gpuhub/catalog/catalog.yaml",
         f"gpuhub/hub:{s.env['GPUHUB_VERSION']}"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "/srv/gpuhub/catalog/catalog.yaml: courses[0] (slug 'base')" in result.stderr, result.stderr
    assert "'gpu'" in result.stderr, result.stderr


def test_a_course_lock_that_changes_a_base_package_fails_to_build(course_stack, tmp_path):
    """The instructor's mistake: a lock compiled without the base's constraints pins a
    package the base image has at another version. The build fails naming the package
    and both versions; no image is tagged."""
    s = course_stack
    base = s.env["GPUHUB_USER_IMAGE"]
    have = subprocess.run(["docker", "run", "--rm", "--entrypoint", "python3", base, "-c",
                           "import importlib.metadata as m; print(m.version('typing_extensions'))"],
                          capture_output=True, text=True, timeout=120)
    assert have.returncode == 0, have.stderr
    installed = have.stdout.strip()
    # the doc's own example: a lock made without the base's constraints downgraded it
    older = "4.5.0" if installed != "4.5.0" else "4.4.0"
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary",
                    ":all:", "-d", str(wheels), f"typing_extensions=={older}"], check=True, timeout=300)
    digest = hashlib.sha256(next(wheels.glob("*.whl")).read_bytes()).hexdigest()
    context = tmp_path / "course"
    shutil.copytree(REPO / "images" / "course-template", context)
    (context / "requirements.txt").write_text(f"typing-extensions=={older} --hash=sha256:{digest}\n")
    tag = f"{s.project}/bad-course:e2e"
    result = subprocess.run(
        ["docker", "build", "--force-rm", "-t", tag, "--build-arg", f"BASE_IMAGE={base}",
         "--build-arg", "PIP_INDEX_URL=https://pypi.org/simple", str(context)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "DOCKER_BUILDKIT": "0"})
    assert result.returncode != 0
    assert f"typing-extensions {installed} (base image) -> {older} (course)" in result.stdout + result.stderr
    assert subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode != 0
