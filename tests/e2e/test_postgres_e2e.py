"""The hub on PostgreSQL (compose profile `postgres`, issue 12 item 3), end to end: the
compose file as an admin runs it with COMPOSE_PROFILES=postgres, GPUHUB_DB_URL and
GPUHUB_POSTGRES_PASSWORD in .env; PostgreSQL is the stand-in image of Debian's
postgresql-15 (no registry here: tests/standin/postgres), the stand-in for Traefik's API
as everywhere, fake GPU UUIDs that the no-op nvidia hook lets Docker accept (no GPU,
nothing asks NVML). One stack for the essential checks: JupyterHub's and the allocator's
tables in PostgreSQL, a spawn, a GPU race, hub restarts (also with the database down
first), and what a student reaches of the database: nothing."""

import json
import secrets
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from .stack import free_subnet, wait_for

pytestmark = pytest.mark.e2e

GPUS = [f"GPU-00000000-0000-4000-8000-0000000000d{i}" for i in range(1, 3)]
PASSWORD = secrets.token_hex(16)


@pytest.fixture(scope="module")
def pg_stack(tmp_path_factory, docker_client, standin_bases):
    from .conftest import CPU_AND_GPU_ONLY_COURSES, make_gpu_stack
    # an address pool of its own for the servers' networks: stacks of other runs on this
    # engine take /28s of the default 10.128.0.0/16 too
    pool = free_subnet(docker_client, "10.{}.0.0/16", "the servers' address pool")
    assert str(pool) != "10.254.0.0/16", "10.254.0.0/16 holds the control networks"
    with make_gpu_stack(tmp_path_factory, docker_client, "gpuhubpg", GPUS,
                        CPU_AND_GPU_ONLY_COURSES, {
        "GPUHUB_SERVER_SUBNETS": str(pool),
        "COMPOSE_PROFILES": "postgres",
        "GPUHUB_DB_URL": "postgresql://gpuhub@postgres:5432/gpuhub",
        "GPUHUB_POSTGRES_PASSWORD": PASSWORD,
        # no line: the race is about who gets a GPU and who is refused
        "GPUHUB_GPU_QUEUE_TIMEOUT": "0",
    }).running() as s:
        yield s


def psql(stack, query):
    """Rows of `query`, run by psql inside the postgres container (as an admin would)."""
    code, out = stack.container("postgres").exec_run(
        ["psql", "-h", "127.0.0.1", "-U", "gpuhub", "-d", "gpuhub", "-At", "-F", "|", "-c", query],
        environment={"PGPASSWORD": PASSWORD})
    assert code == 0, out.decode()
    return [line.split("|") for line in out.decode().splitlines() if line]


def test_spawn_keeps_users_and_gpus_in_postgresql(pg_stack):
    s = pg_stack
    assert s.api("POST", "/users/ada").status_code in (201, 409)
    s.start_server("ada", course="deep-learning")
    assert s.server_api("ada", "/api/status").status_code == 200, "ada's server answers"
    tables = {row[0] for row in psql(s, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"users", "spawners", "api_tokens", "alembic_version",
            "gpuhub_gpu_slots", "gpuhub_gpu_usage"} <= tables, tables
    assert ["ada"] in psql(s, "SELECT name FROM users")
    assert psql(s, "SELECT user_name, gpu_uuid FROM gpuhub_gpu_slots") == [["ada", s.gpu_holders()["ada"]]]
    code, out = s.container("hub").exec_run(["ls", "/srv/jupyterhub"])
    assert "jupyterhub.sqlite" not in out.decode(), "no SQLite database beside PostgreSQL"


def test_gpu_race_on_postgresql_gives_each_gpu_once(pg_stack):
    s = pg_stack
    racers = [f"race{i}" for i in range(4)]
    for u in racers:
        assert s.api("POST", f"/users/{u}").status_code in (201, 409)
    # ada holds one of the two GPUs: of four at once exactly one gets the other
    with ThreadPoolExecutor(len(racers)) as pool:
        answers = dict(zip(racers, pool.map(
            lambda u: s.api("POST", f"/users/{u}/server", json={"course": "deep-learning"}),
            racers)))
    codes = {u: r.status_code for u, r in answers.items()}
    started = [u for u, code in codes.items() if code in (201, 202)]
    assert len(started) == 1 and sorted(codes.values()).count(503) == 3, \
        {u: (r.status_code, r.text[:200]) for u, r in answers.items()}
    wait_for(lambda: s.api("GET", f"/users/{started[0]}").json()["servers"].get("", {}).get("ready"),
             180, f"{started[0]}'s server to be ready")
    for u in racers:
        if u not in started:
            wait_for(lambda: "" not in s.api("GET", f"/users/{u}").json()["servers"], 30,
                     f"{u}'s refused server to clear")
    assert s.gpu_holders() == s.running_gpu_containers()
    assert sorted(s.gpu_holders().values()) == sorted(GPUS), "each GPU held once"
    assert len(psql(s, "SELECT gpu_uuid FROM gpuhub_gpu_slots")) == len(GPUS)


def test_a_student_reaches_neither_the_database_nor_its_password(pg_stack):
    s = pg_stack
    user = s.user_container("ada")
    postgres_ip = s.ip(s.container("postgres"), f"{s.project}_database")
    # a student's terminal: connect to PostgreSQL by name and by address
    probe = ("import socket, sys\n"
             "for host in ('postgres', sys.argv[1]):\n"
             "    try:\n"
             "        socket.create_connection((host, 5432), timeout=3).close(); print('reached', host)\n"
             "    except OSError as e:\n"
             "        print('refused', host, e)\n")
    code, out = user.exec_run(["python3", "-c", probe, postgres_ip])
    text = out.decode()
    assert code == 0 and "reached" not in text and text.count("refused") == 2, text
    code, out = user.exec_run(["env"])
    assert PASSWORD not in out.decode() and "PGPASSWORD" not in out.decode()
    logs = s.compose("logs", "--no-color").stdout
    assert "postgres" in logs and PASSWORD not in logs, "the password is in no log"


def test_hub_restarts_keep_servers_and_gpus_and_wait_for_the_database(pg_stack):
    s = pg_stack
    before = s.gpu_holders()
    assert len(before) == 2
    s.compose("restart", "hub")
    s.wait_healthy()
    assert s.gpu_holders() == before == s.running_gpu_containers()
    # the database down when the hub starts: the hub waits, says so, and comes up with it
    s.compose("stop", "hub", "postgres")
    s.compose("start", "hub")
    wait_for(lambda: "Waiting for the database" in s.logs("hub"), 60,
             "the hub to say it waits for the database")
    assert s.container("hub").status == "running"
    s.compose("start", "postgres")
    s.wait_healthy()
    assert s.gpu_holders() == before == s.running_gpu_containers()
    for user in before:
        assert s.server_api(user, "/api/status").status_code == 200, f"{user}'s server answers"
    # and the freed GPU goes to the next student
    first = sorted(before)[0]
    s.stop_server(first)
    assert first not in s.gpu_holders()
    assert s.api("POST", "/users/late").status_code in (201, 409)
    s.start_server("late", course="deep-learning")
    assert s.gpu_holders()["late"] == before[first]


def test_the_move_command_runs_in_the_hub_image_and_refuses_a_used_database(pg_stack):
    """docs/postgresql.md's `docker compose run --rm --no-deps hub python3 -m hub.dbmove`,
    with an SQLite hub database made by JupyterHub's models: it reaches PostgreSQL with
    the password compose gives the hub, and refuses to write over the running hub's."""
    s = pg_stack
    result = s.compose("run", "--rm", "--no-deps", "hub", "sh", "-c",
                       "python3 -c 'from jupyterhub import orm; "
                       "orm.new_session_factory(\"sqlite:////tmp/old.sqlite\")' "
                       "&& python3 -m hub.dbmove --from sqlite:////tmp/old.sqlite", check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "nothing moved: the target database is not empty" in result.stderr, result.stderr
    assert ["ada"] in psql(s, "SELECT name FROM users"), "the hub's database is as it was"


def test_backup_all_dumps_the_postgresql_database(pg_stack):
    """`gpuhub backup-all DIR` on a PostgreSQL hub: pg_dump (in the hub image, with the
    password compose gives the hub as PGPASSWORD) writes the hub's tables and rows."""
    s = pg_stack
    try:
        result = s.compose("exec", "-T", "hub", "gpuhub", "backup-all", "/tmp/backup", "--json",
                           check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        manifest = json.loads(result.stdout)
        assert manifest["database"] == "/tmp/backup/jupyterhub.sql", manifest
        dump = s.compose("exec", "-T", "hub", "cat", manifest["database"]).stdout
    finally:
        s.compose("exec", "-T", "hub", "rm", "-rf", "/tmp/backup", check=False)
    assert "CREATE TABLE public.users (" in dump
    rows = dump.split("COPY public.users ", 1)[1].split("\\.\n", 1)[0].splitlines()[1:]
    assert "ada" in [row.split("\t")[1] for row in rows], rows
