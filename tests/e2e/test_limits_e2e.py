"""Limits of a user server that hold, shown by a student's own code: a real spawned server,
driven through the Jupyter server's REST and websocket API as the browser does.

The stack here has small limits (memory 400m, 128 processes, half a CPU, 96m /dev/shm),
so that going past them is quick and cheap on a shared machine."""

import asyncio
import json
import os
import uuid

import docker
import pytest
import requests
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from .conftest import make_stack
from .stack import wait_for

pytestmark = pytest.mark.e2e

LIMITS = {"GPUHUB_MEM_LIMIT": "400m", "GPUHUB_PIDS_LIMIT": "128", "GPUHUB_CPU_LIMIT": "0.5",
          "GPUHUB_SHM_SIZE": "96m"}
USER = "limits"


def disk_quota_support(client):
    """(supported, why): storage-opt size works on overlay2 over xfs mounted with pquota."""
    info = client.info()
    backing = dict(info.get("DriverStatus") or []).get("Backing Filesystem", "?")
    if info.get("Driver") != "overlay2" or backing != "xfs":
        return False, (f"the writable layer's size needs overlay2 on xfs with pquota; this "
                       f"engine has {info.get('Driver')} on {backing} (docs/security.md)")
    return True, "overlay2 on xfs"


@pytest.fixture(scope="module")
def limits_stack(tmp_path_factory, docker_client, standin_bases):
    env = dict(LIMITS)
    if disk_quota_support(docker_client)[0]:
        env["GPUHUB_DISK_LIMIT"] = "1g"
    s = make_stack(tmp_path_factory, docker_client, "gpuhublimits", real_traefik=False,
                   extra_env=env)
    with s.running():
        assert s.api("POST", f"/users/{USER}").status_code in (201, 409)
        s.start_server(USER)
        yield s


def direct_url(stack, user):
    """The user's server, reached from this machine for a kernel's websocket: the stand-in
    proxy forwards plain HTTP only, and the server's own network has no host address
    (hub/networks.py), so the test (not the product) also attaches the container to the
    stack's users network, which this machine reaches."""
    container = stack.user_container(user)
    network = stack.env["GPUHUB_USER_NETWORK"]
    container.reload()
    if network not in container.attrs["NetworkSettings"]["Networks"]:
        stack.client.networks.get(network).connect(container)
    return f"http://{stack.ip(container, network)}:8888/user/{user}"


class Kernel:
    """A kernel of the user's server, as JupyterLab drives one."""

    def __init__(self, stack, user):
        self.base = direct_url(stack, user)
        self.headers = {"Authorization": f"token {stack.token}"}
        r = requests.post(f"{self.base}/api/kernels", headers=self.headers, json={}, timeout=60)
        assert r.status_code == 201, r.text
        self.id = r.json()["id"]

    def run(self, code, timeout=120):
        """(output, outcome): outcome is 'ok', 'error', or the kernel's 'restarting'/'dead'
        state when it died running the code, or 'closed' when the websocket went away."""
        return asyncio.run(self._run(code, timeout))

    async def _run(self, code, timeout):
        url = self.base.replace("http", "ws", 1) + f"/api/kernels/{self.id}/channels"
        ws = await websocket_connect(HTTPRequest(url, headers=self.headers))
        msg_id = uuid.uuid4().hex
        ws.write_message(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": USER,
                       "session": uuid.uuid4().hex, "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": False,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}}))
        output, outcome, idle = "", None, False
        try:
            deadline = asyncio.get_running_loop().time() + timeout
            # the reply (shell) may come before the output (iopub): done at both the reply
            # and the kernel's "idle" for this request, as JupyterLab waits
            while outcome is None or (outcome in ("ok", "error") and not idle):
                left = deadline - asyncio.get_running_loop().time()
                assert left > 0, f"no answer from the kernel after {timeout}s: {output!r}"
                raw = await asyncio.wait_for(ws.read_message(), left)
                if raw is None:
                    outcome = "closed"
                    break
                msg = json.loads(raw)
                kind, content = msg["header"]["msg_type"], msg.get("content", {})
                if kind == "status" and content.get("execution_state") in ("restarting", "dead"):
                    outcome = content["execution_state"]
                    break
                elif msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                elif kind == "status" and content.get("execution_state") == "idle":
                    idle = True
                    continue
                elif kind == "stream":
                    output += content["text"]
                elif kind == "error":
                    output += f"{content['ename']}: {content['evalue']}"
                elif kind == "execute_reply":
                    outcome = content["status"]
        finally:
            ws.close()
        return output, outcome


def answers(stack):
    r = requests.get(f"{stack.server_url(USER)}/api/status",
                     headers={"Authorization": f"token {stack.token}"}, timeout=30)
    return r.status_code == 200


def hub_is_healthy(stack):
    hub = stack.container("hub")
    hub.reload()
    return hub.attrs["State"]["Health"]["Status"] == "healthy" and stack.api("GET", "/").ok


def cgroup(kernel, v1, v2):
    out, outcome = kernel.run(
        "import os\n"
        f"p = {v2!r} if os.path.exists('/sys/fs/cgroup/cgroup.controllers') else {v1!r}\n"
        "print(open(p).read().strip())")
    assert outcome == "ok", out
    return out.strip()


def test_no_new_privileges_a_setuid_binary_does_not_elevate(limits_stack, docker_client):
    stack = limits_stack
    kernel = Kernel(stack, USER)
    out, outcome = kernel.run("print([l for l in open('/proc/self/status') if 'NoNewPrivs' in l])")
    assert outcome == "ok" and "NoNewPrivs:\\t1" in out, out

    # a setuid-root copy of `id`, as a vulnerable setuid program in an image would be
    prepare = ["sh", "-c", "cp /usr/bin/id /tmp/suid-id && chmod 4755 /tmp/suid-id"]
    container = stack.user_container(USER)
    code, out = container.exec_run(prepare, user="0")
    assert code == 0, out
    # the control: without no-new-privileges the same binary makes its caller root
    control = docker_client.containers.run(
        stack.env["GPUHUB_USER_IMAGE"], ["sleep", "120"], detach=True, user="1000:100",
        name=f"{stack.project}-suidcontrol", labels={"gpuhub-e2e": stack.project})
    try:
        assert control.exec_run(prepare, user="0")[0] == 0
        code, out = control.exec_run(["/tmp/suid-id", "-u"])
        assert out.decode().strip() == "0", "the control's setuid binary should elevate"
    finally:
        control.remove(force=True)
    out, outcome = kernel.run("import subprocess\n"
                              "print(subprocess.run(['/tmp/suid-id', '-u'], capture_output=True,"
                              " text=True).stdout)")
    assert outcome == "ok" and out.strip() == "1000", out


def test_a_fork_bomb_stops_at_the_process_limit(limits_stack):
    stack = limits_stack
    kernel = Kernel(stack, USER)
    assert cgroup(kernel, "/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/pids.max") == "128"
    # bounded: 400 forks at most, far past the limit, then every child is reaped
    out, outcome = kernel.run(
        "import errno, os, signal, time\n"
        "children, error = [], None\n"
        "for _ in range(400):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError as e:\n"
        "        error = errno.errorcode[e.errno]\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    children.append(pid)\n"
        "for pid in children:\n"
        "    os.kill(pid, signal.SIGKILL)\n"
        "    os.waitpid(pid, 0)\n"
        "print(len(children), error)\n", timeout=180)
    assert outcome == "ok", out
    forked, error = out.split()
    assert error == "EAGAIN" and int(forked) < 128, out
    assert answers(stack) and hub_is_healthy(stack)


def test_a_kernel_past_the_memory_limit_dies_and_the_server_and_hub_live_on(limits_stack):
    stack = limits_stack
    kernel = Kernel(stack, USER)
    limit = 400 * 2 ** 20
    assert int(cgroup(kernel, "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                      "/sys/fs/cgroup/memory.max")) == limit
    container = stack.user_container(USER)

    def oom_kills():
        code, out = container.exec_run(["sh", "-c", "cat /sys/fs/cgroup/memory/memory.oom_control "
                                        "/sys/fs/cgroup/memory.events 2>/dev/null"])
        return int(next(l.split()[1] for l in out.decode().splitlines()
                        if l.startswith("oom_kill ")))
    before = oom_kills()
    # 10 MiB at a time up to 700 MiB: well past the limit (and no swap beyond it)
    out, outcome = kernel.run("chunks = []\n"
                              "for _ in range(70):\n"
                              "    chunks.append(b'x' * (10 << 20))\n"
                              "print('allocated', len(chunks))\n", timeout=180)
    assert outcome in ("restarting", "dead", "closed"), (outcome, out)
    assert "allocated" not in out
    assert oom_kills() > before
    container.reload()
    assert container.status == "running"
    assert answers(stack) and hub_is_healthy(stack)
    # the student carries on: the kernel restarts and runs code again
    out, outcome = wait_for(lambda: kernel.run("print(6 * 7)", timeout=15), 120,
                            "the restarted kernel to run code", interval=2)
    assert outcome == "ok" and out.strip() == "42", out


def test_cpu_limit_and_shm_size_are_what_was_configured(limits_stack):
    kernel = Kernel(limits_stack, USER)
    out, outcome = kernel.run(
        "import os\n"
        "if os.path.exists('/sys/fs/cgroup/cgroup.controllers'):\n"
        "    quota, period = open('/sys/fs/cgroup/cpu.max').read().split()\n"
        "else:\n"
        "    quota = open('/sys/fs/cgroup/cpu/cpu.cfs_quota_us').read()\n"
        "    period = open('/sys/fs/cgroup/cpu/cpu.cfs_period_us').read()\n"
        "shm = os.statvfs('/dev/shm')\n"
        "print(int(quota) / int(period), shm.f_blocks * shm.f_frsize)\n")
    assert outcome == "ok", out
    cpus, shm = out.split()
    assert float(cpus) == 0.5 and int(shm) == 96 * 2 ** 20, out


def test_the_writable_layer_has_its_size_where_the_engine_supports_it(limits_stack, docker_client):
    supported, why = disk_quota_support(docker_client)
    if not supported:
        pytest.skip(why)
    kernel = Kernel(limits_stack, USER)
    out, outcome = kernel.run("import os\ns = os.statvfs('/')\nprint(s.f_blocks * s.f_frsize)")
    assert outcome == "ok" and int(out) <= 2 ** 30, out
