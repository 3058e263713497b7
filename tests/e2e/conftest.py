import os
import subprocess
import warnings

import docker
import pytest
import urllib3

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


@pytest.fixture(scope="session")
def stack(tmp_path_factory, docker_client, standin_bases):
    """The deployment with the stand-in for Traefik's API (no Traefik image here)."""
    s = make_stack(tmp_path_factory, docker_client, "gpuhube2e", real_traefik=False)
    print("\nNOTE: Traefik's API is served by tests/e2e/traefik_api_standin.py "
          "(no traefik:v3 image on this machine); everything else is docker-compose.yml.")
    try:
        s.up()
        yield s
    finally:
        s.down()


@pytest.fixture(scope="session")
def traefik_stack(tmp_path_factory, docker_client, standin_bases):
    """The deployment with real Traefik, where its image exists."""
    image = traefik_image()
    if not image_exists(docker_client, image):
        pytest.skip(f"real-Traefik test skipped: image {image} is not on this machine "
                    f"and cannot be pulled here; the stand-in variant ran instead")
    s = make_stack(tmp_path_factory, docker_client, "gpuhubtraefik", real_traefik=True)
    try:
        s.up()
        yield s
    finally:
        s.down()
