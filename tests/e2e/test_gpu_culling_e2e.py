"""GPU-aware culling end to end: the real hub with its gpu-culler service and
jupyterhub-idle-culler, real user containers with fake GPUs (the no-op nvidia hook).

There is no GPU here, so nothing real can say how busy a GPU is. The hub reads GPU
utilisation from GPUHUB_GPU_USAGE_SOURCE=file:/srv/jupyterhub/gpu-usage.json, a JSON
file {GPU uuid: percent} that THIS TEST writes into the hub container, standing in for
NVML (hub.gpu_culler.NvmlUsage in production). Everything else -- the REST API, the
service's scoped token, the activity a student's server posts, the stop, the home page --
is what runs in production. Activity is faked the way a student would: a loop inside the
user's container posting to JUPYTERHUB_ACTIVITY_URL with the server's own token.
"""

import datetime
import json
import re

import pytest
import requests
import yaml

from .stack import wait_for

pytestmark = pytest.mark.e2e

GPUS = [f"GPU-00000000-0000-4000-8000-0000000000d{i}" for i in range(1, 5)]
GPU_IDLE = 20  # GPUHUB_GPU_IDLE_TIMEOUT; the gpu-culler looks every 5 s (a quarter)
CPU_IDLE = 60  # GPUHUB_IDLE_TIMEOUT, jupyterhub-idle-culler (looks every 30 s)
SPRINT_MAX_AGE = 45  # the `sprint` course's gpu_max_age
USAGE_FILE = "/srv/jupyterhub/gpu-usage.json"

# what a student can run in a terminal: tell the hub "I am active" every 2 s (bounded)
FAKE_ACTIVITY = """
import datetime, json, os, time, urllib.request
for _ in range(150):
    now = datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")
    body = json.dumps({"last_activity": now, "servers": {"": {"last_activity": now}}}).encode()
    request = urllib.request.Request(os.environ["JUPYTERHUB_ACTIVITY_URL"], data=body, method="POST",
        headers={"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"],
                 "Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request, timeout=5)
    except Exception as e:
        print(e, flush=True)
    time.sleep(2)
"""


@pytest.fixture(scope="module")
def cull_stack(tmp_path_factory, docker_client, standin_bases):
    from .conftest import make_stack
    s = make_stack(tmp_path_factory, docker_client, "gpuhubgcull", real_traefik=False, extra_env={
        "GPUHUB_GPUS": ",".join(GPUS),
        "GPUHUB_CATALOG": "/srv/gpuhub/catalog/catalog.yaml",
        "GPUHUB_IDLE_TIMEOUT": str(CPU_IDLE),
        "GPUHUB_GPU_IDLE_TIMEOUT": str(GPU_IDLE),
        "GPUHUB_GPU_MAX_AGE": "3600",
        "GPUHUB_GPU_WARNING": "30",
        "GPUHUB_GPU_USAGE_SOURCE": f"file:{USAGE_FILE}",
    })
    image = s.env["GPUHUB_USER_IMAGE"]
    (s.dir / "catalog" / "catalog.yaml").write_text(yaml.safe_dump({"courses": [
        {"slug": "cpu", "display_name": "CPU only", "image": image, "default": True},
        {"slug": "dl", "display_name": "Deep learning", "image": image, "gpus": 1},
        {"slug": "sprint", "display_name": "GPU sprint", "image": image, "gpus": 1,
         "gpu_max_age": SPRINT_MAX_AGE},
    ]}))
    with s.running():
        set_usage(s, {})
        yield s


def set_usage(stack, usage):
    """What 'NVML' says: written atomically into the hub container for the gpu-culler."""
    code, out = stack.container("hub").exec_run(["python3", "-c", (
        "import os, sys; open(sys.argv[1] + '.tmp', 'w').write(sys.argv[2]); "
        "os.replace(sys.argv[1] + '.tmp', sys.argv[1])"), USAGE_FILE, json.dumps(usage)])
    assert code == 0, out.decode()


def gpu_of(stack, user):
    for gpu in stack.api("GET", "/gpus").json()["gpus"]:
        if any(h["user"] == user for h in gpu["holders"]):
            return gpu["uuid"]
    raise AssertionError(f"{user} holds no GPU")


def running(stack, user):
    return "" in stack.api("GET", f"/users/{user}").json()["servers"]


def start(stack, user, course):
    assert stack.api("POST", f"/users/{user}").status_code in (201, 409)
    stack.start_server(user, course=course)


def fake_activity(stack, user):
    stack.user_container(user).exec_run(["python3", "-c", FAKE_ACTIVITY], detach=True)


def last_activity(stack, user):
    text = stack.api("GET", f"/users/{user}").json()["servers"][""]["last_activity"]
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def home_page(stack, user):
    """The hub's home page as `user` sees it, after logging in with the dummy password."""
    session = requests.Session()
    login = session.get(f"{stack.hub_url}/hub/login", timeout=30)
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', login.text).group(1)
    r = session.post(f"{stack.hub_url}/hub/login?next=/hub/home", timeout=30, data={
        "username": user, "password": stack.env["GPUHUB_DUMMY_PASSWORD"], "_xsrf": xsrf})
    assert r.status_code == 200 and "/hub/home" in r.url, (r.status_code, r.url)
    return r.text


def test_an_idle_gpu_server_is_stopped_before_an_idle_cpu_server(cull_stack):
    s = cull_stack
    start(s, "cpuidle", "cpu")
    start(s, "gpuidle", "dl")
    # nobody touches either; nothing measures gpuidle's GPU, so its activity decides
    wait_for(lambda: not running(s, "gpuidle"), GPU_IDLE * 4, "the gpu-culler to stop gpuidle")
    assert running(s, "cpuidle"), "the CPU server has the longer, hub-wide timeout"
    assert "gpuidle" not in str(s.api("GET", "/gpus").json()["gpus"]), "its GPU is free again"
    assert s.client.volumes.get(f"{s.env['GPUHUB_VOLUME_PREFIX']}-gpuidle"), "the volume stays"
    logs = s.logs("hub")
    assert re.search(r"DELETE /hub/api/users/gpuidle/server \(gpu-culler@", logs), logs[-3000:]
    # and the CPU server goes too, later, by jupyterhub-idle-culler
    wait_for(lambda: not running(s, "cpuidle"), CPU_IDLE * 4, "the idle culler to stop cpuidle")
    assert re.search(r"DELETE /hub/api/users/cpuidle/server \(idle-culler@", s.logs("hub"))
    page = home_page(s, "gpuidle")
    assert "without activity" in page and "gpu_idle" in page, page[-3000:]


def test_a_gpu_server_past_its_maximum_age_stops_although_it_posts_activity(cull_stack):
    s = cull_stack
    start(s, "marathon", "sprint")
    container = s.user_container("marathon")
    code, out = container.exec_run(["printenv", "GPUHUB_GPU_DEADLINE"])
    deadline = datetime.datetime.fromisoformat(out.decode().strip().replace("Z", "+00:00"))
    since = next(h["since"] for g in s.api("GET", "/gpus").json()["gpus"] for h in g["holders"]
                 if h["user"] == "marathon")
    since = datetime.datetime.fromisoformat(since.replace("Z", "+00:00"))
    assert abs((deadline - since).total_seconds() - SPRINT_MAX_AGE) < 5, (deadline, since)
    # its GPU is busy and its notebook "active": neither idle rule applies
    set_usage(s, {gpu_of(s, "marathon"): 90})
    first = last_activity(s, "marathon")
    fake_activity(s, "marathon")
    wait_for(lambda: last_activity(s, "marathon") > first, 30, "the faked activity to reach the hub")
    wait_for(lambda: not running(s, "marathon"), SPRINT_MAX_AGE * 3,
             "the gpu-culler to stop marathon at its maximum age")
    stopped_at = datetime.datetime.now(datetime.timezone.utc)
    assert stopped_at >= deadline, "not before the deadline JupyterLab showed"
    page = home_page(s, "marathon")
    assert "GPU sessions last at most 45 seconds" in page, page[-3000:]
    assert "Your files are kept" in page


def test_an_unused_gpu_is_stopped_while_a_used_one_is_left_alone(cull_stack):
    s = cull_stack
    # busy first: when lowuse is stopped, busy has been without activity longer than that
    start(s, "busy", "dl")
    start(s, "lowuse", "dl")
    set_usage(s, {gpu_of(s, "busy"): 95, gpu_of(s, "lowuse"): 1})
    fake_activity(s, "lowuse")  # an "active" notebook does not keep an unused GPU
    wait_for(lambda: not running(s, "lowuse"), GPU_IDLE * 4, "the gpu-culler to stop lowuse")
    assert running(s, "busy"), "a GPU in use keeps its server, whatever the activity says"
    assert re.search(r"gpu-culler\] Stopping lowuse/: gpu_unused", s.logs("hub")), s.logs("hub")[-3000:]
    assert "Stopping busy/" not in s.logs("hub")
    page = home_page(s, "lowuse")
    assert "its GPU was not used (below 5% utilisation) for 20 seconds" in page, page[-3000:]
    # the reason is lowuse's alone; busy's page has the rules but no stop notice
    busy_page = home_page(s, "busy")
    assert "gpuhub-stop-notice" not in busy_page and "Servers with a GPU stop" in busy_page
    s.stop_server("busy")
