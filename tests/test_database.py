"""The hub's database settings (GPUHUB_DB_URL, GPUHUB_POSTGRES_PASSWORD) and the
start-up's wait for PostgreSQL (hub/database.py); without a server (a closed loopback
port), the real thing is tests/e2e/test_postgres_e2e.py."""

import logging

import pytest

from hub import culling, database, gpu_culler, settings

BASE = {"GPUHUB_DOMAIN": "hub.example.edu", "AUTH_PROVIDER": "dummy",
        "GPUHUB_USER_IMAGE": "gpuhub/tensorflow-2.9-gpu:1"}
URL = "postgresql://gpuhub@postgres:5432/gpuhub"


def test_sqlite_is_the_default_and_postgresql_is_one_setting_away():
    assert settings.load(BASE).db_url == "sqlite:////srv/jupyterhub/jupyterhub.sqlite"
    s = settings.load({**BASE, "GPUHUB_DB_URL": URL, "GPUHUB_POSTGRES_PASSWORD": "s3cret-pw"})
    assert s.db_url == URL
    assert "s3cret-pw" not in repr(s), "the password is a secret: never shown"


@pytest.mark.parametrize("value, expected", [
    ("postgresql://gpuhub:s3cret-pw@postgres/gpuhub", "without a password: put the password in GPUHUB_POSTGRES_PASSWORD"),
    ("mysql://gpuhub@db/gpuhub", "a PostgreSQL URL such as postgresql://gpuhub@postgres:5432/gpuhub"),
    ("postgres-gpuhub", "a PostgreSQL URL"),
])
def test_a_bad_database_url_is_named_with_what_is_expected(value, expected):
    problems = settings.read({**BASE, "GPUHUB_DB_URL": value, "GPUHUB_POSTGRES_PASSWORD": "x"})[1]
    assert len(problems) == 1 and problems[0].startswith("GPUHUB_DB_URL is not valid") \
        and expected in problems[0], problems
    assert "s3cret-pw" not in problems[0], "a bad URL is not repeated: it may hold a password"


def test_postgresql_without_its_password_is_refused():
    assert settings.read({**BASE, "GPUHUB_DB_URL": URL})[1] == [
        "GPUHUB_POSTGRES_PASSWORD is not set: GPUHUB_DB_URL names a PostgreSQL database, "
        "which needs the password of its user"]


def test_the_start_up_waits_for_the_database_then_says_what_does_not_answer(caplog):
    now = [0.0]
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        now[0] += seconds

    url = "postgresql://gpuhub@127.0.0.1:1/gpuhub"  # nothing listens on port 1
    with caplog.at_level(logging.WARNING), pytest.raises(database.DatabaseError) as e:
        database.wait_until_reachable(url, logging.getLogger("test"), timeout=10, interval=2,
                                      clock=lambda: now[0], sleep=sleep)
    assert sum(waits) == 10 and len(waits) == 5, waits
    assert str(e.value).startswith(f"GPUHUB_DB_URL={url}: the database does not answer after 10 s")
    assert "Connection refused" in str(e.value) and "COMPOSE_PROFILES=postgres" in str(e.value)
    assert caplog.text.count("Waiting for the database") == 5


def test_sqlite_needs_no_wait():
    database.wait_until_reachable("sqlite:////nonexistent/x.sqlite", logging.getLogger("test"),
                                  sleep=lambda s: pytest.fail("waited for SQLite"))


def test_the_gpu_culler_gets_the_password_in_its_environment_not_its_command():
    policy = culling.Policy.build(culling.Limits(gpu_max_age=60))
    [service], _ = gpu_culler.service(policy, URL, "none", "/py", db_password="s3cret-pw")
    assert service["environment"]["PGPASSWORD"] == "s3cret-pw"
    assert "s3cret-pw" not in " ".join(service["command"]) and URL in service["command"]
    [service], _ = gpu_culler.service(policy, "sqlite:////db", "none", "/py")
    assert "PGPASSWORD" not in service["environment"]
