"""The line for GPUs: who is served next, how long a waiter may expect to wait, and what
the spawn-pending page says. Plain functions on snapshots; the database side is
`hub.gpu_queue_store.GpuQueue`.

The policy: first come, first served, one place per server. A waiter takes GPUs only
when the GPUs free now also cover everybody ahead of it who could use them: nobody jumps
the line for a GPU. A waiter that its *group cap* blocks (its group already holds all it
may) is skipped and reserves nothing, so it does not block those behind it who are not in
that group (else one full course would stall every other course's students behind it);
it keeps its place and is served first once its group has room again.
"""

import math
from dataclasses import dataclass

from .gpus import GpuAllocationError, GroupCapReached, NoGpuAvailable

READY, NO_GPU, GROUP_CAP = "ready", "no_gpu", "group_cap"


class QueueTimeout(GpuAllocationError):
    """The spawn waited GPUHUB_GPU_QUEUE_TIMEOUT seconds in line without getting a GPU."""

    def __init__(self, waited, status=None):
        self.waited, self.status = waited, status
        where = ""
        if status and status.state != READY:
            where = f" (you were at place {status.position} in line)"
        super().__init__(f"No GPU became free for you within {_duration(waited)}{where}. "
                         "Please try again later.")


@dataclass(frozen=True)
class Place:
    ticket: int  # the order of the line: lower first
    user: str
    server_name: str
    wanted: int
    groups: tuple = ()  # all the user's groups at spawn time
    course: str = ""
    joined: object = None  # an aware datetime in UTC


@dataclass(frozen=True)
class Status:
    """One waiter's view of the line."""

    place: Place
    state: str  # READY (may take its GPUs now), NO_GPU, or GROUP_CAP
    ahead: int  # waiters ahead of it who compete for the same GPUs
    blocking_group: str = ""  # with GROUP_CAP: the group that is full
    expected: object = None  # when it should be served (aware datetime), or None: unknown

    @property
    def position(self):
        return self.ahead + 1


def line_status(line, inventory, policy, holders, group_held, free_times=None):
    """{(user, server): Status} for every place in `line` (any order; tickets decide).

    holders: {gpu_uuid: number of holders}; group_held: {group: number of slots held};
    free_times: {(gpu_uuid, slot): datetime or None} from gpus.expected_free_times, for
    the estimate of waiters that wait for GPUs (those a cap blocks get none)."""
    seats = sum(max(0, policy.slots - holders.get(g.uuid, 0)) for g in inventory)
    caps = policy.group_caps
    room = {group: cap - group_held.get(group, 0) for group, cap in caps.items()}
    reserved, statuses = 0, {}
    for place in sorted(line, key=lambda p: p.ticket):
        full = next((g for g in sorted(place.groups) if g in caps and room[g] < place.wanted), "")
        key = (place.user, place.server_name)
        if full:
            statuses[key] = Status(place, GROUP_CAP, _competing(statuses, full), full)
            continue
        state = READY if seats - reserved >= place.wanted else NO_GPU
        expected = None
        if state == NO_GPU and free_times is not None:
            expected = nth_free(free_times.values(), reserved + place.wanted - seats)
        statuses[key] = Status(place, state, _competing(statuses), "", expected)
        reserved += place.wanted
        for group in place.groups:
            if group in room:
                room[group] -= place.wanted
    return statuses


def never_served(inventory, policy, wanted, groups=()):
    """The refusal for a request no wait can satisfy (more GPUs than the hub has, or than
    a group's cap), else None: such a spawn is refused at once, not put in line."""
    if wanted > len(inventory):
        return NoGpuAvailable(len(inventory), 0, wanted)
    for group in sorted(set(groups) & set(policy.group_caps)):
        if policy.group_caps[group] < wanted:
            return GroupCapReached(group, policy.group_caps[group], 0, wanted)
    return None


def _competing(statuses, full=""):
    """Waiters ahead that will be served first: for one a cap blocks (`full` is its
    group), those ahead in that group; else those ahead that no cap blocks."""
    if full:
        return sum(1 for s in statuses.values() if full in s.place.groups)
    return sum(1 for s in statuses.values() if s.state != GROUP_CAP)


def nth_free(times, n):
    """When the n-th seat (1-based) of `times` frees, or None if fewer are known. Unknown
    times (None) can only free sooner than never, so the known ones bound the wait."""
    if n <= 0:
        return None
    known = sorted(t for t in times if t is not None)
    return known[n - 1] if len(known) >= n else None


def waiting_message(status, now, cpu_hint=""):
    """The text of the spawn-pending page while `status` waits."""
    if status.state == GROUP_CAP:
        what = (f"your group {status.blocking_group!r} holds all the GPUs it may hold at once; "
                f"{_ahead_text(status.ahead)}")
    else:
        what = _ahead_text(status.ahead)
    about = ""
    if status.expected is not None:
        minutes = max(1, math.ceil((status.expected - now).total_seconds() / 60))
        about = f", about {minutes} minute{'s' if minutes != 1 else ''}"
    return f"Waiting for a GPU: {what}{about}.{cpu_hint}"


def _ahead_text(ahead):
    if ahead == 0:
        return "you are first in line"
    return f"place {ahead + 1} in line, {ahead} ahead of you"


def _duration(seconds):
    minutes = round(seconds / 60)
    if seconds < 120:
        return f"{round(seconds)} seconds"
    return f"{minutes} minutes"
