"""GPUHUB_CPUSET_CPUS: the user servers' CPUs (Docker's --cpuset-cpus), e.g. to leave the
hub a core of its own (benchmarks/cpusets.py, docs/performance.md). From the setting to
the create body the hub sends, and the Docker API guard lets that body through."""

import json

import docker
import pytest

from hub import settings
from hub.spawner import host_config

from .test_guard_rules import create, decide, good_body

ENV = {"GPUHUB_DOMAIN": "hub.example.edu", "AUTH_PROVIDER": "dummy",
       "GPUHUB_USER_IMAGE": "gpuhub/user:1", "GPUHUB_DUMMY_PASSWORD": "x" * 16}


def spawner_host_config(tmp_path, **env):
    from traitlets.config import Config

    from hub import config
    c = Config()
    config.apply(c, {**ENV, "GPUHUB_STATE_DIR": str(tmp_path), "GPUHUB_TLS_DIR": str(tmp_path / "tls"), **env})

    class Spawner:
        security_host_config = c.GpuhubSpawner.security_host_config
        mem_limit, gpus = None, []
    return host_config(Spawner())


def test_user_servers_get_the_cpuset_docker_py_sends_as_cpusetcpus(tmp_path):
    assert "cpuset_cpus" not in spawner_host_config(tmp_path)
    config = spawner_host_config(tmp_path, GPUHUB_CPUSET_CPUS="1-3,5")
    assert config["cpuset_cpus"] == "1-3,5"
    host = docker.APIClient(version="1.41").create_host_config(cpuset_cpus=config["cpuset_cpus"])
    assert host["CpusetCpus"] == "1-3,5"


async def test_the_guard_allows_a_cpuset_in_the_create_body():
    body = good_body()
    body["HostConfig"]["CpusetCpus"] = "1"
    assert (await decide(create(json.dumps(body).encode()))).rule == "container-create"


@pytest.mark.parametrize("raw", ["all", "1-", "-1", "1,,2", "1 2", "0x1", "1;rm"])
def test_a_bad_cpuset_is_refused_naming_the_variable(raw):
    _, problems = settings.read({"GPUHUB_CPUSET_CPUS": raw}, only=["GPUHUB_CPUSET_CPUS"])
    assert problems and problems[0].startswith("GPUHUB_CPUSET_CPUS=")
