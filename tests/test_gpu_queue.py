"""The line for GPUs: who is served next (pure rules), the estimate, the line in a real
SQLite database, and the order under concurrency (threads and processes)."""

import asyncio
import datetime
import multiprocessing
import threading
import time

import pytest
from prometheus_client import REGISTRY

from hub import gpu_queue, gpu_queue_store, gpus
from hub.gpu_store import GpuAllocator
from hub.gpu_queue import GROUP_CAP, NO_GPU, READY, Place, line_status
from tests.e2e.stack import wait_for
from tests.postgres_standin import postgres_url  # noqa: F401 (a fixture)
from tests.test_gpus import UUIDS

T0 = datetime.datetime(2026, 11, 30, 9, 0, tzinfo=datetime.timezone.utc)


class Clock:
    """A clock the test moves: the allocator's `since`/`ended` and the line's `now`."""

    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, **delta):
        self.now += datetime.timedelta(**delta)


def inventory(n):
    return gpus.parse_inventory(",".join(UUIDS[:n]), "test")


def place(ticket, user, wanted=1, groups=()):
    return Place(ticket, user, "", wanted, tuple(groups))


def states(statuses):
    return {user: (s.state, s.position) for (user, _), s in statuses.items()}


# -- the rules --
def test_first_come_first_served_nobody_jumps_the_line():
    line = [place(3, "cy"), place(1, "ada"), place(2, "bob")]
    # one GPU of four free: only the first in line may take it
    statuses = line_status(line, inventory(4), gpus.Policy(), {u: 1 for u in UUIDS[:3]}, {})
    assert states(statuses) == {"ada": (READY, 1), "bob": (NO_GPU, 2), "cy": (NO_GPU, 3)}
    # two GPUs free: the first two
    statuses = line_status(line, inventory(4), gpus.Policy(), {u: 1 for u in UUIDS[:2]}, {})
    assert states(statuses) == {"ada": (READY, 1), "bob": (READY, 2), "cy": (NO_GPU, 3)}


def test_a_waiter_wanting_two_is_not_overtaken_by_one_wanting_one():
    line = [place(1, "big", wanted=2), place(2, "small")]
    statuses = line_status(line, inventory(4), gpus.Policy(), {u: 1 for u in UUIDS[:3]}, {})
    assert states(statuses) == {"big": (NO_GPU, 1), "small": (NO_GPU, 2)}


def test_a_waiter_blocked_by_its_group_cap_does_not_block_others():
    policy = gpus.Policy(group_caps={"cs101": 2})
    line = [place(1, "ada", groups=["cs101"]), place(2, "bob", groups=["other"]),
            place(3, "cy", groups=["cs101"])]
    # cs101 holds its 2; one GPU free: bob (not in cs101) takes it although ada is first
    statuses = line_status(line, inventory(4), policy, {u: 1 for u in UUIDS[:3]}, {"cs101": 2})
    assert states(statuses) == {"ada": (GROUP_CAP, 1), "bob": (READY, 1), "cy": (GROUP_CAP, 2)}
    assert statuses[("ada", "")].blocking_group == "cs101"
    # cs101 has room for one again: ada first, cy still waits for her group
    statuses = line_status(line, inventory(4), policy, {u: 1 for u in UUIDS[:2]}, {"cs101": 1})
    assert states(statuses) == {"ada": (READY, 1), "bob": (READY, 2), "cy": (GROUP_CAP, 2)}


def test_shared_gpus_count_seats():
    policy = gpus.Policy("shared", 2)
    line = [place(1, "ada"), place(2, "bob"), place(3, "cy")]
    statuses = line_status(line, inventory(2), policy, {UUIDS[0]: 2, UUIDS[1]: 0}, {})
    assert states(statuses) == {"ada": (READY, 1), "bob": (READY, 2), "cy": (NO_GPU, 3)}


def holding(uuid, slot, user, since):
    return gpus.Allocation(uuid, 0, user, "", since, slot)


def test_estimate_from_maximum_age_and_idle_timers():
    holdings = [holding(UUIDS[0], 0, "ada", T0), holding(UUIDS[1], 0, "bob", T0 + datetime.timedelta(minutes=30))]
    now = T0 + datetime.timedelta(minutes=40)
    unknown = gpus.expected_free_times(holdings, gpus.Policy(), now)
    assert set(unknown.values()) == {None}, "without a maximum age or idle timeout: unknown"
    times = gpus.expected_free_times(holdings, gpus.Policy(), now, max_age=3600)
    assert times == {(UUIDS[0], 0): T0 + datetime.timedelta(hours=1),
                     (UUIDS[1], 0): T0 + datetime.timedelta(minutes=90)}
    # bob has been idle since 09:35; with a 10-minute idle timeout he goes at 09:45
    idle = gpus.expected_free_times(holdings, gpus.Policy(), now, max_age=3600, idle_timeout=600,
                                    last_activity={("bob", ""): T0 + datetime.timedelta(minutes=35)})
    assert idle[(UUIDS[1], 0)] == T0 + datetime.timedelta(minutes=45)
    per_course = gpus.expected_free_times(holdings, gpus.Policy(), now,
                                          max_age=lambda a: 7200 if a.user == "ada" else None)
    assert per_course == {(UUIDS[0], 0): T0 + datetime.timedelta(hours=2), (UUIDS[1], 0): None}

    # the second in line waits for the second GPU to free
    line = [place(1, "cy"), place(2, "dan")]
    statuses = line_status(line, inventory(2), gpus.Policy(), {UUIDS[0]: 1, UUIDS[1]: 1}, {}, times)
    assert statuses[("cy", "")].expected == T0 + datetime.timedelta(hours=1)
    assert statuses[("dan", "")].expected == T0 + datetime.timedelta(minutes=90)
    assert gpu_queue.waiting_message(statuses[("dan", "")], now) == \
        "Waiting for a GPU: place 2 in line, 1 ahead of you, about 50 minutes."
    assert gpu_queue.waiting_message(statuses[("cy", "")], now) == \
        "Waiting for a GPU: you are first in line, about 20 minutes."
    blind = line_status(line, inventory(2), gpus.Policy(), {UUIDS[0]: 1, UUIDS[1]: 1}, {}, unknown)
    assert gpu_queue.waiting_message(blind[("dan", "")], now) == "Waiting for a GPU: place 2 in line, 1 ahead of you."


# -- the line in the database --
# SQLite, and PostgreSQL (the stand-in server, tests/postgres_standin.py; needs Docker)
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.e2e)])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/hub.sqlite"
    from sqlalchemy import create_engine
    url = request.getfixturevalue("postgres_url")
    engine = create_engine(url)
    gpu_queue_store.metadata.drop_all(engine)
    from hub import gpu_store
    gpu_store.metadata.drop_all(engine)
    engine.dispose()
    return url


def make_queue(tmp_path, n=2, caps="", clock=None, timeout=60, name="hub.sqlite", url=None, **kwargs):
    allocator = GpuAllocator(url or f"sqlite:///{tmp_path / name}", inventory(n),
                                  gpus.Policy(group_caps=gpus.parse_group_caps(caps)), clock=clock)
    return gpu_queue_store.GpuQueue(allocator, timeout, **kwargs)


def test_one_place_per_server_and_served_in_order(tmp_path, db_url):
    q = make_queue(tmp_path, n=1, url=db_url)
    q.join("holder", "", 1)
    assert q.try_take("holder", "", 1)[0], "an empty line: served at once"
    assert q.line() == []
    for user in ("ada", "bob"):
        q.join(user, "", 1)
    q.join("ada", "", 1)  # a retried spawn keeps its place
    assert [p.user for p in q.line()] == ["ada", "bob"]
    assert REGISTRY.get_sample_value("gpuhub_gpu_queue_length") == 2
    gpus_, status = q.try_take("bob", "", 1)
    assert gpus_ == [] and status.position == 2
    q.allocator.release("holder", "")
    assert q.try_take("bob", "", 1)[0] == [], "bob may not jump ada"
    taken, _ = q.try_take("ada", "", 1)
    assert [g.uuid for g in taken] == [UUIDS[0]]
    assert [p.user for p in q.line()] == ["bob"], "ada's place is given up once served"
    assert q.report()[0]["user"] == "bob" and q.report()[0]["position"] == 1
    assert q.leave("bob", "") and not q.leave("bob", "")
    assert q.line() == [] and REGISTRY.get_sample_value("gpuhub_gpu_queue_length") == 0


def test_what_no_wait_can_give_is_refused_at_once(tmp_path):
    q = make_queue(tmp_path, n=2, caps="cs101=1")
    with pytest.raises(gpus.NoGpuAvailable, match="This hub has only 2 GPUs; 3 requested"):
        q.join("ada", "", 3)
    with pytest.raises(gpus.GroupCapReached, match="'cs101' may hold 1 GPU at once"):
        q.join("ada", "", 2, groups=["cs101"])
    assert q.line() == []


def test_abandoned_places_expire_and_a_restart_drops_the_line(tmp_path):
    clock = Clock()
    q = make_queue(tmp_path, n=1, clock=clock, stale_after=120)
    q.allocator.allocate("holder", "", 1)
    q.join("gone", "", 1)
    clock.advance(seconds=60)
    q.join("alive", "", 1)
    clock.advance(seconds=61)
    q.heartbeat("alive", "")
    assert [s.place.user for s in q.statuses().values()] == ["alive"], \
        "no heartbeat for 121 s: the place is dropped"
    restarted = make_queue(tmp_path, n=1, clock=clock)
    assert [p.user for p in restarted.line()] == ["alive"]
    assert [p.user for p in restarted.clear()] == ["alive"] and restarted.line() == []
    assert [a.user for a in restarted.allocator.holdings()] == ["holder"], "no GPU lost"


async def test_waiting_is_woken_by_a_release_cancelled_leaves_and_times_out(tmp_path):
    q = make_queue(tmp_path, n=1, timeout=300, poll_interval=60)
    q.allocator.allocate("holder", "", 1)
    seen = []
    first = asyncio.ensure_future(gpu_queue_store.wait_in_line(q, "ada", "", 1, on_status=seen.append))
    await async_wait_for(lambda: seen, "ada's first look at the line")
    assert seen[-1].position == 1 and seen[-1].state == gpu_queue.NO_GPU
    second = asyncio.ensure_future(gpu_queue_store.wait_in_line(q, "bob", "", 1))
    await async_wait_for(lambda: len(q.line()) == 2, "bob in line too")
    # the poll is 60 s: only the wake-up can serve ada within the wait below
    q.allocator.release("holder", "")
    q.notify()
    assert [g.uuid for g in await asyncio.wait_for(first, 30)] == [UUIDS[0]]
    assert [p.user for p in q.line()] == ["bob"]
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    await async_wait_for(lambda: q.line() == [], "bob's place to be given up")

    q.timeout = 0.2
    with pytest.raises(gpu_queue.QueueTimeout, match="No GPU became free for you within 0 seconds"):
        await gpu_queue_store.wait_in_line(q, "cy", "", 1)
    assert q.line() == []


async def async_wait_for(check, what, timeout=30):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


# -- the order under concurrency --
def serve_all(q, users, barrier, served, lock, holders):
    """Every user joins at once, then keeps trying until served; `served` gets them in
    the order they got GPUs, with the ticket they had."""
    def wait(user):
        barrier.wait(timeout=60)
        q.join(user, "", 1)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ticket = next((p.ticket for p in q.line() if p.user == user), None)
            taken, _ = q.try_take(user, "", 1)
            if taken:
                with lock:
                    served.append((user, ticket, taken[0].uuid))
                    holders.append(user)
                return
            time.sleep(0.005)
    threads = [threading.Thread(target=wait, args=(u,)) for u in users]
    for t in threads:
        t.start()
    return threads


def test_twelve_threads_in_line_are_served_in_ticket_order(tmp_path, db_url):
    q = make_queue(tmp_path, n=4, url=db_url)
    for i in range(4):
        q.allocator.allocate(f"holder{i}", "", 1)
    served, lock, holders = [], threading.Lock(), [f"holder{i}" for i in range(4)]
    threads = serve_all(q, [f"s{i}" for i in range(12)], threading.Barrier(12), served, lock, holders)
    wait_for(lambda: len(q.line()) == 12, 60, "all twelve in line", interval=0.02)
    order = [p.user for p in q.line()]
    for n in range(12):
        # give one GPU back; exactly the head of the line gets it
        q.allocator.release(holders[n], "")
        wait_for(lambda: len(served) == n + 1, 60, f"waiter {n + 1} to be served", interval=0.01)
        check_no_double_booking(q)
    for t in threads:
        t.join(timeout=60)
    assert [user for user, _, _ in served] == order, "first come, first served"
    assert [ticket for _, ticket, _ in served] == sorted(ticket for _, ticket, _ in served)


def check_no_double_booking(q):
    held = [a.gpu_uuid for a in q.allocator.holdings()]
    assert len(held) == len(set(held)) <= 4, held


def process_waiter(db_url, user, barrier, results):
    # one hub process among several: its own allocator, engine and line
    allocator = GpuAllocator(db_url, inventory(2), gpus.Policy())
    q = gpu_queue_store.GpuQueue(allocator, 120)
    barrier.wait(timeout=60)
    q.join(user, "", 1)
    results.put(("joined", user, next(p.ticket for p in q.line() if p.user == user)))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        taken, _ = q.try_take(user, "", 1)
        if taken:
            results.put(("served", user, taken[0].uuid))
            return
        time.sleep(0.01)
    results.put(("timeout", user, None))


def test_six_processes_in_line_never_double_book_and_keep_the_order(tmp_path, db_url):
    q = make_queue(tmp_path, n=2, url=db_url)
    q.allocator.allocate("h0", "", 1)
    q.allocator.allocate("h1", "", 1)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(6), ctx.Queue()
    procs = [ctx.Process(target=process_waiter, args=(db_url, f"p{i}",
                                                         barrier, results)) for i in range(6)]
    for p in procs:
        p.start()
    events = []
    try:
        tickets = {}
        for _ in procs:
            kind, user, ticket = results.get(timeout=120)
            tickets[user] = ticket
        order = sorted(tickets, key=tickets.get)
        holders = ["h0", "h1"]
        served = []
        for n in range(6):
            q.allocator.release(holders[n], "")
            kind, user, uuid = results.get(timeout=120)
            assert kind == "served", (kind, user)
            served.append(user)
            holders.append(user)
            check_no_double_booking(q)
        events = served
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert events == order, "served in the order they joined, across processes"


def test_admins_see_the_line_in_the_cli(tmp_path, capsys):
    from hub import cli
    q = make_queue(tmp_path, n=1, caps="cs101=1")
    q.allocator.allocate("holder", "", 1, groups=["cs101"])
    q.join("ada", "", 1, groups=["cs101"], course="dl")
    q.join("bob", "lab", 1, course="vision")
    environ = {"GPUHUB_GPUS": UUIDS[0], "GPUHUB_GPU_GROUP_CAPS": "cs101=1"}
    assert cli.main(["gpus", "--db-url", f"sqlite:///{tmp_path}/hub.sqlite"], environ) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("waiting 1: ada (dl, 1 GPU) since 20")
    assert lines[2].endswith("Z, group cs101 is at its cap")
    assert lines[3].startswith("waiting 2: bob/lab (vision, 1 GPU) since 20")
    assert lines[3].endswith("Z, 0 ahead"), "a capped waiter does not block bob"
