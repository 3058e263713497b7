"""Who holds which GPU, kept in the hub's database in tables of our own.

Each holder takes a *slot* of a GPU: an exclusive GPU has slot 0 only, a shared one
slots 0..max_users-1. UNIQUE (gpu_uuid, slot) makes a double booking impossible whatever
the concurrency -- threads, hub processes, PostgreSQL or SQLite: of two spawns racing for
the last slot only one can commit; the other gets an IntegrityError and looks again.
Group caps are slots too (UNIQUE (group_name, slot), slots 0..cap-1), and a server's n
GPUs are its ordinals 0..n-1 (UNIQUE (user, server, ordinal)), so a spawn retried while
the first attempt is still in flight cannot take GPUs twice either.

On SQLite every transaction begins IMMEDIATE (it takes the write lock up front) and waits
up to a busy timeout for it, so concurrent spawns queue instead of failing with "database
is locked". The tables use our own MetaData: JupyterHub's ORM and its alembic migrations
never see them, and we create only ours.

All methods block; the spawner calls them in an executor. Each call uses its own pooled
connection and transaction, so one allocator is shared by every thread of the hub.
"""

import datetime
import json
import logging
import random
import time
from collections import Counter

from sqlalchemy import (Column, DateTime, Integer, MetaData, Table, TypeDecorator, Unicode,
                        UniqueConstraint, create_engine, delete, event, inspect, insert, select,
                        update)
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from .gpus import (GPUS_IN_USE, GPUS_TOTAL, REFUSALS, Allocation, GpuAllocationError, Gpu,
                   GpuConfigError, GroupCapReached, NoGpuAvailable, build_report, choose_gpus,
                   choose_group_slots, summarize)

SCHEMA_VERSION = 2  # 1: gpuhub_gpu_allocations, a single table without group slots
BUSY_TIMEOUT_S = 60  # how long an SQLite writer waits for the lock: spawns are rare and short
# IntegrityError retries. A collision means another spawn committed, so beyond a few
# spare ones a spawn can lose at most once per seat (GPU slot) there is
ATTEMPTS = 10

log = logging.getLogger(__name__)


class UTCDateTime(TypeDecorator):
    """Stored naive in UTC (as JupyterHub does), read back aware, on every database."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        return value.replace(tzinfo=datetime.timezone.utc) if value is not None else None


metadata = MetaData()
schema = Table(
    "gpuhub_schema", metadata,
    Column("component", Unicode(64), primary_key=True),
    Column("version", Integer, nullable=False),
)
gpu_slots = Table(
    "gpuhub_gpu_slots", metadata,
    Column("id", Integer, primary_key=True),
    Column("gpu_uuid", Unicode(255), nullable=False),
    Column("gpu_index", Integer, nullable=False),
    Column("slot", Integer, nullable=False),
    Column("user_name", Unicode(255), nullable=False),
    Column("server_name", Unicode(255), nullable=False),
    Column("ordinal", Integer, nullable=False),  # the server's 1st, 2nd, ... GPU
    Column("since", UTCDateTime, nullable=False),
    UniqueConstraint("gpu_uuid", "slot", name="gpuhub_one_holder_per_gpu_slot"),
    UniqueConstraint("user_name", "server_name", "ordinal", name="gpuhub_one_take_per_server"),
)
group_slots = Table(
    "gpuhub_group_slots", metadata,
    Column("id", Integer, primary_key=True),
    Column("group_name", Unicode(255), nullable=False),
    Column("slot", Integer, nullable=False),
    Column("user_name", Unicode(255), nullable=False),
    Column("server_name", Unicode(255), nullable=False),
    Column("gpu_uuid", Unicode(255), nullable=False),
    UniqueConstraint("group_name", "slot", name="gpuhub_one_holder_per_group_slot"),
)
# Every allocation's start and end, for GPU-hours (hub/gpu_hours.py reads it). Rows are
# written in the transaction that takes or gives back the GPU and never deleted: `ended`
# is NULL while the GPU is held. `groups` is the user's groups at spawn time, JSON.
gpu_usage = Table(
    "gpuhub_gpu_usage", metadata,
    Column("id", Integer, primary_key=True),
    Column("gpu_uuid", Unicode(255), nullable=False),
    Column("gpu_index", Integer, nullable=False),
    Column("user_name", Unicode(255), nullable=False),
    Column("server_name", Unicode(255), nullable=False),
    Column("course", Unicode(255), nullable=False, default=""),
    Column("groups", Unicode(4000), nullable=False, default="[]"),
    Column("started", UTCDateTime, nullable=False),
    Column("ended", UTCDateTime, nullable=True),
)


def make_engine(db_url):
    if db_url.startswith("sqlite") and (":memory:" in db_url or db_url.rstrip("/") == "sqlite:"):
        raise GpuConfigError(f"{db_url}: GPU allocations need a database file or server; an "
                             "in-memory SQLite database is a different one on each connection")
    if not db_url.startswith("sqlite"):
        return create_engine(db_url, pool_pre_ping=True)
    engine = create_engine(db_url, connect_args={"timeout": BUSY_TIMEOUT_S,
                                                 "check_same_thread": False})

    # SQLAlchemy's documented recipe for pysqlite: stop the driver's own BEGIN (it begins
    # late and DEFERRED), then begin every transaction ourselves, IMMEDIATE, so a writer
    # waits for the lock up to the busy timeout instead of failing half-way through
    @event.listens_for(engine, "connect")
    def _no_driver_begin(dbapi_connection, _record):
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class GpuAllocator:
    """Hands out GPUs from `inventory` under `policy`, kept in the database at `db_url`."""

    def __init__(self, db_url, inventory, policy, log=log, clock=None):
        self.inventory = list(inventory)
        # what "now" is for `since`, `started` and `ended`: injectable for exact GPU-hours tests
        self.clock = clock or (lambda: datetime.datetime.now(datetime.timezone.utc))
        self.policy = policy
        self.log = log
        self._by_uuid = {g.uuid: g for g in self.inventory}
        self.engine = make_engine(db_url)
        self._create_tables()
        GPUS_TOTAL.set(len(self.inventory))
        self.summary()

    def __deepcopy__(self, memo):
        # traitlets deep-copies configuration values; the hub has one allocator
        return self

    def _create_tables(self):
        for attempt in range(3):
            try:
                # one transaction (IMMEDIATE on SQLite): two processes starting at once take
                # turns. create_all on our MetaData creates our tables only, if missing.
                with self.engine.begin() as conn:
                    metadata.create_all(conn, checkfirst=True)
                    version = conn.execute(select(schema.c.version)
                                           .where(schema.c.component == "gpus")).scalar()
                    if version is None:
                        conn.execute(insert(schema).values(component="gpus", version=SCHEMA_VERSION))
                    elif version > SCHEMA_VERSION:
                        raise GpuConfigError(f"the GPU tables were written by a newer gpuhub "
                                             f"(schema {version}, this one knows {SCHEMA_VERSION})")
                    elif version < SCHEMA_VERSION:
                        _migrate_from_1(conn, self._by_uuid)
                        conn.execute(update(schema).where(schema.c.component == "gpus")
                                     .values(version=SCHEMA_VERSION))
                        self.log.info("GPU tables migrated from schema %s to %s",
                                      version, SCHEMA_VERSION)
                    _backfill_usage(conn)
                return
            except (IntegrityError, OperationalError, ProgrammingError):
                # PostgreSQL: another hub process created the same table a moment earlier
                if attempt == 2:
                    raise

    # -- taking and giving back --
    def allocate(self, user, server_name, count, groups=(), course="", nodes=None):
        """Take `count` different GPUs for the server, all or nothing; returns them.
        Idempotent: a server that already holds GPUs gets those back, whatever `count`.
        `course` and `groups` are recorded in the usage history (GPU-hours).
        `nodes`: on a swarm, the node IDs the GPUs may be on (None: any).
        Raises NoGpuAvailable or GroupCapReached (both GpuAllocationError)."""
        if count < 0:
            raise ValueError(f"count must be 0 or more, not {count}")
        if count == 0:
            return []
        attempts = ATTEMPTS + len(self.inventory) * self.policy.slots
        for attempt in range(attempts):
            try:
                with self.engine.begin() as conn:
                    rows = conn.execute(select(gpu_slots).order_by(gpu_slots.c.ordinal)).all()
                    mine = [r for r in rows if (r.user_name, r.server_name) == (user, server_name)]
                    if mine:
                        if len(mine) != count:
                            self.log.info("GPUs: %s/%s already holds %s; keeping them (%s asked)",
                                          user, server_name, len(mine), count)
                        return [self._gpu(r) for r in mine]
                    held = {}
                    for g in conn.execute(select(group_slots.c.group_name, group_slots.c.slot)):
                        held.setdefault(g.group_name, set()).add(g.slot)
                    group_picks = choose_group_slots(self.policy, groups, held, count)
                    taken = {}
                    for r in rows:
                        taken.setdefault(r.gpu_uuid, set()).add(r.slot)
                    # on a swarm: only GPUs on the nodes the server may run on
                    inventory = (self.inventory if nodes is None else
                                 [g for g in self.inventory if g.node in set(nodes)])
                    picks = choose_gpus(inventory, self.policy, taken, count)
                    _insert(conn, user, server_name, picks, group_picks, self.clock(),
                            course, groups)
                    holders = Counter(r.gpu_uuid for r in rows) + Counter(g.uuid for g, _ in picks)
            except IntegrityError:
                # another spawn committed first: look again at the new state
                self.log.info("GPUs: %s/%s collided with another spawn (attempt %s)",
                              user, server_name, attempt + 1)
                time.sleep(min(0.5, random.uniform(0.005, 0.05) * (attempt + 1)))
                continue
            except NoGpuAvailable:
                REFUSALS.labels(reason="no_gpu").inc()
                raise
            except GroupCapReached:
                REFUSALS.labels(reason="group_cap").inc()
                raise
            self._set_in_use(holders)
            return [gpu for gpu, _ in picks]
        raise GpuAllocationError(f"GPU allocation for {user} kept colliding with other "
                                 f"spawns ({attempts} attempts); please try again")

    def _gpu(self, row):
        return self._by_uuid.get(row.gpu_uuid) or Gpu(row.gpu_index, row.gpu_uuid)

    def release(self, user, server_name):
        """Give back the server's GPUs; returns their uuids ([] if it held none)."""
        return [a.gpu_uuid for a in self._release(lambda a: (a.user, a.server_name)
                                                  == (user, server_name))]

    def release_user(self, user):
        """Give back the GPUs of all the user's servers; returns their uuids."""
        return [a.gpu_uuid for a in self._release(lambda a: a.user == user)]

    def release_gpu(self, uuid):
        """Give back every allocation of one GPU (the admin CLI's free-gpu)."""
        return self._release(lambda a: a.gpu_uuid == uuid)

    def reconcile(self, running):
        """Give back every GPU whose (user, server_name) is not in `running` -- the servers
        whose containers really run -- and every GPU no longer in the inventory. Returns
        what was released. Call it before spawns start, or count pending spawns as running."""
        def stale(a):
            if a.gpu_uuid not in self._by_uuid:
                self.log.warning("GPU %s is no longer in the inventory: released from %s/%s",
                                 a.gpu_uuid, a.user, a.server_name)
                return True
            return (a.user, a.server_name) not in running
        return self._release(stale)

    def _release(self, chosen):
        """Delete, in one transaction, the allocations for which chosen(allocation) holds."""
        with self.engine.begin() as conn:
            holdings = self._holdings(conn)
            released = [a for a in holdings if chosen(a)]
            for a in released:
                conn.execute(delete(gpu_slots).where((gpu_slots.c.gpu_uuid == a.gpu_uuid)
                                                     & (gpu_slots.c.slot == a.slot)))
                conn.execute(delete(group_slots).where(
                    (group_slots.c.user_name == a.user) & (group_slots.c.server_name == a.server_name)
                    & (group_slots.c.gpu_uuid == a.gpu_uuid)))
                _end_usage(conn, a, self.clock())
        self._set_in_use(Counter(a.gpu_uuid for a in holdings if a not in released))
        return released

    # -- looking --
    def holdings(self):
        """Every allocation, by GPU index and slot."""
        with self.engine.begin() as conn:
            return self._holdings(conn)

    def _holdings(self, conn):
        groups = {}
        for g in conn.execute(select(group_slots).order_by(group_slots.c.group_name)):
            groups.setdefault((g.user_name, g.server_name, g.gpu_uuid), []).append(g.group_name)
        rows = conn.execute(select(gpu_slots).order_by(gpu_slots.c.gpu_index, gpu_slots.c.gpu_uuid,
                                                       gpu_slots.c.slot))
        return [Allocation(r.gpu_uuid, r.gpu_index, r.user_name, r.server_name, r.since, r.slot,
                           tuple(groups.get((r.user_name, r.server_name, r.gpu_uuid), ())))
                for r in rows]

    def held_by(self, user, server_name):
        """The GPUs the server holds, in the order it took them."""
        with self.engine.begin() as conn:
            rows = conn.execute(select(gpu_slots).where(
                (gpu_slots.c.user_name == user) & (gpu_slots.c.server_name == server_name))
                .order_by(gpu_slots.c.ordinal)).all()
        return [self._gpu(r) for r in rows]

    def summary(self):
        """{"total", "in_use", "free", "seats", "seats_taken"}: see gpus.summarize."""
        with self.engine.begin() as conn:
            holders = Counter(conn.execute(select(gpu_slots.c.gpu_uuid)).scalars())
        self._set_in_use(holders)
        return summarize(self.inventory, self.policy, holders)

    def report(self):
        """The JSON body of GET /hub/api/gpus (and what the CLI prints)."""
        return build_report(self.inventory, self.policy, self.holdings())

    def _set_in_use(self, holders):
        GPUS_IN_USE.set(sum(1 for g in self.inventory if holders.get(g.uuid)))


def _insert(conn, user, server_name, picks, group_picks, now, course="", groups=()):
    conn.execute(insert(gpu_slots), [
        {"gpu_uuid": gpu.uuid, "gpu_index": gpu.index, "slot": slot, "user_name": user,
         "server_name": server_name, "ordinal": n, "since": now}
        for n, (gpu, slot) in enumerate(picks)])
    conn.execute(insert(gpu_usage), [
        {"gpu_uuid": gpu.uuid, "gpu_index": gpu.index, "user_name": user,
         "server_name": server_name, "course": course or "",
         "groups": json.dumps(sorted(set(groups))), "started": now, "ended": None}
        for gpu, _ in picks])
    if not group_picks:
        return
    # the server's k-th GPU takes the k-th of the slots picked in each capped group
    per_group = {}
    for group, slot in group_picks:
        per_group.setdefault(group, []).append(slot)
    conn.execute(insert(group_slots), [
        {"group_name": group, "slot": slot, "user_name": user, "server_name": server_name,
         "gpu_uuid": gpu.uuid}
        for group, slots in per_group.items() for slot, (gpu, _) in zip(slots, picks, strict=True)])


def _end_usage(conn, allocation, now):
    a = allocation
    conn.execute(update(gpu_usage).where(
        (gpu_usage.c.user_name == a.user) & (gpu_usage.c.server_name == a.server_name)
        & (gpu_usage.c.gpu_uuid == a.gpu_uuid) & gpu_usage.c.ended.is_(None))
        .values(ended=max(now, a.since)))


def _backfill_usage(conn):
    """Holders from before the usage history existed get an open row from their `since`."""
    open_rows = {(r.user_name, r.server_name, r.gpu_uuid) for r in conn.execute(
        select(gpu_usage).where(gpu_usage.c.ended.is_(None)))}
    missing = [r for r in conn.execute(select(gpu_slots))
               if (r.user_name, r.server_name, r.gpu_uuid) not in open_rows]
    if missing:
        conn.execute(insert(gpu_usage), [
            {"gpu_uuid": r.gpu_uuid, "gpu_index": r.gpu_index, "user_name": r.user_name,
             "server_name": r.server_name, "course": "", "groups": "[]", "started": r.since,
             "ended": None} for r in missing])


def _migrate_from_1(conn, by_uuid):
    """Schema 1 kept everything in gpuhub_gpu_allocations (groups comma-separated); move
    its rows to the slot tables, then drop it."""
    if not inspect(conn).has_table("gpuhub_gpu_allocations"):
        return
    old = Table("gpuhub_gpu_allocations", MetaData(), autoload_with=conn)
    ordinals, group_held = Counter(), Counter()
    for r in conn.execute(select(old).order_by(old.c.id)).mappings():
        server = (r["user"], r["server_name"])
        since = r["since"]
        if since.tzinfo is None:
            since = since.replace(tzinfo=datetime.timezone.utc)
        gpu = by_uuid.get(r["gpu_uuid"])
        conn.execute(insert(gpu_slots).values(
            gpu_uuid=r["gpu_uuid"], gpu_index=gpu.index if gpu else -1, slot=r["slot"],
            user_name=server[0], server_name=server[1], ordinal=ordinals[server], since=since))
        ordinals[server] += 1
        for group in filter(None, (r["groups"] or "").split(",")):
            conn.execute(insert(group_slots).values(
                group_name=group, slot=group_held[group], user_name=server[0],
                server_name=server[1], gpu_uuid=r["gpu_uuid"]))
            group_held[group] += 1
    old.drop(conn)
