"""A PostgreSQL server for the tests that run against one: GPUHUB_TEST_POSTGRES_URL if it
names a database they may wipe, else a throwaway container of the stand-in image
(tests/standin/build-bases builds it from Debian's postgresql-15), started for the test
session on a loopback port and removed afterwards."""

import os
import secrets
import subprocess

import pytest

from tests.e2e.stack import REPO, RUN_ID, wait_for

IMAGE = "gpuhub-standin/postgres:15"
URL = os.environ.get("GPUHUB_TEST_POSTGRES_URL", "")


def _connects(url):
    from sqlalchemy import create_engine, text
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_url():
    try:
        import psycopg2  # noqa: F401 (SQLAlchemy's PostgreSQL driver)
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("psycopg2 is missing: bash .ci/setup installs tests/requirements.txt")
        pytest.skip("PostgreSQL tests skipped: psycopg2 is not installed "
                    "(bash .ci/setup installs tests/requirements.txt)")
    if URL:
        yield URL
        return
    import docker
    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:
        if os.environ.get("CI"):
            pytest.fail(f"no Docker engine answers for the PostgreSQL stand-in: {e}")
        pytest.skip(f"PostgreSQL tests skipped: no Docker engine answers ({e}) and "
                    "GPUHUB_TEST_POSTGRES_URL is not set")
    subprocess.run([str(REPO / "tests" / "standin" / "build-bases")], check=True, timeout=900)
    password = secrets.token_hex(16)
    container = client.containers.run(
        IMAGE, detach=True, name=f"gpuhub-test-postgres{RUN_ID}-{secrets.token_hex(3)}",
        environment={"POSTGRES_PASSWORD": password, "POSTGRES_USER": "gpuhub",
                     "POSTGRES_DB": "gpuhub_test"},
        ports={"5432/tcp": ("127.0.0.1", None)}, tmpfs={"/var/lib/postgresql/data": "uid=999"})
    try:
        def port():
            container.reload()
            return container.attrs["NetworkSettings"]["Ports"]["5432/tcp"][0]["HostPort"]
        url = f"postgresql://gpuhub:{password}@127.0.0.1:{wait_for(port, 30, 'the port')}/gpuhub_test"
        try:
            wait_for(lambda: _connects(url), 60, "the PostgreSQL stand-in to accept logins")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{container.logs().decode(errors='replace')}") from None
        yield url
    finally:
        container.remove(force=True, v=True)
