"""When a user server is stopped: the rules jupyterhub-idle-culler cannot express.

jupyterhub-idle-culler (run by the hub with GPUHUB_IDLE_TIMEOUT) stops every server idle
for that long; it has one policy for all servers and trusts the activity a server
reports. That activity is posted with the server's own token, so a loop in a terminal
fakes it. The rules here add, per server and per course:

- `gpu_max_age`: a server that holds a GPU stops this long after it got the GPU,
  whatever its activity;
- `gpu_idle_timeout`: a server whose GPUs stay below `gpu_idle_percent` utilisation for
  this long stops even if the notebook is active. Where nobody measures the GPUs, or on a
  shared GPU that is busy (its use is not the holder's alone), activity stands in for use;
- `idle_timeout` of a course: a shorter idle timeout for that course's servers.

Plain functions on plain data with the time passed in, so tests choose the clock;
`hub.gpu_culler` feeds them from the REST API, the database and NVML.
"""

import datetime
from dataclasses import dataclass, replace
from typing import Mapping, Optional, Tuple

OVERRIDES = ("idle_timeout", "gpu_idle_timeout", "gpu_max_age")  # catalog fields, seconds


@dataclass(frozen=True)
class Limits:
    """Seconds; 0 means no limit. `idle_timeout` is only a course's own (the hub-wide one
    is jupyterhub-idle-culler's)."""

    idle_timeout: int = 0
    gpu_idle_timeout: int = 0
    gpu_max_age: int = 0
    gpu_idle_percent: float = 5.0
    warning: int = 600  # JupyterLab warns this long before gpu_max_age ends the session

    def for_course(self, course):
        """These limits with the course's overrides (a hub.courses.Course, or None)."""
        if course is None:
            return self
        changes = {name: getattr(course, name) for name in OVERRIDES
                   if getattr(course, name, None) is not None}
        return replace(self, **changes)

    def as_json(self):
        return {"idle_timeout": self.idle_timeout, "gpu_idle_timeout": self.gpu_idle_timeout,
                "gpu_max_age": self.gpu_max_age, "gpu_idle_percent": self.gpu_idle_percent,
                "warning": self.warning}


@dataclass(frozen=True)
class Policy:
    """The hub's limits, each course's, and whether a GPU has one holder (exclusive)."""

    default: Limits
    courses: Mapping[str, Limits]
    default_course: Optional[str] = None
    exclusive: bool = True

    @classmethod
    def build(cls, default, catalog=None, exclusive=True):
        courses = {c.slug: default.for_course(c) for c in catalog.courses} if catalog else {}
        return cls(default, courses, catalog.default.slug if catalog else None, exclusive)

    def limits(self, course_slug):
        """The limits of a server started for `course_slug` (empty: the default course).
        The slug comes from the server's user_options, which the spawner checked."""
        if not isinstance(course_slug, str) or not course_slug:
            course_slug = self.default_course
        return self.courses.get(course_slug, self.default)

    def enforced(self):
        """True if any rule here can stop a server (else the service need not run)."""
        return any(lim.idle_timeout or lim.gpu_idle_timeout or lim.gpu_max_age
                   for lim in (self.default, *self.courses.values()))

    def interval(self):
        """Seconds between rounds: a quarter of the shortest limit, between 1 s and 60 s."""
        limits = [v for lim in (self.default, *self.courses.values())
                  for v in (lim.idle_timeout, lim.gpu_idle_timeout, lim.gpu_max_age) if v]
        return max(1, min(60, min(limits, default=240) // 4))

    def as_json(self):
        return {"default": self.default.as_json(), "default_course": self.default_course,
                "exclusive": self.exclusive,
                "courses": {slug: lim.as_json() for slug, lim in self.courses.items()}}

    @classmethod
    def from_json(cls, data):
        return cls(Limits(**data["default"]),
                   {slug: Limits(**lim) for slug, lim in data["courses"].items()},
                   data.get("default_course"), bool(data.get("exclusive", True)))


def hub_policy(settings, catalog, allocator):
    """The Policy from the hub's settings (hub.settings.Settings), its catalog and its GPU
    allocator: GPU limits only where there are GPUs to hold."""
    gpus = allocator is not None
    return Policy.build(Limits(
        gpu_idle_timeout=settings.gpu_idle_timeout if gpus else 0,
        gpu_max_age=settings.gpu_max_age if gpus else 0,
        gpu_idle_percent=settings.gpu_idle_percent, warning=settings.gpu_warning,
    ), catalog, exclusive=not gpus or allocator.policy.mode == "exclusive")


@dataclass(frozen=True)
class Server:
    """One running server as the culler sees it."""

    user: str
    name: str  # "" for the default server
    course: Optional[str]
    last_activity: Optional[datetime.datetime]
    gpus: Tuple[str, ...] = ()  # the GPUs it holds (uuids as the allocator keeps them)
    gpu_since: Optional[datetime.datetime] = None  # when it got them


@dataclass(frozen=True)
class Stop:
    reason: str  # gpu_max_age, gpu_unused, gpu_idle or idle
    message: str  # for the student, on the hub's home page


def gpu_deadline(limits, gpu_since):
    """When a GPU session given at `gpu_since` ends at the latest; None without a limit."""
    if not limits.gpu_max_age or gpu_since is None:
        return None
    return gpu_since + datetime.timedelta(seconds=limits.gpu_max_age)


def track_low_use(previous, samples, threshold, now):
    """Since when each GPU has been below `threshold` percent: {uuid: datetime}, or None
    for a GPU in use now. `samples` maps a uuid to its utilisation in percent; a GPU
    missing from it is not measured (it is missing from the result too)."""
    low = {}
    for uuid, percent in samples.items():
        if percent is None:
            continue
        low[uuid] = (previous.get(uuid) or now) if percent < threshold else None
    return low


def _duration(seconds):
    if seconds % 3600 == 0:
        hours = seconds // 3600
        return f"{hours} hour" + ("s" if hours != 1 else "")
    if seconds % 60 == 0:
        minutes = seconds // 60
        return f"{minutes} minute" + ("s" if minutes != 1 else "")
    return f"{seconds} seconds"


def decide(server, limits, low_since, now, exclusive=True):
    """A Stop if `server` must stop now under `limits`, else None.

    `low_since` is what track_low_use returned: GPUs not in it are not measured."""
    if server.gpus:
        deadline = gpu_deadline(limits, server.gpu_since)
        if deadline is not None and now >= deadline:
            return Stop("gpu_max_age", f"GPU sessions last at most "
                                       f"{_duration(limits.gpu_max_age)}, and yours had reached that.")
        timeout = limits.gpu_idle_timeout
        measured = all(uuid in low_since for uuid in server.gpus)
        if timeout and measured:
            since = [low_since[uuid] for uuid in server.gpus]
            if all(s is not None for s in since):
                # the window starts no earlier than this server's own GPU session
                start = max([*since, server.gpu_since or min(since)])
                if (now - start).total_seconds() >= timeout:
                    return Stop("gpu_unused", f"its GPU was not used (below "
                                              f"{limits.gpu_idle_percent:g}% utilisation) for "
                                              f"{_duration(timeout)}.")
        # an exclusive GPU's use is its holder's: where it is measured, that and not the
        # activity (which the server posts itself) decides; a shared GPU's is everybody's
        by_activity = not (measured and exclusive)
        if timeout and by_activity and _idle_for(server, now) >= timeout:
            return Stop("gpu_idle", f"servers with a GPU stop after {_duration(timeout)} "
                                    "without activity, and yours had been idle that long.")
    if limits.idle_timeout and _idle_for(server, now) >= limits.idle_timeout:
        return Stop("idle", f"this course's servers stop after {_duration(limits.idle_timeout)} "
                            "without activity, and yours had been idle that long.")
    return None


def _idle_for(server, now):
    if server.last_activity is None:
        return 0.0  # never reported: jupyterhub-idle-culler's rules apply, not ours
    return (now - server.last_activity).total_seconds()


def session_env(limits, gpu_since):
    """The user server's environment for JupyterLab's countdown (images/*/gpuhub-session):
    GPUHUB_GPU_DEADLINE (ISO 8601, UTC) and GPUHUB_GPU_WARNING (seconds); {} without a limit."""
    deadline = gpu_deadline(limits, gpu_since)
    if deadline is None:
        return {}
    deadline = deadline.astimezone(datetime.timezone.utc).replace(microsecond=0)
    return {"GPUHUB_GPU_DEADLINE": deadline.isoformat().replace("+00:00", "Z"),
            "GPUHUB_GPU_WARNING": str(limits.warning)}


def summary(policy, hub_idle_timeout):
    """One sentence for the home page: when servers stop (the hub-wide rules)."""
    parts = []
    if hub_idle_timeout:
        parts.append(f"Servers stop after {_duration(hub_idle_timeout)} without activity.")
    lim = policy.default
    gpu = []
    if lim.gpu_idle_timeout:
        gpu.append(f"after {_duration(lim.gpu_idle_timeout)} without using the GPU")
    if lim.gpu_max_age:
        gpu.append(f"at the latest {_duration(lim.gpu_max_age)} after they got it")
    if gpu:
        own = any(course != policy.default for course in policy.courses.values())
        parts.append("Servers with a GPU stop " + " or ".join(gpu)
                     + (" (some courses set their own limits)" if own else "")
                     + "; your files are kept.")
    return " ".join(parts)
