"""GPU allocation: inventory and policy parsing, the allocation rules, the database
tables beside JupyterHub's, concurrency against a real SQLite file (threads and
processes), the admin REST endpoint in a real JupyterHub, the CLI and the metrics."""

import json
import multiprocessing
import os
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
import types
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, generate_latest
from sqlalchemy import create_engine, insert, text
from sqlalchemy.exc import IntegrityError

from hub import cli, gpu_store, gpus, settings
from hub.gpu_store import GpuAllocator
from tests.e2e.stack import free_port, wait_for
from tests.postgres_standin import postgres_url  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parents[1]
UUIDS = [f"GPU-{i:08x}-aaaa-4bbb-8ccc-{i:012x}" for i in range(1, 9)]


# The tests that take a `db_url` also run against PostgreSQL: GPUHUB_TEST_POSTGRES_URL
# (a database they may wipe), or else a stand-in server in Docker for the session
# (tests/postgres_standin.py); marked e2e, as they need the Docker engine.
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.e2e)])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/hub.sqlite"
    url = request.getfixturevalue("postgres_url")
    engine = create_engine(url)
    gpu_store.metadata.drop_all(engine)
    engine.dispose()
    return url


def make(tmp_path, n=4, mode="exclusive", max_users="1", caps="", name="hub.sqlite", url=None):
    inventory = gpus.parse_inventory(",".join(UUIDS[:n]), "test")
    return GpuAllocator(url or f"sqlite:///{tmp_path / name}", inventory,
                        gpus.Policy(mode, int(max_users), gpus.parse_group_caps(caps)))


def raw_holders(allocator):
    """Holders per GPU straight from the database, not through the allocator."""
    engine = create_engine(allocator.engine.url)
    try:
        with engine.connect() as conn:
            return Counter(dict(conn.execute(text(
                "SELECT gpu_uuid, COUNT(*) FROM gpuhub_gpu_slots GROUP BY gpu_uuid")).all()))
    finally:
        engine.dispose()


# -- the inventory --
def test_inventory_of_uuids_indexes_above_nine_and_a_mix():
    inventory = gpus.parse_inventory(" 0, 1\n\n10 ,11,\n 12\t100,GPU-0000abcd-1111 ", "GPUHUB_GPUS")
    assert [g.uuid for g in inventory] == ["0", "1", "10", "11", "12", "100", "GPU-0000abcd-1111"]
    assert [g.index for g in inventory] == [0, 1, 10, 11, 12, 100, 6]
    mig = gpus.parse_inventory("MIG-GPU-5f1c0000-1111/1/0,MIG-5f1c0000-2222", "x")
    assert [g.uuid for g in mig] == ["MIG-GPU-5f1c0000-1111/1/0", "MIG-5f1c0000-2222"]


@pytest.mark.parametrize("text", ["", "   ", "\n\t\n"])
def test_an_empty_inventory_is_no_gpus(text):
    assert gpus.parse_inventory(text, "x") == []


@pytest.mark.parametrize("text, fragment", [
    ("GPU-1,GPU-1", "GPU 'GPU-1' is listed twice"),
    ("GPU-abc,GPU-ABC", "listed twice (as 'GPU-abc' and 'GPU-ABC')"),
    ("1,01", "listed twice (as '1' and '01')"),
    ("10,2,10", "GPU '10' is listed twice"),
    ("0,,1", "item 2 is empty"),
    ("0,1,", "item 3 is empty"),
    (",0", "item 1 is empty"),
    (",", "item 1 is empty"),
    ("0, ,1", "item 2 is empty"),
    ("gpu0", "'gpu0' is neither"),
    ("-1", "'-1' is neither"),
    ("+1", "'+1' is neither"),
    ("1.5", "'1.5' is neither"),
    ("GPU-", "'GPU-' is neither"),
    ("GPU-xyz", "'GPU-xyz' is neither"),
    ("0;DROP TABLE users", "'0;DROP' is neither"),  # spaces separate items
    ("GPU-1');DROP\tTABLE gpuhub_gpu_slots;--", "\"GPU-1');DROP\" is neither"),
    ("GPU-ünïcode", "'GPU-ünïcode' is neither"),
    ("٣", "'٣' is neither"),  # int() takes an Arabic-Indic digit; an index does not
    ("０", "neither"),  # a full-width digit
    ("GPU-ab\x00cd", r"'GPU-ab\x00cd' is neither"),
    ("1234567", "neither"),
    (",".join(str(i) for i in range(2000)), "2000 GPUs listed; at most 1024"),
])
def test_bad_inventories_are_refused_naming_the_source(text, fragment):
    with pytest.raises(gpus.GpuConfigError) as e:
        gpus.parse_inventory(text, "GPUHUB_GPUS in .env")
    assert str(e.value).startswith("GPUHUB_GPUS in .env: "), str(e.value)
    assert fragment in str(e.value)


def test_a_very_long_value_is_refused_with_a_short_message():
    with pytest.raises(gpus.GpuConfigError) as e:
        gpus.parse_inventory("GPU-" + "a" * 100_000, "GPUHUB_GPUS")
    assert "is neither" in str(e.value) and len(str(e.value)) < 300


def test_nvml_fills_names_and_finds_a_gpu_named_twice():
    seen = [gpus.Gpu(0, "GPU-aaaa0000", "Tesla T4", 15360), gpus.Gpu(1, "GPU-bbbb0000", "A100", 40960)]
    merged = gpus.merge_nvml(gpus.parse_inventory("GPU-bbbb0000,0", "x"), seen, "x")
    assert merged == [gpus.Gpu(1, "GPU-bbbb0000", "A100", 40960), gpus.Gpu(0, "0", "Tesla T4", 15360)]
    with pytest.raises(gpus.GpuConfigError, match="'0' and 'GPU-aaaa0000' are the same GPU"):
        gpus.merge_nvml(gpus.parse_inventory("0,GPU-aaaa0000", "x"), seen, "x")


def fake_nvml(devices, fail_init=None, fail_at=None):
    calls = []

    def handle(i):
        if i == fail_at:
            raise RuntimeError("GPU has fallen off the bus")
        return i

    def init():
        calls.append("init")
        if fail_init:
            raise fail_init

    return types.SimpleNamespace(
        calls=calls, nvmlInit=init, nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlDeviceGetCount=lambda: len(devices), nvmlDeviceGetHandleByIndex=handle,
        nvmlDeviceGetUUID=lambda h: devices[h][0].encode(),  # old pynvml returned bytes
        nvmlDeviceGetName=lambda h: devices[h][1],
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=devices[h][2] * 2**20))


def test_discover_nvml_with_and_without_a_driver(monkeypatch):
    # this machine has no NVIDIA driver: whatever pynvml does, nothing is found, nothing raises
    assert gpus.discover_nvml() == []
    fake = fake_nvml([("GPU-aaaa0000", "Tesla T4", 15360), ("GPU-bbbb0000", "A100", 40960)])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert gpus.discover_nvml() == [gpus.Gpu(0, "GPU-aaaa0000", "Tesla T4", 15360),
                                    gpus.Gpu(1, "GPU-bbbb0000", "A100", 40960)]
    assert fake.calls == ["init", "shutdown"]
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([], fail_init=OSError("no driver")))
    assert gpus.discover_nvml() == []
    broken = fake_nvml([("GPU-aaaa0000", "T4", 1), ("GPU-bbbb0000", "T4", 1)], fail_at=1)
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    assert gpus.discover_nvml() == [] and broken.calls == ["init", "shutdown"]
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    assert gpus.discover_nvml() == []


def test_inventory_is_completed_by_nvml_for_hub_and_cli_alike(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([("GPU-aaaa0000", "Tesla T4", 15360)]))
    assert gpus.inventory(()) == [gpus.Gpu(0, "GPU-aaaa0000", "Tesla T4", 15360)]
    configured = settings.load({"GPUHUB_GPUS": "0"}, only=["GPUHUB_GPUS"]).gpus
    assert gpus.inventory(configured) == [gpus.Gpu(0, "0", "Tesla T4", 15360)]
    # listed twice, once by index and once by UUID: only NVML can tell, and it is refused
    twice = settings.load({"GPUHUB_GPUS": "0,GPU-aaaa0000"}, only=["GPUHUB_GPUS"]).gpus
    with pytest.raises(gpus.GpuConfigError, match="^GPUHUB_GPUS: '0' and 'GPU-aaaa0000' are the same"):
        gpus.inventory(twice)


# -- the policy, read through hub.settings --
GPU_POLICY = ["GPUHUB_GPU_MODE", "GPUHUB_GPU_MAX_USERS", "GPUHUB_GPU_GROUP_CAPS"]


def policy(mode=None, max_users=None, caps=None):
    environ = {name: value for name, value in zip(GPU_POLICY, (mode, max_users, caps))
               if value is not None}
    return settings.load(environ, only=GPU_POLICY).gpu_policy


def test_policy_parsing():
    assert policy() == gpus.Policy("exclusive", 1, {})
    assert policy("", "", "") == gpus.Policy("exclusive", 1, {})
    shared = policy(" Shared ", "3", "cs101=4, research=8\nphd=0")
    assert shared == gpus.Policy("shared", 3, {"cs101": 4, "research": 8, "phd": 0})
    assert shared.slots == 3


@pytest.mark.parametrize("args, message", [
    (("sharing", "1", ""), "GPUHUB_GPU_MODE='sharing': expected exclusive or shared"),
    (("shared", "0", ""), "GPUHUB_GPU_MAX_USERS=0: expected a number of servers per GPU"),
    (("shared", "three", ""), "GPUHUB_GPU_MAX_USERS='three'"),
    (("shared", "65", ""), "from 1 to 64"),
    (("shared", "٣", ""), "GPUHUB_GPU_MAX_USERS='٣'"),
    (("exclusive", "3", ""), "GPUHUB_GPU_MAX_USERS=3 shares GPUs, but GPUHUB_GPU_MODE is exclusive"),
    (("shared", "2", "cs101:4"), "GPUHUB_GPU_GROUP_CAPS: 'cs101:4' is not group=number"),
    (("shared", "2", "=4"), "GPUHUB_GPU_GROUP_CAPS: '=4'"),
    (("shared", "2", "cs101="), "'cs101='"),
    (("shared", "2", "cs101=-1"), "'cs101=-1'"),
    (("shared", "2", "a=1,a=2"), "group 'a' has two caps"),
    (("shared", "2", "x=1;DROP TABLE groups"), "is not group=number"),
])
def test_bad_policies_name_the_variable_and_value(args, message):
    with pytest.raises(settings.SettingsError) as e:
        policy(*args)
    assert len(e.value.problems) == 1 and message in e.value.problems[0], e.value.problems


def test_policy_objects_are_checked_too():
    with pytest.raises(gpus.GpuConfigError):
        gpus.Policy("exclusive", 2)
    with pytest.raises(gpus.GpuConfigError):
        gpus.Policy("shared", 0)


# -- allocation --
def test_exclusive_allocation_release_and_reuse(tmp_path):
    a = make(tmp_path, n=2)
    first = a.allocate("ada", "", 1)
    second = a.allocate("bob", "", 1)
    assert [first[0].uuid, second[0].uuid] == UUIDS[:2]
    with pytest.raises(gpus.NoGpuAvailable) as e:
        a.allocate("cy", "", 1)
    assert (e.value.total, e.value.in_use, e.value.wanted) == (2, 2, 1)
    assert str(e.value).startswith("All 2 GPUs are in use (2 of 2 taken); 1 requested.")
    assert a.release("ada", "") == [first[0].uuid]
    assert a.allocate("cy", "", 1) == first
    assert a.release("nobody", "") == []
    assert a.allocate("dan", "", 0) == [] and len(a.holdings()) == 2
    with pytest.raises(ValueError):
        a.allocate("dan", "", -1)


def test_idempotent_per_server_and_all_or_nothing(tmp_path, db_url):
    a = make(tmp_path, n=3, url=db_url)
    two = a.allocate("ada", "", 2)
    assert len({g.uuid for g in two}) == 2, "two different GPUs"
    assert a.allocate("ada", "", 2) == two, "a retried spawn gets the same GPUs"
    assert a.allocate("ada", "", 1) == two, "whatever it asks the second time"
    with pytest.raises(gpus.NoGpuAvailable) as e:
        a.allocate("bob", "", 2)
    assert "Only 1 of 3 GPUs can take another server" in str(e.value)
    assert [h.user for h in a.holdings()] == ["ada", "ada"], "a refused request takes nothing"
    other = a.allocate("ada", "second", 1)
    assert other[0].uuid not in {g.uuid for g in two}, "named servers are servers of their own"
    assert a.held_by("ada", "") == two and a.held_by("ada", "second") == other
    with pytest.raises(gpus.NoGpuAvailable, match="This hub has only 3 GPUs; 4 requested"):
        a.allocate("cy", "", 4)


def test_release_user_frees_all_their_servers(tmp_path):
    a = make(tmp_path, n=3)
    a.allocate("ada", "", 1)
    a.allocate("ada", "big", 1)
    a.allocate("bob", "", 1)
    assert sorted(a.release_user("ada")) == UUIDS[:2]
    assert [h.user for h in a.holdings()] == ["bob"]


def test_shared_mode_prefers_the_least_loaded_gpu(tmp_path, db_url):
    a = make(tmp_path, n=3, mode="shared", max_users="2", url=db_url)
    picks = [a.allocate(f"u{i}", "", 1)[0].uuid for i in range(4)]
    assert picks == [UUIDS[0], UUIDS[1], UUIDS[2], UUIDS[0]], "idle GPUs first, then lowest index"
    a.release("u1", "")  # GPU 1 is now the idle one, GPU 2 has one user
    assert a.allocate("u4", "", 1)[0].uuid == UUIDS[1]
    assert a.allocate("u5", "", 1)[0].uuid == UUIDS[1], "a tie goes to the lower index"
    assert a.allocate("u6", "", 1)[0].uuid == UUIDS[2]
    with pytest.raises(gpus.NoGpuAvailable) as e:
        a.allocate("u7", "", 1)
    assert "All 3 GPUs are in use (3 of 3 taken, each by its maximum of 2 servers)" in str(e.value)
    assert max(raw_holders(a).values()) == 2
    assert a.summary() == {"total": 3, "in_use": 3, "free": 0, "seats": 6, "seats_taken": 6}


def test_shared_summary_counts_gpus_with_room(tmp_path):
    a = make(tmp_path, n=2, mode="shared", max_users="2")
    a.allocate("u1", "", 1)
    assert a.summary() == {"total": 2, "in_use": 1, "free": 2, "seats": 4, "seats_taken": 1}


def test_group_caps_limit_a_group_together(tmp_path, db_url):
    a = make(tmp_path, n=6, caps="cs101=2,research=3,frozen=0", url=db_url)
    before = REGISTRY.get_sample_value("gpuhub_gpu_refusals_total", {"reason": "group_cap"})
    a.allocate("s1", "", 1, groups=["cs101"])
    a.allocate("s2", "", 1, groups=["cs101", "other"])
    with pytest.raises(gpus.GroupCapReached) as e:
        a.allocate("s3", "", 1, groups=["cs101"])
    assert (e.value.group, e.value.cap, e.value.held) == ("cs101", 2, 2)
    assert "The group 'cs101' may hold 2 GPUs at once and its members hold 2" in str(e.value)
    assert REGISTRY.get_sample_value("gpuhub_gpu_refusals_total",
                                     {"reason": "group_cap"}) == before + 1
    assert a.allocate("r1", "", 2, groups=["research"]), "another group has its own cap"
    assert a.allocate("x1", "", 1, groups=["uncapped"]), "groups without a cap are free"
    with pytest.raises(gpus.GroupCapReached, match="'frozen' may hold 0 GPUs"):
        a.allocate("f1", "", 1, groups=["frozen"])
    # a member of two capped groups counts against both: research has room, cs101 not
    with pytest.raises(gpus.GroupCapReached) as e:
        a.allocate("both", "", 1, groups=["research", "cs101"])
    assert e.value.group == "cs101"
    assert len(a.holdings()) == 5, "refusals took nothing"
    a.release("s1", "")
    assert a.allocate("s3", "", 1, groups=["cs101"])
    assert {h.user: h.groups for h in a.holdings()}["s3"] == ("cs101",)


def test_group_caps_count_shares_in_shared_mode(tmp_path):
    a = make(tmp_path, n=2, mode="shared", max_users="3", caps="cs101=4")
    for i in range(4):
        a.allocate(f"s{i}", "", 1, groups=["cs101"])
    with pytest.raises(gpus.GroupCapReached):
        a.allocate("s4", "", 1, groups=["cs101"])
    assert a.allocate("guest", "", 1), "the GPUs still have room for others"


def test_reconcile_frees_what_no_running_server_holds(tmp_path, db_url):
    a = make(tmp_path, n=3, caps="cs101=2", url=db_url)
    a.allocate("ada", "", 1, groups=["cs101"])
    a.allocate("bob", "", 1, groups=["cs101"])
    a.allocate("cy", "gpu", 1)
    stale = a.reconcile({("ada", ""), ("cy", "gpu"), ("ghost", "")})
    assert [(s.user, s.server_name, s.gpu_uuid) for s in stale] == [("bob", "", UUIDS[1])]
    assert sorted((h.user, h.server_name) for h in a.holdings()) == [("ada", ""), ("cy", "gpu")]
    assert a.reconcile({("ada", ""), ("cy", "gpu")}) == []
    # bob's share of the cs101 cap went with his GPU
    assert a.allocate("dan", "", 1, groups=["cs101"])
    assert a.reconcile(set()) and a.holdings() == []


def test_gpus_removed_from_the_inventory_are_released(tmp_path, caplog):
    a = make(tmp_path, n=3)
    for user in ("ada", "bob", "cy"):
        a.allocate(user, "", 1)
    smaller = GpuAllocator(a.engine.url.render_as_string(), a.inventory[:2], a.policy)
    report = smaller.report()
    assert report["gpus"][-1]["uuid"] == UUIDS[2] and not report["gpus"][-1]["in_inventory"]
    with caplog.at_level("WARNING", logger="hub.gpu_store"):
        stale = smaller.reconcile({("ada", ""), ("bob", ""), ("cy", "")})
    assert [(s.user, s.gpu_uuid) for s in stale] == [("cy", UUIDS[2])]
    assert f"GPU {UUIDS[2]} is no longer in the inventory" in caplog.text
    assert [h.user for h in smaller.holdings()] == ["ada", "bob"]


def test_holdings_are_in_index_order_with_aware_utc_times(tmp_path):
    inventory = gpus.parse_inventory("10,2,GPU-0000abcd", "test")  # indexes 10, 2 and 2 (position)
    a = GpuAllocator(f"sqlite:///{tmp_path}/h.sqlite", inventory, gpus.Policy())
    for user in ("u1", "u2", "u3"):
        a.allocate(user, "", 1)
    held = a.holdings()
    assert [h.gpu_index for h in held] == [2, 2, 10]
    assert all(h.since.utcoffset().total_seconds() == 0 for h in held)
    assert abs(time.time() - held[0].since.timestamp()) < 60


def test_hostile_user_and_server_names_are_data(tmp_path, db_url):
    a = make(tmp_path, n=2, url=db_url)
    user, server = "robert'); DROP TABLE gpuhub_gpu_slots;--", "sérvér ☃ \"x\""
    gpu = a.allocate(user, server, 1)
    assert [(h.user, h.server_name) for h in a.holdings()] == [(user, server)]
    assert a.release(user, server) == [gpu[0].uuid]
    assert a.holdings() == []


def test_the_database_not_python_prevents_double_booking(tmp_path, db_url, monkeypatch):
    a = make(tmp_path, n=2, url=db_url)
    a.allocate("ada", "", 1)
    since = a.holdings()[0].since
    with pytest.raises(IntegrityError):
        with a.engine.begin() as conn:
            conn.execute(insert(gpu_store.gpu_slots).values(
                gpu_uuid=UUIDS[0], gpu_index=0, slot=0, user_name="bob", server_name="",
                ordinal=0, since=since))
    # even a planner that always picks GPU 0, slot 0 cannot double-book it
    monkeypatch.setattr(gpu_store, "choose_gpus", lambda inv, pol, taken, n: [(inv[0], 0)])
    monkeypatch.setattr(gpu_store, "ATTEMPTS", 3)
    with pytest.raises(gpus.GpuAllocationError, match="kept colliding"):
        a.allocate("bob", "", 1)
    assert raw_holders(a) == {UUIDS[0]: 1}


# -- the tables beside JupyterHub's --
def snapshot(path):
    with sqlite3.connect(path) as db:
        tables = dict(db.execute("SELECT name, sql FROM sqlite_master WHERE type='table'"))
        rows = {t: sorted(db.execute(f'SELECT * FROM "{t}"'), key=repr) for t in tables}
    return tables, rows


def test_tables_beside_an_existing_jupyterhub_database_and_a_restart(tmp_path):
    orm = pytest.importorskip("jupyterhub.orm")
    path = tmp_path / "jupyterhub.sqlite"
    db = orm.new_session_factory(f"sqlite:///{path}")()
    db.add(orm.User(name="ada"))
    db.commit()
    hub_tables, hub_rows = snapshot(path)
    assert "users" in hub_tables and "alembic_version" in hub_tables

    a = make(tmp_path, n=2, name="jupyterhub.sqlite")
    a.allocate("ada", "", 1)
    tables, rows = snapshot(path)
    assert set(tables) - set(hub_tables) == {"gpuhub_schema", "gpuhub_gpu_slots", "gpuhub_group_slots",
                                             "gpuhub_gpu_usage"}
    assert {t: tables[t] for t in hub_tables} == hub_tables, "JupyterHub's tables unchanged"
    assert {t: rows[t] for t in hub_tables} == hub_rows, "and their rows too"
    assert rows["gpuhub_schema"] == [("gpus", gpu_store.SCHEMA_VERSION)]

    restarted = make(tmp_path, n=2, name="jupyterhub.sqlite")  # a new engine: a hub restart
    assert restarted.holdings() == a.holdings() and restarted.holdings()[0].user == "ada"
    assert restarted.allocate("bob", "", 1)[0].uuid == UUIDS[1], "GPU 0 is still ada's"
    orm.new_session_factory(f"sqlite:///{path}")  # JupyterHub still opens and checks its database
    assert snapshot(path)[1]["gpuhub_schema"] == [("gpus", gpu_store.SCHEMA_VERSION)]


def test_a_restarted_hub_sees_the_same_allocations(tmp_path, db_url):
    a = make(tmp_path, n=2, url=db_url, caps="cs101=1")
    a.allocate("ada", "lab", 1, groups=["cs101"])
    restarted = make(tmp_path, n=2, url=db_url, caps="cs101=1")
    assert restarted.holdings() == a.holdings()
    assert restarted.allocate("ada", "lab", 1) == a.held_by("ada", "lab")
    with pytest.raises(gpus.GroupCapReached):
        restarted.allocate("bob", "", 1, groups=["cs101"])
    assert restarted.allocate("cy", "", 1)[0].uuid != a.held_by("ada", "lab")[0].uuid


def test_our_tables_first_then_jupyterhub_creates_its_own(tmp_path):
    # the real order: jupyterhub_config.py creates the allocator before JupyterHub's init_db
    orm = pytest.importorskip("jupyterhub.orm")
    a = make(tmp_path, n=1, name="jupyterhub.sqlite")
    a.allocate("ada", "", 1)
    session = orm.new_session_factory(a.engine.url.render_as_string())()
    assert session.query(orm.User).count() == 0
    tables, _ = snapshot(tmp_path / "jupyterhub.sqlite")
    assert {"users", "alembic_version", "gpuhub_gpu_slots"} <= set(tables)
    assert [h.user for h in a.holdings()] == ["ada"]


def test_schema_version_guards_and_the_migration_from_schema_1(tmp_path):
    path = tmp_path / "hub.sqlite"
    with sqlite3.connect(path) as db:  # what the first gpuhub release wrote
        db.executescript(f"""
            CREATE TABLE gpuhub_schema (component VARCHAR(64) PRIMARY KEY, version INTEGER NOT NULL);
            INSERT INTO gpuhub_schema VALUES ('gpus', 1);
            CREATE TABLE gpuhub_gpu_allocations (id INTEGER PRIMARY KEY, gpu_uuid VARCHAR(255),
              slot INTEGER, user VARCHAR(255), server_name VARCHAR(255), groups VARCHAR(4096),
              since DATETIME, UNIQUE (gpu_uuid, slot));
            INSERT INTO gpuhub_gpu_allocations VALUES
              (1, '{UUIDS[0]}', 0, 'ada', '', 'cs101', '2026-01-02 03:04:05.000000'),
              (2, '{UUIDS[1]}', 0, 'ada', '', 'cs101', '2026-01-02 03:04:05.000000'),
              (3, '{UUIDS[2]}', 0, 'bob', 'x', '', '2026-01-02 03:04:06.000000');
        """)
    a = make(tmp_path, n=4, caps="cs101=2")
    assert [(h.user, h.server_name, h.gpu_uuid, h.groups) for h in a.holdings()] == [
        ("ada", "", UUIDS[0], ("cs101",)), ("ada", "", UUIDS[1], ("cs101",)), ("bob", "x", UUIDS[2], ())]
    assert a.holdings()[0].since.isoformat() == "2026-01-02T03:04:05+00:00"
    assert a.held_by("ada", "") == a.inventory[:2]
    with pytest.raises(gpus.GroupCapReached):
        a.allocate("cy", "", 1, groups=["cs101"])
    tables, rows = snapshot(path)
    assert "gpuhub_gpu_allocations" not in tables and rows["gpuhub_schema"] == [("gpus", 2)]

    with sqlite3.connect(path) as db:
        db.execute("UPDATE gpuhub_schema SET version = 99")
    with pytest.raises(gpus.GpuConfigError, match="newer gpuhub"):
        make(tmp_path)


def test_an_in_memory_database_is_refused():
    with pytest.raises(gpus.GpuConfigError, match="in-memory"):
        GpuAllocator("sqlite://", [], gpus.Policy())


# -- metrics --
def test_metrics_follow_allocations(tmp_path):
    def value(name, **labels):
        return REGISTRY.get_sample_value(name, labels)

    a = make(tmp_path, n=2)
    assert value("gpuhub_gpus_total") == 2 and value("gpuhub_gpus_in_use") == 0
    a.allocate("ada", "", 1)
    assert value("gpuhub_gpus_in_use") == 1
    refused = value("gpuhub_gpu_refusals_total", reason="no_gpu")
    a.allocate("bob", "", 1)
    with pytest.raises(gpus.NoGpuAvailable):
        a.allocate("cy", "", 1)
    assert value("gpuhub_gpu_refusals_total", reason="no_gpu") == refused + 1
    assert value("gpuhub_gpus_in_use") == 2
    a.release_user("ada")
    assert value("gpuhub_gpus_in_use") == 1
    a.reconcile(set())
    assert value("gpuhub_gpus_in_use") == 0
    text = generate_latest(REGISTRY).decode()
    for line in ("gpuhub_gpus_total 2.0", "gpuhub_gpus_in_use 0.0",
                 'gpuhub_gpu_refusals_total{reason="group_cap"}'):
        assert line in text


# -- concurrency against a real SQLite file --
def race(allocator, users, barrier):
    """Every user asks for one GPU at once; [(user, uuid or None or an error)]."""
    results = []

    def ask(user):
        barrier.wait(timeout=60)
        try:
            results.append((user, allocator.allocate(user, "", 1)[0].uuid))
        except gpus.NoGpuAvailable:
            results.append((user, None))
        except Exception as e:  # anything else is a failure the test must see
            results.append((user, f"error: {e!r}"))

    threads = [threading.Thread(target=ask, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "an allocation hung"
    return results


def check_race(results, allocator, winners, max_users):
    assert len(results) == 40 and len({u for u, _ in results}) == 40
    assert not [r for r in results if r[1] and r[1].startswith("error")], results
    granted = Counter(uuid for _, uuid in results if uuid)
    assert sum(granted.values()) == winners
    assert sum(1 for _, uuid in results if uuid is None) == 40 - winners
    assert granted == {u: max_users for u in UUIDS[:4]}, "every GPU full, none over its limit"
    assert raw_holders(allocator) == granted, "the database agrees"
    assert Counter(h.gpu_uuid for h in allocator.holdings()) == granted


@pytest.mark.parametrize("mode, max_users", [("exclusive", 1), ("shared", 3)])
def test_forty_threads_racing_for_four_gpus(tmp_path, db_url, mode, max_users):
    a = make(tmp_path, n=4, mode=mode, max_users=str(max_users), url=db_url)
    results = race(a, [f"user{i}" for i in range(40)], threading.Barrier(40))
    check_race(results, a, 4 * max_users, max_users)


def process_worker(db_url, mode, max_users, users, barrier, queue):
    # one hub process among several: its own allocator, engine and connections
    allocator = GpuAllocator(db_url, gpus.parse_inventory(",".join(UUIDS[:4]), "test"),
                             gpus.Policy(mode, int(max_users)))
    local = threading.Barrier(len(users), action=lambda: barrier.wait(timeout=60))
    queue.put(race(allocator, users, local))


@pytest.mark.parametrize("mode, max_users", [("exclusive", 1), ("shared", 3)])
def test_forty_requests_from_eight_processes(tmp_path, db_url, mode, max_users):
    # no tables yet: the eight processes also race to create them, as hub replicas would
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=process_worker, args=(
        db_url, mode, str(max_users),
        [f"p{p}u{i}" for i in range(5)], barrier, queue)) for p in range(8)]
    for p in procs:
        p.start()
    try:
        results = [r for _ in procs for r in queue.get(timeout=120)]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs)
    a = make(tmp_path, n=4, mode=mode, max_users=str(max_users), url=db_url)
    check_race(results, a, 4 * max_users, max_users)


def test_the_same_server_spawned_twice_at_once_takes_one_gpu(tmp_path, db_url):
    a = make(tmp_path, n=4, url=db_url)
    barrier, results = threading.Barrier(10), []

    def ask():
        barrier.wait(timeout=60)
        results.append(a.allocate("ada", "", 1)[0].uuid)

    threads = [threading.Thread(target=ask) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 10 and len(set(results)) == 1
    assert raw_holders(a) == {results[0]: 1}


def test_a_group_cap_holds_under_concurrency(tmp_path, db_url):
    a = make(tmp_path, n=8, caps="cs101=3", url=db_url)
    barrier, results = threading.Barrier(20), []

    def ask(i):
        barrier.wait(timeout=60)
        try:
            results.append(bool(a.allocate(f"s{i}", "", 1, groups=["cs101"])))
        except gpus.GroupCapReached:
            results.append(False)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == [False] * 17 + [True] * 3


# -- the admin REST endpoint, in a real JupyterHub --
HUB_CONFIG = """
import sys
sys.path.insert(0, {repo!r})
from jupyterhub.proxy import Proxy
from hub import gpus
from hub.gpu_store import GpuAllocator
from hub.gpu_api import GpuAllocationsHandler


class DictProxy(Proxy):
    # routes kept in memory: this test talks to the hub's own port, no proxy needed
    routes = {{}}

    async def add_route(self, routespec, target, data):
        self.routes[routespec] = {{"routespec": routespec, "target": target, "data": data}}

    async def delete_route(self, routespec):
        self.routes.pop(routespec, None)

    async def get_all_routes(self):
        return dict(self.routes)


c = get_config()
c.JupyterHub.proxy_class = DictProxy
c.DictProxy.should_start = False
c.JupyterHub.bind_url = "http://127.0.0.1:{public_port}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{hub_port}"
c.JupyterHub.db_url = {db_url!r}
c.JupyterHub.services = [{{"name": "gpu-admin", "api_token": {admin!r}}},
                         {{"name": "nosy", "api_token": {nosy!r}}}]
c.JupyterHub.load_roles = [{{"name": "gpu-admin", "scopes": ["admin:users", "read:metrics"],
                             "services": ["gpu-admin"]}}]
allocator = GpuAllocator({db_url!r}, gpus.parse_inventory({inventory!r}, "test"),
                         gpus.Policy("shared", 2))
c.JupyterHub.tornado_settings = {{"gpuhub_allocator": allocator}}
c.JupyterHub.extra_handlers = [(r"/api/gpus", GpuAllocationsHandler)]
"""


def get(url, token=None):
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_admins_get_the_allocations_from_the_rest_api(tmp_path):
    pytest.importorskip("jupyterhub")
    db_url = f"sqlite:///{tmp_path}/jupyterhub.sqlite"
    a = GpuAllocator(db_url, gpus.parse_inventory(",".join(UUIDS[:2]), "test"),
                     gpus.Policy("shared", 2))
    a.allocate("ada", "", 1)
    a.allocate("bob", "lab", 1)
    a.allocate("cy", "", 1)
    admin, nosy, hub_port = secrets.token_hex(16), secrets.token_hex(16), free_port()
    (tmp_path / "jupyterhub_config.py").write_text(HUB_CONFIG.format(
        repo=str(REPO), public_port=free_port(), hub_port=hub_port, db_url=db_url,
        admin=admin, nosy=nosy, inventory=",".join(UUIDS[:2])))
    log = open(tmp_path / "hub.log", "w")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "GPUHUB_"))}
    hub = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", "jupyterhub_config.py"],
                           cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{hub_port}/hub"
    try:
        def answers_or_exited():
            return "exited" if hub.poll() is not None else get(f"{base}/api/")[0] == 200
        try:
            state = wait_for(answers_or_exited, 90, "JupyterHub to answer", interval=0.2)
        except AssertionError as e:
            state = str(e)
        if state is not True:
            pytest.fail(f"JupyterHub did not answer ({state}):\n"
                        + (tmp_path / "hub.log").read_text()[-3000:])

        status, body = get(f"{base}/api/gpus", admin)
        assert status == 200, body
        report = json.loads(body)
        assert (report["total"], report["in_use"], report["free"]) == (2, 2, 1)
        assert [g["uuid"] for g in report["gpus"]] == UUIDS[:2]
        assert [g["index"] for g in report["gpus"]] == [0, 1]
        holders = {h["user"]: h for g in report["gpus"] for h in g["holders"]}
        assert holders["bob"]["server"] == "lab" and holders["ada"]["server"] == ""
        assert holders["ada"]["since"].endswith("Z")
        assert sorted(len(g["holders"]) for g in report["gpus"]) == [1, 2]

        assert get(f"{base}/api/gpus", nosy)[0] == 403, "a token without admin:users"
        assert get(f"{base}/api/gpus")[0] == 403, "no token at all"

        status, metrics = get(f"{base}/metrics", admin)
        assert status == 200
        assert "gpuhub_gpus_total 2.0" in metrics and "gpuhub_gpus_in_use 2.0" in metrics
    finally:
        hub.terminate()
        try:
            hub.wait(timeout=20)
        except subprocess.TimeoutExpired:
            hub.kill()
            hub.wait(timeout=10)
        log.close()
    assert "gpuhub_gpu_slots" in snapshot(tmp_path / "jupyterhub.sqlite")[0]


# -- the CLI --
def test_cli_prints_one_line_per_gpu(tmp_path, capsys):
    a = make(tmp_path, n=3, mode="shared", max_users="2")
    a.allocate("ada", "", 1)
    a.allocate("bob", "lab", 1)
    environ = {"GPUHUB_GPUS": ",".join(UUIDS[:3]), "GPUHUB_GPU_MODE": "shared",
               "GPUHUB_GPU_MAX_USERS": "2", "GPUHUB_STATE_DIR": str(tmp_path / "nowhere")}
    assert cli.main(["gpus", "--db-url", f"sqlite:///{tmp_path}/hub.sqlite"], environ) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "3 GPUs, 2 in use, 3 with room, mode shared"
    assert lines[1].startswith(f"  0 {UUIDS[0]}: ada since 20") and lines[1].endswith("Z")
    assert lines[2].startswith(f"  1 {UUIDS[1]}: bob/lab since 20")
    assert lines[3] == f"  2 {UUIDS[2]}: free"
    assert len(lines) == 4

    with pytest.raises(SystemExit, match="no hub database at .*nowhere/jupyterhub.sqlite"):
        cli.main(["gpus"], environ)
    assert not (tmp_path / "nowhere").exists()
    with pytest.raises(SystemExit) as e:
        cli.main(["gpus", "--db-url", f"sqlite:///{tmp_path}/hub.sqlite"], {"GPUHUB_GPUS": "0,,1"})
    assert e.value.code == 2 and "GPUHUB_GPUS: item 2 is empty" in capsys.readouterr().err


def test_cli_runs_as_a_module_with_the_default_database(tmp_path):
    make(tmp_path, n=2, name="jupyterhub.sqlite").allocate("ada", "", 1)
    env = {**os.environ, "GPUHUB_GPUS": ",".join(UUIDS[:2]), "GPUHUB_STATE_DIR": str(tmp_path),
           "GPUHUB_GPU_MODE": "exclusive", "GPUHUB_GPU_MAX_USERS": "1"}
    out = subprocess.run([sys.executable, "-m", "hub.cli", "gpus", "--json"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["in_use"] == 1 and report["gpus"][0]["holders"][0]["user"] == "ada"
    assert settings.load({}, only=cli.GPU_SETTINGS).db_url == \
        "sqlite:////srv/jupyterhub/jupyterhub.sqlite"
