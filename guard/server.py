"""The guard's server: the Docker API on a unix socket, checked by `rules`, forwarded to
the engine's own socket. Answers stream through (logs, wait, image pulls).

Run: python -m guard.server (settings from the environment, see guard/README.md).
"""

import asyncio
import logging
import os
import signal
import socket
import stat

from aiohttp import ClientSession, ClientTimeout, UnixConnector, web

from . import policy as policies
from .body import Refusal
from .rules import Request, decide, streams

log = logging.getLogger("gpuhub.guard")

LISTEN = os.environ.get("GUARD_SOCKET", "/run/gpuhub-guard/docker.sock")
ENGINE = os.environ.get("GUARD_ENGINE_SOCKET", "/var/run/docker.sock")
# request headers the engine needs; everything else (Host, Connection, Upgrade ...) stays
REQUEST_HEADERS = ("content-type", "x-registry-auth", "user-agent", "accept")
POLICY = web.AppKey("policy", policies.Policy)
SESSION = web.AppKey("session", ClientSession)
ENGINE_KEY = web.AppKey("engine", object)
HOP_BY_HOP = ("connection", "keep-alive", "transfer-encoding", "content-length", "upgrade",
              "te", "trailer", "proxy-authenticate", "proxy-authorization")


class Engine:
    """The engine's own answers about a container, network or volume (None if absent)."""

    def __init__(self, session):
        self.session = session

    async def _inspect(self, path):
        async with self.session.get(f"http://docker{path}") as r:
            if r.status == 404:
                return None
            if r.status != 200:
                raise RuntimeError(f"the engine answered {r.status} to GET {path}")
            return await r.json()

    async def container(self, ref):
        return await self._inspect(f"/containers/{ref}/json")

    async def network(self, ref):
        return await self._inspect(f"/networks/{ref}")

    async def volume(self, name):
        return await self._inspect(f"/volumes/{name}")

    async def service(self, ref):
        return await self._inspect(f"/services/{ref}")


def refusal(r):
    return web.json_response({"message": r.message}, status=r.status)


async def handle(request):
    app = request.app
    streamed = streams(request.method, request.path)
    try:
        body = b"" if streamed else await request.read()
    except web.HTTPRequestEntityTooLarge:
        return refusal(Refusal("body-too-large", f"the body is larger than "
                                                 f"{app[POLICY].max_body} bytes", 413))
    query = {k: request.query.getall(k) for k in request.query.keys()}
    call = Request(request.method, request.path, query, body)
    try:
        decision = await decide(call, app[POLICY], app[ENGINE_KEY])
    except Refusal as r:
        log.warning("refused %s %s: %s", request.method, request.path, r.message)
        return refusal(r)
    except Exception:  # fail closed: an error in a check forwards nothing
        log.exception("error checking %s %s", request.method, request.path)
        return web.json_response({"message": "the guard could not check this call "
                                              "(rule: guard-error)"}, status=500)
    # what changes something at INFO; the hub's frequent polls (GET) at DEBUG
    log.log(logging.DEBUG if request.method in ("GET", "HEAD") else logging.INFO,
            "allowed %s %s (rule: %s)", request.method, decision.path, decision.rule)
    if decision.stream:
        body = request.content.iter_chunked(1 << 16)  # a restore's tar, of any size
    return await forward(request, decision, body)


async def forward(request, decision, body):
    session = request.app[SESSION]
    headers = {k: v for k, v in request.headers.items() if k.lower() in REQUEST_HEADERS}
    upstream = await session.request(
        request.method, f"http://docker{decision.path}", params=list(request.query.items()),
        data=body or None, headers=headers, allow_redirects=False)
    try:
        # aiohttp decompresses a gzip answer (the engine gzips archives when asked): pass
        # it on plain, without the encoding and the compressed length
        decoded = "content-encoding" in {k.lower() for k in upstream.headers}
        answer_headers = {k: v for k, v in upstream.headers.items()
                          if k.lower() not in HOP_BY_HOP and k.lower() != "content-encoding"}
        if decision.filter is not None:
            raw = await upstream.read()
            if upstream.status == 200:
                raw = decision.filter(raw)
            return web.Response(body=raw, status=upstream.status, headers=answer_headers)
        response = web.StreamResponse(status=upstream.status, headers=answer_headers)
        if upstream.content_length is not None and not decoded:
            response.content_length = upstream.content_length
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        upstream.release()


async def own_project(session):
    """The compose project of the guard's own container (its hub and proxy join students'
    networks); found by the container's host name, which Docker sets to its ID."""
    engine = Engine(session)
    me = await engine.container(socket.gethostname())
    if me is None:
        log.warning("cannot find the guard's own container (host name %s): the hub's and "
                    "proxy's containers may not join students' networks", socket.gethostname())
        return ""
    return (me["Config"].get("Labels") or {}).get(policies.COMPOSE_PROJECT, "")


async def make_app(policy=None, engine_socket=ENGINE):
    # no overall timeout: logs and wait stream for as long as the container runs
    session = ClientSession(connector=UnixConnector(path=engine_socket),
                            timeout=ClientTimeout(total=None, sock_connect=10))
    if policy is None:
        policy = policies.from_environ(project=await own_project(session))
    app = web.Application(client_max_size=policy.max_body)
    app[POLICY], app[SESSION], app[ENGINE_KEY] = policy, session, Engine(session)
    app.router.add_route("*", "/{tail:.*}", handle)

    async def close(app):
        await session.close()
    app.on_cleanup.append(close)
    return app


async def serve(path=LISTEN):
    # PID 1 in its container: without handlers SIGTERM is ignored and `docker stop`
    # waits out its timeout before it kills the guard. Set first: a stop may come at once
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    app = await make_app()
    policy = app[POLICY]
    log.info("guarding %s for containers %s-*, volumes %s-*, user %s, network %s, "
             "GPUs %s, host paths %s, project %r", ENGINE, policy.container_prefix,
             policy.volume_prefix, policy.container_user, policy.user_network,
             ",".join(sorted(policy.gpus)) or "none", ",".join(policy.bind_paths) or "none",
             policy.project)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    if os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode):
        os.unlink(path)  # left over from the last run
    site = web.UnixSite(runner, path)
    await site.start()
    # the socket's volume is mounted by the hub and the guard only; the hub runs as
    # another user, so the socket is open to every user that can reach the file
    os.chmod(path, 0o666)
    log.info("listening on %s", path)
    await stopping.wait()
    log.info("stopping: signal received")
    await runner.cleanup()


def main():
    logging.basicConfig(level=os.environ.get("GUARD_LOG_LEVEL", "INFO"),
                        format="[%(levelname).1s %(asctime)s %(name)s] %(message)s")
    try:
        asyncio.run(serve())
    except policies.SettingsError as e:
        raise SystemExit(f"\n{e}\n") from None


if __name__ == "__main__":
    main()
