"""GPU allocation: inventory and policy parsing, allocation rules, and concurrency
against a real SQLite database file."""

import multiprocessing
import threading
from collections import Counter

import pytest
from sqlalchemy import create_engine, inspect

from hub import gpus

UUIDS = [f"GPU-{i:08x}-aaaa-4bbb-8ccc-{i:012x}" for i in range(1, 5)]


def allocator(tmp_path, n=4, mode="exclusive", max_users="1", caps=""):
    inventory = gpus.parse_inventory(",".join(UUIDS[:n]), "test")
    return gpus.GpuAllocator(f"sqlite:///{tmp_path}/hub.sqlite", inventory,
                             gpus.parse_policy(mode, max_users, caps))


# -- inventory --
def test_inventory_of_uuids_and_indexes_above_nine():
    inventory = gpus.parse_inventory("0, 1\n12,GPU-0000abcd-1111", "GPUHUB_GPUS")
    assert [g.uuid for g in inventory] == ["0", "1", "12", "GPU-0000abcd-1111"]
    assert [g.index for g in inventory][:3] == [0, 1, 12]


@pytest.mark.parametrize("text, fragment", [
    ("GPU-1,GPU-1", "GPU GPU-1 is listed twice"),
    ("1,01", "GPU 1 is listed twice"),
    ("0,,1", "empty item"),
    ("0,1,", "empty item"),
    ("gpu0", "'gpu0' is neither"),
    ("-1", "'-1' is neither"),
    ("0; DROP TABLE users", "neither"),
    ("GPU-ünïcode", "neither"),
    ("٣", "neither"),  # a non-ASCII digit is not an index
    (",".join(str(i) for i in range(2000)), "at most 1024"),
])
def test_bad_inventories_are_refused_naming_the_source(text, fragment):
    with pytest.raises(gpus.GpuConfigError) as e:
        gpus.parse_inventory(text, "GPUHUB_GPUS in .env")
    assert str(e.value).startswith("GPUHUB_GPUS in .env:") and fragment in str(e.value)


def test_empty_inventory_is_no_gpus():
    assert gpus.parse_inventory("  ", "x") == []


# -- policy --
def test_policy_parsing():
    assert gpus.parse_policy("exclusive", "5", "").slots == 1
    shared = gpus.parse_policy("shared", "3", "cs101=4, research=8")
    assert shared.slots == 3 and shared.group_caps == {"cs101": 4, "research": 8}


@pytest.mark.parametrize("args, name", [
    (("sharing", "1", ""), "GPUHUB_GPU_MODE"),
    (("shared", "0", ""), "GPUHUB_GPU_MAX_USERS"),
    (("shared", "three", ""), "GPUHUB_GPU_MAX_USERS"),
    (("shared", "2", "cs101:4"), "GPUHUB_GPU_GROUP_CAPS"),
    (("shared", "2", "=4"), "GPUHUB_GPU_GROUP_CAPS"),
])
def test_bad_policies_name_the_variable(args, name):
    with pytest.raises(gpus.GpuConfigError, match=name):
        gpus.parse_policy(*args)


# -- allocation --
def test_exclusive_allocation_release_and_reuse(tmp_path):
    a = allocator(tmp_path, n=2)
    first = a.allocate("ada", "", 1)
    second = a.allocate("bob", "", 1)
    assert {first[0].uuid, second[0].uuid} == set(UUIDS[:2])
    with pytest.raises(gpus.NoGpuAvailable) as e:
        a.allocate("cy", "", 1)
    assert (e.value.total, e.value.in_use, e.value.wanted) == (2, 2, 1)
    assert "All 2 GPUs are in use" in str(e.value)
    assert a.release("ada", "") == [first[0].uuid]
    assert a.allocate("cy", "", 1) == first
    assert a.release("nobody", "") == []


def test_allocation_is_idempotent_per_server_and_all_or_nothing(tmp_path):
    a = allocator(tmp_path, n=3)
    two = a.allocate("ada", "", 2)
    assert a.allocate("ada", "", 2) == two, "a retried spawn gets the same GPUs"
    assert len({g.uuid for g in two}) == 2
    with pytest.raises(gpus.NoGpuAvailable):
        a.allocate("bob", "", 2)
    assert [h.user for h in a.holdings()] == ["ada", "ada"], "a refused request takes nothing"
    assert a.allocate("bob", "named", 1)[0].uuid not in {g.uuid for g in two}


def test_shared_mode_prefers_the_least_loaded_gpu(tmp_path):
    a = allocator(tmp_path, n=2, mode="shared", max_users="2")
    picks = [a.allocate(f"u{i}", "", 1)[0].uuid for i in range(4)]
    assert Counter(picks) == {UUIDS[0]: 2, UUIDS[1]: 2}
    assert picks[:2] == UUIDS[:2], "the second user goes to the idle GPU, not the busy one"
    with pytest.raises(gpus.NoGpuAvailable):
        a.allocate("u5", "", 1)


def test_group_caps_limit_a_group_together(tmp_path):
    a = allocator(tmp_path, n=4, caps="cs101=2")
    a.allocate("s1", "", 1, groups=["cs101"])
    a.allocate("s2", "", 1, groups=["cs101", "other"])
    with pytest.raises(gpus.GroupCapReached) as e:
        a.allocate("s3", "", 1, groups=["cs101"])
    assert (e.value.group, e.value.cap, e.value.held) == ("cs101", 2, 2)
    assert a.allocate("r1", "", 1, groups=["research"]), "other groups are not capped"
    a.release("s1", "")
    assert a.allocate("s3", "", 1, groups=["cs101"])


def test_reconcile_frees_what_no_running_server_holds(tmp_path):
    a = allocator(tmp_path, n=3)
    a.allocate("ada", "", 1)
    a.allocate("bob", "", 1)
    a.allocate("cy", "gpu", 1)
    stale = a.reconcile({("ada", ""), ("cy", "gpu")})
    assert [s.user for s in stale] == ["bob"]
    assert sorted(h.user for h in a.holdings()) == ["ada", "cy"]


def test_gpus_removed_from_the_inventory_are_released(tmp_path):
    a = allocator(tmp_path, n=2)
    a.allocate("ada", "", 1)
    a.allocate("bob", "", 1)
    smaller = gpus.GpuAllocator(f"sqlite:///{tmp_path}/hub.sqlite", a.inventory[:1], a.policy)
    stale = smaller.reconcile({("ada", ""), ("bob", "")})
    assert [s.gpu_uuid for s in stale] == [UUIDS[1]]


def test_allocations_survive_a_restart_beside_jupyterhubs_tables(tmp_path):
    from jupyterhub import orm
    url = f"sqlite:///{tmp_path}/hub.sqlite"
    orm.new_session_factory(url)  # JupyterHub's own tables first, as in a real hub
    hub_tables = set(inspect(create_engine(url)).get_table_names())
    a = allocator(tmp_path, n=2)
    a.allocate("ada", "", 1)
    restarted = allocator(tmp_path, n=2)
    assert [(h.user, h.gpu_uuid) for h in restarted.holdings()] == [("ada", UUIDS[0])]
    assert restarted.holdings()[0].since.tzinfo is not None
    tables = set(inspect(create_engine(url)).get_table_names())
    assert tables - hub_tables == {"gpuhub_gpu_allocations", "gpuhub_schema"}
    orm.new_session_factory(url)  # JupyterHub still opens (and checks) its database


def test_metrics_follow_allocations(tmp_path):
    a = allocator(tmp_path, n=2)
    a.allocate("ada", "", 1)
    assert gpus.GPUS_TOTAL._value.get() == 2 and gpus.GPUS_IN_USE._value.get() == 1
    before = gpus.REFUSALS.labels(reason="no_gpu")._value.get()
    a.allocate("bob", "", 1)
    with pytest.raises(gpus.NoGpuAvailable):
        a.allocate("cy", "", 1)
    assert gpus.REFUSALS.labels(reason="no_gpu")._value.get() == before + 1


# -- concurrency against the real database --
def _race(db_url, inventory, policy, user, results):
    try:
        results.append((user, gpus.GpuAllocator(db_url, inventory, policy).allocate(user, "", 1)[0].uuid))
    except gpus.NoGpuAvailable:
        results.append((user, None))


@pytest.mark.parametrize("mode, max_users, winners", [("exclusive", "1", 4), ("shared", "3", 12)])
def test_forty_threads_racing_for_gpus(tmp_path, mode, max_users, winners):
    a = allocator(tmp_path, n=4, mode=mode, max_users=max_users)
    results, barrier = [], threading.Barrier(40)

    def request(i):
        barrier.wait()
        try:
            results.append(a.allocate(f"user{i}", "", 1)[0].uuid)
        except gpus.NoGpuAvailable:
            results.append(None)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 40
    granted = [r for r in results if r]
    assert len(granted) == winners
    assert max(Counter(granted).values()) == int(max_users), "no GPU over its limit"
    assert len(a.holdings()) == winners


def test_forty_processes_racing_for_exclusive_gpus(tmp_path):
    a = allocator(tmp_path, n=4)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        results = manager.list()
        procs = [ctx.Process(target=_race, args=(str(a.engine.url), a.inventory, a.policy, f"p{i}", results))
                 for i in range(40)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=180)
        results = list(results)
    assert len(results) == 40
    granted = [uuid for _, uuid in results if uuid]
    assert sorted(granted) == sorted(UUIDS), "exactly one owner for each of the 4 GPUs"
    assert sorted(h.gpu_uuid for h in a.holdings()) == sorted(UUIDS)
