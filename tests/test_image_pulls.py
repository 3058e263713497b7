"""No accidental pulls: an image missing locally that names no registry is an error naming
the image and `make images` (hub/imagerefs.py), never a pull from Docker Hub."""

import asyncio

import docker
import pytest
from tornado import web

from hub import imagerefs
from hub.spawner import GpuhubSpawner


@pytest.mark.parametrize("reference, host", [
    ("gpuhub/tensorflow-2.9-gpu:latest", None), ("ubuntu", None), ("library/python:3.12", None),
    ("registry.example.edu/lab/cs101:1", "registry.example.edu"),
    ("registry:5000/lab/x", "registry:5000"), ("localhost/x:1", "localhost"),
    ("ghcr.io/org/img@sha256:abc", "ghcr.io"),
])
def test_the_registry_of_a_reference(reference, host):
    assert imagerefs.registry(reference) == host


class Recorder(GpuhubSpawner):
    """The spawner with Docker's API replaced by a record of the calls (and no images)."""

    def __init__(self, present=()):
        super().__init__()
        self.calls, self.present = [], set(present)

    async def docker(self, method, *args, **kwargs):
        self.calls.append((method, *args))
        if method == "inspect_image" and args[0] not in self.present:
            raise docker.errors.NotFound("no such image")
        return {}


def test_a_missing_image_without_a_registry_is_an_error_not_a_pull():
    spawner = Recorder()
    with pytest.raises(web.HTTPError) as e:
        asyncio.run(spawner.pull_image("gpuhub/cs101:2024"))
    assert "gpuhub/cs101:2024" in e.value.log_message and "make images" in e.value.log_message
    assert [c[0] for c in spawner.calls] == ["inspect_image"]


def test_a_local_image_is_used_as_it_is():
    spawner = Recorder(present={"gpuhub/cs101:2024"})
    asyncio.run(spawner.pull_image("gpuhub/cs101:2024"))
    assert [c[0] for c in spawner.calls] == ["inspect_image"]


def test_an_image_from_a_named_registry_is_pulled_when_missing():
    spawner = Recorder()
    asyncio.run(spawner.pull_image("registry.example.edu/lab/cs101:1"))
    assert ("pull", "registry.example.edu/lab/cs101", "1") in spawner.calls
