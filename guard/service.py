"""The body of `POST /services/create` (GPUHUB_MODE=swarm): what a user server's service
may be. The same rules as a container's (guard/create.py) applied to its TaskTemplate:
gpuhub's name and labels, the container user, all capabilities dropped and none added,
no host paths but the listed ones, gpuhub's volumes only, GPUs only from the inventory;
plus what only a service can ask for: one replica (a global service would run on every
node), no published ports (they open on every node), no aliases on the overlay, no
secrets, configs or plugins, placement by node only.
"""

import re

from .body import Folded, Refusal, get, keys_as_sent, obj, strings, truthy
from .create import NVIDIA_NONE, _gpu_key, _mounts, check_labels, check_name
from .policy import COMPOSE_PROJECT

# ContainerSpec fields that may hold anything
FREE_CONTAINER = frozenset(k.lower() for k in (
    "Image", "Command", "Args", "Hostname", "Dir", "TTY", "OpenStdin", "ReadOnly",
    "StopSignal", "StopGracePeriod", "HealthCheck", "Hosts", "DNSConfig", "Isolation", "Init"))
FREE_TASK = frozenset(k.lower() for k in ("RestartPolicy", "ForceUpdate"))
FREE_SERVICE = frozenset(k.lower() for k in ("UpdateConfig", "RollbackConfig"))
# placement by node only: `node.id==...`, `node.hostname==...`, `node.role==...`
CONSTRAINT = re.compile(r"node\.(id|hostname|role)\s*==\s*[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}")
LOG_DRIVERS = ("", "json-file", "local")


def _nfs_ok(mount, policy):
    """The `local` driver with exactly the NFS options hub/swarm.py sends for the export
    in GPUHUB_SWARM_NFS, one directory per user under it: nothing else (its options could
    bind any host path: type=none, o=bind, device=/)."""
    driver = obj(obj(mount, "VolumeOptions"), "DriverConfig")
    if not truthy(driver):
        return True
    host, _, path = policy.swarm_nfs.partition(":")
    options = dict(get(driver, "Options", Folded, Folded()).items())
    device = options.get("device", "")
    prefix = f":{path.rstrip('/')}/"
    return bool(host) and get(driver, "Name", str, "") == "local" and options == {
        "type": "nfs", "o": f"addr={host},rw,nfsvers=4", "device": device} \
        and device.startswith(prefix) and re.fullmatch(r"[a-zA-Z0-9_.-]+", device[len(prefix):]) \
        and device[len(prefix):] not in (".", "..")


def _check_mounts(spec, policy):
    mounts = spec.get("mounts") or []
    plain = []
    for mount in mounts:
        if isinstance(mount, Folded) and get(mount, "Type", str, "") == "volume":
            if not _nfs_ok(mount, policy):
                raise Refusal("no-volume-options", "volume driver options are not allowed "
                                                   "(only the NFS export in GPUHUB_SWARM_NFS)")
            # checked above; the container rules refuse any driver config
            stripped = Folded()
            stripped.update((k, v) for k, v in mount.items() if k != "volumeoptions")
            mount = stripped
        plain.append(mount)
    _mounts(plain, policy)


def _check_env(spec, policy):
    """No device requests in a service: GPUs reach the task through the NVIDIA runtime and
    NVIDIA_VISIBLE_DEVICES alone, so it must be set, and name only inventory GPUs."""
    env = {}
    for item in strings(spec, "Env"):
        key, _, value = item.partition("=")
        if key in env and key == "NVIDIA_VISIBLE_DEVICES":
            raise Refusal("nvidia-visible-devices", "NVIDIA_VISIBLE_DEVICES is set twice")
        env[key] = value
    visible = env.get("NVIDIA_VISIBLE_DEVICES")
    if visible is None:
        raise Refusal("nvidia-visible-devices", "NVIDIA_VISIBLE_DEVICES must be set (void or "
                                                "GPUs of the inventory): the image may say all")
    if visible.strip().lower() in NVIDIA_NONE:
        return
    unknown = [v for v in visible.split(",") if _gpu_key(v.strip()) not in policy.gpus]
    if unknown:
        raise Refusal("gpus-from-inventory", f"NVIDIA_VISIBLE_DEVICES names GPUs outside the "
                                             f"inventory (GPUHUB_GPUS): {', '.join(unknown)}")


def _check_container(spec, policy):
    for key, value in spec.items():
        if key in FREE_CONTAINER or key in ("env", "labels", "user", "mounts", "capabilitydrop"):
            continue
        rule = {"privileges": "no-privileged", "capabilityadd": "no-cap-add",
                "sysctls": "no-sysctls", "groups": "no-group-add", "secrets": "no-secrets",
                "configs": "no-secrets"}.get(key, "unknown-field")
        if truthy(value):
            raise Refusal(rule, f"the container spec field {key!r} is not allowed")
    if not isinstance(spec.get("capabilitydrop"), list) or "ALL" not in [
            str(v).upper() for v in spec["capabilitydrop"]]:
        raise Refusal("cap-drop-all", "user containers must drop all capabilities "
                                      "(CapabilityDrop: ALL)")
    if get(spec, "User", str, "") != policy.container_user:
        raise Refusal("container-user", f"user containers run as {policy.container_user}, "
                                        f"not {get(spec, 'User', str, '')!r}")
    check_labels(spec)
    _check_mounts(spec, policy)
    _check_env(spec, policy)


def _check_resources(task, policy):
    resources = obj(task, "Resources")
    for key, value in resources.items():
        if key not in ("limits", "reservations") and truthy(value):
            raise Refusal("unknown-field", f"the resources field {key!r} is not allowed")
    for named in obj(resources, "Reservations").get("genericresources") or []:
        spec = obj(named, "NamedResourceSpec")
        if truthy(obj(named, "DiscreteResourceSpec")) or \
                _gpu_key(get(spec, "Value", str, "")) not in policy.gpus:
            raise Refusal("gpus-from-inventory", "generic resources name only GPUs of the "
                                                 "inventory (GPUHUB_GPUS)")


def _check_networks(task, policy):
    for network in task.get("networks") or []:
        if not isinstance(network, Folded):
            raise Refusal("malformed-body", "Networks must be objects", 400)
        if get(network, "Target", str, "") != policy.swarm_network:
            raise Refusal("network-prefix", f"servers join the overlay {policy.swarm_network} "
                                            f"only, not {get(network, 'Target', str, '')!r}")
        if truthy(network.get("aliases")) or truthy(network.get("driveropts")):
            # as `hub` a server would receive the other servers' API calls
            raise Refusal("no-endpoint-config", "aliases and driver options on the overlay "
                                                "are not allowed for user servers")


def _check_task(task, policy):
    for key, value in task.items():
        if key in FREE_TASK or key in ("containerspec", "resources", "placement", "networks",
                                       "logdriver", "runtime"):
            continue
        if truthy(value):  # PluginSpec, NetworkAttachmentSpec, ...
            raise Refusal("unknown-field", f"the task template field {key!r} is not allowed")
    if get(task, "Runtime", str, "") not in ("", "container"):
        raise Refusal("unknown-field", "only container tasks")
    if get(obj(task, "LogDriver"), "Name", str, "") not in LOG_DRIVERS or \
            truthy(obj(task, "LogDriver").get("options")):
        raise Refusal("log-driver", "only the json-file or local log driver, without options")
    placement = obj(task, "Placement")
    for constraint in placement.get("constraints") or []:
        if not isinstance(constraint, str) or not CONSTRAINT.fullmatch(constraint):
            raise Refusal("placement-by-node", f"the placement {constraint!r} is not allowed "
                                               "(only node.id, node.hostname or node.role ==)")
    _check_resources(task, policy)
    _check_networks(task, policy)
    _check_container(obj(task, "ContainerSpec"), policy)


def check_service_create(body, policy):
    """Refuse the service unless it is a locked-down gpuhub user server."""
    name = get(body, "Name", str, "")
    check_name(name, policy)
    for key, value in body.items():
        if key in FREE_SERVICE or key in ("name", "labels", "tasktemplate", "mode",
                                          "endpointspec"):
            continue
        if truthy(value):  # Networks (deprecated, unchecked), ...
            raise Refusal("unknown-field", f"the service field {key!r} is not allowed")
    if any(k.startswith("com.docker.compose.") for k in
           keys_as_sent(get(body, "Labels", Folded, Folded()))):
        raise Refusal("gpuhub-labels", "user servers may not carry compose's labels")
    mode = obj(body, "Mode")
    # present, even empty ({"Global": {}}), is the mode the engine takes
    if any(mode.get(k) is not None for k in ("global", "globaljob", "replicatedjob")) or \
            get(obj(mode, "Replicated"), "Replicas", int, 1) not in (0, 1):
        raise Refusal("one-replica", "a user server is one replica (a global service runs on "
                                     "every node)")
    endpoint = obj(body, "EndpointSpec")
    if truthy(endpoint.get("ports")):
        raise Refusal("no-published-ports", "publishing ports (on every node) is not allowed")
    _check_task(obj(body, "TaskTemplate"), policy)


def is_user_service(service, policy):
    """A service the hub created: gpuhub's name prefix and labels, not a compose one."""
    spec = service.get("Spec") or {}
    labels = spec.get("Labels") or {}
    return (spec.get("Name", "").startswith(f"{policy.container_prefix}-")
            and "org.gpuhub.user" in labels and COMPOSE_PROJECT not in labels)


def is_user_task(task, policy):
    labels = ((task.get("Spec") or {}).get("ContainerSpec") or {}).get("Labels") or {}
    return "org.gpuhub.user" in labels and COMPOSE_PROJECT not in labels

