"""jupyterhub-idle-culler as the hub runs it (GPUHUB_IDLE_TIMEOUT): an idle server is
stopped, its GPU goes back to the pool, its container goes, and its volume stays."""

import re

import pytest
import yaml

from .stack import wait_for

pytestmark = pytest.mark.e2e

GPU = "GPU-00000000-0000-4000-8000-0000000000c1"
IDLE_TIMEOUT = 20  # the culler looks every IDLE_TIMEOUT / 2 seconds


@pytest.fixture(scope="module")
def culled_stack(tmp_path_factory, docker_client, standin_bases):
    from .conftest import make_stack
    s = make_stack(tmp_path_factory, docker_client, "gpuhubcull", real_traefik=False, extra_env={
        "GPUHUB_GPUS": GPU,
        "GPUHUB_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
        "GPUHUB_GPU_QUEUE_TIMEOUT": "0",  # a refusal, not a place in line (see test_gpu_queue_e2e)
        "GPUHUB_CATALOG": "/srv/gpuhub/catalog/catalog.yaml",
    })
    (s.dir / "catalog" / "catalog.yaml").write_text(yaml.safe_dump({"courses": [
        {"slug": "deep-learning", "display_name": "Deep learning", "description": "One GPU",
         "image": s.env["GPUHUB_USER_IMAGE"], "default": True, "gpus": 1},
    ]}))
    with s.running():
        yield s


def gpu_holders(stack):
    r = stack.api("GET", "/gpus")
    assert r.status_code == 200, r.text
    return [h["user"] for gpu in r.json()["gpus"] for h in gpu["holders"]]


def test_an_idle_server_is_stopped_and_its_gpu_freed(culled_stack):
    s = culled_stack
    assert s.api("POST", "/users/sleepy").status_code in (201, 409)
    s.start_server("sleepy")
    assert gpu_holders(s) == ["sleepy"]
    # the only GPU is taken: a second student is refused until the culler frees it
    assert s.api("POST", "/users/waiting").status_code in (201, 409)
    r = s.api("POST", "/users/waiting/server", json={})
    assert r.status_code == 503 and "in use" in r.text, r.text

    # nobody touches sleepy's server: within timeout + one culling round (+ slack) it goes
    wait_for(lambda: "" not in s.api("GET", "/users/sleepy").json()["servers"],
             IDLE_TIMEOUT * 4, "the idle culler to stop sleepy's server")
    # by the culler, not by anybody else
    logs = s.logs("hub")
    assert "Culling server sleepy" in logs, logs[-3000:]
    assert re.search(r"DELETE /hub/api/users/sleepy/server \(idle-culler@", logs), logs[-3000:]
    wait_for(lambda: s.user_container("sleepy") is None, 60, "sleepy's container to be removed")
    assert gpu_holders(s) == []
    # the work stays: the volume is kept
    assert s.client.volumes.get(f"{s.env['GPUHUB_VOLUME_PREFIX']}-sleepy")
    # and the GPU serves the next student
    s.start_server("waiting")
    assert gpu_holders(s) == ["waiting"]
    s.stop_server("waiting")
