"""The student's workbench in a real browser, on the Python 3.8 user image (built from
its own Dockerfile and lock on the TensorFlow 2.9.3 stand-in, tests/standin): sign in,
see the resource indicator and the GPU dashboards, train a tiny Keras model for two
epochs with a TensorBoard callback, open TensorBoard from the launcher and find the
loss there, and read which GPU the server holds. TensorBoard is the student's own:
another student's token is refused, and no other port or host is proxied.

What differs from production is what tests/e2e/test_browser_login.py says (its fixtures
and helpers are reused here), plus: no GPU. The hub discovers its inventory through NVML
as it does on a GPU host (GPUHUB_GPUS empty), but NVML is a fake `pynvml` module the test
puts first on the hub's PYTHONPATH (a compose override of its own), reporting two GPUs
with fake UUIDs, names ("Fake GPU ... (test inventory)") and 16 GiB each; Docker accepts
the GPU device request through the machine's no-op nvidia hook; TensorFlow trains on
the CPU and the GPU panels have no device to show.
"""

import json
import re

import pytest
import requests
import yaml

from .browser import (NETWORK_CHANGED, NetworkChanged, Student, add_service, browser,  # noqa: F401
                      dismiss_news_toast, oidc_deployment, steadily)
from .stack import wait_for
from .test_browser_login import ACCOUNTS, LAB_NAME, sign_in_through_sso

pytestmark = pytest.mark.e2e

GPUS = ["GPU-00000000-0000-4000-8000-0000000000a1", "GPU-00000000-0000-4000-8000-0000000000a2"]
FAKE_NAME = "Fake GPU {} (test inventory)"
FAKE_MEMORY_MIB = 16384
FAKE_NVML = """\
# written by the workbench browser test: what NVML would say on a host with two GPUs
from types import SimpleNamespace
UUIDS = {uuids!r}
def nvmlInit(): pass
def nvmlShutdown(): pass
def nvmlDeviceGetCount(): return len(UUIDS)
def nvmlDeviceGetHandleByIndex(i): return i
def nvmlDeviceGetUUID(i): return UUIDS[i]
def nvmlDeviceGetName(i): return {name!r}.format(i)
def nvmlDeviceGetMemoryInfo(i): return SimpleNamespace(total={memory} * 2**20, used=0, free={memory} * 2**20)
"""
FAKE_NVML_COMPOSE = """\
# written by the workbench browser test: the hub imports the fake pynvml first
services:
  hub:
    environment:
      PYTHONPATH: /srv/fake-nvml:/srv/gpuhub
    volumes:
      - ./fake-nvml:/srv/fake-nvml:ro
"""
TRAIN = """\
import numpy as np
import tensorflow as tf
x = np.random.rand(64, 4).astype("float32")
y = x.sum(axis=1, keepdims=True)
model = tf.keras.Sequential([tf.keras.layers.Dense(8, activation="relu", input_shape=(4,)),
                             tf.keras.layers.Dense(1)])
model.compile(optimizer="adam", loss="mse")
history = model.fit(x, y, epochs=2, verbose=0,
                    callbacks=[tf.keras.callbacks.TensorBoard(log_dir="logs/run1")])
print("trained", len(history.history["loss"]), "epochs")
"""


@pytest.fixture(scope="module")
def workbench_stack(tmp_path_factory, docker_client, standin_bases):
    """As test_browser_login's browser_stack, with a GPU course as the only course."""
    env = {"GPUHUB_ALLOWED_GROUPS": "cs101", "GPUHUB_LAB_NAME": LAB_NAME,
           "GPUHUB_VERSION": "workbench",
           # listed: the Docker API guard cannot ask NVML, it allows only listed GPUs; the
           # hub still takes their names and memory from (the fake) NVML
           "GPUHUB_GPUS": ",".join(GPUS), "GPUHUB_GPU_MODE": "exclusive",
           "GPUHUB_CATALOG": "/srv/gpuhub/catalog/catalog.yaml"}
    tokens = {}

    def prepare(stack):
        (stack.dir / "catalog" / "catalog.yaml").write_text(yaml.safe_dump({"courses": [
            {"slug": "deep-learning", "display_name": "Deep learning", "default": True,
             "description": "TensorFlow 2.9 with one GPU", "image": stack.env["GPUHUB_USER_IMAGE"],
             "gpus": 1}]}))
        tokens["tokens"] = add_service(
            stack, "e2e-tokens", ["tokens!user=student2", "access:servers!user=student2",
                                  "read:users!user=student2"],
            "a token that may issue student2's tokens")
        (stack.dir / "fake-nvml").mkdir()
        (stack.dir / "fake-nvml" / "pynvml.py").write_text(
            FAKE_NVML.format(uuids=GPUS, name=FAKE_NAME, memory=FAKE_MEMORY_MIB))
        (stack.dir / "compose.fake-nvml.yml").write_text(FAKE_NVML_COMPOSE)
        stack.files += ["-f", "compose.fake-nvml.yml"]

    with oidc_deployment(tmp_path_factory, docker_client, "gpuhubworkbench", ACCOUNTS, env,
                         prepare) as deployment:
        deployment.tokens_token = tokens["tokens"]
        yield deployment


@pytest.fixture
def student(browser, workbench_stack):  # noqa: F811
    s = Student(browser, workbench_stack)
    yield s
    s.close()


def write_notebook(container, path, source):
    notebook = {"nbformat": 4, "nbformat_minor": 5, "metadata": {
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)",
                       "language": "python"}},
        "cells": [{"cell_type": "code", "id": "train", "metadata": {}, "execution_count": None,
                   "outputs": [], "source": source}]}
    code, out = container.exec_run(["python3", "-c", "import json, sys; open(sys.argv[1], 'w')"
                                    ".write(sys.argv[2])", path, json.dumps(notebook)],
                                   user="1000:100")
    assert code == 0, out.decode()


def open_launcher_card(student, title):
    """Click a launcher card; jupyter-server-proxy opens it in a new tab."""
    # On this busy 2-core machine, TensorBoard importing TensorFlow next to a kernel on
    # one CPU can make a status poll time out; JupyterLab then asks whether to restart
    # the server. The server is up (checked through the hub): dismiss the question.
    question = student.page.locator(".jp-Dialog", has_text="Server unavailable")
    if question.count():
        wait_for(lambda: student.stack.api("GET", "/users/student1").json()["servers"][""]["ready"],
                 60, "student1's server to be reported ready")
        question.get_by_role("button", name="Dismiss").click()
        question.wait_for(state="hidden")
    card = student.page.locator(".jp-LauncherCard", has_text=title).first
    card.wait_for(timeout=60_000)
    card.scroll_into_view_if_needed()
    with student.context.expect_page(timeout=60_000) as opened:
        card.click()
    return opened.value


def test_student_trains_a_model_and_watches_it_in_tensorboard(student):
    stack, page = student.stack, student.page
    try:
        sign_in_through_sso(student, "student1")
        student.shots.clear()  # the login pages are test_browser_login's pictures
        page.wait_for_url("**/user/student1/lab**", timeout=240_000)
        page.locator(".jp-LauncherCard").first.wait_for(timeout=120_000)
        dismiss_news_toast(page)
        container = stack.user_container("student1")
        env = dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])
        assert env["NVIDIA_VISIBLE_DEVICES"] in GPUS, env
        assert env["GPUHUB_GPU_NAMES"].startswith("Fake GPU "), env

        # the resource indicator: memory against the container's 2 GiB limit, and CPU
        usage = page.locator(".jp-StatusBar-Widget", has_text=re.compile(r"Mem: .+ / "))
        usage.first.wait_for(timeout=60_000)
        assert re.search(r"/ 2\.?\d* ?G", usage.first.inner_text()) or "2048" in \
            usage.first.inner_text(), usage.first.inner_text()
        page.locator(".jp-StatusBar-Widget", has_text=re.compile(r"CPU: ")).first.wait_for()
        # the GPU dashboards, in the left sidebar. Their extension's code loads after the
        # launcher shows: where Chromium dropped it on a network change, the tab never
        # comes, and JupyterLab is opened again (steadily)
        def dashboards(attempt):
            if attempt:
                page.goto(f"{student.url}/user/student1/lab?reset")
                page.locator(".jp-LauncherCard").first.wait_for(timeout=120_000)
            try:
                page.locator('.jp-SideBar .lm-TabBar-tab[title="GPU Dashboards"]').click(timeout=30_000)
            except Exception:
                dropped = [f for f in student.failed if NETWORK_CHANGED in f]
                if dropped:
                    raise NetworkChanged(dropped) from None
                raise
            page.get_by_text("GPU Utilization").first.wait_for()
        steadily(student, dashboards, "the GPU dashboards")
        student.shot("10-workbench")
        page.locator('.jp-SideBar .lm-TabBar-tab[title="GPU Dashboards"]').click()

        # a notebook that trains a tiny Keras model, logging for TensorBoard
        write_notebook(container, "/home/jovyan/train.ipynb", TRAIN)

        def open_notebook(attempt):
            page.goto(f"{student.url}/user/student1/lab/tree/train.ipynb")
            page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=180_000)
        steadily(student, open_notebook, "the training notebook")
        page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell .cm-content").first.click()
        page.keyboard.press("Shift+Enter")
        output = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output",
                              has_text="trained")
        output.wait_for(timeout=300_000)
        assert "trained 2 epochs" in output.inner_text()
        student.shot("11-training")

        # TensorBoard from the launcher, on the student's log folder: the loss is there
        page.locator(".lm-MenuBar-itemLabel", has_text="File").click()
        page.locator(".lm-Menu-itemLabel", has_text="New Launcher").click()
        board = open_launcher_card(student, "TensorBoard")
        board.wait_for_url("**/user/student1/tensorboard/**", timeout=120_000)
        board.get_by_text("epoch_loss").first.wait_for(timeout=180_000)
        student.shot("12-tensorboard", board)
        board.close()

        # which GPU this server holds
        gpu = open_launcher_card(student, "My GPU")
        gpu.wait_for_url("**/user/student1/gpu/**", timeout=60_000)
        gpu.locator(".gpu-name").first.wait_for(timeout=60_000)
        name = gpu.locator(".gpu-name").first.inner_text()
        assert re.fullmatch(r"Fake GPU [01] \(test inventory\)", name), name
        assert gpu.get_by_text("16 GiB").count() == 1
        student.shot("13-my-gpu", gpu)
        gpu.close()

        # in the student's own browser, the generic proxy refuses other ports and hosts
        for path in ("proxy/8888/api/status", "proxy/127.0.0.1:8888/api/status",
                     "proxy/hub:8081/hub/api", "proxy/chp:8001/api/routes"):
            r = page.goto(f"{student.url}/user/student1/{path}")
            assert r.status == 403, (path, r.status)
    except Exception as e:
        raise AssertionError(f"{e}\n{student.diagnostics()}") from e
    student.publish()


def test_another_student_cannot_open_someone_elses_tensorboard(workbench_stack):
    """student2 holds a valid token of their own (as from the hub's token page); with
    it, student1's TensorBoard, GPU page and proxy are never served: 403, or a redirect
    to the hub's login."""
    stack, url = workbench_stack.stack, workbench_stack.url
    if "" not in stack.api("GET", "/users/student1").json().get("servers", {}):
        pytest.skip("student1's server is not running (the browser test above failed)")
    assert stack.api("POST", "/users/student2").status_code in (201, 409)
    r = requests.post(f"{stack.hub_url}/hub/api/users/student2/tokens",
                      json={"note": "e2e", "scopes": ["access:servers!user=student2",
                                                   "read:users!user=student2"]},
                      headers={"Authorization": f"token {workbench_stack.tokens_token}"},
                      timeout=30)
    assert r.status_code in (200, 201), r.text
    token, created = r.json()["token"], r
    for path in ("tensorboard/", "tensorboard/data/runs", "gpu/", "proxy/8888/api/status"):
        r = requests.get(f"{url}/user/student1/{path}", timeout=30, allow_redirects=False,
                         headers={"Authorization": f"token {token}"})
        # the server does not take the token and sends the visitor to the hub's login
        # (whose OAuth then refuses student2 for student1's server), or refuses outright
        assert r.status_code == 403 or (
            r.status_code == 302 and "/hub/" in r.headers.get("Location", "")), \
            (path, r.status_code, r.headers.get("Location"), r.text[:300])
        assert "epoch_loss" not in r.text and "tb-relative-root" not in r.text
    # a working token of student2's, which may open student2's own servers: the refusal
    # is about whose server it is
    assert "access:servers!user=student2" in created.json()["scopes"], created.text
