"""GpuhubSpawner.start returns once the new server answers (hub.spawner.wait_until_answering):
checked against a real HTTP server on loopback that starts late, never, or answers 404."""

import asyncio
import socket

from tornado.web import Application, RequestHandler

from hub.spawner import poll_delays, wait_until_answering


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Status(RequestHandler):
    def get(self):
        self.write({"version": "test"})


async def serve_after(delay, port):
    await asyncio.sleep(delay)
    return Application([(r"/user/a/api", Status)]).listen(port, "127.0.0.1")


async def never_stopped():
    return False


async def test_returns_as_soon_as_a_late_server_answers():
    port, loop = free_port(), asyncio.get_running_loop()
    start = loop.time()
    server_task = asyncio.ensure_future(serve_after(0.5, port))
    answered = await wait_until_answering(f"http://127.0.0.1:{port}/user/a/api", 10, 0.05,
                                          never_stopped)
    elapsed = loop.time() - start
    (await server_task).stop()
    assert answered
    assert 0.5 <= elapsed < 5  # waited for it, and did not run to the timeout


async def test_any_http_answer_counts_as_up():
    port = free_port()
    server = await serve_after(0, port)
    try:  # 404: the path is unknown, but the server is up, as the hub's own check says
        assert await wait_until_answering(f"http://127.0.0.1:{port}/nothing", 5, 0.05, never_stopped)
    finally:
        server.stop()


async def test_gives_up_at_the_timeout_when_nothing_listens():
    port, loop = free_port(), asyncio.get_running_loop()
    start = loop.time()
    assert not await wait_until_answering(f"http://127.0.0.1:{port}/", 0.6, 0.05, never_stopped)
    assert loop.time() - start >= 0.6


async def test_stops_waiting_when_the_container_stops():
    port, loop = free_port(), asyncio.get_running_loop()
    checks = []

    async def stopped_after_three_checks():
        checks.append(1)
        return len(checks) >= 3
    start = loop.time()
    assert not await wait_until_answering(f"http://127.0.0.1:{port}/", 30, 0.05,
                                          stopped_after_three_checks)
    assert len(checks) == 3 and loop.time() - start < 10
    # Docker is asked about once a second, not at every poll
    assert loop.time() - start >= 2


def test_polls_less_often_the_longer_a_server_takes():
    # at first every `interval`, so a lone spawn is noticed within a tenth of a second
    assert poll_delays(0, 0.1) == (0.1, 1.0)
    assert poll_delays(2, 0.1) == (0.1, 1.0)
    # a server still starting after a minute (a burst on few cores): once a second,
    # and Docker is asked about it every five
    assert poll_delays(60, 0.1) == (1.0, 5.0)
    assert poll_delays(600, 0.1) == (1.0, 5.0)
    assert poll_delays(10, 0.1) == (0.5, 1.0)
