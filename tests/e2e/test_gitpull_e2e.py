"""git-pull links through the real hub and a real user server (issue 15, item 4): a
link whose targetpath is absolute, has `..` or names a dot-folder writes nothing; an
ordinary link pulls a repository this test serves over HTTP from a container of its
own on the users network (git's smart HTTP protocol: `git http-backend` as a CGI
script of `python3 -m http.server --cgi`)."""

import json
import secrets

import pytest
import requests

from .stack import wait_for

pytestmark = pytest.mark.e2e

USER = "puller1"
HOME = "/home/jovyan"


@pytest.fixture(scope="module")
def git_server(stack):
    """A container from the user image (it has git and Python) serving the bare
    repositories course.git and .local (named like a dot-folder) at
    http://<name>:8000/cgi-bin/git/<repository>."""
    name = f"{stack.prefix}-gitsrv-{secrets.token_hex(3)}"
    script = (
        "set -e; cd /tmp; git init -q -b main work; cd work; "
        "git config user.email t@example.org; git config user.name test; "
        "echo 'Week 1: tensors' > README.md; git add README.md; git commit -qm week1; "
        "for repo in course.git .local; do git clone -q --bare . /tmp/repos/$repo; done; "
        "mkdir -p /tmp/srv/cgi-bin; printf '#!/bin/sh\\nexport GIT_PROJECT_ROOT=/tmp/repos "
        "GIT_HTTP_EXPORT_ALL=1\\nexec git http-backend\\n' > /tmp/srv/cgi-bin/git; "
        "chmod +x /tmp/srv/cgi-bin/git; cd /tmp/srv; exec python3 -m http.server --cgi 8000")
    container = stack.client.containers.run(
        stack.env["GPUHUB_USER_IMAGE"], ["bash", "-c", script], name=name, detach=True,
        network=stack.env["GPUHUB_USER_NETWORK"], user="1000:100")
    try:
        def serving():
            container.reload()
            if container.status == "exited":
                raise AssertionError(container.logs().decode())
            code, out = container.exec_run(["python3", "-c", "import urllib.request; print("
                                            "urllib.request.urlopen('http://127.0.0.1:8000/cgi-bin/git/"
                                            "course.git/info/refs?service=git-upload-pack')"
                                            ".read().decode())"])
            return code == 0 and "refs/heads/main" in out.decode()
        wait_for(serving, 120, "the test's git server")
        yield f"http://{name}:8000/cgi-bin/git"
    finally:
        container.remove(force=True)


@pytest.fixture(scope="module")
def server(stack):
    assert stack.api("POST", f"/users/{USER}").status_code in (201, 409)
    stack.start_server(USER)
    yield stack.server_url(USER), stack.user_container(USER)
    stack.stop_server(USER)


def files(container):
    """Everything in the user's volume and in /tmp, with sizes: what a pull could write."""
    code, out = container.exec_run(["find", HOME, "/tmp", "-printf", "%p %s\n"])
    assert code == 0, out.decode()
    return set(out.decode().splitlines())


def pull(stack, url, **params):
    return requests.get(f"{url}/git-pull/api", params=params, timeout=120,
                        headers={"Authorization": f"token {stack.token}"})


def events(response):
    return [json.loads(line[len("data: "):]) for line in response.text.splitlines()
            if line.startswith("data: ")]


@pytest.mark.parametrize("params", [
    {"targetpath": "/tmp/gpuhub-evil"},
    {"targetpath": f"{HOME}/.local"},
    {"targetpath": "../jovyan2"},
    {"targetpath": "course/../.local"},
    {"targetpath": ".local"},
    {"targetpath": ".ipython/profile_default/startup"},
    {"targetpath": ""},  # nbgitpuller's SyncHandler would pull into the home itself
    {},  # the default targetpath is the repository's name: here `.local`
], ids=["absolute", "absolute-dot-folder", "dotdot", "dotdot-inside", "dot-folder",
        "startup-folder", "empty", "repo-named-dot-folder"])
def test_git_pull_outside_a_visible_home_folder_writes_nothing(stack, server, git_server, params):
    url, container = server
    repo = f"{git_server}/.local" if not params else f"{git_server}/course.git"
    before = files(container)
    r = pull(stack, url, repo=repo, **params)
    assert r.status_code == 400, (r.status_code, r.text[:500])
    assert "nothing was written" in r.text and "non-hidden folder inside your home" in r.text
    # the page a student's click opens says so too (for an empty targetpath the page
    # itself uses the repository's name, and asks the API to pull there)
    if params.get("targetpath") != "":
        page = requests.get(f"{url}/git-pull", params={"repo": repo, **params}, timeout=60,
                            headers={"Authorization": f"token {stack.token}"})
        assert page.status_code == 400 and "This git-pull link was refused" in page.text
    assert files(container) == before, sorted(files(container) ^ before)


def test_ordinary_git_pull_link_still_pulls(stack, server, git_server):
    """The test's git server stands for a campus git server: it joins the student's own
    network (hub/networks.py; nothing else reaches it) and the student's ~/.gitconfig
    sends git there directly, not through the egress proxy, which refuses private
    addresses."""
    url, container = server
    host = git_server.split("/")[2].split(":")[0]
    stack.client.networks.get(container.attrs["HostConfig"]["NetworkMode"]).connect(host)
    code, out = container.exec_run(["git", "config", "--global",
                                    f"http.{git_server}/.proxy", ""], user="1000:100",
                                   environment={"HOME": HOME})
    assert code == 0, out.decode()
    r = pull(stack, url, repo=f"{git_server}/course.git", targetpath="cs101/week1",
             branch="main")
    assert r.status_code == 200, r.text[:500]
    assert events(r)[-1]["phase"] == "finished", r.text[-2000:]
    code, out = container.exec_run(["cat", f"{HOME}/cs101/week1/README.md"])
    assert code == 0 and out.decode().strip() == "Week 1: tensors", out.decode()
    code, out = container.exec_run(["stat", "-c", "%U", f"{HOME}/cs101/week1/README.md"])
    assert out.decode().strip() == "jovyan"
    # and the link page for it renders (the browser would then run the pull)
    page = requests.get(f"{url}/git-pull", timeout=60, params={
        "repo": f"{git_server}/course.git", "targetpath": "cs101/week1", "branch": "main"},
        headers={"Authorization": f"token {stack.token}"})
    assert page.status_code == 200 and "cs101/week1" in page.text
