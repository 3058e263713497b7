"""The hub's database: SQLite on the hub's volume by default, or PostgreSQL
(GPUHUB_DB_URL, e.g. compose's `postgres` profile). JupyterHub's tables and gpuhub's
(GPU slots, the line, stop reasons) live in the same one.

The password is never part of the URL (hub.settings refuses one there): JupyterHub, the
gpu-culler's command line and process lists show the URL. libpq takes it from PGPASSWORD,
which docker-compose.yml sets for the hub from GPUHUB_POSTGRES_PASSWORD.
"""

import time

from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

# how long the hub's start-up waits for PostgreSQL (a first start initialises its volume)
WAIT_S = 90


class DatabaseError(RuntimeError):
    """The database named in GPUHUB_DB_URL cannot be reached."""


def is_sqlite(db_url):
    return db_url.startswith("sqlite")


def sqlite_path(db_url):
    """The file of an sqlite:/// URL, or None for any other database."""
    return db_url.split(":///", 1)[1] if db_url.startswith("sqlite:///") else None


def wait_until_reachable(db_url, log, timeout=WAIT_S, interval=2, clock=time.monotonic,
                         sleep=time.sleep):
    """Return once `SELECT 1` works on `db_url` (SQLite: at once); raise DatabaseError
    with the last error after `timeout` seconds."""
    if is_sqlite(db_url):
        return
    engine = create_engine(db_url, pool_pre_ping=True)
    deadline = clock() + timeout
    try:
        while True:
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
                return
            except OperationalError as e:
                # the driver's first line says what is wrong (refused, no such host, password)
                reason = str(e.orig).strip().splitlines()[0] if e.orig else str(e)
                left = deadline - clock()
                if left <= 0:
                    raise DatabaseError(
                        f"GPUHUB_DB_URL={db_url}: the database does not answer after {timeout} s "
                        f"({reason}). With the bundled PostgreSQL: is COMPOSE_PROFILES=postgres "
                        "set in .env, and GPUHUB_POSTGRES_PASSWORD the one the postgres "
                        "volume was created with? (docs/postgresql.md)") from None
                log.warning("Waiting for the database %s (%s); %d s left", db_url, reason, left)
                sleep(min(interval, max(left, 0)))
    finally:
        engine.dispose()
