"""The `gpuhub` admin CLI against a running stack (issue 12, items 1 and 2), run as an admin
does: `docker-compose exec -T hub gpuhub ...` in the hub built from hub/Dockerfile, its
Docker work through the guard. One stack for the module; the GPU is a fake UUID the no-op
nvidia hook lets Docker accept (no GPU here, nothing asks NVML). The test plays the
student's side with plain `docker run` on the student's volume (files, modes, symlinks)."""

import hashlib
import json
import subprocess

import pytest

from .stack import compose_command, free_subnet, wait_for

pytestmark = pytest.mark.e2e

GPU = "GPU-00000000-0000-4000-8000-0000000000c1"
QUOTA_MB = 64
# what a student leaves in the home: modes, a symlink, empty folders, a non-ASCII name
MAKE_FILES = (
    "set -e; cd ~; mkdir -p work/data empty/deeper/empty2 'Übung 1';"
    "head -c 300000 /dev/urandom > work/data/weights.bin; chmod 600 work/data/weights.bin;"
    "printf '#!/bin/sh\\necho hi\\n' > work/run.sh; chmod 750 work/run.sh;"
    "echo notes > 'Übung 1/notes.txt'; chmod 444 'Übung 1/notes.txt';"
    "ln -s work/data/weights.bin latest; ln -s /nonexistent dangling; chmod 700 empty/deeper")
# the student's files only (a running server adds runtime files of its own)
MINE = "work empty 'Übung 1' latest dangling"
LIST_FILES = (f"cd ~ && find {MINE} -printf '%p %y %m %U:%G %l\\n' | LC_ALL=C sort"
              f" && find {MINE} -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum")


@pytest.fixture(scope="module")
def cli_stack(tmp_path_factory, docker_client, standin_bases):
    from .conftest import CPU_AND_GPU_ONLY_COURSES, make_gpu_stack
    with make_gpu_stack(tmp_path_factory, docker_client, "gpuhubcli", [GPU],
                        CPU_AND_GPU_ONLY_COURSES, {
        "GPUHUB_GPU_QUEUE_TIMEOUT": "0",
        "GPUHUB_HOME_QUOTA": f"{QUOTA_MB}m",
        # a pool of its own: other checkouts' stacks on this engine fill 10.128.0.0/16
        "GPUHUB_SERVER_SUBNETS": str(free_subnet(docker_client, "10.{}.0.0/16",
                                                 "the servers' networks")),
    }).running() as s:
        yield s


def gpuhub(stack, *args, input=None):
    """`docker-compose exec -T hub gpuhub ARGS`: (exit code, stdout bytes, stderr text)."""
    cmd = compose_command() + ["-p", stack.project] + stack.files + ["exec", "-T", "hub",
                                                                     "gpuhub", *args]
    import os
    done = subprocess.run(cmd, cwd=stack.dir, input=input, capture_output=True, timeout=300,
                          env={**os.environ, **stack.env})
    return done.returncode, done.stdout, done.stderr.decode(errors="replace")


def as_json(stack, *args):
    code, out, err = gpuhub(stack, *args, "--json")
    assert code == 0, f"gpuhub {' '.join(args)}: {code} {err}"
    return json.loads(out)


def volume(stack, user):
    return f"{stack.env['GPUHUB_VOLUME_PREFIX']}-{user}"


def in_home(stack, user, script):
    """Run `script` as the student (uid 1000) on the student's home volume."""
    return stack.client.containers.run(
        stack.env["GPUHUB_USER_IMAGE"], ["-c", script], entrypoint="/bin/bash",
        user="1000:100", remove=True, network_mode="none", environment={"HOME": "/home/jovyan"},
        volumes={volume(stack, user): {"bind": "/home/jovyan", "mode": "rw"}}).decode()


def test_status_backup_restore_and_refusals(cli_stack):
    s = cli_stack
    for user in ("alice", "gpuuser"):
        assert s.api("POST", f"/users/{user}").status_code in (201, 409)
    s.start_server("alice", course="cpu")
    s.start_server("gpuuser", course="deep-learning")

    status = as_json(s, "status")
    rows = {r["user"]: r for r in status["servers"]}
    assert rows["alice"]["state"] == "ready" and rows["alice"]["course"] == "cpu"
    assert rows["alice"]["image"] == s.env["GPUHUB_USER_IMAGE"] and rows["alice"]["gpus"] == []
    assert rows["gpuuser"]["gpus"] == [GPU] and rows["gpuuser"]["course"] == "deep-learning"
    code, out, _ = gpuhub(s, "status")
    assert code == 0 and b"alice" in out and GPU.encode() in out
    print(out.decode())

    # refused: a GPU a running server holds, a bad command line, a bad or unknown name
    code, _, err = gpuhub(s, "free-gpu", GPU)
    assert code == 3 and "running server of gpuuser" in err, err
    assert gpuhub(s, "restore")[0] == 2
    code, _, err = gpuhub(s, "backup", "Not/A name", "-")
    assert code == 2 and "is not a user name" in err
    assert gpuhub(s, "backup", "nobody", "-")[0] == 4

    in_home(s, "alice", MAKE_FILES)
    before = in_home(s, "alice", LIST_FILES)
    assert "latest l 777 1000:100 work/data/weights.bin" in before and "empty/deeper d 700" in before

    code, tar, err = gpuhub(s, "backup", "alice", "-")
    assert code == 0, err
    print(f"backup of alice: {len(tar)} bytes, sha256 {hashlib.sha256(tar).hexdigest()[:12]}")
    code, _, err = gpuhub(s, "restore", "alice", "-", input=tar)
    assert code == 3 and "running" in err, err  # her server runs

    code, out, err = gpuhub(s, "stop", "alice")
    assert code == 0, err
    wait_for(lambda: "" not in s.api("GET", "/users/alice").json()["servers"], 60,
             "alice's server to stop")
    code, _, err = gpuhub(s, "restore", "alice", "-", input=tar)
    assert code == 3 and "not empty" in err, err

    s.client.volumes.get(volume(s, "alice")).remove()
    code, out, err = gpuhub(s, "restore", "alice", "-", input=tar)
    assert code == 0, err
    s.start_server("alice", course="cpu")
    after = in_home(s, "alice", LIST_FILES)
    assert after == before  # every file byte for byte, with its mode, owner, symlink, folder

    usage = as_json(s, "usage")
    homes = {h["user"]: h for h in usage["homes"]}
    assert {"alice", "gpuuser"} <= set(homes) and homes["alice"]["bytes"] > 300000
    assert [h["bytes"] for h in usage["homes"]] == sorted((h["bytes"] for h in usage["homes"]),
                                                          reverse=True)
    images = as_json(s, "images")["images"]
    assert [i["present"] for i in images] == [True]

    code, out, err = gpuhub(s, "backup-all", "/srv/jupyterhub/backup-e2e", "--json")
    assert code == 0, err
    manifest = json.loads(out)
    assert {"alice", "gpuuser"} <= set(manifest["homes"])
    check = ("import sqlite3; print(sqlite3.connect('/srv/jupyterhub/backup-e2e/"
             "jupyterhub.sqlite').execute('select name from users order by name').fetchall())")
    assert "alice" in s.compose("exec", "-T", "hub", "python3", "-c", check).stdout

    # a GPU whose server stopped is free; free-gpu says so
    s.stop_server("gpuuser")
    freed = as_json(s, "free-gpu", GPU.lower())
    assert freed["uuid"] == GPU and freed["released_from"] == []
    s.stop_server("alice")


def test_a_spawn_over_the_home_quota_is_refused_with_what_to_delete(cli_stack):
    s = cli_stack
    assert s.api("POST", "/users/bigstudent").status_code in (201, 409)
    s.client.volumes.create(volume(s, "bigstudent"))
    in_home(s, "bigstudent", f"mkdir -p ~/checkpoints && head -c {QUOTA_MB + 8}M /dev/zero "
                             "> ~/checkpoints/epoch1.ckpt")
    r = s.api("POST", "/users/bigstudent/server", json={"course": "cpu"})
    assert r.status_code == 403, r.text
    message = r.json()["message"]
    print(message)
    assert f"over its quota of {QUOTA_MB}.0M" in message and "~/checkpoints" in message
    assert s.user_container("bigstudent") is None
    # under the quota again: the student starts
    in_home(s, "bigstudent", "rm ~/checkpoints/epoch1.ckpt")
    s.start_server("bigstudent", course="cpu")
    s.stop_server("bigstudent")
