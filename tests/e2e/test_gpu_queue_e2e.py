"""The line for GPUs and GPU-hours end to end: the real hub, the real Docker engine with
the no-op `nvidia-container-runtime-hook` (Docker accepts GPU device requests on this
machine without GPUs), 4 fake GPU UUIDs, and students who start at once.

What students see comes from JupyterHub's own progress event stream
(GET /hub/api/users/NAME/server/progress), the one the spawn-pending page reads."""

import datetime
import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from .stack import wait_for
from .test_gpus_e2e import device_ids

pytestmark = pytest.mark.e2e

GPUS = [f"GPU-00000000-0000-4000-8000-0000000000a{i}" for i in range(1, 5)]
STUDENTS = [f"q{i}" for i in range(1, 9)]
START_TIMEOUT = 60  # JupyterHub's start_timeout; the first in line waits longer than this
BUDGET_HOURS = 0.001  # 3.6 GPU-seconds a week: used up by one short session


@pytest.fixture(scope="module")
def queue_stack(tmp_path_factory, docker_client, standin_bases):
    from .conftest import make_gpu_stack
    s = make_gpu_stack(tmp_path_factory, docker_client, "gpuhubqueue", GPUS, [
        {"slug": "deep-learning", "display_name": "Deep learning", "description": "One GPU",
         "default": True, "gpus": 1, "allow_cpu": True},
        {"slug": "tiny-budget", "display_name": "Tiny budget", "description": "One GPU, rationed",
         "gpus": 1, "gpu_hours_per_week": BUDGET_HOURS},
    ], {"GPUHUB_GPU_QUEUE_TIMEOUT": "900", "GPUHUB_START_TIMEOUT": str(START_TIMEOUT)})
    (s.dir / "jupyterhub_config.d" / "92-e2e-tokens.py").write_text(
        "# written by tests/e2e/test_gpu_queue_e2e.py: the test's service may make a student's token\n"
        "c.JupyterHub.load_roles.append({'name': 'e2e-tokens', 'services': ['e2e'], "
        "'scopes': ['tokens']})\n")
    with s.running():
        yield s


def server(stack, user):
    return stack.api("GET", f"/users/{user}").json()["servers"].get("", {})


def gpus_report(stack):
    r = stack.api("GET", "/gpus")
    assert r.status_code == 200, r.text
    return r.json()


def line(stack):
    return [(w["user"], w["position"]) for w in gpus_report(stack)["queue"]]


def queue_event(stack, user, timeout=60):
    """The latest waiting event of `user`'s pending spawn, read from the progress stream."""
    with requests.get(f"{stack.hub_url}/hub/api/users/{user}/server/progress", stream=True,
                      headers={"Authorization": f"token {stack.token}"}, timeout=timeout) as r:
        assert r.status_code == 200, r.text
        for raw in r.iter_lines(decode_unicode=True):
            if raw and raw.startswith("data:"):
                event = json.loads(raw[5:])
                if "gpuhub_queue" in event:
                    return event
                assert not event.get("failed"), event
    raise AssertionError(f"{user}'s progress stream ended without a waiting event")


def running_device_ids(stack):
    """{user: [GPU ids of its container's device request]} for the running containers."""
    found = {}
    for c in stack.client.containers.list(filters={"label": "org.gpuhub.user"}):
        if c.name.startswith(stack.prefix):
            found[c.labels["org.gpuhub.user"]] = device_ids(c)[0]
    return found


def assert_no_double_booking(stack):
    ids = [i for ids in running_device_ids(stack).values() for i in ids]
    assert len(ids) == len(set(ids)), f"a GPU in two containers: {running_device_ids(stack)}"
    held = [h["user"] for g in gpus_report(stack)["gpus"] for h in g["holders"]]
    assert len(held) == len(set(held)) <= len(GPUS)
    return ids


def metric(stack, name):
    r = requests.get(f"{stack.hub_url}/hub/metrics", headers={"Authorization": f"token {stack.token}"},
                     timeout=30)
    assert r.status_code == 200, r.text
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in r.text.splitlines()
            if line.startswith(name)}


def test_eight_students_at_once_four_get_gpus_four_wait_in_line(queue_stack):
    s = queue_stack
    for u in STUDENTS:
        assert s.api("POST", f"/users/{u}").status_code in (201, 409)
    with ThreadPoolExecutor(len(STUDENTS)) as pool:
        answers = list(pool.map(lambda u: s.api("POST", f"/users/{u}/server", json={}), STUDENTS))
    assert all(r.status_code in (201, 202) for r in answers), [(r.status_code, r.text) for r in answers]
    wait_for(lambda: sum(1 for u in STUDENTS if server(s, u).get("ready")) == 4, 240,
             "4 servers to be ready")
    waiting = [u for u in STUDENTS if not server(s, u).get("ready")]
    assert len(waiting) == 4 and all(server(s, u).get("pending") == "spawn" for u in waiting)

    # every waiter sees its place on the progress stream, and they are 1 to 4
    events = {u: queue_event(s, u) for u in waiting}
    positions = {u: e["gpuhub_queue"]["position"] for u, e in events.items()}
    assert sorted(positions.values()) == [1, 2, 3, 4], events
    for u, e in events.items():
        ahead = positions[u] - 1
        assert e["message"].startswith("Waiting for a GPU: "), e
        assert (f"{ahead} ahead of you" if ahead else "you are first in line") in e["message"], e
        assert "without a GPU" in e["html_message"], "the course allows the CPU variant"
    # admins see the same line
    assert line(s) == sorted(positions.items(), key=lambda item: item[1])
    assert gpus_report(s)["queue_length"] == 4
    assert metric(s, "gpuhub_gpu_queue_length")["gpuhub_gpu_queue_length"] == 4
    assert sorted(assert_no_double_booking(s)) == sorted(GPUS)


def waited(stack, user):
    """Seconds since JupyterHub began the user's spawn (its `started`)."""
    started = datetime.datetime.fromisoformat(server(stack, user)["started"].replace("Z", "+00:00"))
    return (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()


def test_a_stopped_server_hands_its_gpu_to_the_first_in_line(queue_stack):
    s = queue_stack
    first, second = [u for u, _ in line(s)[:2]]
    # start_timeout does not cut a queued spawn short: the wait is before Spawner.start
    wait_for(lambda: waited(s, first) > START_TIMEOUT + 5, START_TIMEOUT + 60,
             f"{first} to wait in line longer than start_timeout")
    assert server(s, first).get("pending") == "spawn", f"{first} still waits"
    holder = next(u for u in STUDENTS if server(s, u).get("ready"))
    freed = device_ids(s.user_container(holder))[0]
    s.stop_server(holder)
    wait_for(lambda: server(s, first).get("ready"), 120, f"{first} (first in line) to get the GPU")
    assert device_ids(s.user_container(first))[0] == freed
    assert not server(s, second).get("ready"), "only one GPU was freed"
    wait_for(lambda: queue_event(s, second)["gpuhub_queue"]["position"] == 1, 60,
             f"{second} to see the line move up")
    assert [p for _, p in line(s)] == [1, 2, 3]
    assert_no_double_booking(s)


def test_leaving_the_line_frees_the_place(queue_stack):
    s = queue_stack
    last = line(s)[-1][0]
    r = s.api("DELETE", f"/users/{last}/server")
    assert r.status_code in (202, 204), r.text
    wait_for(lambda: "" not in s.api("GET", f"/users/{last}").json()["servers"], 60,
             f"{last}'s pending spawn to be cancelled")
    assert last not in dict(line(s)) and [p for _, p in line(s)] == [1, 2]
    assert s.user_container(last) is None, "nothing started"
    wait_for(lambda: metric(s, "gpuhub_gpu_queue_length")["gpuhub_gpu_queue_length"] == 2, 30,
             "the queue-length gauge to follow")
    # the CPU variant of the course starts at once, line or not
    s.start_server(last, course="deep-learning", cpu_only=True)
    assert device_ids(s.user_container(last))[0] == []
    s.stop_server(last)


def test_a_hub_restart_while_students_wait_loses_no_gpu_and_no_place_lingers(queue_stack):
    s = queue_stack
    waiting = [u for u, _ in line(s)]
    assert len(waiting) == 2
    holders = {g["uuid"]: [h["user"] for h in g["holders"]] for g in gpus_report(s)["gpus"]}
    usage_before = {r["user"]: r["gpu_seconds"] for r in
                    s.api("GET", "/gpus/usage?by=user").json()["rows"]}
    s.compose("restart", "hub")
    s.wait_healthy()
    after = gpus_report(s)
    assert {g["uuid"]: [h["user"] for h in g["holders"]] for g in after["gpus"]} == holders
    assert after["queue"] == [] and after["queue_length"] == 0, "nobody keeps a place"
    # JupyterHub does not resume spawns: the waiters' servers are gone, not stuck pending
    wait_for(lambda: all("" not in s.api("GET", f"/users/{u}").json()["servers"] for u in waiting),
             60, "the interrupted spawns to be cleared")
    running = running_device_ids(s)
    held = {h["user"]: [g["uuid"]] for g in after["gpus"] for h in g["holders"]}
    assert {u: ids for u, ids in running.items() if ids} == held, "allocations match containers"
    # GPU-hours survived the restart, and kept counting
    usage_after = {r["user"]: r["gpu_seconds"] for r in
                   s.api("GET", "/gpus/usage?by=user").json()["rows"]}
    assert set(usage_before) <= set(usage_after)
    assert all(usage_after[u] >= usage_before[u] for u in usage_before)
    # a waiter who starts again is back in line, first
    assert s.api("POST", f"/users/{waiting[0]}/server", json={}).status_code in (201, 202)
    wait_for(lambda: line(s) == [(waiting[0], 1)], 60, f"{waiting[0]} back in line")
    assert queue_event(s, waiting[0])["gpuhub_queue"]["position"] == 1
    s.api("DELETE", f"/users/{waiting[0]}/server")
    wait_for(lambda: line(s) == [], 60, "the line to be empty")


def test_admins_get_gpu_hours_from_the_api_cli_and_metrics(queue_stack):
    s = queue_stack
    r = s.api("GET", "/gpus/usage?by=course&since=7d")
    assert r.status_code == 200, r.text
    by_course = {row["course"]: row for row in r.json()["rows"]}
    assert by_course["deep-learning"]["gpu_seconds"] > 0
    assert by_course["deep-learning"]["allocations"] >= 5  # 4 at first, 1 from the line
    assert s.api("GET", "/gpus/usage?by=name").status_code == 400
    assert s.api("GET", "/gpus/usage?since=yesterday").status_code == 400
    code, out = s.container("hub").exec_run(["python", "-m", "hub.cli", "gpu-hours", "--by", "user",
                                             "--format", "json"])
    assert code == 0, out.decode()
    users = {row["user"] for row in json.loads(out)["rows"]}
    assert len(users) == 5 and users <= set(STUDENTS)
    code, out = s.container("hub").exec_run(["python", "-m", "hub.cli", "gpu-hours", "--by", "gpu"])
    assert code == 0 and all(uuid in out.decode() for uuid in GPUS), out.decode()
    # a student's own token may read neither the line nor anybody's GPU-hours
    r = s.api("POST", "/users/q2/tokens", json={"note": "a student's token"})
    assert r.status_code in (200, 201), r.text
    student = {"Authorization": f"token {r.json()['token']}"}
    for path in ("/hub/api/gpus", "/hub/api/gpus/usage", "/hub/api/gpus/usage?by=user"):
        r = requests.get(f"{s.hub_url}{path}", headers=student, timeout=30)
        assert r.status_code == 403, (path, r.status_code, r.text)
    counters = metric(s, "gpuhub_gpu_seconds_total")
    assert counters['gpuhub_gpu_seconds_total{course="deep-learning"}'] > 0
    assert not any("user" in key for key in counters), "no per-user labels"


def test_a_student_over_budget_is_refused_with_the_reset_time(queue_stack):
    s = queue_stack
    for u in STUDENTS:  # make room: the budget, not the line, must be what refuses
        if "" in s.api("GET", f"/users/{u}").json()["servers"]:
            s.stop_server(u)
    s.start_server("q1", course="tiny-budget")

    def used_up():
        rows = s.api("GET", "/gpus/usage?by=course&since=week").json()["rows"]
        return next((r["gpu_hours"] for r in rows if r["course"] == "tiny-budget"), 0) >= BUDGET_HOURS
    wait_for(used_up, 60, "q1 to use up the tiny budget")
    s.stop_server("q1")
    r = s.api("POST", "/users/q1/server", json={"course": "tiny-budget"})
    assert r.status_code == 403, (r.status_code, r.text)
    message = r.json()["message"]
    assert re.search(r"You have used [0-9.]+ of your 0\.001 GPU-hours this week for Tiny budget\. "
                     r"The budget resets on Monday \d\d \w+ 20\d\d, 00:00 UTC", message), message
    wait_for(lambda: "" not in s.api("GET", "/users/q1").json()["servers"], 30, "the refusal to clear")
    assert s.user_container("q1") is None
    # the budget is per course: the same student may still use another course's GPU
    s.start_server("q1", course="deep-learning")
    s.stop_server("q1")
