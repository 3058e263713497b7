"""The spawner: DockerSpawner with gpuhub's per-user wiring.

Logic lives in plain modules (`courses` picks what a user may start, `gpus` hands out
GPUs); this class only wires it into DockerSpawner's hooks, as systemdspawner keeps
systemd.py apart from its spawner.
"""

import asyncio
import datetime
import html
import inspect
import types
from concurrent.futures import ThreadPoolExecutor

import docker
from dockerspawner import DockerSpawner, SwarmSpawner
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from docker.utils import kwargs_from_env
from jupyterhub.utils import maybe_future
from traitlets import Any, Dict, Float, Integer, List, Unicode, default

from . import culling, gpu_hours, imagerefs, names, netpool, networks, swarm, volumes
from .gpu_queue import QueueTimeout, waiting_message
from .gpu_queue_store import Notice, wait_in_line
from .gpus import GpuAllocationError, GroupCapReached, NoGpuAvailable
from .metrics import spawn_timer
from .names import template_literal


def host_config(spawner):
    """DockerSpawner's extra_host_config: the same lock-down for everybody, plus this
    server's GPUs. Plain lower-case dicts: DockerSpawner renders templates into every
    dict it gets, which would turn a docker.types.DeviceRequest into one docker-py
    no longer accepts."""
    config = dict(spawner.security_host_config)
    if getattr(spawner, "mem_limit", None):
        # no swap beyond the limit (Docker's default allows as much again): where the
        # host has swap, a kernel past its limit would thrash instead of being stopped
        config["memswap_limit"] = spawner.mem_limit
    if spawner.gpus:
        config["device_requests"] = [{
            "driver": "nvidia",
            "device_ids": [gpu.uuid for gpu in spawner.gpus],
            "capabilities": [["gpu"]],
        }]
    return config


def create_kwargs(spawner):
    """DockerSpawner's extra_create_kwargs: who the container belongs to, so the hub can
    tell at start-up which allocations still have a running server (see gpus.reconcile)."""
    return {
        "user": spawner.container_user,
        # DockerSpawner renders templates into these strings: braces doubled, so a name
        # comes out as it is (hub/names.py)
        "labels": {
            "org.gpuhub.user": template_literal(spawner.user.name),
            "org.gpuhub.server": template_literal(spawner.name or ""),
        },
    }


EGRESS_SERVICE = "egress"


def egress_env(mode, url, container_name):
    """Proxy variables of a user server: the way out is the egress proxy (pip, git, curl
    read them); the hub and the server itself are reached directly. "deny": none (there is
    no way out to point at)."""
    if mode != "proxy":
        return {}
    no_proxy = ",".join(["localhost", "127.0.0.1", "::1", "hub", container_name])
    return {"HTTP_PROXY": url, "HTTPS_PROXY": url, "http_proxy": url, "https_proxy": url,
            "NO_PROXY": no_proxy, "no_proxy": no_proxy}


# A server that is slow to come up is usually slow because many start at once: poll it
# less often the longer it takes (a twentieth of the wait so far), so that fifty servers
# starting together do not cost the busy hub hundreds of requests a second.
MAX_POLL_SECONDS = 1.0
# Asking Docker whether the container still runs costs more than a local HTTP request:
# at most once a second, and less often the longer the wait.
STOP_CHECK_SECONDS = (1.0, 5.0)


def poll_delays(elapsed, interval):
    """(seconds to the next poll, seconds to the next stop check) after `elapsed` seconds."""
    low, high = STOP_CHECK_SECONDS
    return (min(MAX_POLL_SECONDS, max(interval, elapsed / 20)),
            min(high, max(low, elapsed / 10)))


async def wait_until_answering(url, timeout, interval, stopped, clock=None):
    """Poll `url` until it gives any HTTP response (what the hub's own check counts as up),
    `stopped()` is true, or `timeout` passes; True if it answered. Polls every `interval`
    seconds at first, less often as the wait grows (`poll_delays`).

    Why: after start() returns, JupyterHub checks the server with an exponential backoff
    (waits drawn from 0-0.2 s, 0-0.4 s, ... up to 5 s), so a server that comes up 3 s in is
    typically noticed a second or two late. Returning once it answers lets the hub's
    first check succeed at once (see docs/performance.md)."""
    loop = asyncio.get_running_loop()
    clock = clock or loop.time
    started = clock()
    deadline = started + timeout
    # a client of its own: the hub's shared one serves at most 10 requests at a time
    # (tornado's default) and also talks to the proxy; a burst's pollers must not queue there
    client = AsyncHTTPClient(force_instance=True)
    next_stop_check = started + poll_delays(0, interval)[1]
    try:
        while clock() < deadline:
            try:
                await client.fetch(HTTPRequest(url, method="GET", follow_redirects=False,
                                               connect_timeout=1, request_timeout=2))
                return True
            except HTTPClientError as e:
                if e.code != 599:  # 302 to the login, 403, 404 ...: it is up and answering
                    return True
            except OSError:  # connection refused: not listening yet
                pass
            poll, stop_check = poll_delays(clock() - started, interval)
            if clock() >= next_stop_check:
                if await stopped():
                    return False  # the container is gone: the hub finds out through poll()
                next_stop_check = clock() + stop_check
            await asyncio.sleep(poll)
        return False
    finally:
        client.close()


class GpuhubSpawner(DockerSpawner):
    """One container per user server: the course the user picked, the GPUs it wants."""

    catalog = Any(None, config=True, help="""
        The course catalog (hub.courses.Catalog), or None for one image for everybody.
        Example: c.GpuhubSpawner.catalog = hub.courses.load_catalog("/srv/gpuhub/catalog.yaml")
        """)
    gpu_allocator = Any(None, config=True, help="""
        The GPU allocator (hub.gpus.GpuAllocator) shared by all spawners, or None when
        the host has no GPUs. Example: c.GpuhubSpawner.gpu_allocator = GpuAllocator(...)
        """)
    gpu_queue = Any(None, config=True, help="""
        The line for GPUs (hub.gpu_queue_store.GpuQueue) in front of gpu_allocator, or None
        to refuse a spawn at once when no GPU is free. Example:
        c.GpuhubSpawner.gpu_queue = GpuQueue(allocator, timeout=1800)
        """)
    security_host_config = Dict(config=True, help="""
        Host config every user container gets, e.g. {"cap_drop": ["ALL"], "init": True}.
        """)
    container_user = Any("1000:100", config=True, help="""
        UID:GID the container runs as, whatever the image says, e.g. "1000:100".
        """)

    ready_poll_interval = Float(0.1, config=True, help="""
        Seconds between checks whether a starting server answers yet; start() returns
        when it does, or after http_timeout, or when the container stops. 0 returns as
        soon as the container runs and leaves the waiting to JupyterHub's own backoff.
        """)

    # -- network isolation (hub/networks.py): a network of its own for every server --
    server_subnets = Unicode("10.128.0.0/16", config=True, help="""
        Address pool of the servers' own networks, one /28 each, e.g. "10.128.0.0/16".
        """)
    proxy_services = List(Unicode(), ["proxy"], config=True, help="""
        Compose services of the hub's project that reach every server (they join each
        server's network), e.g. ["proxy"].
        """)
    user_egress = Unicode("proxy", config=True, help="""
        "proxy": servers reach the outside world through the egress proxy only;
        "deny": not at all (exams).
        """)
    egress_url = Unicode("http://egress:3128", config=True, help="""
        The egress proxy as users' containers reach it, e.g. "http://egress:3128".
        """)
    network_watch_interval = Float(15.0, config=True, help="""
        Seconds between checks that hub and proxy are still on every server's network
        (a proxy recreated by `docker compose up` comes back without them).
        """)

    cut_short_probe = Float(2.0, config=True, help="""
        Seconds the hub, at its start, gives a server whose spawn a hub crash cut short to
        answer: one that does is adopted, one that does not is stopped and its GPU freed
        (its student starts again). Short: the server cannot finish starting without the
        hub's API, which opens only after this check (hub/config.py).
        """)

    home_quota = Any(None, config=True, help="""
        Soft quota of the user's home volume in bytes, or None for none: over it, a spawn
        is refused saying how much is used and what to delete (hub/volumes.py measures
        with du in a helper container). Example: c.GpuhubSpawner.home_quota = 10 * 2**30
        """)

    network_pool_size = Integer(0, config=True, help="""
        Server networks kept ready (hub/netpool.py), so that a spawn takes one instead of
        making it; 0 makes each server's network at its spawn, e.g. 10.
        """)

    _network_watch = None  # one watch per hub process (see _watch_networks)
    # one pool per hub process, worked on by a thread and a Docker client of its own, so
    # that making and removing networks never queues in front of DockerSpawner's calls
    # (its executor has a single thread for all spawners)
    _network_pool = None
    _pool_started = False  # the sweep and the first fill ran (_start_network_pool)
    _pool_executor = None
    _pool_client = None
    _teardowns = {}  # network name -> the future of its removal
    _server_network = ""  # the network this server was created on (set at join)

    cull_policy = Any(None, config=True, help="""
        When servers stop (hub.culling.Policy); the spawner tells JupyterLab the GPU
        session's deadline. Example: c.GpuhubSpawner.cull_policy = Policy.build(Limits(...))
        """)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.gpus = []
        self._peers_checked = False
        self._stop_ran = False  # stop() ran in this stop of the server (run_post_stop_hook)
        self._gpu_notice = Notice()
        if self.network_pool_size > 0:
            self._start_network_pool()

    def clear_state(self):
        super().clear_state()
        self._gpu_notice = Notice()  # a new spawn: a new waiting message

    @default("escape")
    def _default_escape(self):
        # container and volume names: DockerSpawner's names, one-to-one (hub/names.py)
        return names.docker_name_part

    async def pull_image(self, image):
        """Pull only from a registry the reference names; a missing image without one is
        an error naming it and `make images` (hub/imagerefs.py), catalog images too."""
        if imagerefs.registry(image) is None:
            try:
                await self.docker("inspect_image", image)
                return
            except docker.errors.NotFound:
                raise web.HTTPError(500, imagerefs.missing_image_message(image)) from None
        return await super().pull_image(image)

    @default("extra_host_config")
    def _default_extra_host_config(self):
        return host_config

    @default("extra_create_kwargs")
    def _default_extra_create_kwargs(self):
        return create_kwargs

    # -- the course --
    def group_names(self):
        return sorted(group.name for group in self.user.groups)

    def courses(self):
        return self.catalog.visible_to(self.group_names()) if self.catalog else []

    @default("options_form")
    def _default_options_form(self):
        return render_options_form

    def options_from_form(self, formdata):
        return {
            "course": formdata.get("course", [""])[0],
            "cpu_only": formdata.get("cpu_only", [""])[0] == "on",
        }

    def chosen_course(self):
        """The course in user_options, checked against what this user may see."""
        if not self.catalog:
            return None
        visible = self.courses()
        slug = self.user_options.get("course") or ""
        if not slug:
            return next((c for c in visible if c.default), visible[0])
        for course in visible:
            if course.slug == slug:
                return course
        raise web.HTTPError(403, f"The course {slug!r} is not offered to {self.user.name}.")

    # -- start and stop --
    def gpus_wanted(self, course):
        if not course or (self.user_options.get("cpu_only") and course.allow_cpu):
            return 0
        return course.gpus

    async def run_pre_spawn_hook(self):
        # The wait for a GPU happens here, before start(): JupyterHub 5.5 times only
        # start() (asyncio.wait_for(spawner.start(), start_timeout) in User.spawn), so a
        # student in line is not cut short by start_timeout; GPUHUB_GPU_QUEUE_TIMEOUT is
        # the bound of the wait. A DELETE of the pending server cancels it here.
        await self._check_home_quota()  # before the line: a refused spawn holds no GPU
        try:
            await self._take_gpus(self.chosen_course())
        finally:
            self._gpu_notice.finish()
        result = super().run_pre_spawn_hook()
        if inspect.isawaitable(result):
            await result

    async def _check_home_quota(self):
        """Refuse the spawn if the home volume is over home_quota (one du run: about a
        second, longer for homes with very many files; a second one when over)."""
        if not self.home_quota:
            return
        volume = next((name for name, bind in self.volume_binds.items()
                       if bind["bind"] == self.notebook_dir), None)
        spec = types.SimpleNamespace(user_image=self.image, container_prefix=self.prefix,
                                     container_user=self.container_user)

        def measure():
            if volume is None or not volumes.exists(self.client, volume):
                return 0, []
            used = volumes.sizes(self.client, spec, [volume], timeout=120)[volume] or 0
            return used, volumes.largest(self.client, spec, volume) if used > self.home_quota else []
        used, folders = await self._in_docker_thread(lambda client: measure())
        if used > self.home_quota:
            self.log.info("Spawn of %s refused: home %s uses %s bytes, quota %s", self.user.name,
                          volume, used, self.home_quota)
            raise web.HTTPError(403, volumes.over_quota_message(used, self.home_quota, folders))

    async def progress(self):
        # the place in line first, then DockerSpawner's (JupyterHub's) own events
        async for event in self._gpu_notice.events():
            yield event
        async for event in super().progress():
            yield event

    async def start(self):
        self._stop_ran = False
        course = self.chosen_course()
        if course:
            self.image = course.image
            if course.mem_limit:
                self.mem_limit = course.mem_limit
            if course.cpu_limit:
                self.cpu_limit = course.cpu_limit
            if course.nbgitpuller:
                self.default_url = course.git_pull_default_url()
        await self._take_gpus(course)  # done in run_pre_spawn_hook unless called directly
        # gpuhub_spawn_duration_seconds{course}: the wait in line is not counted (it is
        # gpuhub_gpu_queue_length's), the wait until the server answers is
        with spawn_timer(course.slug if course else None):
            try:
                await self._join_network()
                ip, port = await super().start()
            except BaseException:
                # a failed start leaves nothing behind: no container (DockerSpawner), no GPU,
                # no network
                await self._release()
                if self._server_network:
                    self._tear_down_network()
                raise
            if self.ready_poll_interval > 0:
                base_url = self.server.base_url if self.server else "/"
                await wait_until_answering(f"http://{ip}:{port}{base_url}api", self.http_timeout,
                                           self.ready_poll_interval, self._stopped)
        return ip, port

    async def _stopped(self):
        return await self.poll() is not None

    # -- the server's own network --
    def _in_docker_thread(self, fn, *args):
        # DockerSpawner's own executor: Docker calls stay in the order it expects
        return asyncio.wrap_future(self.executor.submit(fn, self.client, *args))

    def _peer_services(self):
        """(services that join every server network, services that must not)."""
        services = {name: "" for name in self.proxy_services}
        egress = {EGRESS_SERVICE: "egress"}
        if self.user_egress == "proxy":
            return {**services, **egress}, {}
        return services, egress

    def _peers(self, api):
        """(containers that belong on every server network, containers that must not)."""
        wanted, unwanted = self._peer_services()
        found = networks.find_peers(api, networks.own_container(api), {**wanted, **unwanted})
        return ([p for p in found if p.service not in unwanted],
                [p for p in found if p.service in unwanted])

    def _in_pool_thread(self, fn, *args):
        """The pool's own thread and Docker client (made like DockerSpawner.client)."""
        cls = GpuhubSpawner
        if cls._pool_executor is None:
            kwargs = {"version": "auto"}
            if self.tls_config:
                kwargs["tls"] = docker.tls.TLSConfig(**self.tls_config)
            kwargs.update(kwargs_from_env())
            kwargs.update(self.client_kwargs)
            cls._pool_client = docker.APIClient(**kwargs)
            cls._pool_executor = ThreadPoolExecutor(1, thread_name_prefix="gpuhub-networks")
        return asyncio.wrap_future(cls._pool_executor.submit(fn, cls._pool_client, *args))

    def _pool(self):
        cls = GpuhubSpawner
        if cls._network_pool is None:
            cls._network_pool = netpool.NetworkPool(self.prefix, self.server_subnets,
                                                    max(0, self.network_pool_size))
        return cls._network_pool

    def _start_network_pool(self):
        """Once per hub process, in the background: remove the networks a former hub left
        (netpool.sweep), then fill the pool."""
        cls = GpuhubSpawner
        # its own flag, not "is there a pool": at a hub start, poll() of a running server
        # makes the pool (to hold its network) before any spawn starts it
        if cls._pool_started:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # not in the hub's loop (a test): the first start() does it
            return
        cls._pool_started = True
        pool = self._pool()

        def sweep(api):
            peers, unwanted = self._peers(api)
            return pool.sweep(api, peers + unwanted)

        async def run():
            try:
                removed = await self._in_pool_thread(sweep)
                if removed:
                    self.log.info("Removed %d server network(s) nothing uses: %s", len(removed),
                                  ", ".join(removed))
            except Exception as e:  # the next start sweeps again
                self.log.warning("Cannot sweep the server networks: %s", e)
            await self._refill_pool()
        asyncio.ensure_future(run())

    def _refill(self, api):
        pool = self._pool()
        if not pool.wanted():
            return []
        peers, _ = self._peers(api)
        return pool.refill(api, peers)

    async def _refill_pool(self):
        try:
            made = await self._in_pool_thread(self._refill)
            if made:
                self.log.info("Network pool: made %s", ", ".join(made))
        except Exception as e:  # the next claim tries again
            self.log.warning("Cannot fill the network pool: %s", e)

    def _claim_or_make(self, api):
        """(network, from the pool?, peers connected now): a ready network from the pool,
        else one made now, named like the container (as with no pool)."""
        peers, unwanted = self._peers(api)
        pool = self._pool()
        name, dropped = pool.claim(api, peers, unwanted)
        for other in dropped:
            self.log.warning("Network pool: %s is not handed out (not isolated any more, or "
                             "a container other than hub and proxy is on it)", other)
        if name:
            return name, True, []
        name = networks.server_network_name(self.object_name)
        pool.hold(name)
        networks.ensure_network(api, name, self.server_subnets, self.user.name)
        connected = networks.attach(api, name, peers)
        networks.detach(api, name, unwanted)
        return name, False, connected

    def _rejoin(self, api):
        """A server found running (at hub start): the network it was created on (from the
        pool, or named like it), with hub and proxy on it."""
        container = api.inspect_container(self.object_id or self.object_name)
        mode = (container.get("HostConfig") or {}).get("NetworkMode") or ""
        name = (mode if mode.startswith(f"{self.prefix}-")
                else networks.server_network_name(self.object_name))
        self._pool().hold(name)
        networks.ensure_network(api, name, self.server_subnets, self.user.name)
        peers, unwanted = self._peers(api)
        return name, networks.attach(api, name, peers), networks.detach(api, name, unwanted)

    async def _join_network(self):
        """Before the container is created: its network, with hub and proxy on it."""
        if self.network_pool_size > 0:
            self._start_network_pool()
        pending = GpuhubSpawner._teardowns.get(networks.server_network_name(self.object_name))
        if pending is not None:  # the last server of this name: its network is still going
            await pending
        try:
            name, pooled, connected = await self._in_docker_thread(self._claim_or_make)
        except networks.NetworkError as e:
            raise web.HTTPError(503, f"Cannot prepare the network of your server: {e}") from None
        self.network_name = self._server_network = name
        self._peers_checked = True  # poll() need not check again
        if pooled:
            self.log.info("Network %s for %s (from the pool)", name, self._log_name)
            asyncio.ensure_future(self._refill_pool())
        else:
            self.log.info("Network %s for %s (joined: %s)", name, self._log_name,
                          ", ".join(connected) or "all there")
        self._watch_networks()

    def _my_network(self):
        if self._server_network:
            return self._server_network
        if self.network_name.startswith(f"{self.prefix}-"):  # from the saved state
            return self.network_name
        return networks.server_network_name(self.object_name)

    def _tear_down_network(self):
        """Off the stop path: the network goes in the background once its server is gone;
        what a hub stop interrupts, the next start sweeps (netpool.sweep)."""
        name, self._server_network = self._my_network(), ""
        pool, teardowns = self._pool(), GpuhubSpawner._teardowns

        async def run():
            try:
                await self._in_pool_thread(pool.teardown, name)
            except Exception as e:
                self.log.warning("Cannot remove the network %s: %s", name, e)
            finally:
                if teardowns.get(name) is task:
                    del teardowns[name]
        task = asyncio.ensure_future(run())
        teardowns[name] = task

    def _watch_networks(self):
        cls = GpuhubSpawner
        if self.network_watch_interval > 0 and (cls._network_watch is None
                                                or cls._network_watch.done()):
            cls._network_watch = asyncio.ensure_future(self._network_watch_loop())

    def _reconcile(self, api):
        peers, unwanted = self._peers(api)
        # networks being removed are left alone (a peer put back would keep them), and so
        # are the pool's unclaimed ones: a claim attaches what they lack (netpool.claim)
        return networks.reconcile(api, self.prefix, peers, unwanted,
                                  skip={*GpuhubSpawner._teardowns, *self._pool().unclaimed()})

    async def _network_watch_loop(self):
        while True:
            try:
                for action, container, network in await self._in_docker_thread(self._reconcile):
                    self.log.warning("Network %s: %s %s (it had lost it)", network, action,
                                     container)
            except Exception as e:  # the next round tries again
                self.log.warning("Checking the servers' networks failed: %s", e)
            await asyncio.sleep(self.network_watch_interval)

    async def poll(self):
        status = await super().poll()
        if status is None and not self._peers_checked:
            # found running (at hub start, say): before the hub talks to it, make sure hub
            # and proxy are on its network; the hub may come from a new image
            try:
                name, connected, _ = await self._in_docker_thread(self._rejoin)
                self.network_name = self._server_network = name
                if connected:
                    self.log.info("Network %s: joined %s", name, ", ".join(connected))
                self._peers_checked = True
            except Exception as e:
                self.log.warning("Cannot check the network of %s: %s", self._log_name, e)
            self._watch_networks()
        if status is None and self._check_pending and self.server is not None \
                and not self.server.ip:
            status = await self._settle_cut_short_spawn()
        return status

    async def _settle_cut_short_spawn(self):
        """At hub start, a spawn that a crash cut short (its server row has no address yet:
        start() never returned): adopt the container if it answers within cut_short_probe,
        else stop it (its GPU and network go with it); None or 0, as poll().

        Why: JupyterHub would check it at the address it saved (none) for the whole
        http_timeout, holding its GPU, while a DELETE of it answers 500 (stop_single_user
        raises for a spawner "pending check", JupyterHub 5.5). Waiting longer here does not
        help: the server finishes starting only once the hub's API answers, which is after
        this check. Settled at once, the check ends before the API opens, so nobody can
        stop it mid-check."""
        ip, port = await self.get_ip_and_port()
        url = f"{self.server.proto}://{ip}:{port}{self.server.base_url}api"

        async def gone():  # DockerSpawner's poll: ours would come back here
            return await DockerSpawner.poll(self) is not None
        if await wait_until_answering(url, self.cut_short_probe, 0.2, gone):
            self.log.info("%s: adopting the server whose spawn the hub's crash cut short "
                          "(it answers at %s:%s)", self._log_name, ip, port)
            return None
        self.log.warning("%s: stopping the server whose spawn the hub's crash cut short "
                         "(no answer at %s:%s); its GPU is freed", self._log_name, ip, port)
        await self.stop(now=True)
        return 0

    async def _take_gpus(self, course):
        """The GPUs the course wants: at once, or after waiting in line (gpu_queue)."""
        wanted = self.gpus_wanted(course)
        if not wanted or self.gpus:
            return
        if self.gpu_allocator is None:
            raise web.HTTPError(503, f"{course.display_name} needs {wanted} GPU(s), "
                                     "but this hub has no GPUs configured.")
        loop = asyncio.get_running_loop()
        user, server, groups = self.user.name, self.name or "", self.group_names()
        hint = (" You can start the CPU-only variant instead: tick 'Start without a GPU' on "
                "the spawn page." if course.allow_cpu else "")

        def check_budget():
            gpu_hours.check_budget(self.gpu_allocator.engine, user, course.slug,
                                   course.gpu_hours_per_week, self.gpu_allocator.clock(),
                                   course.display_name)
        try:
            await loop.run_in_executor(None, check_budget)
            nodes = await self._gpu_nodes()
            if self.gpu_queue is None or self.gpu_queue.timeout <= 0:
                self.gpus = await loop.run_in_executor(None, lambda: self.gpu_allocator.allocate(
                    user, server, wanted, groups, course=course.slug, nodes=nodes))
            else:
                self.gpus = await wait_in_line(
                    self.gpu_queue, user, server, wanted, groups, course.slug,
                    on_status=lambda status: self._gpu_notice.set(
                        self._waiting_event(status, course)),
                    before_take=check_budget, nodes=nodes)
        except gpu_hours.BudgetExceeded as e:
            raise web.HTTPError(403, f"{e}{hint}") from None
        except (NoGpuAvailable, GroupCapReached, QueueTimeout, GpuAllocationError) as e:
            raise web.HTTPError(503, f"{e}{hint}") from None
        self.log.info("Allocated %s to %s", ", ".join(g.uuid for g in self.gpus), self._log_name)

    async def _gpu_nodes(self):
        """The nodes this server's GPUs may be on: None (one host) here; the swarm
        spawner narrows it to the nodes that are up, or to the one with the home."""
        return None

    def _waiting_event(self, status, course):
        """The spawn-pending page's event while waiting: the place, an estimate, the way out."""
        text = waiting_message(status, self.gpu_allocator.clock())
        home = f"{self.hub.base_url}home" if self.hub else "/hub/home"
        cpu = (f" or start {course.display_name} without a GPU (CPU only) from there"
               if course.allow_cpu else "")
        html_text = (f"{html.escape(text)} To leave the line, stop the server on "
                     f'<a href="{html.escape(home)}">your home page</a>{html.escape(cpu)}.')
        return {"progress": 10, "message": text, "html_message": html_text,
                "gpuhub_queue": {"position": status.position, "ahead": status.ahead,
                                 "state": status.state}}

    async def _release(self):
        if self.gpu_allocator is None:
            return
        loop = asyncio.get_running_loop()
        released = await loop.run_in_executor(
            None, self.gpu_allocator.release, self.user.name, self.name or "")
        if released:
            self.log.info("Released %s from %s", ", ".join(released), self._log_name)
        self.gpus = []
        if self.gpu_queue is not None:
            # a stopped spawn leaves the line (if it still had a place); the next one moves up
            await loop.run_in_executor(None, self.gpu_queue.leave, self.user.name, self.name or "")
            self.gpu_queue.notify()

    async def stop(self, now=False):
        self._stop_ran = True
        try:
            await super().stop(now=now)
            if self.remove:
                self._tear_down_network()
        finally:
            await self._release()

    async def run_post_stop_hook(self):
        """Also what stop() would have done, where JupyterHub did not call it.

        Why: JupyterHub's User.stop() calls stop() only when poll() says the server still
        runs, then this hook in every case. A server that ended on its own (it crashed, was
        OOM-killed, its swarm node died) would keep its GPUs, its container or service and
        its network until the next hub start, and its student would get the same GPU (on
        a dead node) back."""
        if not self._stop_ran:
            self.log.info("%s ended on its own: removing what is left of it", self._log_name)
            try:
                if self.object_id:
                    await self.stop(now=True)
            except Exception:
                self.log.exception("Cleaning up after %s", self._log_name)
            finally:
                await self._release()
        self._stop_ran = False
        return await maybe_future(super().run_post_stop_hook())

    async def delete_forever(self):
        await self._release()
        result = super().delete_forever()  # synchronous in JupyterHub, may be async in subclasses
        if inspect.isawaitable(result):
            await result

    def get_env(self):
        env = super().get_env()
        # "void" hides every GPU even where nvidia is Docker's default runtime and the
        # image says NVIDIA_VISIBLE_DEVICES=all (the TensorFlow images do)
        env["NVIDIA_VISIBLE_DEVICES"] = ",".join(g.uuid for g in self.gpus) or "void"
        if self.gpus:
            env["NVIDIA_DRIVER_CAPABILITIES"] = "compute,utility"
        env.update(gpu_info_env(self.gpus))
        course = self.chosen_course() if self.catalog else None
        if course:
            env["GPUHUB_COURSE"] = course.slug
        env.update(egress_env(self.user_egress, self.egress_url, self.object_name))
        if self.gpus and self.cull_policy:
            # the GPUs were taken a moment ago (start() allocates before the container)
            env.update(culling.session_env(self.cull_policy.limits(course.slug if course else None),
                                           datetime.datetime.now(datetime.timezone.utc)))
        return env

    # -- state across hub restarts --
    async def get_url(self):
        """The running container's own address, from Docker.

        Why: JupyterHub saves the server's row before start() returns, with no address yet
        (ip "" and a random port). A hub killed in that window finds, after its restart, a
        running container and asks get_url(); the default trusts that row, so JupyterHub
        checked the hub's own host name and a random port for the whole ready timeout while
        the server held its GPU (issue 12). DockerSpawner does not override get_url
        (upstream: jupyterhub/dockerspawner, same for every spawner that saves no address)."""
        ip, port = await self.get_ip_and_port()
        server = self.server
        return f"{server.proto}://{ip}:{port}{server.base_url}"

    def get_state(self):
        state = super().get_state()
        if self.gpus:
            state["gpus"] = [g.uuid for g in self.gpus]
        if self._server_network:
            state["network"] = self._server_network  # a pool network is not named like it
        return state

    def load_state(self, state):
        super().load_state(state)
        if state.get("network"):
            self.network_name = self._server_network = state["network"]
        # the database, not the saved state, says what the server holds (reconciled at start);
        # asked even without "gpus": a spawn cut short by a hub crash saved no state yet
        if self.gpu_allocator and self.orm_spawner is not None and self.orm_spawner.server:
            self.gpus = self.gpu_allocator.held_by(self.user.name, self.name or "")


def gpu_info_env(gpus):
    """What the student's "My GPU" page shows (images/tensorflow-2.9-gpu, gpu_page.py):
    the held GPUs' names and memory from the inventory, in NVIDIA_VISIBLE_DEVICES order,
    comma-separated (empty where NVML did not say)."""
    return {
        "GPUHUB_GPU_NAMES": ",".join((g.name or "").replace(",", " ") for g in gpus),
        "GPUHUB_GPU_MEMORY_MIB": ",".join(str(g.memory_mib or "") for g in gpus),
    }


def render_options_form(spawner):
    """The spawn page: one choice per course this user may see (KubeSpawner-style)."""
    courses = spawner.courses()
    if len(courses) <= 1 and not any(c.gpus and c.allow_cpu for c in courses):
        return ""  # nothing to choose: start the only course at once
    summary = spawner.gpu_allocator.summary() if spawner.gpu_allocator else None
    rows = []
    for course in courses:
        gpus = ""
        if course.gpus:
            gpus = f" · {course.gpus} GPU" + ("s" if course.gpus > 1 else "")
            if summary:
                gpus += f" ({summary['free']} of {summary['total']} free)"
        checked = " checked" if course.default else ""
        rows.append(
            f'<label class="list-group-item">'
            f'<input type="radio" name="course" value="{html.escape(course.slug)}"{checked}> '
            f"<strong>{html.escape(course.display_name)}</strong>{html.escape(gpus)}"
            f'<div class="text-muted">{html.escape(course.description or "")}</div></label>'
        )
    cpu = ""
    if any(c.gpus and c.allow_cpu for c in courses):
        cpu = ('<div class="checkbox"><label><input type="checkbox" name="cpu_only"> '
               "Start without a GPU (CPU only), for courses that allow it</label></div>")
    return f'<div class="list-group">{"".join(rows)}</div>{cpu}'


class GpuhubSwarmSpawner(GpuhubSpawner, SwarmSpawner):
    """GPUHUB_MODE=swarm: every server a Swarm service (DockerSpawner's SwarmSpawner) with
    gpuhub's names, catalog and GPUs. What differs from one host (hub/swarm.py): the task is
    placed on its GPU's node (or its home's), sees that GPU through NVIDIA_VISIBLE_DEVICES,
    and joins the one attachable overlay instead of a network of its own."""

    homes = Unicode("pinned", config=True, help="""
        "pinned": the home volume stays on the node of the first server, later servers run
        there; "shared": homes on NFS (nfs_export), servers on any node. Example: "pinned"
        """)
    nfs_export = Unicode("", config=True, help="""
        With homes="shared": server:/path of the export with one directory per user,
        e.g. "10.0.0.5:/export/gpuhub".
        """)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.home_node = ""  # pinned homes: the node holding the volume (kept in the state)
        self._peers_checked = True  # no per-server networks to check (GpuhubSpawner.poll)

    @default("extra_endpoint_spec")
    def _default_extra_endpoint_spec(self):
        return swarm.endpoint_spec()

    # -- no network of its own: the overlay is the network (docs/security.md says what
    # -- that costs)
    async def _join_network(self):
        pass

    def _tear_down_network(self):
        pass

    async def _nodes(self):
        return await self.docker("nodes")

    async def _gpu_nodes(self):
        ready = swarm.ready_nodes(await self._nodes())
        if self.homes == "pinned" and self.home_node:
            if self.home_node not in ready:
                raise web.HTTPError(503, "Your files are on a server of the lab that is down "
                                         "right now; try again when it is back, or ask an admin.")
            return {self.home_node}
        return ready

    @property
    def mounts(self):
        return [swarm.home_mount(source, vol["bind"], self.homes, self.nfs_export,
                                 self.escaped_name)
                for source, vol in self.volume_binds.items()]

    async def create_object(self):
        # SwarmSpawner builds the service from these traits (it does not evaluate callables)
        node = swarm.server_node(self.gpus, self.home_node if self.homes == "pinned" else "")
        self.extra_placement_spec = swarm.placement(node)
        self.extra_container_spec = swarm.container_spec(
            self.container_user, create_kwargs(self)["labels"])
        self.extra_task_spec = swarm.task_spec()
        self.extra_create_kwargs = {"labels": create_kwargs(self)["labels"]}
        return await super().create_object()

    async def start(self):
        result = await super().start()
        if self.homes == "pinned" and not self.home_node:
            self.home_node = swarm.task_node(await self.get_task())
            self.log.info("%s: home pinned to node %s", self._log_name, self.home_node)
        return result

    async def poll(self):
        status = await super().poll()
        if status is None:
            # the hub then stops the server: its service goes and its GPUs are freed
            return swarm.gone_reason(await self.get_task(), await self._nodes())
        return status

    def clear_state(self):
        home = self.home_node
        super().clear_state()
        self.home_node = home  # the volume stays where it is when the server stops

    def get_state(self):
        state = super().get_state()
        if self.home_node:
            state["home_node"] = self.home_node
        return state

    def load_state(self, state):
        super().load_state(state)
        self.home_node = state.get("home_node", self.home_node)
