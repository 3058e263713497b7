"""Why the hub stopped a user's server, kept for the hub's home page.

hub.gpu_culler writes a row before it stops a server; the home page (hub/templates/
home.html, through the `gpuhub_stop_notices` template variable) shows the rows of the
servers that are not running; the culler deletes a row once that server runs again.
One table of our own in the hub's database, beside the GPU tables.
"""

import datetime

from sqlalchemy import (Column, DateTime, MetaData, Table, Unicode, UnicodeText, create_engine,
                        delete, insert, select)
from sqlalchemy.exc import OperationalError, ProgrammingError

# no table yet: SQLite says OperationalError, PostgreSQL ProgrammingError (UndefinedTable)
NO_TABLE = (OperationalError, ProgrammingError)

metadata = MetaData()
stop_reasons = Table(
    "gpuhub_stop_reasons", metadata,
    Column("user_name", Unicode(255), primary_key=True),
    Column("server_name", Unicode(255), primary_key=True),
    Column("reason", Unicode(32), nullable=False),
    Column("message", UnicodeText, nullable=False),
    Column("stopped_at", DateTime, nullable=False),  # naive UTC, as JupyterHub keeps times
)


class StopReasons:
    def __init__(self, db_url):
        # a plain engine: these are single short statements, and the home page must not
        # wait for the write lock the GPU allocator takes up front
        self.engine = create_engine(db_url, connect_args={"timeout": 30}
                                    if db_url.startswith("sqlite") else {})
        self._created = False

    def _create(self):
        if not self._created:
            metadata.create_all(self.engine, checkfirst=True)
            self._created = True

    def record(self, user, server_name, reason, message, at):
        self._create()
        at = at.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        with self.engine.begin() as conn:
            conn.execute(delete(stop_reasons).where(_server(user, server_name)))
            conn.execute(insert(stop_reasons).values(user_name=user, server_name=server_name,
                                                     reason=reason, message=message,
                                                     stopped_at=at))

    def forget(self, user, server_name):
        self._create()
        with self.engine.begin() as conn:
            conn.execute(delete(stop_reasons).where(_server(user, server_name)))

    def all(self):
        """{(user, server_name): row} for every kept reason."""
        try:
            with self.engine.connect() as conn:
                return {(r.user_name, r.server_name): r for r in conn.execute(select(stop_reasons))}
        except NO_TABLE:
            return {}  # no table yet: nothing was ever stopped by the culler

    def of_user(self, user):
        try:
            with self.engine.connect() as conn:
                return list(conn.execute(select(stop_reasons)
                                         .where(stop_reasons.c.user_name == user)
                                         .order_by(stop_reasons.c.server_name)))
        except NO_TABLE:
            return []


def _server(user, server_name):
    return (stop_reasons.c.user_name == user) & (stop_reasons.c.server_name == server_name)


def home_page_notices(store):
    """The template variable: a callable JupyterHub calls with the current user (None on
    the login page), giving one line per stopped server the culler stopped.

    A synchronous query on the page's thread: one indexed SELECT of a few rows."""
    def notices(user):
        if user is None:
            return []
        lines = []
        for row in store.of_user(user.name):
            spawner = user.spawners.get(row.server_name)
            if spawner is not None and spawner.active:
                continue  # running again: old news
            what = f"Your server {row.server_name!r}" if row.server_name else "Your server"
            lines.append({"reason": row.reason,
                          "text": f"{what} was stopped at {row.stopped_at:%H:%M} UTC on "
                                  f"{row.stopped_at:%Y-%m-%d} because {row.message} Your files "
                                  "are kept; start it again when you need it."})
        return lines
    return notices


def main(argv=None, environ=None):
    """docker compose exec hub python -m hub.stop_reasons: why the culler stopped whom."""
    import argparse

    from . import settings
    parser = argparse.ArgumentParser(prog="python -m hub.stop_reasons")
    parser.add_argument("--db-url", help="database URL (default: the hub's, in GPUHUB_STATE_DIR)")
    args = parser.parse_args(argv)
    db_url = args.db_url or settings.load(environ, only=("GPUHUB_STATE_DIR", "GPUHUB_DB_URL")).db_url
    rows = sorted(StopReasons(db_url).all().values(), key=lambda r: r.stopped_at)
    for r in rows:
        server = f"{r.user_name}/{r.server_name}" if r.server_name else r.user_name
        print(f"{r.stopped_at:%Y-%m-%dT%H:%M:%S}Z {server} {r.reason}: {r.message}")
    if not rows:
        print("no server stopped by the gpu-culler is waiting to be started again")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
