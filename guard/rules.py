"""The guard's allow-list: every Docker API call gpuhub makes, and nothing else.

`ALLOWED` is the table: one row per call (method, path, the query parameters it may
carry, and the check that decides about its target and body). `REFUSED` names the
families that are refused outright, so that a refusal says why. Everything that matches
no row is refused too (rule: not-allowed). `decide()` applies the table; it returns the
path to forward (with a container's name resolved to its ID, so the call reaches the
container that was checked) and an optional filter for the engine's answer.

Who calls what (DockerSpawner 14 and hub/*.py):
  GET /version                  docker-py's version="auto" (DockerSpawner, docker.from_env)
  GET /containers/json          hub.config.running_servers (GPU reconcile at start-up)
  GET /containers/{id}/json     DockerSpawner.get_object/poll, docker-py's containers.list
  POST /containers/create       DockerSpawner.create_object
  POST /containers/{id}/start   DockerSpawner.start_object
  POST /containers/{id}/stop    DockerSpawner.stop_object
  DELETE /containers/{id}       DockerSpawner.remove_object (remove=True)
  GET /images/{name}/json       DockerSpawner.pull_image, get_command
  POST /images/create           DockerSpawner.pull_image (a missing image is pulled)
  networks, volumes, kill, wait, logs: the per-student networks and admin tools.
  GET/PUT /containers/{id}/archive  the admin CLI's backup and restore (hub/volumes.py),
                                into its helper containers only: never started, so no
                                running server's files are read or changed this way.
With GPUHUB_MODE=swarm only (DockerSpawner's SwarmSpawner, hub.startup, guard/service.py):
  POST /services/create         SwarmSpawner.create_object
  GET /services, /services/{id} hub.startup.running_servers, SwarmSpawner.get_object
  DELETE /services/{id}         SwarmSpawner.remove_object
  GET /tasks                    SwarmSpawner.get_task (poll, start_object)
  GET /nodes                    hub.startup (GPU inventory), GpuhubSwarmSpawner (nodes up)
Not allowed although DockerSpawner has them: exec (post_start_cmd, unset in gpuhub) and
archive uploads into running containers (internal_ssl's move_certs, off in gpuhub).
"""

import json
import re
from dataclasses import dataclass

from .body import Refusal, get, parse, truthy
from .create import check_create, check_name, is_gpuhub_network
from .service import check_service_create, is_user_service, is_user_task
from .policy import (COMPOSE_PROJECT, COMPOSE_SERVICE, MIN_API_VERSION, SERVER_LABEL,
                     USER_LABEL)

VERSION = re.compile(r"^/v(\d{1,3})\.(\d{1,3})(?=/)")
ID = r"(?P<id>[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127})"
IMAGE = r"(?P<id>[a-z0-9][a-zA-Z0-9_./:@-]{0,255})"


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # decoded, as the engine routes it
    query: dict  # name -> [values]
    body: bytes = b""


@dataclass(frozen=True)
class Decision:
    path: str  # what to forward (version prefix kept)
    rule: str  # the row that allowed it
    filter: object = None  # answer body -> answer body, for lists
    stream: bool = False  # the request body streams through, unread (a restore's tar)


@dataclass(frozen=True)
class Row:
    rule: str
    methods: tuple
    pattern: str
    params: tuple
    check: object  # async (match, request, policy, lookup) -> (path or None, filter or None)
    stream: bool = False  # a body of any size, streamed to the engine unread (see streams())


# -- targets --

def is_user_container(container, policy):
    """A container the hub created: gpuhub's name prefix and labels, not a compose one."""
    labels = container.get("Config", {}).get("Labels") or {}
    return (container.get("Name", "").startswith(f"/{policy.container_prefix}-")
            and USER_LABEL in labels and SERVER_LABEL in labels
            and COMPOSE_PROJECT not in labels)


def is_joining_service(container, policy):
    """The hub's, the proxy's (or the egress proxy's) container of the guard's project."""
    labels = container.get("Config", {}).get("Labels") or {}
    return (bool(policy.project) and labels.get(COMPOSE_PROJECT) == policy.project
            and labels.get(COMPOSE_SERVICE) in policy.joining_services)


async def user_container(ref, policy, lookup, joining_too=False):
    container = await lookup.container(ref)
    if container is None:
        raise Refusal("no-such-container", f"No such container: {ref}", 404)
    if not (is_user_container(container, policy)
            or (joining_too and is_joining_service(container, policy))):
        raise Refusal("gpuhub-containers-only", f"the container {ref!r} is not a gpuhub "
                                                "user container")
    return container["Id"]


async def gpuhub_network(ref, policy, lookup, user_network_too=False):
    network = await lookup.network(ref)
    if network is None:
        raise Refusal("no-such-network", f"network {ref} not found", 404)
    if not (is_gpuhub_network(network, policy)
            or (user_network_too and network.get("Name") == policy.user_network)):
        raise Refusal("gpuhub-networks-only", f"the network {ref!r} is not gpuhub's")
    return network["Id"]


# -- checks, one per kind of row --

async def engine(match, request, policy, lookup):
    return None, None


def _no_body(request):
    if request.body.strip() not in (b"", b"{}", b"null"):
        raise Refusal("no-body", f"{request.path} takes no body (old API versions read a "
                                 "HostConfig here)")


async def on_user_container(match, request, policy, lookup, joining_too=False):
    _no_body(request)
    container_id = await user_container(match["id"], policy, lookup, joining_too)
    start, end = match.span("id")
    return match.string[:start] + container_id + match.string[end:], None


async def inspect_container(match, request, policy, lookup):
    """User containers, and the hub's, proxy's and egress proxy's: the hub finds itself
    and its peers to join them to students' networks (hub/networks.py)."""
    return await on_user_container(match, request, policy, lookup, joining_too=True)


async def archive(match, request, policy, lookup):
    """Files out of or into a gpuhub container that is not running: the admin CLI's helper
    containers (created, never started; they mount one student's volume). A running
    server's files are not read or changed this way (rule: no-archive)."""
    if request.method == "GET":
        _no_body(request)
    container_id = await user_container(match["id"], policy, lookup)
    container = await lookup.container(container_id)
    if (container.get("State") or {}).get("Status") not in ("created", "exited"):
        raise Refusal("no-archive", "copying files in or out of a running container is not "
                                    "allowed (only the admin CLI's stopped helpers)")
    start, end = match.span("id")
    return match.string[:start] + container_id + match.string[end:], None


async def create_container(match, request, policy, lookup):
    name = (request.query.get("name") or [""])[0]
    check_name(name, policy)
    await check_create(name, parse(request.body, policy.max_body), policy, lookup)
    return None, None


def _keep(predicate):
    def answer_filter(raw):
        return json.dumps([item for item in json.loads(raw) if predicate(item)]).encode()
    return answer_filter


async def list_containers(match, request, policy, lookup):
    prefix = f"/{policy.container_prefix}-"

    def ours(item):
        labels = item.get("Labels") or {}
        user = (any(n.startswith(prefix) for n in item.get("Names") or [])
                and USER_LABEL in labels and SERVER_LABEL in labels
                and COMPOSE_PROJECT not in labels)
        return user or is_joining_service({"Config": {"Labels": labels}}, policy)
    return None, _keep(ours)


async def image_pull(match, request, policy, lookup):
    if not request.query.get("fromImage"):
        raise Refusal("pull-only", "images are pulled by name (fromImage), not imported")
    return None, None


async def volume_create(match, request, policy, lookup):
    body = parse(request.body, policy.max_body)
    name = get(body, "Name", str, "")
    if not name.startswith(f"{policy.volume_prefix}-"):
        raise Refusal("volume-prefix", f"gpuhub's volumes are named {policy.volume_prefix}-..., "
                                       f"not {name!r}")
    if get(body, "Driver", str, "") not in ("", "local") or truthy(body.get("driveropts")):
        # the local driver's options can bind any host path (type=none, o=bind, device=/)
        raise Refusal("no-volume-options", "volume drivers and driver options are not allowed")
    _no_compose_labels(body, "volume")
    for key in body:
        if key not in ("name", "driver", "driveropts", "labels") and truthy(body[key]):
            raise Refusal("unknown-field", f"the field {key!r} is not allowed")
    return None, None


def _no_compose_labels(body, what):
    if any(k.startswith("com.docker.compose.") for k in (get(body, "Labels", dict, {}) or {})):
        raise Refusal("no-compose-labels", f"a {what} may not carry compose's labels")


async def on_volume(match, request, policy, lookup):
    if not match["id"].startswith(f"{policy.volume_prefix}-"):
        raise Refusal("volume-prefix", f"the volume {match['id']!r} is not gpuhub's")
    volume = await lookup.volume(match["id"])
    if volume and COMPOSE_PROJECT in (volume.get("Labels") or {}):
        raise Refusal("volume-prefix", f"the volume {match['id']!r} belongs to a compose project")
    return None, None


async def list_volumes(match, request, policy, lookup):
    prefix = f"{policy.volume_prefix}-"

    def answer_filter(raw):
        answer = json.loads(raw)
        answer["Volumes"] = [v for v in answer.get("Volumes") or []
                             if v.get("Name", "").startswith(prefix)
                             and COMPOSE_PROJECT not in (v.get("Labels") or {})]
        return json.dumps(answer).encode()
    return None, answer_filter


NETWORK_OPTIONS = ("com.docker.network.bridge.inhibit_ipv4",
                   "com.docker.network.bridge.enable_icc",
                   "com.docker.network.bridge.enable_ip_masquerade",
                   "com.docker.network.driver.mtu")


async def network_create(match, request, policy, lookup):
    body = parse(request.body, policy.max_body)
    name = get(body, "Name", str, "")
    if not name.startswith(f"{policy.container_prefix}-"):
        raise Refusal("network-prefix", f"gpuhub's networks are named "
                                        f"{policy.container_prefix}-..., not {name!r}")
    if get(body, "Driver", str, "") not in ("", "bridge", "overlay"):
        # macvlan and ipvlan put containers on the host's own LAN
        raise Refusal("network-driver", "only bridge and overlay networks")
    options = get(body, "Options", dict, {}) or {}
    if set(options) - set(NETWORK_OPTIONS):
        raise Refusal("network-driver", f"network options other than {', '.join(NETWORK_OPTIONS)}"
                                        " are not allowed")
    ipam = body.get("ipam") or {}
    if not isinstance(ipam, dict) or get(ipam, "Driver", str, "") not in ("", "default") \
            or truthy(ipam.get("options")):
        raise Refusal("network-driver", "only the default address management")
    for key in ("ingress", "configonly", "configfrom", "scope"):
        if truthy(body.get(key)):
            raise Refusal("network-driver", f"the network field {key!r} is not allowed")
    _no_compose_labels(body, "network")
    return None, None


async def on_network(match, request, policy, lookup, user_network_too=False):
    network_id = await gpuhub_network(match["id"], policy, lookup, user_network_too)
    start, end = match.span("id")
    return match.string[:start] + network_id + match.string[end:], None


async def inspect_network(match, request, policy, lookup):
    return await on_network(match, request, policy, lookup, user_network_too=True)


async def network_attach(match, request, policy, lookup):
    """Connect or disconnect a user container, or the hub's or proxy's container."""
    path, _ = await on_network(match, request, policy, lookup)
    body = parse(request.body, policy.max_body)
    ref = get(body, "Container", str, "")
    container = await lookup.container(ref) if ref else None
    if container is None:
        raise Refusal("no-such-container", f"No such container: {ref}", 404)
    if not (is_user_container(container, policy) or is_joining_service(container, policy)):
        raise Refusal("gpuhub-containers-only", f"the container {ref!r} may not join gpuhub's "
                                                "networks")
    endpoint = body.get("endpointconfig") or {}
    if not isinstance(endpoint, dict):
        raise Refusal("malformed-body", "EndpointConfig must be an object", 400)
    # the hub, proxy and egress proxy may take an alias (users' servers reach `hub`); a
    # user container nothing: as `hub` it would receive other servers' API calls
    allowed = ("aliases",) if is_joining_service(container, policy) else ()
    extra = [k for k, v in endpoint.items() if k not in allowed and truthy(v)]
    if extra and request.path.endswith("/connect"):
        raise Refusal("no-endpoint-config", f"endpoint settings ({', '.join(extra)}) are not "
                                            f"allowed for {ref!r}")
    return path, None


async def list_networks(match, request, policy, lookup):
    def ours(item):
        return is_gpuhub_network(item, policy) or item.get("Name") == policy.user_network
    return None, _keep(ours)


# -- swarm mode (GPUHUB_MODE=swarm): user servers as services --

def _swarm_mode(request, policy):
    if policy.deploy_mode != "swarm":
        raise Refusal("no-swarm", f"swarm is not allowed ({request.method} {request.path}; "
                                  "GPUHUB_MODE is single)")


async def service_create(match, request, policy, lookup):
    _swarm_mode(request, policy)
    check_service_create(parse(request.body, policy.max_body), policy)
    return None, None


async def list_services(match, request, policy, lookup):
    _swarm_mode(request, policy)
    return None, _keep(lambda item: is_user_service(item, policy))


async def on_user_service(match, request, policy, lookup):
    _swarm_mode(request, policy)
    _no_body(request)
    service = await lookup.service(match["id"])
    if service is None:
        raise Refusal("no-such-service", f"service {match['id']} not found", 404)
    if not is_user_service(service, policy):
        raise Refusal("gpuhub-services-only", f"the service {match['id']!r} is not a gpuhub "
                                              "user server")
    start, end = match.span("id")
    return match.string[:start] + service["ID"] + match.string[end:], None


async def list_tasks(match, request, policy, lookup):
    _swarm_mode(request, policy)
    return None, _keep(lambda item: is_user_task(item, policy))


async def list_nodes(match, request, policy, lookup):
    _swarm_mode(request, policy)
    return None, None


CONTAINER = f"/containers/{ID}"
LIST = ("all", "limit", "size", "filters", "since", "before", "trunc_cmd")
LOGS = ("follow", "stdout", "stderr", "since", "until", "timestamps", "tail")

ALLOWED = (
    Row("ping", ("GET", "HEAD"), r"/_ping", (), engine),
    Row("version", ("GET",), r"/version", (), engine),
    Row("containers-list", ("GET",), r"/containers/json", LIST, list_containers),
    Row("container-create", ("POST",), r"/containers/create", ("name", "platform"),
        create_container),
    Row("container-inspect", ("GET",), CONTAINER + r"/json", ("size",), inspect_container),
    Row("container-start", ("POST",), CONTAINER + r"/start", ("detachKeys",), on_user_container),
    Row("container-stop", ("POST",), CONTAINER + r"/stop", ("t", "signal"), on_user_container),
    Row("container-kill", ("POST",), CONTAINER + r"/kill", ("signal",), on_user_container),
    Row("container-wait", ("POST",), CONTAINER + r"/wait", ("condition",), on_user_container),
    Row("container-remove", ("DELETE",), CONTAINER, ("v", "force", "link"), on_user_container),
    Row("container-logs", ("GET",), CONTAINER + r"/logs", LOGS, on_user_container),
    Row("container-archive-get", ("GET",), CONTAINER + r"/archive", ("path",), archive),
    Row("container-archive-put", ("PUT",), CONTAINER + r"/archive",
        ("path", "noOverwriteDirNonDir"), archive, stream=True),
    Row("image-inspect", ("GET",), f"/images/{IMAGE}/json", (), engine),
    Row("image-pull", ("POST",), r"/images/create", ("fromImage", "tag", "platform"), image_pull),
    Row("volume-create", ("POST",), r"/volumes/create", (), volume_create),
    Row("volumes-list", ("GET",), r"/volumes", ("filters",), list_volumes),
    Row("volume-inspect", ("GET",), f"/volumes/{ID}", (), on_volume),
    Row("volume-remove", ("DELETE",), f"/volumes/{ID}", ("force",), on_volume),
    Row("network-create", ("POST",), r"/networks/create", (), network_create),
    Row("networks-list", ("GET",), r"/networks", ("filters",), list_networks),
    Row("network-inspect", ("GET",), f"/networks/{ID}", ("verbose", "scope"), inspect_network),
    Row("network-remove", ("DELETE",), f"/networks/{ID}", (), on_network),
    Row("network-connect", ("POST",), f"/networks/{ID}/connect", (), network_attach),
    Row("network-disconnect", ("POST",), f"/networks/{ID}/disconnect", (), network_attach),
    Row("service-create", ("POST",), r"/services/create", (), service_create),
    Row("services-list", ("GET",), r"/services", ("filters", "status"), list_services),
    Row("service-inspect", ("GET",), f"/services/{ID}", ("insertDefaults",), on_user_service),
    Row("service-remove", ("DELETE",), f"/services/{ID}", (), on_user_service),
    Row("tasks-list", ("GET",), r"/tasks", ("filters",), list_tasks),
    Row("nodes-list", ("GET",), r"/nodes", ("filters",), list_nodes),
)

# refused outright, with the reason in the rule's name (first match wins)
REFUSED = (
    ("no-exec", r"/(containers/[^/]+/exec|exec/.*)", "running commands in containers"),
    ("no-attach", r"/containers/[^/]+/attach(/ws)?", "attaching to containers"),
    ("no-archive", r"/containers/[^/]+/(archive|export)", "copying files in or out of containers"),
    ("no-commit", r"/commit", "turning containers into images"),
    ("no-build", r"/(build|build/.*|session)", "building images"),
    ("no-swarm", r"/(swarm|services|nodes|tasks)(/.*)?", "swarm"),
    ("no-plugins", r"/plugins(/.*)?", "plugins"),
    ("no-secrets", r"/(secrets|configs)(/.*)?", "secrets and configs"),
    ("no-system", r"/(info|events|system/.*|auth|distribution/.*)", "engine-wide calls"),
    ("no-image-changes", r"/images/.*", "changing, pushing or exporting images"),
)

COMPILED = [(row, re.compile(row.pattern)) for row in ALLOWED]
COMPILED_REFUSED = [(rule, re.compile(p), what) for rule, p, what in REFUSED]


def split_version(path):
    """('/v1.41', '/containers/json') or ('', '/containers/json'); old versions refused."""
    m = VERSION.match(path)
    if not m:
        return "", path
    if (int(m[1]), int(m[2])) < MIN_API_VERSION:
        low = ".".join(map(str, MIN_API_VERSION))
        raise Refusal("api-version", f"API version {m[1]}.{m[2]} is older than {low}")
    return m[0], path[m.end():]


def streams(method, path):
    """True if the call's body streams to the engine unread (decide() then sees none):
    a restore's tar may be gigabytes, far above the guard's body limit."""
    try:
        _, path = split_version(path)
    except Refusal:
        return False
    return any(row.stream and method in row.methods and pattern.fullmatch(path)
               for row, pattern in COMPILED)


async def decide(request, policy, lookup):
    """The Decision for `request`, or Refusal naming the rule."""
    if "//" in request.path or "/." in request.path or "\\" in request.path:
        raise Refusal("malformed-path", f"the path {request.path!r} is not in its plain form", 400)
    version, path = split_version(request.path)
    for row, pattern in COMPILED:
        m = pattern.fullmatch(path)
        if m and request.method in row.methods:
            unknown = sorted(set(request.query) - set(row.params))
            if unknown:
                raise Refusal("query-params", f"{request.method} {path} does not take "
                                              f"{', '.join(unknown)}")
            try:
                forwarded, answer_filter = await row.check(m, request, policy, lookup)
            except (TypeError, AttributeError, ValueError, KeyError) as e:
                # a field of an unexpected type or shape: refused, never forwarded
                raise Refusal("malformed-body", f"the body has an unexpected shape ({e})",
                              400) from None
            return Decision(version + (forwarded or path), row.rule, answer_filter, row.stream)
    for rule, pattern, what in COMPILED_REFUSED:
        if pattern.fullmatch(path):
            raise Refusal(rule, f"{what} is not allowed ({request.method} {path})")
    raise Refusal("not-allowed", f"{request.method} {path} is not on the guard's allow-list")
