"""Move a hub's database from SQLite to PostgreSQL, once, with the hub stopped:

    docker compose stop hub
    docker compose up -d postgres
    docker compose run --rm --no-deps hub python3 -m hub.dbmove

From: the SQLite database in GPUHUB_STATE_DIR (--from URL for another). To: GPUHUB_DB_URL
(--to URL), which must be an empty PostgreSQL database; the password comes from PGPASSWORD
(compose sets it from GPUHUB_POSTGRES_PASSWORD). The SQLite file is only read: it stays
as it was, the way back (docs/postgresql.md).

JupyterHub's tables are created from JupyterHub's own models and marked with the source's
schema revision (alembic_version), gpuhub's from its modules' tables; every row is copied
in one transaction, in foreign-key order, through the same models, so types convert as
they do in the hub (times, JSON, booleans). The id sequences then continue after the
copied ids, and the row counts are compared. A table the source has and no model knows
stops the move (--skip TABLE leaves one behind on purpose). Exit codes: 0 moved, 1 refused
(the message says why), 2 bad arguments.
"""

import argparse
import os
import sys

from sqlalchemy import (Column, Integer, MetaData, String, Table, create_engine, func, inspect,
                        insert, select, text)

from . import database, gpu_queue_store, gpu_store, settings, stop_reasons

# JupyterHub's schema revision, kept by alembic in this table of its own
_alembic = MetaData()
alembic_version = Table("alembic_version", _alembic,
                        Column("version_num", String(32), primary_key=True))


class MoveRefused(RuntimeError):
    """The move would lose or overwrite data; the message says what to do."""


def metadatas():
    """Every table a hub keeps, by owner: JupyterHub's models, then gpuhub's modules'."""
    from jupyterhub import orm  # the hub's heavy import, needed only here
    return [("JupyterHub", orm.Base.metadata), ("JupyterHub", _alembic),
            ("gpuhub", gpu_store.metadata), ("gpuhub", gpu_queue_store.metadata),
            ("gpuhub", stop_reasons.metadata)]


def move(source_url, target_url, skip=(), out=sys.stdout):
    """Copy every table of `source_url` to the empty `target_url`; returns {table: rows}."""
    from jupyterhub import orm
    path = database.sqlite_path(source_url)
    if path is not None and not os.path.exists(path):
        raise MoveRefused(f"no SQLite database at {path} (GPUHUB_STATE_DIR, or --from URL)")
    if database.is_sqlite(target_url):
        raise MoveRefused(f"the target {target_url} is SQLite: set GPUHUB_DB_URL (or --to) "
                          "to the PostgreSQL database")
    source, target = create_engine(source_url), create_engine(target_url)
    try:
        known = {t.name: t for _, md in metadatas() for t in md.sorted_tables}
        present = set(inspect(source).get_table_names())
        unknown = sorted(present - set(known) - set(skip))
        if unknown:
            raise MoveRefused(f"{source_url} has tables no gpuhub model knows: "
                              f"{', '.join(unknown)} (--skip TABLE leaves one behind)")
        if "alembic_version" not in present:
            raise MoveRefused(f"{source_url} is not a JupyterHub database (no alembic_version)")
        try:
            orm.check_db_revision(source)
        except orm.DatabaseSchemaMismatch as e:
            raise MoveRefused(f"{source_url}: {e}\nStart the hub once on SQLite with this "
                              "image (it upgrades the schema), stop it, then move.") from None
        existing = sorted(set(inspect(target).get_table_names()) & set(known))
        if existing:
            raise MoveRefused(f"the target database is not empty (it has {', '.join(existing)}): "
                              "a move starts from an empty one (docs/postgresql.md: remove the "
                              "postgres-data volume after checking nothing in it is needed)")
        counts = {}
        with source.connect() as src, target.begin() as dst:
            for _, md in metadatas():
                md.create_all(dst)
            for _, md in metadatas():
                for table in md.sorted_tables:
                    if table.name not in present or table.name in skip:
                        continue
                    rows = [dict(r) for r in src.execute(select(table)).mappings()]
                    for i in range(0, len(rows), 1000):
                        dst.execute(insert(table), rows[i:i + 1000])
                    counts[table.name] = len(rows)
                    _continue_sequence(dst, table)
            for name, count in counts.items():
                copied = dst.execute(select(func.count()).select_from(known[name])).scalar()
                if copied != count:
                    raise MoveRefused(f"{name}: {count} rows read, {copied} in the target")
        for name, count in counts.items():
            print(f"{name}: {count} rows", file=out)
        return counts
    finally:
        source.dispose()
        target.dispose()


def _continue_sequence(conn, table):
    """New ids after the copied ones: PostgreSQL's serial counts on from 1 otherwise."""
    pk = list(table.primary_key.columns)
    if len(pk) != 1 or not isinstance(pk[0].type, Integer) or pk[0].autoincrement is False:
        return
    conn.execute(text(
        f'SELECT setval(pg_get_serial_sequence(:table, :column), '
        f'COALESCE(MAX("{pk[0].name}"), 1), MAX("{pk[0].name}") IS NOT NULL) FROM "{table.name}"'),
        {"table": table.name, "column": pk[0].name})


def main(argv=None, environ=None):
    parser = argparse.ArgumentParser(prog="python3 -m hub.dbmove",
                                     description="Move the hub's SQLite database to PostgreSQL.")
    parser.add_argument("--from", dest="source", help="default: the SQLite database in GPUHUB_STATE_DIR")
    parser.add_argument("--to", dest="target", help="default: GPUHUB_DB_URL")
    parser.add_argument("--skip", action="append", default=[], metavar="TABLE",
                        help="leave this table behind (repeatable)")
    args = parser.parse_args(argv)
    s = settings.load(environ, only=("GPUHUB_STATE_DIR", "GPUHUB_DB_URL"))
    source = args.source or f"sqlite:///{s.database}"
    target = args.target or s.database_url
    if not target:
        print("hub.dbmove: GPUHUB_DB_URL is empty: set it in .env to the PostgreSQL database "
              "(postgresql://gpuhub@postgres:5432/gpuhub), or give --to", file=sys.stderr)
        return 1
    try:
        counts = move(source, target, args.skip)
    except MoveRefused as e:
        print(f"hub.dbmove: nothing moved: {e}", file=sys.stderr)
        return 1
    print(f"moved {sum(counts.values())} rows of {len(counts)} tables to {target}; "
          f"{source} is unchanged. Start the hub: docker compose up -d")
    return 0


if __name__ == "__main__":
    sys.exit(main())
