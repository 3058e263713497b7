"""The body of `POST /containers/create`: what a user container may be.

Every field the engine knows is listed with what it may hold (an allow-list: a field
not listed here, such as one a newer engine adds, is refused unless it is empty). The
checks that need the engine (is this network or volume gpuhub's?) ask `lookup`.
"""

import posixpath
import re

from .body import Folded, Refusal, get, keys_as_sent, obj, strings, truthy
from .policy import COMPOSE_PROJECT, SERVER_LABEL, USER_LABEL

# Config fields (the top level of the body) that may hold anything
FREE_CONFIG = frozenset(k.lower() for k in (
    "Hostname", "Domainname", "AttachStdin", "AttachStdout", "AttachStderr", "ExposedPorts",
    "Tty", "OpenStdin", "StdinOnce", "Cmd", "Healthcheck", "ArgsEscaped", "Image", "Volumes",
    "WorkingDir", "Entrypoint", "NetworkDisabled", "OnBuild", "StopSignal",
    "StopTimeout", "Shell"))
# HostConfig fields that may hold anything: limits, DNS, restart policy, /etc/hosts ...
FREE_HOST = frozenset(k.lower() for k in (
    "ContainerIDFile", "RestartPolicy", "AutoRemove", "ConsoleSize", "Dns", "DnsOptions",
    "DnsSearch", "ExtraHosts", "ReadonlyRootfs", "ShmSize", "Tmpfs", "Init",
    "CpuShares", "Memory", "NanoCpus", "CpuPeriod", "CpuQuota", "CpusetCpus", "CpusetMems",
    "KernelMemory", "KernelMemoryTCP", "MemoryReservation", "MemorySwap", "MemorySwappiness",
    "CpuCount", "CpuPercent", "IOMaximumIOps", "IOMaximumBandwidth",
    "BlkioWeight", "Isolation"))

NO_NEW_PRIVILEGES = ("no-new-privileges", "no-new-privileges:true", "no-new-privileges=true")
PRIVATE_MODES = ("", "private")
LOG_DRIVERS = ("", "json-file", "local")
GPU_CAPABILITIES = frozenset(("gpu", "compute", "utility"))
NVIDIA_NONE = ("void", "none", "")


def _refuse_if_set(rule, what):
    def check(value, policy):
        if truthy(value):
            raise Refusal(rule, what)
    return check


def _mode(field, allowed, rule):
    def check(value, policy):
        if value is not None and (not isinstance(value, str) or value not in allowed):
            raise Refusal(rule, f"{field} {value!r} is not allowed (only a private one)")
    return check


def _privileged(value, policy):
    if value is not False and value is not None:
        raise Refusal("no-privileged", "privileged containers are not allowed")


def _cap_drop(value, policy):
    if not isinstance(value, list) or "ALL" not in [str(v).upper() for v in value]:
        raise Refusal("cap-drop-all", "user containers must drop all capabilities (CapDrop: ALL)")


def _security_opt(value, policy):
    options = value or []
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise Refusal("malformed-body", "SecurityOpt must be a list of strings", 400)
    for option in options:
        if option.strip().lower() not in NO_NEW_PRIVILEGES:
            raise Refusal("security-opt", f"the security option {option!r} is not allowed "
                                          "(only no-new-privileges)")
    if not options:
        raise Refusal("security-opt", "user containers must set no-new-privileges")


def _pids_limit(value, policy):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise Refusal("pids-limit", "user containers must have a process limit (PidsLimit > 0)")


def _oom_kill(value, policy):
    if value not in (None, False):
        raise Refusal("no-oom-kill-disable", "the OOM killer may not be disabled")


def _oom_score(value, policy):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise Refusal("no-oom-score-below-0", "OomScoreAdj below 0 is not allowed")


def _runtime(value, policy):
    if value not in (None, "", "runc", "nvidia"):
        raise Refusal("runtime", f"the runtime {value!r} is not allowed (runc or nvidia)")


def _log_config(value, policy):
    if value is None:
        return
    if not isinstance(value, Folded):
        raise Refusal("malformed-body", "LogConfig must be an object", 400)
    kind = get(value, "Type", str, "")
    if kind not in LOG_DRIVERS or truthy(value.get("config")):
        raise Refusal("log-driver", f"the log driver {kind!r} with options is not allowed "
                                    "(the engine's default, json-file or local)")


# rtprio/rttime would allow real-time scheduling, memlock pinning memory, nice priority
ULIMITS = ("nofile", "nproc", "core", "stack", "cpu", "fsize", "data", "as", "locks",
           "sigpending", "msgqueue")


def _ulimits(value, policy):
    for limit in value or []:
        name = get(limit, "Name", str, "") if isinstance(limit, Folded) else None
        if name not in ULIMITS:
            raise Refusal("ulimits", f"the ulimit {name!r} is not allowed")


def _storage_opt(value, policy):
    if value is None:
        return
    if not isinstance(value, Folded) or set(value) - {"size"}:
        raise Refusal("storage-opt", "only the size storage option is allowed")


def _device_requests(value, policy):
    for request in value or []:
        if not isinstance(request, Folded):
            raise Refusal("malformed-body", "DeviceRequests must be objects", 400)
        driver = get(request, "Driver", str, "")
        ids = strings(request, "DeviceIDs")
        count = get(request, "Count", int, 0)
        caps = get(request, "Capabilities", list, [])
        if driver != "nvidia":
            raise Refusal("gpus-from-inventory", f"the device driver {driver!r} is not allowed")
        if count != 0 or not ids:
            raise Refusal("gpus-from-inventory", "GPUs must be requested by ID, not by count")
        unknown = [i for i in ids if _gpu_key(i) not in policy.gpus]
        if unknown:
            raise Refusal("gpus-from-inventory",
                          f"GPU {unknown[0]!r} is not in the inventory (GPUHUB_GPUS)")
        if (not all(isinstance(c, list) and set(map(str, c)) <= GPU_CAPABILITIES for c in caps)
                or truthy(request.get("options"))):
            raise Refusal("gpus-from-inventory", "only the gpu capabilities, without options")


def _gpu_key(gpu_id):
    return str(int(gpu_id)) if gpu_id.isascii() and gpu_id.isdigit() else gpu_id.lower()


def _host_path_allowed(path, policy):
    normal = posixpath.normpath(path)
    return any(normal == d or normal.startswith(d.rstrip("/") + "/") for d in policy.bind_paths)


def _volume_name_ok(name, policy):
    return name.startswith(f"{policy.volume_prefix}-")


def _binds(value, policy):
    for bind in value or []:
        if not isinstance(bind, str):
            raise Refusal("malformed-body", "Binds must be strings", 400)
        parts = bind.split(":")
        if len(parts) not in (2, 3):
            raise Refusal("malformed-body", f"the bind {bind!r} is not source:target[:mode]", 400)
        source, options = parts[0], parts[2].split(",") if len(parts) == 3 else []
        _source(source, "ro" in options, policy, bind)


def _source(source, read_only, policy, what):
    if source.startswith("/"):
        if not _host_path_allowed(source, policy):
            raise Refusal("no-host-paths", f"the host path {source!r} may not be mounted "
                                           f"(only GPUHUB_GUARD_BIND_PATHS)")
        if not read_only:
            raise Refusal("host-paths-read-only", f"the host path {source!r} must be read-only")
    elif not _volume_name_ok(source, policy):
        raise Refusal("volume-prefix", f"the volume {source!r} is not gpuhub's "
                                       f"(name must start with {policy.volume_prefix}-)")


def _mounts(value, policy):
    for mount in value or []:
        if not isinstance(mount, Folded):
            raise Refusal("malformed-body", "Mounts must be objects", 400)
        kind = get(mount, "Type", str, "")
        source = get(mount, "Source", str, "")
        if kind == "tmpfs":
            continue
        if kind == "volume":
            if source:
                _source(source, True, policy, mount)
            if truthy(obj(mount, "VolumeOptions").get("driverconfig")):
                raise Refusal("no-volume-options", "volume driver options are not allowed")
        elif kind == "bind":
            propagation = get(obj(mount, "BindOptions"), "Propagation", str, "")
            if propagation not in ("", "private", "rprivate"):
                raise Refusal("no-host-paths", f"bind propagation {propagation!r} is not allowed")
            _source(source or "/", bool(mount.get("readonly")), policy, mount)
        else:
            raise Refusal("no-host-paths", f"mounts of type {kind!r} are not allowed")


# field (folded) -> check(value, policy); async checks that need the engine are below
HOST_CHECKS = {
    "privileged": _privileged,
    "capadd": _refuse_if_set("no-cap-add", "adding capabilities is not allowed"),
    "capdrop": _cap_drop,
    "binds": _binds,
    "mounts": _mounts,
    "volumedriver": _refuse_if_set("no-volume-options", "volume drivers are not allowed"),
    "volumesfrom": _refuse_if_set("no-volumes-from", "mounting another container's volumes "
                                                     "is not allowed"),
    "pidmode": _mode("PidMode", ("",), "no-host-namespaces"),
    "ipcmode": _mode("IpcMode", ("", "private", "none"), "no-host-namespaces"),
    "utsmode": _mode("UTSMode", ("",), "no-host-namespaces"),
    "usernsmode": _mode("UsernsMode", ("",), "no-host-namespaces"),
    "cgroupnsmode": _mode("CgroupnsMode", PRIVATE_MODES, "no-host-namespaces"),
    "cgroup": _mode("Cgroup", ("",), "no-host-namespaces"),
    "cgroupparent": _refuse_if_set("no-cgroup-parent", "a cgroup parent is not allowed"),
    "devices": _refuse_if_set("no-devices", "host devices are not allowed"),
    "devicecgrouprules": _refuse_if_set("no-devices", "device cgroup rules are not allowed"),
    "devicerequests": _device_requests,
    "securityopt": _security_opt,
    "sysctls": _refuse_if_set("no-sysctls", "sysctls are not allowed"),
    "maskedpaths": _refuse_if_set("no-unmasked-paths", "changing masked paths is not allowed"),
    "readonlypaths": _refuse_if_set("no-unmasked-paths", "changing read-only paths is not "
                                                         "allowed"),
    "portbindings": _refuse_if_set("no-published-ports", "publishing ports on the host is "
                                                         "not allowed"),
    "publishallports": _refuse_if_set("no-published-ports", "publishing ports on the host "
                                                            "is not allowed"),
    "links": _refuse_if_set("no-links", "links to other containers are not allowed"),
    "groupadd": _refuse_if_set("no-group-add", "extra groups are not allowed"),
    "pidslimit": _pids_limit,
    "oomkilldisable": _oom_kill,
    "oomscoreadj": _oom_score,
    "runtime": _runtime,
    "logconfig": _log_config,
    "storageopt": _storage_opt,
    "ulimits": _ulimits,
    "blkioweightdevice": _refuse_if_set("no-devices", "per-device I/O settings are not allowed"),
    "blkiodevicereadbps": _refuse_if_set("no-devices", "per-device I/O settings are not allowed"),
    "blkiodevicewritebps": _refuse_if_set("no-devices", "per-device I/O settings are not allowed"),
    "blkiodevicereadiops": _refuse_if_set("no-devices", "per-device I/O settings are not allowed"),
    "blkiodevicewriteiops": _refuse_if_set("no-devices", "per-device I/O settings are not "
                                                         "allowed"),
    "cpurealtimeperiod": _refuse_if_set("no-realtime", "real-time scheduling is not allowed"),
    "cpurealtimeruntime": _refuse_if_set("no-realtime", "real-time scheduling is not allowed"),
    "annotations": _refuse_if_set("no-annotations", "runtime annotations are not allowed"),
}
# must be present even when empty in the body (their absence would be a weaker container)
REQUIRED_HOST = ("capdrop", "securityopt", "pidslimit")

NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")


def check_name(name, policy):
    if not name or not NAME.fullmatch(name) or not name.startswith(f"{policy.container_prefix}-"):
        raise Refusal("name-prefix", f"user containers are named {policy.container_prefix}-..., "
                                     f"not {name!r}")


def check_labels(config):
    # the engine keeps label keys as sent: compare them as sent, not folded
    labels = keys_as_sent(get(config, "Labels", Folded, Folded()))
    if USER_LABEL not in labels or SERVER_LABEL not in labels:
        raise Refusal("gpuhub-labels", f"user containers carry the labels {USER_LABEL} and "
                                       f"{SERVER_LABEL}")
    if any(key.startswith("com.docker.compose.") for key in labels):
        raise Refusal("gpuhub-labels", "user containers may not carry compose's labels")


def check_user(config, policy):
    user = get(config, "User", str, "")
    if user != policy.container_user:
        raise Refusal("container-user", f"user containers run as {policy.container_user}, "
                                        f"not {user!r}")


def check_env(config, host):
    """NVIDIA's runtime hook reads NVIDIA_VISIBLE_DEVICES from the environment, whatever
    the device requests say: where nvidia is the engine's default runtime, `all` there
    would hand out every GPU. It must name no GPU, or exactly the requested ones."""
    env = {}
    for item in strings(config, "Env"):
        key, _, value = item.partition("=")
        if key in env and key == "NVIDIA_VISIBLE_DEVICES":
            raise Refusal("nvidia-visible-devices", "NVIDIA_VISIBLE_DEVICES is set twice")
        env[key] = value
    requested = sorted(_gpu_key(i) for r in (host.get("devicerequests") or [])
                       for i in (r.get("deviceids") or []))
    visible = env.get("NVIDIA_VISIBLE_DEVICES")
    if visible is None:
        raise Refusal("nvidia-visible-devices", "NVIDIA_VISIBLE_DEVICES must be set (void or "
                                                "the requested GPUs): the image may say all")
    named = sorted(_gpu_key(v) for v in visible.split(",") if v.strip()) \
        if visible.strip().lower() not in NVIDIA_NONE else []
    if named != requested:
        raise Refusal("nvidia-visible-devices", f"NVIDIA_VISIBLE_DEVICES={visible!r} names "
                                                "other GPUs than the device requests")


async def check_create(name, body, policy, lookup):
    """Refuse the create request unless it is a locked-down gpuhub user container."""
    check_name(name, policy)
    for key in body:
        if key not in FREE_CONFIG and key not in ("user", "labels", "env", "hostconfig",
                                                  "networkingconfig"):
            if truthy(body[key]):
                raise Refusal("unknown-field", f"the field {key!r} is not allowed")
    check_labels(body)
    check_user(body, policy)
    host = obj(body, "HostConfig")
    for key in REQUIRED_HOST:
        HOST_CHECKS[key](host.get(key), policy)
    for key, value in host.items():
        if key in HOST_CHECKS:
            HOST_CHECKS[key](value, policy)
        elif key == "networkmode":
            await check_network_mode(value, policy, lookup)
        elif key not in FREE_HOST and truthy(value):
            raise Refusal("unknown-field", f"the host config field {key!r} is not allowed")
    check_env(body, host)
    endpoints = obj(obj(body, "NetworkingConfig"), "EndpointsConfig")
    for network, endpoint in zip(keys_as_sent(endpoints), endpoints.values()):
        await check_network_mode(network, policy, lookup)
        # aliases, fixed addresses, MAC addresses: a user container could answer as the
        # hub (alias `hub`) or take the address another container gets after a restart
        if truthy(endpoint):
            raise Refusal("no-endpoint-config", f"endpoint settings on {network!r} are not "
                                                "allowed for user containers")
    for source in volume_sources(host):
        volume = await lookup.volume(source)
        if volume and COMPOSE_PROJECT in (volume.get("Labels") or {}):
            raise Refusal("volume-prefix", f"the volume {source!r} belongs to a compose project")


def volume_sources(host):
    sources = [b.split(":")[0] for b in host.get("binds") or []]
    sources += [m.get("source") for m in host.get("mounts") or [] if m.get("type") == "volume"]
    return [s for s in sources if s and not s.startswith("/")]


async def check_network_mode(value, policy, lookup):
    """The user network, or a network gpuhub made for a student (see `is_gpuhub_network`)."""
    if value is None or value == policy.user_network:
        return
    if not isinstance(value, str) or value in ("host", "none", "bridge", "default") \
            or value.startswith("container:"):
        raise Refusal("user-networks-only", f"the network mode {value!r} is not allowed")
    if not is_gpuhub_network(await lookup.network(value), policy):
        raise Refusal("user-networks-only", f"the network {value!r} is not gpuhub's")


def is_gpuhub_network(network, policy):
    """A network gpuhub made for a student: named {container prefix}-..., and not one of a
    compose project (the control network may share the prefix; it must never be joined)."""
    return bool(network) and network.get("Name", "").startswith(f"{policy.container_prefix}-") \
        and COMPOSE_PROJECT not in (network.get("Labels") or {})
