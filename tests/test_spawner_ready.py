"""GpuhubSpawner.start returns once the new server answers (hub.spawner.wait_until_answering):
checked against a real HTTP server on loopback that starts late, never, or answers 404.
Time is a fake clock that moves only when the code under test sleeps: no assertion here
depends on how fast this machine is (speed is measured in benchmarks/)."""

import asyncio

from tornado.web import Application, RequestHandler

from hub.spawner import STOP_CHECK_SECONDS, poll_delays, wait_until_answering
from tests.e2e.stack import free_port

REAL_SLEEP = asyncio.sleep


class Status(RequestHandler):
    def get(self):
        self.write({"version": "test"})


def serve(port):
    return Application([(r"/user/a/api", Status)]).listen(port, "127.0.0.1")


class FakeClock:
    """Seconds that pass only when wait_until_answering sleeps (asyncio.sleep is patched);
    `at(t, action)` runs an action once the clock reaches t."""

    def __init__(self, monkeypatch):
        self.now, self.sleeps, self.actions = 0.0, [], []
        monkeypatch.setattr(asyncio, "sleep", self.sleep)

    def __call__(self):
        return self.now

    def at(self, moment, action):
        self.actions.append((moment, action))

    async def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds
        for entry in [a for a in self.actions if a[0] <= self.now]:
            self.actions.remove(entry)
            entry[1]()
        await REAL_SLEEP(0)


async def never_stopped():
    return False


async def test_returns_as_soon_as_a_late_server_answers(monkeypatch):
    port, clock, servers = free_port(), FakeClock(monkeypatch), []
    clock.at(3.0, lambda: servers.append(serve(port)))
    answered = await wait_until_answering(f"http://127.0.0.1:{port}/user/a/api", 60, 0.05,
                                          never_stopped, clock=clock)
    for server in servers:
        server.stop()
    assert answered and servers, "it waited for the late server"
    # at the first poll after the server came up, not at the timeout: one poll late at most
    assert 3.0 <= clock.now <= 3.0 + poll_delays(3.0, 0.05)[0] + 1e-9, clock.now


async def test_any_http_answer_counts_as_up():
    port = free_port()
    server = serve(port)
    try:  # 404: the path is unknown, but the server is up, as the hub's own check says
        assert await wait_until_answering(f"http://127.0.0.1:{port}/nothing", 5, 0.05, never_stopped)
    finally:
        server.stop()


async def test_gives_up_at_the_timeout_when_nothing_listens(monkeypatch):
    port, clock = free_port(), FakeClock(monkeypatch)
    assert not await wait_until_answering(f"http://127.0.0.1:{port}/", 30, 0.05, never_stopped,
                                          clock=clock)
    assert 30 <= clock.now <= 30 + max(clock.sleeps), clock.now


async def test_stops_waiting_when_the_container_stops(monkeypatch):
    port, clock, checks = free_port(), FakeClock(monkeypatch), []

    async def stopped_after_three_checks():
        checks.append(clock.now)
        return len(checks) >= 3
    assert not await wait_until_answering(f"http://127.0.0.1:{port}/", 30, 0.05,
                                          stopped_after_three_checks, clock=clock)
    assert len(checks) == 3 and clock.now < 30
    # Docker is asked about once a second, not at every poll (20 a second)
    gaps = [later - earlier for earlier, later in zip([0.0, *checks], checks)]
    assert all(gap >= STOP_CHECK_SECONDS[0] - 1e-9 for gap in gaps), gaps
    assert len(clock.sleeps) > 3 * len(checks)


def test_polls_less_often_the_longer_a_server_takes():
    # at first every `interval`, so a lone spawn is noticed within a tenth of a second
    assert poll_delays(0, 0.1) == (0.1, 1.0)
    assert poll_delays(2, 0.1) == (0.1, 1.0)
    # a server still starting after a minute (a burst on few cores): once a second,
    # and Docker is asked about it every five
    assert poll_delays(60, 0.1) == (1.0, 5.0)
    assert poll_delays(600, 0.1) == (1.0, 5.0)
    assert poll_delays(10, 0.1) == (0.5, 1.0)
