"""GPU-hours: exact totals over allocations made with a controlled clock (the allocator's
injectable clock), periods, budgets with their reset time, a hub restart, the CLI and
the Prometheus counter."""

import csv
import datetime
import io
import json

import pytest
from prometheus_client import REGISTRY

from hub import cli, gpu_hours, gpus
from hub.gpu_store import GpuAllocator
from tests.test_gpu_queue import Clock
from tests.test_gpus import UUIDS

UTC = datetime.timezone.utc
MONDAY = datetime.datetime(2026, 11, 30, 0, 0, tzinfo=UTC)  # a Monday


def make(tmp_path, clock, n=4, name="jupyterhub.sqlite"):
    return GpuAllocator(f"sqlite:///{tmp_path / name}",
                             gpus.parse_inventory(",".join(UUIDS[:n]), "test"),
                             gpus.Policy(), clock=clock)


def at(day, hour, minute=0):
    return MONDAY + datetime.timedelta(days=day, hours=hour, minutes=minute)


def history(tmp_path):
    """Monday: ada 2 GPUs 09:00-10:30 (dl), bob 1 GPU 10:00-12:00 (dl); Tuesday: ada 1 GPU
    08:00-08:45 (vision), and cy from Tuesday 09:00, still running."""
    clock = Clock(at(0, 9))
    a = make(tmp_path, clock)
    a.allocate("ada", "", 2, groups=["cs101", "lab"], course="dl")
    clock.now = at(0, 10)
    a.allocate("bob", "", 1, groups=["cs101"], course="dl")
    clock.now = at(0, 10, 30)
    a.release("ada", "")
    clock.now = at(0, 12)
    a.release("bob", "")
    clock.now = at(1, 8)
    a.allocate("ada", "", 1, groups=["lab"], course="vision")
    clock.now = at(1, 8, 45)
    a.release("ada", "")
    clock.now = at(1, 9)
    a.allocate("cy", "", 1, course="vision")
    clock.now = at(1, 11)
    return a, clock


def hours(rows, by):
    return {r[by]: r["gpu_hours"] for r in rows}


def test_gpu_hours_are_exact_by_user_course_group_and_gpu(tmp_path):
    a, clock = history(tmp_path)
    usage = gpu_hours.load_usage(a.engine)
    now = clock()
    assert hours(gpu_hours.totals(usage, "user", now=now), "user") == {
        "ada": 3.75, "bob": 2.0, "cy": 2.0}  # 2 x 1.5 + 0.75; cy running 09:00-11:00
    assert hours(gpu_hours.totals(usage, "course", now=now), "course") == {"dl": 5.0, "vision": 2.75}
    assert hours(gpu_hours.totals(usage, "group", now=now), "group") == {
        "cs101": 5.0, "lab": 3.75, "": 2.0}
    by_gpu = hours(gpu_hours.totals(usage, "gpu", now=now), "gpu")
    assert by_gpu == {UUIDS[0]: 1.5 + 0.75 + 2.0, UUIDS[1]: 1.5, UUIDS[2]: 2.0}
    # a period clips: Monday 10:00 to 11:00 is 1 h of ada's two GPUs (half each) and bob's hour
    period = gpu_hours.load_usage(a.engine, since=at(0, 10), until=at(0, 11))
    assert hours(gpu_hours.totals(period, "user", at(0, 10), at(0, 11), now), "user") == {
        "ada": 1.0, "bob": 1.0}
    with pytest.raises(ValueError, match="--by 'name': expected one of user, course, group, gpu"):
        gpu_hours.totals(usage, "name")


def test_accounting_survives_a_hub_restart(tmp_path):
    a, clock = history(tmp_path)
    before = gpu_hours.report(a.engine, "user", now=clock())
    restarted = make(tmp_path, clock)  # a new engine on the same database: a hub restart
    assert gpu_hours.report(restarted.engine, "user", now=clock()) == before
    clock.advance(hours=1)
    restarted.release("cy", "")
    after = hours(gpu_hours.report(restarted.engine, "user", now=clock() + datetime.timedelta(days=1))["rows"], "user")
    assert after["cy"] == 3.0, "cy's session ended after the restart, at 12:00"


def test_a_student_over_budget_is_refused_with_the_reset_time(tmp_path):
    a, clock = history(tmp_path)
    # ada used 3 GPU-hours of dl this week
    gpu_hours.check_budget(a.engine, "ada", "dl", 3.5, clock(), "Deep learning")
    with pytest.raises(gpu_hours.BudgetExceeded) as e:
        gpu_hours.check_budget(a.engine, "ada", "dl", 3, clock(), "Deep learning")
    assert str(e.value) == ("You have used 3.0 of your 3 GPU-hours this week for Deep learning. "
                            "The budget resets on Monday 07 December 2026, 00:00 UTC "
                            "(2026-12-07T00:00:00Z).")
    # a running session counts up to now: cy has used 2 h of vision by 11:00
    with pytest.raises(gpu_hours.BudgetExceeded):
        gpu_hours.check_budget(a.engine, "cy", "vision", 2, clock(), "Vision")
    # next week the budget is whole again (cy's session counts from Monday 00:00 only)
    gpu_hours.check_budget(a.engine, "ada", "dl", 3, at(7, 0, 1), "Deep learning")
    gpu_hours.check_budget(a.engine, "cy", "vision", 2, at(7, 1), "Vision")
    with pytest.raises(gpu_hours.BudgetExceeded):
        gpu_hours.check_budget(a.engine, "cy", "vision", 2, at(7, 2), "Vision")


def test_weeks_and_periods():
    assert gpu_hours.week_start(at(6, 23, 59)) == MONDAY
    assert gpu_hours.week_start(at(7, 0)) == MONDAY + datetime.timedelta(days=7)
    now = at(2, 12)
    assert gpu_hours.parse_moment("7d", now) == now - datetime.timedelta(days=7)
    assert gpu_hours.parse_moment("90m", now) == now - datetime.timedelta(minutes=90)
    assert gpu_hours.parse_moment("week", now) == MONDAY
    assert gpu_hours.parse_moment("2026-11-30", now) == MONDAY
    assert gpu_hours.parse_moment("2026-11-30T02:00+02:00", now) == MONDAY
    for bad in ("yesterday", "7 days", "-1d", ""):
        with pytest.raises(ValueError, match="expected a date"):
            gpu_hours.parse_moment(bad, now)


def test_the_catalog_budget_is_a_number_of_hours_above_zero():
    from hub.courses import CatalogError, parse_catalog
    entry = "courses:\n  - {slug: dl, display_name: DL, image: x/y:1, gpus: 1, gpu_hours_per_week: %s}\n"
    assert parse_catalog(entry % "2.5").courses[0].gpu_hours_per_week == 2.5
    assert parse_catalog(entry.replace(", gpu_hours_per_week: %s", "")).courses[0].gpu_hours_per_week is None
    for bad, fragment in (("0", "above 0"), ("-1", "above 0"), ("ten", "expected a number"),
                          (".nan", "expected a finite number"), ("1e9", "at most 10000")):
        with pytest.raises(CatalogError, match=fragment):
            parse_catalog(entry % bad, "catalog.yaml")


def test_cli_gpu_hours_as_table_csv_and_json(tmp_path, capsys):
    a, clock = history(tmp_path)
    a.release("cy", "")  # at 11:00: the CLI's clock is the real one
    db = f"sqlite:///{tmp_path}/jupyterhub.sqlite"
    args = ["--db-url", db]

    def run(*extra):
        assert cli.main(["gpu-hours", *args, *extra]) == 0
        return capsys.readouterr().out

    table = run("--since", "2026-11-30", "--until", "2026-11-30T23:00Z", "--by", "course")
    assert table.splitlines() == [
        "GPU-hours by course, 2026-11-30T00:00:00Z to 2026-11-30T23:00:00Z",
        "course   GPU-hours  allocations",
        "dl            5.00            3",
        "total         5.00"]
    rows = list(csv.reader(io.StringIO(run("--until", "2026-12-01T08:30Z", "--format", "csv"))))
    assert rows[0] == ["user", "gpu_hours", "gpu_seconds", "allocations"]
    assert {r[0]: float(r[1]) for r in rows[1:]} == {"ada": 3.5, "bob": 2.0}
    report = json.loads(run("--since", "2026-12-01", "--until", "2026-12-01T11:00Z",
                            "--by", "group", "--format", "json"))
    assert {r["group"]: r["gpu_hours"] for r in report["rows"]} == {"lab": 0.75, "": 2.0}
    with pytest.raises(SystemExit) as e:
        cli.main(["gpu-hours", *args, "--since", "last week"])
    assert e.value.code == 2 and "--since 'last week': expected a date" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no hub database at"):
        cli.main(["gpu-hours"], {"GPUHUB_STATE_DIR": str(tmp_path / "nowhere")})


def test_gpu_seconds_counter_by_course_without_user_labels(tmp_path):
    a, clock = history(tmp_path)
    gpu_hours.serve_metrics(a)
    value = REGISTRY.get_sample_value
    assert value("gpuhub_gpu_seconds_total", {"course": "dl"}) == 5 * 3600
    assert value("gpuhub_gpu_seconds_total", {"course": "vision"}) == 2.75 * 3600
    clock.advance(minutes=30)  # cy's running session keeps counting
    assert value("gpuhub_gpu_seconds_total", {"course": "vision"}) == 3.25 * 3600
    samples = [s for m in REGISTRY.collect() if m.name == "gpuhub_gpu_seconds" for s in m.samples]
    assert samples and all(set(s.labels) == {"course"} for s in samples)
