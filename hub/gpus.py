"""GPUs: the inventory, the sharing policy, and who holds which GPU.

Allocations live in the hub's database, in a table of our own beside JupyterHub's.
Each holder takes a *slot* of a GPU: an exclusive GPU has slot 0 only, a shared one
slots 0..max_users-1, and a UNIQUE (gpu_uuid, slot) constraint makes a double booking
impossible whatever the concurrency: two spawns racing for the last slot cannot both
commit. On SQLite, writers also take the database lock up front (BEGIN IMMEDIATE) so
they queue instead of failing. All methods block: the spawner calls them in an executor.
"""

import datetime
import re
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge
from sqlalchemy import (Column, DateTime, Integer, MetaData, String, Table, UniqueConstraint,
                        create_engine, delete, event, insert, select)
from sqlalchemy.exc import IntegrityError

GPUS_TOTAL = Gauge("gpuhub_gpus_total", "GPUs in the inventory")
GPUS_IN_USE = Gauge("gpuhub_gpus_in_use", "GPUs held by at least one server")
REFUSALS = Counter("gpuhub_gpu_refusals_total", "Spawns refused for want of a GPU", ["reason"])

SCHEMA_VERSION = 1
_UUID = re.compile(r"^(GPU|MIG)-[0-9A-Za-z/-]{1,120}$")
_MAX_ITEMS = 1024


class GpuConfigError(ValueError):
    """The inventory or the policy is malformed; the message names where it came from."""


class NoGpuAvailable(RuntimeError):
    def __init__(self, total, in_use, wanted):
        self.total, self.in_use, self.wanted = total, in_use, wanted
        super().__init__(f"All {total} GPUs are in use ({in_use} of {total} taken); "
                         f"{wanted} requested. Try again when a server stops.")


class GroupCapReached(RuntimeError):
    def __init__(self, group, cap, held, wanted):
        self.group, self.cap, self.held = group, cap, held
        super().__init__(f"Group {group!r} may hold {cap} GPUs at once and holds {held}; "
                         f"{wanted} more requested.")


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str  # what Docker's device request names: a UUID, or an index as a string
    name: str = ""
    memory_mib: int | None = None


@dataclass(frozen=True)
class Policy:
    mode: str = "exclusive"
    max_users_per_gpu: int = 1
    group_caps: dict = field(default_factory=dict)

    @property
    def slots(self):
        return 1 if self.mode == "exclusive" else self.max_users_per_gpu


@dataclass(frozen=True)
class Allocation:
    gpu_uuid: str
    slot: int
    user: str
    server_name: str
    since: datetime.datetime
    groups: tuple


def parse_inventory(text, source):
    """GPUs from text such as "GPU-1a2b...,GPU-3c4d..." or "0,1,12"; errors name `source`."""
    items = re.split(r"[,\s]+", text.strip()) if text.strip() else []
    if len(items) > _MAX_ITEMS:
        raise GpuConfigError(f"{source}: {len(items)} GPUs listed; at most {_MAX_ITEMS}")
    if "" in items or re.search(r",\s*,|^\s*,|,\s*$", text):
        raise GpuConfigError(f"{source}: an empty item in {text[:80]!r} (two commas in a row?)")
    gpus, seen = [], set()
    for position, item in enumerate(items):
        if item.isdigit() and item.isascii():
            identifier, index = str(int(item)), int(item)
        elif _UUID.match(item):
            identifier, index = item, position
        else:
            raise GpuConfigError(f"{source}: {item[:80]!r} is neither a GPU index (0, 1, ...) "
                                 "nor a GPU UUID (GPU-..., MIG-..., as `nvidia-smi -L` prints)")
        if identifier in seen:
            raise GpuConfigError(f"{source}: GPU {identifier} is listed twice")
        seen.add(identifier)
        gpus.append(Gpu(index=index, uuid=identifier))
    return gpus


def discover_nvml(log):
    """The GPUs the hub's container can see through NVML; [] without driver or library."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception as e:  # no library, no driver, no device: all mean "none visible"
        log.info("GPUs: NVML not available (%s); list them in GPUHUB_GPUS", e)
        return []
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            text = lambda v: v.decode() if isinstance(v, bytes) else v  # noqa: E731
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total // 2**20
            gpus.append(Gpu(i, text(pynvml.nvmlDeviceGetUUID(handle)),
                            text(pynvml.nvmlDeviceGetName(handle)), memory))
        return gpus
    finally:
        pynvml.nvmlShutdown()


def parse_policy(mode, max_users, group_caps):
    """The policy from GPUHUB_GPU_MODE, GPUHUB_GPU_MAX_USERS and GPUHUB_GPU_GROUP_CAPS."""
    mode = mode.strip().lower() or "exclusive"
    if mode not in ("exclusive", "shared"):
        raise GpuConfigError(f"GPUHUB_GPU_MODE={mode!r}: expected exclusive or shared")
    try:
        users = int(max_users.strip() or "1")
    except ValueError:
        users = 0
    if not 1 <= users <= 64:
        raise GpuConfigError(f"GPUHUB_GPU_MAX_USERS={max_users!r}: expected a number from 1 to 64")
    caps = {}
    for item in filter(None, re.split(r"[,\s]+", group_caps.strip())):
        group, _, number = item.partition("=")
        if not group or not number.isdigit():
            raise GpuConfigError(f"GPUHUB_GPU_GROUP_CAPS: {item!r}: expected group=number, e.g. cs101=4")
        caps[group] = int(number)
    return Policy(mode, users if mode == "shared" else 1, caps)


metadata = MetaData()
allocations = Table(
    "gpuhub_gpu_allocations", metadata,
    Column("id", Integer, primary_key=True),
    Column("gpu_uuid", String(255), nullable=False),
    Column("slot", Integer, nullable=False),
    Column("user", String(255), nullable=False, index=True),
    Column("server_name", String(255), nullable=False),
    # the capped groups the holder was in, comma-separated, for per-group caps
    Column("groups", String(4096), nullable=False),
    Column("since", DateTime(timezone=True), nullable=False),
    UniqueConstraint("gpu_uuid", "slot", name="gpuhub_one_holder_per_slot"),
)
schema = Table(
    "gpuhub_schema", metadata,
    Column("component", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
)


def _engine(db_url):
    if not db_url.startswith("sqlite"):
        return create_engine(db_url, pool_pre_ping=True)
    engine = create_engine(db_url, connect_args={"timeout": 60, "check_same_thread": False})

    # SQLAlchemy's recipe: let SQLAlchemy, not pysqlite, begin transactions, and begin
    # them IMMEDIATE so that concurrent writers wait for the lock instead of failing
    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, _record):
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class GpuAllocator:
    """Hands out GPUs from `inventory` under `policy`, kept in the database at `db_url`."""

    def __init__(self, db_url, inventory, policy):
        self.inventory = list(inventory)
        self.policy = policy
        self._by_uuid = {g.uuid: g for g in self.inventory}
        self.engine = _engine(db_url)
        # only our own tables; JupyterHub's are never touched
        metadata.create_all(self.engine, checkfirst=True)
        with self.engine.begin() as conn:
            if conn.execute(select(schema.c.version).where(schema.c.component == "gpus")).first() is None:
                conn.execute(insert(schema).values(component="gpus", version=SCHEMA_VERSION))
        GPUS_TOTAL.set(len(self.inventory))
        self._update_metrics()

    def __deepcopy__(self, memo):
        # traitlets deep-copies configuration values; there is one allocator per hub
        return self

    def allocate(self, user, server_name, count, groups=()):
        """Take `count` GPUs for the server, or raise; idempotent for the same server."""
        if count <= 0:
            return []
        capped = sorted(set(groups) & set(self.policy.group_caps))
        for _attempt in range(20):
            try:
                with self.engine.begin() as conn:
                    rows = conn.execute(select(allocations)).all()
                    mine = [r.gpu_uuid for r in rows if (r.user, r.server_name) == (user, server_name)]
                    if mine:
                        return [self._by_uuid[u] for u in mine if u in self._by_uuid]
                    self._check_caps(rows, capped, count)
                    chosen = self._choose(rows, count)
                    now = datetime.datetime.now(datetime.timezone.utc)
                    for gpu, slot in chosen:
                        conn.execute(insert(allocations).values(
                            gpu_uuid=gpu.uuid, slot=slot, user=user, server_name=server_name,
                            groups=",".join(capped), since=now))
                self._update_metrics()
                return [gpu for gpu, _ in chosen]
            except IntegrityError:
                continue  # another hub process took that slot first: look again
        raise RuntimeError("GPU allocation kept colliding with other spawns; try again")

    def _check_caps(self, rows, capped, count):
        for group in capped:
            held = sum(1 for r in rows if group in r.groups.split(","))
            if held + count > self.policy.group_caps[group]:
                REFUSALS.labels(reason="group_cap").inc()
                raise GroupCapReached(group, self.policy.group_caps[group], held, count)

    def _choose(self, rows, count):
        """The least-loaded GPUs with a free slot, lowest index first; each with a slot."""
        taken = {}
        for r in rows:
            taken.setdefault(r.gpu_uuid, set()).add(r.slot)
        free = [(len(taken.get(g.uuid, ())), g.index, g) for g in self.inventory
                if len(taken.get(g.uuid, ())) < self.policy.slots]
        if len(free) < count:
            REFUSALS.labels(reason="no_gpu").inc()
            in_use = sum(1 for g in self.inventory if taken.get(g.uuid))
            raise NoGpuAvailable(len(self.inventory), in_use, count)
        chosen = []
        for _load, _index, gpu in sorted(free, key=lambda f: f[:2])[:count]:
            slot = min(set(range(self.policy.slots)) - taken.get(gpu.uuid, set()))
            chosen.append((gpu, slot))
        return chosen

    def release(self, user, server_name):
        """Free the server's GPUs; returns their UUIDs (none if it held none)."""
        where = (allocations.c.user == user) & (allocations.c.server_name == server_name)
        return self._delete(where)

    def release_user(self, user):
        return self._delete(allocations.c.user == user)

    def _delete(self, where):
        with self.engine.begin() as conn:
            released = [r.gpu_uuid for r in conn.execute(select(allocations.c.gpu_uuid).where(where))]
            conn.execute(delete(allocations).where(where))
        self._update_metrics()
        return released

    def holdings(self):
        with self.engine.connect() as conn:
            rows = conn.execute(select(allocations).order_by(allocations.c.gpu_uuid, allocations.c.slot))
            return [Allocation(r.gpu_uuid, r.slot, r.user, r.server_name, _aware(r.since),
                               tuple(filter(None, r.groups.split(",")))) for r in rows]

    def held_by(self, user, server_name):
        return [self._by_uuid[a.gpu_uuid] for a in self.holdings()
                if (a.user, a.server_name) == (user, server_name) and a.gpu_uuid in self._by_uuid]

    def reconcile(self, running):
        """Release what no running server holds, and GPUs gone from the inventory.
        `running` is the set of (user, server_name) whose containers really run."""
        stale = [a for a in self.holdings()
                 if (a.user, a.server_name) not in running or a.gpu_uuid not in self._by_uuid]
        for a in stale:
            self._delete((allocations.c.gpu_uuid == a.gpu_uuid) & (allocations.c.slot == a.slot))
        return stale

    def summary(self):
        held = {}
        for a in self.holdings():
            held[a.gpu_uuid] = held.get(a.gpu_uuid, 0) + 1
        in_use = sum(1 for g in self.inventory if held.get(g.uuid))
        free = sum(1 for g in self.inventory if held.get(g.uuid, 0) < self.policy.slots)
        return {"total": len(self.inventory), "in_use": in_use, "free": free}

    def _update_metrics(self):
        GPUS_IN_USE.set(self.summary()["in_use"])


def _aware(moment):
    # SQLite hands back naive datetimes; they were stored in UTC
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)
