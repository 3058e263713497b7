"""GPU allocation end to end: the real hub, the real Docker engine with the no-op
`nvidia-container-runtime-hook` (so Docker accepts GPU device requests on a machine
without GPUs), and an inventory of fake UUIDs."""

import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from .stack import wait_for

pytestmark = pytest.mark.e2e

GPUS = [f"GPU-00000000-0000-4000-8000-00000000000{i}" for i in range(1, 4)]


@pytest.fixture(scope="module")
def gpu_stack(tmp_path_factory, docker_client, standin_bases):
    from .conftest import CPU_AND_GPU_COURSES, make_gpu_stack
    # no line: these tests are about refusals (the line: test_gpu_queue_e2e.py)
    with make_gpu_stack(tmp_path_factory, docker_client, "gpuhubgpu", GPUS, CPU_AND_GPU_COURSES,
                        {"GPUHUB_GPU_QUEUE_TIMEOUT": "0"}).running() as s:
        yield s


def device_ids(container):
    container.reload()
    requests_ = container.attrs["HostConfig"].get("DeviceRequests") or []
    return [i for r in requests_ for i in (r.get("DeviceIDs") or [])], requests_


def visible_devices(container):
    code, out = container.exec_run(["printenv", "NVIDIA_VISIBLE_DEVICES"])
    return out.decode().strip()


def holders(stack):
    r = stack.api("GET", "/gpus")
    assert r.status_code == 200, r.text
    return {gpu["uuid"]: sorted(h["user"] for h in gpu["holders"]) for gpu in r.json()["gpus"]}


def allocations_match_containers(stack):
    """Every allocation has a running container with exactly its GPUs, and back."""
    held = {}
    for uuid, users in holders(stack).items():
        for user in users:
            held.setdefault(user, set()).add(uuid)
    running = {}
    for c in stack.client.containers.list(filters={"label": "org.gpuhub.user"}):
        if c.name.startswith(stack.prefix):
            ids, _ = device_ids(c)
            if ids:
                running[c.labels["org.gpuhub.user"]] = set(ids)
    return held, running


def test_gpu_and_cpu_courses_get_exactly_their_gpus(gpu_stack):
    s = gpu_stack
    users = ["gpu1", "gpu2", "gpu3", "cpu1"]
    for u in users:
        assert s.api("POST", f"/users/{u}").status_code in (201, 409)
    for u in users[:3]:
        s.start_server(u, course="deep-learning")
    s.start_server("cpu1", course="cpu")

    taken = []
    for u in users[:3]:
        container = s.user_container(u)
        ids, requests_ = device_ids(container)
        assert len(ids) == 1 and ids[0] in GPUS, requests_
        assert requests_[0]["Driver"] == "nvidia" and requests_[0]["Capabilities"] == [["gpu"]]
        assert visible_devices(container) == ids[0], "NVIDIA_VISIBLE_DEVICES agrees with the device request"
        taken.append(ids[0])
    assert sorted(taken) == sorted(GPUS), "never two owners for one GPU"

    cpu = s.user_container("cpu1")
    assert device_ids(cpu)[0] == [] and visible_devices(cpu) == "void"
    assert holders(s) == {g: [u] for g, u in zip(taken, users[:3])}


def test_out_of_gpus_is_a_clear_refusal_and_nothing_starts(gpu_stack):
    s = gpu_stack
    assert s.api("POST", "/users/late").status_code in (201, 409)
    r = s.api("POST", "/users/late/server", json={"course": "deep-learning"})
    assert r.status_code == 503, r.text  # the spawner's refusal: try again later
    message = r.json()["message"]
    assert "3" in message and "GPU" in message and "CPU" in message, message
    wait_for(lambda: "" not in s.api("GET", "/users/late").json()["servers"], 30, "the failed server to clear")
    assert s.user_container("late") is None, "nothing half-started"

    # the CPU variant of the same course starts at once
    s.start_server("late", course="deep-learning", cpu_only=True)
    assert device_ids(s.user_container("late"))[0] == []
    assert visible_devices(s.user_container("late")) == "void"
    s.stop_server("late")


def test_a_course_the_user_may_not_see_is_refused(gpu_stack):
    s = gpu_stack
    assert "'no-such-course' is not offered to nosy" in s.refused_start("nosy", "no-such-course")


def test_stopped_gpu_is_reused_and_allocations_survive_a_hub_restart(gpu_stack):
    s = gpu_stack
    freed = device_ids(s.user_container("gpu1"))[0][0]
    s.stop_server("gpu1")
    assert holders(s)[freed] == []
    s.start_server("late", course="deep-learning")
    assert device_ids(s.user_container("late"))[0] == [freed]

    before = holders(s)
    s.compose("restart", "hub")
    s.wait_healthy()
    assert holders(s) == before
    held, running = allocations_match_containers(s)
    assert held == running


def test_sigkill_during_a_burst_leaks_no_gpu(gpu_stack):
    s = gpu_stack
    for u in ("gpu2", "gpu3", "late"):
        s.stop_server(u)
    burst = [f"burst{i}" for i in range(5)]
    for u in burst:
        assert s.api("POST", f"/users/{u}").status_code in (201, 409)
    # a real burst: all requests at once (each POST waits up to 10 s for its spawn)
    pool = ThreadPoolExecutor(len(burst))
    for u in burst:
        pool.submit(s.api, "POST", f"/users/{u}/server", json={"course": "deep-learning"})
    # the kill must land mid-burst: wait until a spawn is in flight, not a fixed time
    wait_for(lambda: any(s.api("GET", f"/users/{u}").json()["servers"].get("", {}).get("pending")
                         for u in burst), 30, "a spawn of the burst to be in flight", interval=0.05)
    hub = s.container("hub")
    hub.kill(signal="SIGKILL")
    pool.shutdown(wait=True)  # their connections broke with the hub
    subprocess.run(["docker", "start", hub.id], check=True, capture_output=True, timeout=60)
    s.wait_healthy()
    # let spawns that JupyterHub resumes or abandons settle, then compare
    wait_for(lambda: (lambda h, r: h == r)(*allocations_match_containers(s)), 120,
             "GPU allocations to match exactly the containers that run")
    # and no GPU reached two containers: the device requests Docker got are disjoint
    held, running = allocations_match_containers(s)
    given = [uuid for ids in running.values() for uuid in ids]
    assert len(given) == len(set(given)), running


def test_admins_see_holders_in_the_cli_and_metrics(gpu_stack):
    s = gpu_stack
    s.start_server("gpu1", course="deep-learning")
    held = [uuid for uuid, users in holders(s).items() if users]
    code, out = s.container("hub").exec_run(["python", "-m", "hub.cli", "gpus"])
    text = out.decode()
    assert code == 0, text
    lines = [line for line in text.splitlines() if "GPU-" in line]
    assert len(lines) == len(GPUS), text
    for uuid in held:
        line = next(line for line in lines if uuid in line)
        assert "since" in line and "free" not in line, line
    r = requests.get(f"{s.hub_url}/hub/metrics", headers={"Authorization": f"token {s.token}"}, timeout=30)
    assert r.status_code == 200, r.text
    metrics = {line.split()[0]: float(line.split()[1]) for line in r.text.splitlines()
               if line.startswith("gpuhub_gpus")}
    assert metrics["gpuhub_gpus_total"] == len(GPUS)
    assert metrics["gpuhub_gpus_in_use"] == len(held)


def test_a_server_that_dies_gives_back_its_gpu_and_container(gpu_stack):
    """The kernel's OOM killer (here `docker kill`) ends a student's GPU server. The hub's
    poll reports it gone; its GPU goes back at once, not at the next hub start: all three
    GPUs can then be taken by three other students. JupyterHub does not call stop() for a
    server that ended on its own (hub.spawner.GpuhubSpawner.run_post_stop_hook)."""
    s = gpu_stack
    for user, model in {u["name"]: u for u in s.api("GET", "/users").json()}.items():
        if model["servers"].get(""):
            s.stop_server(user)
    assert s.api("POST", "/users/doomed").status_code in (201, 409)
    s.start_server("doomed", course="deep-learning")
    container = s.user_container("doomed")
    uuid = device_ids(container)[0][0]
    container.kill()
    # JupyterHub polls each server every 30 s (Spawner.poll_interval)
    wait_for(lambda: "" not in s.api("GET", "/users/doomed").json()["servers"], 120,
             "the hub to see doomed's server gone")
    wait_for(lambda: holders(s)[uuid] == [], 30, "doomed's GPU to be free")
    assert s.user_container("doomed") is None, "the dead container is removed"
    others = ["gpu1", "gpu2", "gpu3"]
    for user in others:
        s.start_server(user, course="deep-learning")
    assert sorted(device_ids(s.user_container(u))[0][0] for u in others) == sorted(GPUS)
    for user in others:
        s.stop_server(user)
