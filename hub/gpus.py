"""GPUs: the inventory, the sharing policy, and the rules for handing GPUs out.

Plain functions and data only; the database side (who holds which GPU, kept in the hub's
database so that no GPU is ever double-booked) is `hub.gpu_store.GpuAllocator`.

This module reads no environment: `hub.settings` reads GPUHUB_GPUS, GPUHUB_GPU_MODE,
GPUHUB_GPU_MAX_USERS and GPUHUB_GPU_GROUP_CAPS with the parsers here (`parse_inventory`,
`parse_group_caps`, `Policy`), and hub and CLI both complete the inventory with what NVML
sees through `inventory()`.
"""

import datetime
import logging
import re
from collections import Counter as _Counter
from dataclasses import dataclass, field, replace

from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

# Registered in prometheus_client's default REGISTRY, which JupyterHub serves at /hub/metrics.
GPUS_TOTAL = Gauge("gpuhub_gpus_total", "GPUs in the hub's inventory")
GPUS_IN_USE = Gauge("gpuhub_gpus_in_use", "GPUs held by at least one user server")
REFUSALS = Counter("gpuhub_gpu_refusals_total", "Spawns refused for want of a GPU", ["reason"])
for _reason in ("no_gpu", "group_cap"):
    REFUSALS.labels(reason=_reason)  # both series exist from the start, at 0
QUEUE_LENGTH = Gauge("gpuhub_gpu_queue_length", "Spawns waiting in line for a GPU")

MODES = ("exclusive", "shared")
MAX_USERS_LIMIT = 64  # more servers than this on one GPU is a typo, not a policy
MAX_INVENTORY = 1024

# What `nvidia-smi -L` prints: GPU-<uuid>, and for MIG slices MIG-<uuid> or, with older
# drivers, MIG-GPU-<uuid>/<gi>/<ci>. Hex and dashes only: anything else is a typo or worse.
_UUID = re.compile(r"(GPU|MIG(-GPU)?)-[0-9a-fA-F][0-9a-fA-F-]{0,62}(/[0-9]{1,3}/[0-9]{1,3})?",
                   re.ASCII)
_INDEX = re.compile(r"[0-9]{1,6}", re.ASCII)  # ASCII digits only: int() also takes "٣"
# a comma with any whitespace around it, or whitespace alone; ",," leaves an empty item
_SEPARATOR = re.compile(r"\s*,\s*|\s+")
_GROUP_CAP = re.compile(r"([^=\s,]+)=([0-9]{1,6})", re.ASCII)


class GpuConfigError(ValueError):
    """The inventory or the policy is malformed; the message names where it came from."""


class GpuAllocationError(RuntimeError):
    """A spawn cannot have the GPUs it wants; str() is meant for the user."""


class NoGpuAvailable(GpuAllocationError):
    """Fewer GPUs with room for one more server than the spawn wants."""

    def __init__(self, total, in_use, wanted, full=None, max_users=1):
        full = in_use if full is None else full
        self.total, self.in_use, self.wanted, self.full = total, in_use, wanted, full
        if total == 0:
            message = f"This hub has no GPUs; {wanted} requested."
        elif wanted > total:
            message = f"This hub has only {_gpus(total)}; {wanted} requested."
        elif full >= total:
            shared = f", each by its maximum of {max_users} servers" if max_users > 1 else ""
            message = (f"All {_gpus(total)} are in use ({in_use} of {total} taken{shared}); "
                       f"{wanted} requested. Try again when a server stops.")
        else:
            message = (f"Only {total - full} of {_gpus(total)} can take another server "
                       f"({in_use} of {total} in use); {wanted} requested.")
        super().__init__(message)


class GroupCapReached(GpuAllocationError):
    """The members of one of the user's groups already hold all their group may hold."""

    def __init__(self, group, cap, held, wanted=1):
        self.group, self.cap, self.held, self.wanted = group, cap, held, wanted
        super().__init__(f"The group {group!r} may hold {_gpus(cap)} at once and its members "
                         f"hold {held}; {wanted} more requested. Try again when one of them "
                         "stops a server.")


def _gpus(n):
    return f"{n} GPU" if n == 1 else f"{n} GPUs"


@dataclass(frozen=True)
class Gpu:
    index: int  # NVIDIA's index when known, else the position in GPUHUB_GPUS
    uuid: str  # what Docker's device request names: a UUID, or an index as a string
    name: str = ""
    memory_mib: int | None = None
    node: str = ""  # the swarm node that has it (its node ID); "" on a single host


@dataclass(frozen=True)
class Policy:
    """exclusive: one server per GPU. shared: up to max_users_per_gpu servers per GPU.

    group_caps: {group: n} -- the members of the group *together* hold at most n GPUs at
    once ("cs101 may hold 4 GPUs"). What counts is GPUs held by servers: in shared mode
    each server's share counts as one, so 6 students sharing 2 GPUs hold 6. A user in
    several capped groups counts against each of them. Groups without a cap are free.
    """

    mode: str = "exclusive"
    max_users_per_gpu: int = 1
    group_caps: dict = field(default_factory=dict)

    def __post_init__(self):
        # the one check of the policy's rules; the messages name the settings they come from
        if self.mode not in MODES:
            raise GpuConfigError(f"GPUHUB_GPU_MODE={self.mode!r}: expected exclusive or shared")
        if not 1 <= self.max_users_per_gpu <= MAX_USERS_LIMIT:
            raise GpuConfigError(f"GPUHUB_GPU_MAX_USERS={self.max_users_per_gpu!r}: expected a "
                                 f"number of servers per GPU from 1 to {MAX_USERS_LIMIT}")
        if self.mode == "exclusive" and self.max_users_per_gpu != 1:
            raise GpuConfigError(f"GPUHUB_GPU_MAX_USERS={self.max_users_per_gpu!r} shares GPUs, "
                                 "but GPUHUB_GPU_MODE is exclusive: set GPUHUB_GPU_MODE=shared, "
                                 "or GPUHUB_GPU_MAX_USERS=1")

    @property
    def slots(self):
        """Servers one GPU takes: its slots are 0 .. slots-1."""
        return self.max_users_per_gpu


@dataclass(frozen=True)
class Allocation:
    gpu_uuid: str
    gpu_index: int
    user: str
    server_name: str
    since: object  # an aware datetime in UTC
    slot: int
    groups: tuple = ()  # the capped groups this GPU counts against


# -- the inventory --
def _shown(value, width=40):
    """A value for an error message: quoted, control characters escaped, cut short."""
    text = repr(value)
    return text if len(text) <= width else text[:width] + "...'"


def parse_inventory(text, source):
    """GPUs from text such as "GPU-1a2b...,GPU-3c4d..." or "0,1,12" (indexes), or a mix;
    commas, spaces and newlines separate. Empty text: no GPUs. Errors name `source`."""
    if not text or not text.strip():
        return []
    items = _SEPARATOR.split(text.strip())
    if len(items) > MAX_INVENTORY:
        raise GpuConfigError(f"{source}: {len(items)} GPUs listed; at most {MAX_INVENTORY}")
    gpus, seen = [], {}
    for position, item in enumerate(items):
        if not item:
            raise GpuConfigError(f"{source}: item {position + 1} is empty "
                                 "(two commas in a row, or one at the start or end?)")
        if _INDEX.fullmatch(item):
            key, gpu = int(item), Gpu(index=int(item), uuid=str(int(item)))
        elif _UUID.fullmatch(item):
            key, gpu = item.lower(), Gpu(index=position, uuid=item)
        else:
            raise GpuConfigError(
                f"{source}: {_shown(item)} is neither a GPU index (0, 1, ... 12) nor a GPU "
                "UUID (GPU-... or MIG-..., as `nvidia-smi -L` prints them)")
        if key in seen:
            also = f" (as {seen[key]!r} and {item!r})" if seen[key] != item else ""
            raise GpuConfigError(f"{source}: GPU {item!r} is listed twice{also}")
        seen[key] = item
        gpus.append(gpu)
    return gpus


def discover_nvml(log=log):
    """The GPUs this process can see through NVML (nvidia-ml-py); [] without the library,
    the driver or a device. Never raises for a missing driver: a hub without GPUs is fine."""
    try:
        import pynvml
    except ImportError:
        log.info("GPUs: nvidia-ml-py is not installed; none discovered")
        return []
    try:
        pynvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...: none visible
        log.info("GPUs: NVML did not start (%s); none discovered", e)
        return []
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total // 2**20
            gpus.append(Gpu(i, _text(pynvml.nvmlDeviceGetUUID(handle)),
                            _text(pynvml.nvmlDeviceGetName(handle)), int(memory)))
        return gpus
    except Exception as e:  # a device that fails mid-query: better none than half a list
        log.warning("GPUs: NVML failed while listing devices (%s); none discovered", e)
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def _text(value):
    return value.decode() if isinstance(value, bytes) else value  # older pynvml gave bytes


def merge_nvml(configured, discovered, source, log=log):
    """The configured GPUs with name, memory and index filled in from what NVML sees.
    The ids stay as configured, so allocations keep their keys wherever NVML is missing."""
    if not discovered:
        return list(configured)
    by_index = {g.index: g for g in discovered}
    by_uuid = {g.uuid.lower(): g for g in discovered}
    merged, named = [], {}
    for gpu in configured:
        seen = by_index.get(int(gpu.uuid)) if gpu.uuid.isdigit() else by_uuid.get(gpu.uuid.lower())
        if seen is None:
            log.warning("GPUs: %s names %s, which NVML does not see here", source, gpu.uuid)
            merged.append(gpu)
            continue
        if seen.uuid in named:
            raise GpuConfigError(f"{source}: {named[seen.uuid]!r} and {gpu.uuid!r} are the "
                                 f"same GPU ({seen.uuid}); list it once")
        named[seen.uuid] = gpu.uuid
        merged.append(replace(gpu, index=seen.index, name=seen.name, memory_mib=seen.memory_mib))
    return merged


def inventory(configured, source="GPUHUB_GPUS", log=log, discover=None):
    """The hub's GPUs, for the hub and the CLI alike: the `configured` ones (parsed from
    GPUHUB_GPUS) checked against NVML where it works -- names and memory filled in, a GPU
    listed twice (by index and by UUID) refused -- or, when none are configured, what NVML
    sees. `discover` stands in for NVML in tests."""
    discovered = (discover or discover_nvml)(log)
    if not configured:
        return discovered
    return merge_nvml(configured, discovered, source, log)


# -- the policy --
def parse_group_caps(text, source="GPUHUB_GPU_GROUP_CAPS"):
    """{group: n} from text such as "cs101=4,research=8" (separated as the inventory is).
    Errors name `source`."""
    caps = {}
    for item in filter(None, _SEPARATOR.split((text or "").strip())):
        match = _GROUP_CAP.fullmatch(item)
        if not match:
            raise GpuConfigError(f"{source}: {_shown(item)} is not group=number "
                                 "(e.g. cs101=4,research=8)")
        group, number = match.groups()
        if group in caps:
            raise GpuConfigError(f"{source}: group {group!r} has two caps")
        caps[group] = int(number)
    return caps


# -- the rules, on a snapshot of who holds what --
def choose_gpus(inventory, policy, taken, count):
    """[(gpu, slot)] for `count` different GPUs: the least-loaded ones with a free slot,
    lowest index first on a tie. `taken` maps a GPU's uuid to its slots in use.

    On a swarm (GPUs with a `node`) all of a server's GPUs are on one node, the one with
    the most room: a task runs on one machine."""
    loads = [(len(taken.get(g.uuid, ())), g.index, g) for g in inventory]
    room = [entry for entry in loads if entry[0] < policy.slots]
    full = len(loads) - len(room)
    if any(g.node for g in inventory):
        by_node = {}
        for entry in room:
            by_node.setdefault(entry[2].node, []).append(entry)
        # the node with the most room that can take all `count`; its least-loaded GPUs
        fits = sorted((entries for entries in by_node.values() if len(entries) >= count),
                      key=lambda entries: (-len(entries), entries[0][2].node))
        room = fits[0] if fits else room[:min(len(room), count - 1)]
    if len(room) < count:
        in_use = sum(1 for load, _, _ in loads if load)
        raise NoGpuAvailable(len(inventory), in_use, count, full, policy.slots)
    chosen = []
    for _load, _index, gpu in sorted(room, key=lambda entry: entry[:2])[:count]:
        # a free slot below the limit (after max_users shrank, high slots may be in use)
        slot = min(set(range(policy.slots)) - set(taken.get(gpu.uuid, ())))
        chosen.append((gpu, slot))
    return chosen


def choose_group_slots(policy, groups, held, count):
    """[(group, slot)], `count` for each capped group among `groups`. `held` maps a group to
    its slots in use; a cap lowered below what is held refuses until enough are freed."""
    chosen = []
    for group in sorted(set(groups) & set(policy.group_caps)):
        cap, mine = policy.group_caps[group], set(held.get(group, ()))
        free = sorted(set(range(cap)) - mine)
        if len(mine) + count > cap or len(free) < count:
            raise GroupCapReached(group, cap, len(mine), count)
        chosen.extend((group, slot) for slot in free[:count])
    return chosen


def summarize(inventory, policy, holders):
    """total, in_use (at least one holder), free (room for one more server), and seats.
    `holders` maps a GPU's uuid to its number of holders."""
    in_use = sum(1 for g in inventory if holders.get(g.uuid))
    full = sum(1 for g in inventory if holders.get(g.uuid, 0) >= policy.slots)
    taken = sum(holders.get(g.uuid, 0) for g in inventory)
    return {"total": len(inventory), "in_use": in_use, "free": len(inventory) - full,
            "seats": len(inventory) * policy.slots, "seats_taken": taken}


def build_report(inventory, policy, holdings):
    """Every GPU with its holders, as the REST API and the CLI show it. GPUs that left
    the inventory but are still held (until the next reconcile) come last."""
    holders = {}
    for a in holdings:
        holders.setdefault(a.gpu_uuid, []).append(
            {"user": a.user, "server": a.server_name, "since": isoformat(a.since)})
    known = {g.uuid for g in inventory}
    gone = {a.gpu_uuid: Gpu(a.gpu_index, a.gpu_uuid) for a in holdings if a.gpu_uuid not in known}
    counts = _Counter(a.gpu_uuid for a in holdings)
    return {
        **summarize(inventory, policy, counts),
        "mode": policy.mode,
        "max_users_per_gpu": policy.max_users_per_gpu,
        "gpus": [{"index": g.index, "uuid": g.uuid, "name": g.name, "memory_mib": g.memory_mib,
                  "in_inventory": g.uuid in known, "holders": holders.get(g.uuid, [])}
                 for g in [*inventory, *gone.values()]],
    }


def expected_free_times(holdings, policy, now, max_age=None, idle_timeout=None,
                        last_activity=None):
    """When each holding is expected to give its GPU back: {(gpu_uuid, slot): datetime or
    None}, None where nothing bounds it. The queue's "about M minutes" comes from these.

    max_age: seconds a GPU session may last (since it took the GPU), or a callable
    (allocation) -> seconds or None, for per-course values; idle_timeout: seconds of
    inactivity after which a GPU server is stopped, used with last_activity
    {(user, server): datetime} (what is left on the holder's idle timer if it stays idle).
    Without either (None or 0) every time is None: the estimate is "unknown".
    """
    limit = max_age or getattr(policy, "max_age", None)
    idle = idle_timeout or getattr(policy, "idle_timeout", None)
    last_activity = last_activity or {}
    times = {}
    for a in holdings:
        candidates = []
        age = limit(a) if callable(limit) else limit
        if age:
            candidates.append(a.since + datetime.timedelta(seconds=age))
        seen = last_activity.get((a.user, a.server_name))
        if idle and seen is not None:
            candidates.append(max(seen, a.since) + datetime.timedelta(seconds=idle))
        times[(a.gpu_uuid, a.slot)] = max(now, min(candidates)) if candidates else None
    return times


def isoformat(moment):
    """ISO 8601 in UTC with a Z, as JupyterHub's own API writes times."""
    return moment.isoformat().replace("+00:00", "Z")
