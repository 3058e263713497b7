"""The guard's server (guard/server.py) between a client and a fake engine on a unix
socket: refusals never reach the engine, answers stream through, lists are filtered.
The real engine: tests/e2e/test_guard_e2e.py."""

import asyncio
import gzip
import json
import os
import signal
import sys
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from guard.server import make_app

from .test_guard_rules import HELPER, POLICY, USER, good_body

REPO = Path(__file__).resolve().parent.parent


class Calls(list):
    uploads = ()


async def fake_engine(tmp_path):
    """An engine that knows one user container and records every call it gets."""
    calls = Calls()
    uploads = []

    async def handle(request):
        calls.append((request.method, request.path))
        path = request.path.removeprefix("/v1.41")
        if path in ("/containers/gpuhub-_backup-1a2b3c4d/json", f"/containers/{HELPER['Id']}/json"):
            return web.json_response(HELPER)
        if path == f"/containers/{HELPER['Id']}/archive" and request.method == "GET":
            return web.Response(body=gzip.compress(b"tar" * 1000),
                                headers={"Content-Encoding": "gzip"})
        if path == f"/containers/{HELPER['Id']}/archive" and request.method == "PUT":
            uploads.append(await request.read())
            return web.Response(status=200)
        if path == f"/containers/{USER['Id']}/logs":
            response = web.StreamResponse()
            await response.prepare(request)
            for i in range(3):
                await response.write(f"line {i}\n".encode())
                await asyncio.sleep(0.01)
            return response
        if path in ("/containers/gpuhub-alice/json", f"/containers/{USER['Id']}/json"):
            return web.json_response(USER)
        if path == "/containers/json":
            return web.json_response([{"Names": ["/gpuhub-alice"], "Labels": USER["Config"]["Labels"]},
                                      {"Names": ["/gpuhub_proxy_1"], "Labels": {}}])
        if path.startswith("/containers/broken"):
            return web.json_response({"message": "boom"}, status=500)
        if path.startswith(("/containers/", "/volumes/", "/networks/")) and \
                request.method == "GET":
            return web.json_response({"message": "not found"}, status=404)
        return web.json_response({"Id": "new", "Warnings": []}, status=201)

    app = web.Application(client_max_size=1 << 30)  # the engine takes any upload
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    path = str(tmp_path / "engine.sock")
    await web.UnixSite(runner, path).start()
    calls.uploads = uploads
    return runner, path, calls


async def guard_client(tmp_path):
    runner, path, calls = await fake_engine(tmp_path)
    client = TestClient(TestServer(await make_app(POLICY, engine_socket=path)))
    await client.start_server()
    return client, runner, calls


async def test_refusals_never_reach_the_engine_and_the_guard_keeps_serving(tmp_path):
    client, runner, calls = await guard_client(tmp_path)
    try:
        body = good_body()
        body["HostConfig"]["Privileged"] = True
        r = await client.post("/v1.41/containers/create?name=gpuhub-alice", json=body)
        assert r.status == 403
        assert (await r.json())["message"].endswith("(rule: no-privileged)")
        r = await client.post("/v1.41/containers/create?name=gpuhub-alice", data=b"{oops")
        assert r.status == 400 and "(rule: malformed-body)" in (await r.json())["message"]
        r = await client.post("/v1.41/containers/create?name=gpuhub-alice",
                              data=b"x" * (POLICY.max_body + 10))
        assert r.status == 413 and "(rule: body-too-large)" in (await r.json())["message"]
        r = await client.post("/v1.41/build")
        assert r.status == 403
        assert not [c for c in calls if c[1] in ("/v1.41/containers/create", "/v1.41/build")]
        # still serving, and what is allowed goes through
        r = await client.post("/v1.41/containers/create?name=gpuhub-alice", json=good_body())
        assert r.status == 201 and ("POST", "/v1.41/containers/create") in calls
        r = await client.get("/_ping")
        assert r.status in (200, 201)
    finally:
        await client.close()
        await runner.cleanup()


async def test_streams_pass_through_and_lists_are_filtered(tmp_path):
    client, runner, calls = await guard_client(tmp_path)
    try:
        r = await client.get("/v1.41/containers/gpuhub-alice/logs?follow=1&stdout=1")
        assert r.status == 200 and await r.text() == "line 0\nline 1\nline 2\n"
        # forwarded to the container's ID, not to whatever the name means by then
        assert ("GET", f"/v1.41/containers/{USER['Id']}/logs") in calls
        r = await client.get("/v1.41/containers/json?all=1")
        assert [c["Names"] for c in await r.json()] == [["/gpuhub-alice"]]
    finally:
        await client.close()
        await runner.cleanup()


async def test_a_restore_streams_a_tar_larger_than_the_body_limit(tmp_path):
    client, runner, calls = await guard_client(tmp_path)
    tar = bytes(range(256)) * (POLICY.max_body // 256 * 3)  # three times the limit
    try:
        r = await client.put("/v1.41/containers/gpuhub-_backup-1a2b3c4d/archive?path=/home",
                             data=tar, headers={"Content-Type": "application/x-tar"})
        assert r.status == 200, await r.text()
        assert calls.uploads == [tar]
        # a backup's tar, gzipped by the engine: passed on as plain bytes, no stale encoding
        r = await client.get("/v1.41/containers/gpuhub-_backup-1a2b3c4d/archive?path=/home",
                             auto_decompress=False)
        assert r.status == 200 and "Content-Encoding" not in r.headers
        assert await r.read() == b"tar" * 1000
        # into a running server: refused, nothing uploaded
        r = await client.put("/v1.41/containers/gpuhub-alice/archive?path=/home", data=tar)
        assert r.status == 403 and "(rule: no-archive)" in (await r.json())["message"]
        assert len(calls.uploads) == 1
    finally:
        await client.close()
        await runner.cleanup()


async def test_an_engine_error_during_a_check_fails_closed(tmp_path):
    client, runner, calls = await guard_client(tmp_path)
    try:
        r = await client.post("/v1.41/containers/broken/stop")
        assert r.status == 500 and "(rule: guard-error)" in (await r.json())["message"]
        assert ("POST", "/v1.41/containers/broken/stop") not in calls
    finally:
        await client.close()
        await runner.cleanup()


async def test_the_guard_process_stops_at_once_on_sigterm(tmp_path):
    """`docker stop` sends SIGTERM to the guard, PID 1 in its container: it must end
    (exit 0, socket closed) rather than wait to be killed after the stop timeout."""
    runner, engine, _ = await fake_engine(tmp_path)
    listen = tmp_path / "guard.sock"
    env = {**os.environ, "GUARD_SOCKET": str(listen), "GUARD_ENGINE_SOCKET": engine}
    guard = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "guard.server", env=env, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        for _ in range(200):
            if listen.exists() or guard.returncode is not None:
                break
            await asyncio.sleep(0.05)
        assert listen.exists(), (await guard.stdout.read()).decode()
        guard.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(guard.wait(), 10)
        output = (await guard.stdout.read()).decode()
        assert rc == 0, output
        assert "stopping: signal received" in output
    finally:
        if guard.returncode is None:
            guard.kill()
            await guard.wait()
        await runner.cleanup()
