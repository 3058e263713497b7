"""What a stop leaves (hub.spawner.GpuhubSpawner.run_post_stop_hook): JupyterHub's
User.stop() calls stop() only when poll() says the server still runs, and the post-stop
hook every time. A server that ended on its own (crashed, OOM-killed, its swarm node died)
must still give back its GPU and lose its container and network. The Docker calls are
recorded here instead of made; the allocator is the real one on SQLite. End to end, with
JupyterHub's own User.stop(): tests/e2e/test_gpus_e2e.py (a killed container) and
tests/e2e/test_swarm_e2e.py (a dead worker)."""

import types

from jupyterhub.objects import Hub
from jupyterhub.utils import maybe_future

from hub import gpus
from hub.gpu_store import GpuAllocator
from hub.spawner import GpuhubSpawner

GPU = "GPU-00000000-0000-4000-8000-0000000000a1"


class RecordingSpawner(GpuhubSpawner):
    """DockerSpawner's calls to the engine, recorded."""

    async def stop_object(self):
        self.calls.append("stop")

    async def remove_object(self):
        self.calls.append("remove")

    def _tear_down_network(self):
        self.calls.append("network")


def spawner_holding_a_gpu(tmp_path, hooks):
    allocator = GpuAllocator(f"sqlite:///{tmp_path}/g.sqlite", [gpus.Gpu(0, GPU)], gpus.Policy())
    user = types.SimpleNamespace(name="ann", escaped_name="ann", url="/user/ann/", groups=[], id=1)
    spawner = RecordingSpawner(user=user, hub=Hub(), orm_spawner=None, gpu_allocator=allocator,
                               remove=True, network_pool_size=0,
                               post_stop_hook=lambda s: hooks.append(s.user.name))
    spawner.calls = []
    spawner.gpus = allocator.allocate("ann", "", 1)
    spawner.object_id = "c0ffee"  # its container exists (exited)
    return spawner, allocator


async def test_a_server_that_ended_on_its_own_gives_back_its_gpu_and_container(tmp_path):
    hooks = []
    spawner, allocator = spawner_holding_a_gpu(tmp_path, hooks)
    # JupyterHub: poll() said it ended, so no stop(); the hook runs
    await maybe_future(spawner.run_post_stop_hook())  # as User.stop() does
    assert not allocator.held_by("ann", ""), "its GPU is free for the next student"
    assert spawner.calls == ["stop", "remove", "network"]
    assert hooks == ["ann"], "the admin's own post_stop_hook still runs"
    assert allocator.allocate("bea", "", 1)[0].uuid == GPU


async def test_a_server_the_hub_stopped_is_not_stopped_twice(tmp_path):
    hooks = []
    spawner, allocator = spawner_holding_a_gpu(tmp_path, hooks)
    await spawner.stop()  # poll() said it runs: JupyterHub stops it, then the hook
    await maybe_future(spawner.run_post_stop_hook())  # as User.stop() does
    assert spawner.calls == ["stop", "remove", "network"]
    assert not allocator.held_by("ann", "") and hooks == ["ann"]


async def test_a_failing_cleanup_still_frees_the_gpu(tmp_path):
    hooks = []
    spawner, allocator = spawner_holding_a_gpu(tmp_path, hooks)

    async def engine_down():
        raise ConnectionError("the guard is restarting")
    spawner.remove_object = engine_down
    await maybe_future(spawner.run_post_stop_hook())  # as User.stop() does
    assert not allocator.held_by("ann", "") and hooks == ["ann"]
