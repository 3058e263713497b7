"""The TensorFlow 2.9 user image, built from its own Dockerfile and lock on the stand-in
for the official base (CPython 3.8, pip 20.2.4, TensorFlow 2.9.3: tests/standin): what
the derived image must fix (root, /tf, the CMD that drops arguments) is fixed, the lock
installs cleanly, and the workbench (docs/students.md) is there and locked down."""

import json
import secrets
import subprocess

import pytest
import requests

from .stack import REPO, RUN_ID, copy_repository, free_port, wait_for

pytestmark = pytest.mark.e2e

MIRROR = "https://pypi.org/simple"  # the TUNA default is unreachable here
LOCK = REPO / "images" / "tensorflow-2.9-gpu" / "requirements.txt"
BASE = "gpuhub-standin/tf-gpu-jupyter:2.9.3"


def locked():
    """{canonical name: version} of the image's lock file."""
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line and not line[0].isspace() and "==" in line and not line.startswith("#"):
            name, _, version = line.split(" ")[0].partition("==")
            pins[canonical(name)] = version
    return pins


def canonical(name):
    return name.lower().replace("_", "-").replace(".", "-")


@pytest.fixture(scope="module")
def user_image(tmp_path_factory, docker_client, standin_bases):
    context = tmp_path_factory.mktemp("user-image")
    copy_repository(context)
    tag = f"gpuhub-test/tensorflow-2.9-gpu:image-test{RUN_ID}"
    result = subprocess.run(
        ["docker", "build", "-q", "-f", "images/tensorflow-2.9-gpu/Dockerfile",
         "--build-arg", f"BASE_IMAGE={BASE}",
         "--build-arg", f"PIP_INDEX_URL={MIRROR}",
         "--build-arg", "LOCK_SHA256=0123abcd",
         "-t", tag, "."], cwd=context, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, f"user image build failed:\n{result.stdout[-3000:]}{result.stderr[-5000:]}"
    yield tag
    subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=False)


@pytest.fixture
def running(docker_client, user_image):
    """The image started as an instructor tries it: a fresh named volume, a token argument."""
    volume = docker_client.volumes.create(f"gpuhub-image-test-{secrets.token_hex(4)}")
    token, port = secrets.token_hex(8), free_port()
    container = docker_client.containers.run(
        user_image, ["start-singleuser.sh", f"--IdentityProvider.token={token}"],
        detach=True, ports={"8888/tcp": ("127.0.0.1", port)},
        volumes={volume.name: {"bind": "/home/jovyan", "mode": "rw"}},
        environment={"MEM_LIMIT": str(2 * 2**30), "CPU_LIMIT": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(f"{url}/api/status", params={"token": token}, timeout=5).ok,
                 120, "JupyterLab to answer with the token passed as an argument")
        yield container, url, token
    finally:
        container.remove(force=True)
        volume.remove(force=True)


def test_server_runs_as_non_root_and_answers_with_arguments_passed(running):
    container, url, token = running
    wait_for(lambda: requests.get(f"{url}/api/status", params={"token": token}, timeout=5).ok,
             120, "JupyterLab to answer with the token passed as an argument")
    assert requests.get(f"{url}/lab", params={"token": token}, timeout=10).status_code == 200
    # the token argument reached the server: without it, the API refuses
    assert requests.get(f"{url}/api/status", timeout=10).status_code == 403
    code, out = container.exec_run(["id", "-u"])
    assert out.decode().strip() == "1000"
    top = container.top(ps_args="-o pid,uid,args")
    servers = [p for p in top["Processes"] if "jupyter" in p[2]]
    assert servers and all(p[1] == "1000" for p in servers), top


def test_fresh_volume_is_writable_and_holds_the_cuda_cache(running):
    container, _, _ = running
    code, out = container.exec_run(["sh", "-c", "echo hi > /home/jovyan/probe && ls -ld /home/jovyan/.nv/ComputeCache"])
    assert code == 0, out.decode()
    assert "jovyan" in out.decode()
    env = dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert env["CUDA_CACHE_PATH"].startswith("/home/jovyan/")
    assert int(env["CUDA_CACHE_MAXSIZE"]) >= 2**30


def test_students_pip_uses_the_build_mirror(running):
    container, _, _ = running
    code, out = container.exec_run(["python3", "-m", "pip", "config", "list"])
    assert code == 0, out.decode()
    assert f"global.index-url='{MIRROR}'" in out.decode()


def test_image_labels_describe_it(docker_client, user_image):
    labels = docker_client.images.get(user_image).labels
    # the label names the TensorFlow that is really installed ("none" on the stand-in base,
    # which has none), not merely what the build was told
    installed = docker_client.containers.run(
        user_image, ["python3", "-c", "import importlib.metadata as m\ntry: print(m.version('tensorflow'))\n"
                     "except m.PackageNotFoundError: print('none')"], remove=True).decode().strip()
    assert labels["org.gpuhub.tensorflow-version"] == installed
    assert labels["org.gpuhub.lock-sha256"] == "0123abcd"
    assert labels["org.opencontainers.image.source"]


def run(container, *cmd):
    code, out = container.exec_run(list(cmd))
    return code, out.decode(errors="replace")


def test_tensorflow_is_the_pinned_one_and_the_lock_installed_cleanly(running):
    container, _, _ = running
    pins = locked()
    code, out = run(container, "python3", "-c", "import tensorflow as tf; print(tf.__version__)")
    assert code == 0 and out.strip().splitlines()[-1] == pins["tensorflow"] == "2.9.3", out
    code, out = run(container, "python3", "--version")
    assert out.strip().startswith("Python 3.8."), out
    # every locked package is installed at its pin ...
    code, out = run(container, "python3", "-m", "pip", "list", "--format=json",
                    "--disable-pip-version-check")
    installed = {canonical(p["name"]): p["version"] for p in json.loads(out)}
    wrong = {n: (v, installed.get(n)) for n, v in pins.items() if installed.get(n) != v}
    assert not wrong, f"(locked, installed): {wrong}"
    # ... and pip finds nothing broken among them (the base's own extras aside)
    code, out = run(container, "python3", "-m", "pip", "check", "--disable-pip-version-check")
    broken = [line for line in out.splitlines()
              if line.split(" ")[0] and canonical(line.split(" ")[0]) in pins]
    assert not broken, out


def test_workbench_extensions_are_on_and_the_unused_ones_off(running):
    container, url, token = running
    code, out = run(container, "jupyter", "server", "extension", "list")
    enabled = {line.split()[0] for line in out.splitlines() if "enabled" in line}
    disabled = {line.split()[0] for line in out.splitlines() if "disabled" in line}
    assert {"jupyter_server_proxy", "jupyter_resource_usage", "jupyterlab_nvdashboard",
            "gpuhub_workbench.gitpull", "jupyterlab"} <= enabled, out
    # nbgitpuller only through the guard; nbclassic and jupyter_lsp serve nobody here
    assert {"nbgitpuller", "nbclassic", "jupyter_lsp"} <= disabled, out
    auth = {"Authorization": f"token {token}"}
    # memory against the container's limit
    metrics = requests.get(f"{url}/api/metrics/v1", headers=auth, timeout=10).json()
    assert metrics["limits"]["memory"]["rss"] == 2 * 2**30, metrics
    assert metrics["limits"]["cpu"]["cpu"] == 1.0 and "cpu_percent" in metrics, metrics
    # JupyterLab asks nobody for news
    news = requests.get(f"{url}/lab/api/news", headers=auth, timeout=10)
    assert news.status_code == 200 and news.json().get("news") == [], news.text
    # the launcher's entries
    info = requests.get(f"{url}/server-proxy/servers-info", headers=auth, timeout=10).json()
    assert {s["name"] for s in info["server_processes"]} == {"tensorboard", "gpu"}, info


@pytest.mark.parametrize("path", [
    "/proxy/8888/api/status", "/proxy/absolute/8888/api/status", "/proxy/22/",
    "/proxy/localhost:8888/api/status", "/proxy/127.0.0.1:8888/api/status",
    "/proxy/absolute/127.0.0.1:8888/api/status", "/proxy/hub:8081/hub/api",
    "/proxy/other-student.invalid:8888/api/status",
])
def test_server_proxy_refuses_every_other_port_and_host(running, path):
    """Only the named servers are proxied. The other hosts are names that do not resolve
    here (.invalid, and `hub` outside a stack), so even a broken guard sends nothing off
    this machine; the log line shows the guard, not a failed connection, answered."""
    container, url, token = running
    r = requests.get(url + path, headers={"Authorization": f"token {token}"}, timeout=10)
    assert r.status_code == 403, (path, r.status_code, r.text[:300])
    logs = container.logs().decode(errors="replace")
    assert f"server-proxy: refused {path}" in logs


def test_tensorboard_and_the_gpu_page_answer_through_the_server(running):
    container, url, token = running
    auth = {"Authorization": f"token {token}"}
    r = wait_for(lambda: (lambda r: r if r.status_code == 200 else None)(
        requests.get(f"{url}/tensorboard/", headers=auth, timeout=60)),
        180, "TensorBoard through the server")
    assert "tb-relative-root" in r.text
    code, out = run(container, "ls", "-d", "/home/jovyan/logs")
    assert code == 0, out  # TensorBoard's log folder, created on first start
    r = requests.get(f"{url}/gpu/", headers=auth, timeout=60)
    assert r.status_code == 200 and "has no GPU" in r.text, r.text[:300]
    # without the token: JupyterHub's or the server's login, never the page
    r = requests.get(f"{url}/tensorboard/", timeout=10, allow_redirects=False)
    assert r.status_code in (302, 403), r.status_code
