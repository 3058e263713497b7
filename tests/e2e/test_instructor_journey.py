"""The instructor's path of docs/instructors.md, followed as written, on a running stack:
copy images/course-template, put course files in files/, list the course in the catalog
(editing the example's cs101 entry), name the catalog and the group in .env, check and
build with `make images` (on the base image the stack already has:
--use-existing-base), `docker-compose up -d`; then a student in the course's group signs
in with a real browser, picks the course on the spawn page, finds the course's files in
JupyterLab's file browser; the course's extra package (sympy) imports in that server.

No Traefik here: the browser goes through tests/e2e/traefik_api_standin.py, which serves
the hub's own routes over plain HTTP (as Traefik would, minus TLS)."""

import os
import shutil
import subprocess

import pytest
import yaml
from playwright.sync_api import sync_playwright

from .stack import wait_for

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SLUG, GROUP, STUDENT = "cs101", "cs101-2026", "jo"


@pytest.fixture(scope="module")
def journey(tmp_path_factory, docker_client, standin_bases):
    from .conftest import make_stack
    s = make_stack(tmp_path_factory, docker_client, "gpuhubjourney", real_traefik=False)
    course_image = f"{s.project}/course-{SLUG}:e2e"
    try:
        s.up()  # the admin's first start builds the base user image
        root = s.dir
        # 1. copy the template; the course's files go in files/
        shutil.copytree(root / "images" / "course-template", root / "images" / SLUG)
        (root / "images" / SLUG / "files" / "week1").mkdir()
        (root / "images" / SLUG / "files" / "week1" / "exercises.md").write_text("# Week 1\n")
        # 4. the catalog: the example's cs101 entry edited, not a second one
        shutil.copy(root / "catalog" / "catalog.example.yaml", root / "catalog" / "catalog.yaml")
        catalog = yaml.safe_load((root / "catalog" / "catalog.yaml").read_text())
        for course in catalog["courses"]:
            if course["image"] == "gpuhub/tensorflow-2.9-gpu:latest":
                course["image"] = s.env["GPUHUB_USER_IMAGE"]  # the doc: the base's name
            course["gpus"] = 0  # this lab has no GPU
            course.pop("allow_cpu", None)
            if course["slug"] == SLUG:
                course.update(image=course_image, groups=[GROUP])
                course.pop("nbgitpuller")
                course["build"]["context"] = f"../images/{SLUG}"
        (root / "catalog" / "catalog.yaml").write_text(yaml.safe_dump(catalog, sort_keys=False))
        s.env.update(GPUHUB_CATALOG="/srv/gpuhub/catalog/catalog.yaml", GPUHUB_GROUPS=GROUP)
        (root / ".env").write_text("".join(f"{k}={v}\n" for k, v in s.env.items()))
        # 4./5. check, then build, as an instructor's shell would (no test venv on PATH)
        shell = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}
        for build_args in ("--check", "--use-existing-base"):
            result = subprocess.run(["make", "images", f"BUILD_ARGS={build_args}"], cwd=root,
                                    env=shell, capture_output=True, text=True, timeout=1200)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert f"# build: {course_image} ({SLUG})" in result.stdout, result.stdout
        # 7. up -d re-reads .env (restart would not)
        s.compose("up", "-d")
        s.wait_healthy()
        s.course_image = course_image
        yield s
    finally:
        s.down()
        subprocess.run(["docker", "rmi", "-f", course_image], capture_output=True)


def test_a_student_picks_the_course_and_finds_its_files(journey):
    s = journey
    assert s.api("POST", f"/users/{STUDENT}").status_code in (201, 409)
    r = s.api("POST", f"/groups/{GROUP}/users", json={"users": [STUDENT]})
    assert r.ok, r.text
    site = f"http://{s.ip(s.container('proxy'))}:8080"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_context(viewport={"width": 1100, "height": 680}).new_page()
        page.set_default_timeout(60_000)
        try:
            page.goto(f"{site}/hub/login")
            page.fill("#username_input", STUDENT)
            page.fill("#password_input", s.env["GPUHUB_DUMMY_PASSWORD"])
            page.click("#login_submit")
            # the spawn page offers the course to its group's member
            page.wait_for_url("**/hub/spawn**")
            page.locator(f'input[name="course"][value="{SLUG}"]').check()
            page.get_by_role("button", name="Start").click()
            page.wait_for_url(f"**/user/{STUDENT}/lab**", timeout=180_000)
            # the course's files, in the home folder's file browser
            folder = page.locator(".jp-DirListing-item", has_text=SLUG)
            folder.wait_for(timeout=120_000)
            folder.dblclick()
            page.locator(".jp-DirListing-item", has_text="week1").wait_for()
            names = page.locator(".jp-DirListing-itemName").all_inner_texts()
            assert set(names) == {"week1", "README.md"}, names  # no Dockerfile, no lock
        except Exception as e:
            raise AssertionError(f"{e}\npage {page.url}\nhub logs:\n{s.logs('hub')[-4000:]}") from e
        finally:
            browser.close()
    container = s.user_container(STUDENT)
    assert container.attrs["Config"]["Image"] == s.course_image
    # the course's own package imports in the student's server (checked in the container:
    # the stand-in proxy here forwards plain HTTP, not a kernel's websocket)
    code, out = container.exec_run(["python3", "-c", "import sympy; print(sympy.__version__)"],
                                   user="1000:100")
    assert code == 0, out.decode()
    s.stop_server(STUDENT)
    wait_for(lambda: s.user_container(STUDENT) is None, 60, f"{STUDENT}'s container to go")
