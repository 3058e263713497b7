import os
import subprocess
import warnings

import docker
import pytest
import urllib3
import yaml

from .stack import REPO, Stack, image_exists, traefik_image

# self-signed certificates are the point of the LAN mode; don't warn about them
warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)


@pytest.fixture(scope="session")
def docker_client():
    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:
        if os.environ.get("CI"):
            pytest.fail(f"no Docker engine answers (CI must run .ci/docker-up first): {e}")
        pytest.skip(f"no Docker engine answers: {e}")
    return client


@pytest.fixture(scope="session")
def standin_bases(docker_client):
    """Local stand-ins for python:3.12-slim and tensorflow/tensorflow:2.9.x-gpu-jupyter."""
    subprocess.run([str(REPO / "tests" / "standin" / "build-bases")], check=True, timeout=900)


def make_stack(tmp_path_factory, docker_client, name, real_traefik, extra_env=None):
    return Stack(tmp_path_factory.mktemp(name), docker_client, name, real_traefik, extra_env)


# the course catalog of the GPU tests: CPU by default, a GPU on request (or CPU if none is free)
CPU_AND_GPU_COURSES = [
    {"slug": "cpu", "display_name": "CPU only", "description": "No GPU", "default": True, "gpus": 0},
    {"slug": "deep-learning", "display_name": "Deep learning", "description": "One GPU",
     "gpus": 1, "allow_cpu": True},
]
# the same, but a student without a GPU is refused, not given a CPU server
CPU_AND_GPU_ONLY_COURSES = [CPU_AND_GPU_COURSES[0],
                            {k: v for k, v in CPU_AND_GPU_COURSES[1].items() if k != "allow_cpu"}]


def make_gpu_stack(tmp_path_factory, docker_client, name, gpus, courses, extra_env=None):
    """A stand-in stack (not started) whose hub hands out `gpus`, fake UUIDs, one server
    each (the no-op `nvidia-container-runtime-hook` lets Docker accept their device
    requests; nothing asks NVML), with the catalog `courses`, each on the stack's user image."""
    s = make_stack(tmp_path_factory, docker_client, name, real_traefik=False, extra_env={
        "GPUHUB_GPUS": ",".join(gpus),
        "GPUHUB_GPU_MODE": "exclusive",
        "GPUHUB_CATALOG": "/srv/gpuhub/catalog/catalog.yaml",
        **(extra_env or {}),
    })
    (s.dir / "catalog" / "catalog.yaml").write_text(yaml.safe_dump({"courses": [
        {"image": s.env["GPUHUB_USER_IMAGE"], **course} for course in courses]}))
    return s


@pytest.fixture(scope="session")
def stack(tmp_path_factory, docker_client, standin_bases):
    """The deployment with the stand-in for Traefik's API (no Traefik image here)."""
    s = make_stack(tmp_path_factory, docker_client, "gpuhube2e", real_traefik=False)
    print("\nNOTE: Traefik's API is served by tests/e2e/traefik_api_standin.py "
          "(no traefik:v3 image on this machine); everything else is docker-compose.yml.")
    with s.running():
        yield s


@pytest.fixture(scope="session")
def traefik_stack(tmp_path_factory, docker_client, standin_bases):
    """The deployment with real Traefik, where its image exists."""
    image = traefik_image()
    if not image_exists(docker_client, image):
        pytest.skip(f"real-Traefik test skipped: image {image} is not on this machine "
                    f"and cannot be pulled here; the stand-in variant ran instead")
    s = make_stack(tmp_path_factory, docker_client, "gpuhubtraefik", real_traefik=True)
    with s.running():
        yield s
