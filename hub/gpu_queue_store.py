"""The line for GPUs, kept in the hub's database beside the allocations (gpu_store).

One row per waiting server (UNIQUE user, server: one place per server), ordered by its
id. A place lives only as long as its spawn waits: the waiter deletes it when served,
cancelled (DELETE /hub/api/users/NAME/server) or timed out; JupyterHub never resumes a
spawn after a hub restart, so the hub drops the whole line at start-up (`clear`); and a
place whose waiter stopped refreshing `heartbeat` (a waiter that died without cleaning
up) is dropped by the next waiter that looks (`STALE_AFTER`).

Blocking methods, like GpuAllocator's: the spawner calls them in an executor.
`wait_in_line` is the async loop the spawner awaits: woken when a GPU is given back in
this process (`notify`), and polling every `poll_interval` seconds as a fallback.
"""

import asyncio
import datetime
from concurrent.futures import ThreadPoolExecutor
import json
import logging

from sqlalchemy import (Column, Integer, MetaData, Table, Unicode, UniqueConstraint, delete,
                        insert, select, update)
from sqlalchemy.exc import IntegrityError

from . import gpu_queue
from .gpu_store import UTCDateTime
from .gpus import QUEUE_LENGTH, NoGpuAvailable, GroupCapReached, expected_free_times, isoformat

log = logging.getLogger(__name__)
STALE_AFTER = 120  # seconds without a heartbeat after which a place is abandoned
POLL_INTERVAL = 5.0  # seconds between looks at the line when nothing woke the waiter

metadata = MetaData()
queue_table = Table(
    "gpuhub_gpu_queue", metadata,
    Column("id", Integer, primary_key=True),  # the order of the line
    Column("user_name", Unicode(255), nullable=False),
    Column("server_name", Unicode(255), nullable=False),
    Column("wanted", Integer, nullable=False),
    Column("course", Unicode(255), nullable=False),
    Column("groups", Unicode(4000), nullable=False),  # JSON list
    Column("joined", UTCDateTime, nullable=False),
    Column("heartbeat", UTCDateTime, nullable=False),
    UniqueConstraint("user_name", "server_name", name="gpuhub_one_place_per_server"),
)


class GpuQueue:
    """The line in front of `allocator`; `timeout` seconds is the longest wait."""

    def __init__(self, allocator, timeout, max_age=None, idle_timeout=None,
                 poll_interval=POLL_INTERVAL, stale_after=STALE_AFTER, log=log):
        self.allocator = allocator
        self.timeout = timeout
        self.max_age, self.idle_timeout = max_age, idle_timeout
        self.poll_interval, self.stale_after = poll_interval, stale_after
        self.log = log
        self._wakers = set()
        # the waiters' database calls; a few threads: every call is one short transaction
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gpuhub-queue")
        with allocator.engine.begin() as conn:
            metadata.create_all(conn, checkfirst=True)
        self._set_length()

    def __deepcopy__(self, memo):
        return self  # traitlets deep-copies configuration values; the hub has one line

    @property
    def clock(self):
        return self.allocator.clock

    # -- places --
    def join(self, user, server_name, wanted, groups=(), course=""):
        """Take a place at the end of the line, or keep the one the server has. Raises
        NoGpuAvailable or GroupCapReached for a request no wait can satisfy."""
        refusal = gpu_queue.never_served(self.allocator.inventory, self.allocator.policy,
                                         wanted, groups)
        if refusal is not None:
            raise refusal
        now = self.clock()
        try:
            with self.allocator.engine.begin() as conn:
                conn.execute(insert(queue_table).values(
                    user_name=user, server_name=server_name, wanted=wanted, course=course or "",
                    groups=json.dumps(sorted(set(groups))), joined=now, heartbeat=now))
        except IntegrityError:
            self.heartbeat(user, server_name)  # a retried spawn keeps its place
        self._set_length()

    def leave(self, user, server_name):
        """Give up the server's place; True if it had one."""
        with self.allocator.engine.begin() as conn:
            gone = conn.execute(delete(queue_table).where(
                (queue_table.c.user_name == user)
                & (queue_table.c.server_name == server_name))).rowcount
        self._set_length()
        if gone:
            self.notify()  # the others move up
        return bool(gone)

    def heartbeat(self, user, server_name):
        with self.allocator.engine.begin() as conn:
            conn.execute(update(queue_table).where(
                (queue_table.c.user_name == user) & (queue_table.c.server_name == server_name))
                .values(heartbeat=self.clock()))

    def clear(self, keep=()):
        """Drop every place whose (user, server) is not in `keep`; returns the dropped.
        At start-up nothing waits: JupyterHub does not resume spawns after a restart."""
        dropped = [p for p in self.line() if (p.user, p.server_name) not in set(keep)]
        with self.allocator.engine.begin() as conn:
            for p in dropped:
                conn.execute(delete(queue_table).where(queue_table.c.id == p.ticket))
        self._set_length()
        return dropped

    # -- looking --
    def line(self, conn=None):
        if conn is None:
            with self.allocator.engine.begin() as conn:
                return self.line(conn)
        return [gpu_queue.Place(r.id, r.user_name, r.server_name, r.wanted,
                                tuple(json.loads(r.groups)), r.course, r.joined)
                for r in conn.execute(select(queue_table).order_by(queue_table.c.id))]

    def statuses(self):
        """{(user, server): gpu_queue.Status} for the whole line, stale places dropped."""
        now = self.clock()
        with self.allocator.engine.begin() as conn:
            stale = now - datetime.timedelta(seconds=self.stale_after)
            dropped = conn.execute(delete(queue_table).where(queue_table.c.heartbeat < stale)).rowcount
            line = self.line(conn)
        if dropped:
            self.log.warning("GPU queue: dropped %s abandoned place(s)", dropped)
            self._set_length()
        holdings = self.allocator.holdings()
        holders, group_held = {}, {}
        for a in holdings:
            holders[a.gpu_uuid] = holders.get(a.gpu_uuid, 0) + 1
            for group in a.groups:
                group_held[group] = group_held.get(group, 0) + 1
        free_times = expected_free_times(holdings, self.allocator.policy, now,
                                         self.max_age, self.idle_timeout)
        return gpu_queue.line_status(line, self.allocator.inventory, self.allocator.policy,
                                     holders, group_held, free_times)

    def report(self):
        """The line as GET /hub/api/gpus shows it, first place first."""
        statuses = sorted(self.statuses().values(), key=lambda s: s.place.ticket)
        return [{"user": s.place.user, "server": s.place.server_name, "position": n,
                 "ahead": s.ahead, "wanted": s.place.wanted, "course": s.place.course,
                 "since": isoformat(s.place.joined), "state": s.state,
                 "blocking_group": s.blocking_group or None,
                 "expected": isoformat(s.expected) if s.expected else None}
                for n, s in enumerate(statuses, 1)]

    # -- being served --
    def try_take(self, user, server_name, wanted, groups=(), course="", nodes=None):
        """(gpus, status): the server's GPUs if it is its turn and they are free (its place
        is then given up), else ([], its status). Refreshes the place's heartbeat."""
        self.heartbeat(user, server_name)
        status = self.statuses().get((user, server_name))
        if status is None or status.state != gpu_queue.READY:
            return [], status
        try:
            gpus = self.allocator.allocate(user, server_name, wanted, groups, course=course,
                                           nodes=nodes)
        except (NoGpuAvailable, GroupCapReached):
            # someone ahead (a capped waiter whose group got room) was quicker: look again
            return [], status
        self.leave(user, server_name)
        return gpus, status

    # -- waking waiters up --
    def notify(self):
        """Wake every waiter of this process to look at the line (thread-safe)."""
        for loop, event in list(self._wakers):
            loop.call_soon_threadsafe(event.set)

    def _set_length(self):
        with self.allocator.engine.begin() as conn:
            QUEUE_LENGTH.set(len(conn.execute(select(queue_table.c.id)).all()))


async def wait_in_line(queue, user, server_name, wanted, groups=(), course="", on_status=None,
                       before_take=None, nodes=None):
    """Wait in line until the server gets its GPUs; returns them. Raises
    gpu_queue.QueueTimeout after queue.timeout seconds. Cancelled (the spawn was
    stopped), it gives up its place, and GPUs a look in flight took. `on_status(status)`
    is called at every look; `before_take()` (blocking, e.g. a budget check) may raise."""
    loop = asyncio.get_running_loop()
    waker = (loop, asyncio.Event())
    queue._wakers.add(waker)
    started = loop.time()
    served = False
    inflight = None

    async def call(f, *args):
        # our own executor's futures, not run_in_executor's: when the spawn is cancelled,
        # the database call in its thread goes on, and giving up must wait for it
        nonlocal inflight
        inflight = queue.executor.submit(f, *args)
        result = await asyncio.wrap_future(inflight)
        inflight = None
        return result

    try:
        await call(queue.join, user, server_name, wanted, groups, course)
        while True:
            waker[1].clear()
            if before_take:
                await call(before_take)
            gpus, status = await call(queue.try_take, user, server_name, wanted, groups, course,
                                      nodes)
            if gpus:
                served = True
                return gpus
            if status is None:  # dropped as abandoned (a stalled hub): back in line, at the end
                await call(queue.join, user, server_name, wanted, groups, course)
                continue
            if on_status:
                on_status(status)  # every look: the minutes left change as time passes
            left = queue.timeout - (loop.time() - started)
            if left <= 0:
                raise gpu_queue.QueueTimeout(queue.timeout, status)
            try:
                await asyncio.wait_for(waker[1].wait(), min(queue.poll_interval, left))
            except asyncio.TimeoutError:
                pass  # the fallback poll: releases elsewhere, heartbeats
    finally:
        queue._wakers.discard(waker)
        if not served:
            # shielded: a cancelled spawn must still give its place (and GPUs) back
            await asyncio.shield(_give_up(queue, inflight, user, server_name))


async def _give_up(queue, inflight, user, server_name):
    loop = asyncio.get_running_loop()
    if inflight is not None:
        try:
            result = await asyncio.wrap_future(inflight)
        except BaseException:  # noqa: B036 (failed or never ran: it took nothing)
            result = None
        if isinstance(result, tuple) and result[0]:
            await loop.run_in_executor(queue.executor, queue.allocator.release, user, server_name)
            queue.notify()
    await loop.run_in_executor(queue.executor, queue.leave, user, server_name)


class Notice:
    """The latest spawn-pending event of one spawn while it waits; each progress stream
    (a page can be opened twice) yields every new one until `finish()`."""

    def __init__(self):
        self.event, self.done = None, False
        self._changed = asyncio.Event()

    def set(self, event):
        if event != self.event:
            self.event = event
            self._wake()

    def finish(self):
        self.done = True
        self._wake()

    def _wake(self):
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def events(self):
        shown = None
        while True:
            changed = self._changed
            if self.event is not None and self.event is not shown:
                shown = self.event
                yield shown
            if self.done:
                return
            await changed.wait()


def start_line(allocator, settings, log=log):
    """At hub start-up: the line in front of `allocator` (None without GPUs), emptied --
    no spawn survives a restart, so no place may either -- and GPU seconds in the metrics.
    GPUHUB_GPU_MAX_AGE and GPUHUB_GPU_IDLE_TIMEOUT feed the estimate where they exist."""
    if allocator is None:
        return None
    from .gpu_hours import serve_metrics
    serve_metrics(allocator)
    queue = GpuQueue(allocator, settings.gpu_queue_timeout,
                     max_age=getattr(settings, "gpu_max_age", None),
                     idle_timeout=getattr(settings, "gpu_idle_timeout", None), log=log)
    for place in queue.clear():
        log.warning("GPU queue: %s/%s lost its place (its spawn did not survive the restart)",
                    place.user, place.server_name)
    return queue
