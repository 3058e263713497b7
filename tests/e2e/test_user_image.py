"""The TensorFlow 2.9 user image, built on the stand-in for the official base: what the
derived image must fix (root, /tf, the CMD that drops arguments) is fixed."""

import json
import secrets
import subprocess

import pytest
import requests

from .stack import RUN_ID, copy_repository, free_port, wait_for

pytestmark = pytest.mark.e2e

MIRROR = "https://pypi.org/simple"  # the TUNA default is unreachable here


@pytest.fixture(scope="module")
def user_image(tmp_path_factory, docker_client, standin_bases):
    context = tmp_path_factory.mktemp("user-image")
    copy_repository(context)
    tag = f"gpuhub-test/tensorflow-2.9-gpu:image-test{RUN_ID}"
    subprocess.run(
        ["docker", "build", "-q", "-f", "images/tensorflow-2.9-gpu/Dockerfile",
         "--build-arg", "BASE_IMAGE=gpuhub-standin/tf-gpu-jupyter:test",
         "--build-arg", "REQUIREMENTS=tests/images/tensorflow-2.9-gpu/requirements-standin.txt",
         "--build-arg", f"PIP_INDEX_URL={MIRROR}",
         "--build-arg", "LOCK_SHA256=0123abcd",
         # the stand-in base has no TensorFlow; the build checks that this is true
         "--build-arg", "TF_VERSION=none",
         "-t", tag, "."], cwd=context, check=True, capture_output=True, timeout=900)
    yield tag


@pytest.fixture
def running(docker_client, user_image):
    """The image started as an instructor tries it: a fresh named volume, a token argument."""
    volume = docker_client.volumes.create(f"gpuhub-image-test-{secrets.token_hex(4)}")
    token, port = secrets.token_hex(8), free_port()
    container = docker_client.containers.run(
        user_image, ["start-singleuser.sh", f"--IdentityProvider.token={token}"],
        detach=True, ports={"8888/tcp": ("127.0.0.1", port)},
        volumes={volume.name: {"bind": "/home/jovyan", "mode": "rw"}})
    try:
        yield container, f"http://127.0.0.1:{port}", token
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
