"""A Docker network of its own for every user server: students cannot reach each other.

Each server's network is named like its container (container and network names are
separate namespaces in Docker) and is

- internal: Docker gives it no route out and no NAT;
- without an address on the host (`com.docker.network.bridge.inhibit_ipv4`): on Docker
  20.10 a container on an internal network still reaches every port of the host through
  the bridge's gateway address (tried: see docs/security.md), because that traffic goes
  to the host's INPUT chain, which Docker's isolation rules (FORWARD) do not cover;
- small: a /28 from GPUHUB_SERVER_SUBNETS, so thousands fit where Docker's default pools
  hold about thirty networks.

Its members: the user container, the hub (alias `hub`), the proxy, and, when students
may go out (GPUHUB_USER_EGRESS=proxy), the egress proxy (alias `egress`). The hub, proxy
and egress containers are found by their compose labels; they are "peers".

Plain functions over a docker.APIClient, so the logic is tested without Docker. Every
Docker API call gpuhub makes for this is in this module (the guard allows exactly these).
"""

import ipaddress
import random
import socket
from dataclasses import dataclass

import docker.errors
from docker.types import IPAMConfig, IPAMPool

# marks the networks this module made; the value is the user name
NETWORK_LABEL = "org.gpuhub.server-network"
INHIBIT_IPV4 = "com.docker.network.bridge.inhibit_ipv4"
PREFIXLEN = 28  # 16 addresses: network, gateway (reserved, unused), broadcast, 13 members
# Docker refuses a subnet that overlaps any network, also those the guard hides from the
# hub (another deployment's on the same engine): each refusal moves the window on by one
CREATE_ATTEMPTS = 64
COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"


class NetworkError(RuntimeError):
    """A server network could not be made or joined."""


@dataclass(frozen=True)
class Peer:
    """A container that joins every server network: the hub, a proxy, the egress proxy."""
    id: str
    name: str
    service: str  # its compose service
    alias: str = ""  # the name users' containers reach it by, e.g. "hub"
    networks: frozenset = frozenset()  # network names it is attached to now


def server_network_name(container_name):
    """The network of a server is named exactly like its container."""
    return container_name


def subnets_in(network_attrs):
    return [ipaddress.ip_network(c["Subnet"], strict=False)
            for c in (network_attrs.get("IPAM") or {}).get("Config") or [] if c.get("Subnet")]


def free_subnets(pool, used, prefixlen=PREFIXLEN):
    """The /prefixlen subnets of `pool` that overlap none of `used`, in order."""
    pool = ipaddress.ip_network(pool)
    if prefixlen < pool.prefixlen:
        raise NetworkError(f"GPUHUB_SERVER_SUBNETS={pool} is smaller than one /{prefixlen}")
    for candidate in pool.subnets(new_prefix=prefixlen):
        if not any(candidate.overlaps(u) for u in used):
            yield candidate


def ensure_network(api, name, pool, user, rng=random):
    """The server network `name` (its inspect data): found, or created in a free /28 of
    `pool`. Docker refuses a subnet that overlaps another network, so a network another
    hub or a concurrent spawn took meanwhile just means: try another one."""
    try:
        return checked(api.inspect_network(name))
    except docker.errors.NotFound:
        pass
    used = [s for n in api.networks(filters={"label": NETWORK_LABEL}) for s in subnets_in(n)]
    tried = []
    for _ in range(CREATE_ATTEMPTS):
        # a random one of the first free ones: a burst of spawns rarely picks the same
        candidates = []
        for subnet in free_subnets(pool, used + tried):
            candidates.append(subnet)
            if len(candidates) == 32:
                break
        if not candidates:
            raise NetworkError(f"no free /{PREFIXLEN} left in GPUHUB_SERVER_SUBNETS={pool} "
                               f"for {name} ({len(used)} server networks exist)")
        subnet = rng.choice(candidates)
        try:
            api.create_network(
                name, driver="bridge", internal=True, check_duplicate=True,
                options={INHIBIT_IPV4: "true"},
                ipam=IPAMConfig(pool_configs=[IPAMPool(subnet=str(subnet))]),
                labels={NETWORK_LABEL: user})
        except docker.errors.APIError as e:
            message = str(e.explanation or e).lower()
            if "overlap" in message:
                tried.append(subnet)
                continue
            if "already exists" in message:
                break  # made meanwhile by a spawn of the same server: use it
            raise NetworkError(f"cannot create the network {name}: {e.explanation or e}") from e
        break
    else:
        raise NetworkError(f"cannot create the network {name}: {CREATE_ATTEMPTS} subnets of "
                           f"{pool} were taken (tried {', '.join(map(str, tried))})")
    return checked(api.inspect_network(name))


def checked(network):
    """A network of a server's name that is not isolated (someone made it by hand, or an
    older gpuhub) must not carry a student's server."""
    options = network.get("Options") or {}
    if not network.get("Internal") or options.get(INHIBIT_IPV4) != "true":
        raise NetworkError(f"the Docker network {network['Name']} exists but is not an isolated "
                           "server network (internal, no host address): remove it "
                           f"(docker network rm {network['Name']})")
    return network


def own_container(api, hostname=None):
    """The hub's own container: Docker sets a container's host name to its short ID."""
    hostname = hostname or socket.gethostname()
    try:
        return api.inspect_container(hostname)
    except docker.errors.NotFound:
        raise NetworkError(f"the hub cannot find its own container ({hostname!r}): it must "
                           "run in a container of the compose project, without `hostname:`") from None


def find_peers(api, hub, services):
    """The hub and the running containers of `services` (compose service -> alias) of
    the hub's compose project."""
    project = hub["Config"]["Labels"].get(COMPOSE_PROJECT)
    if not project:
        raise NetworkError("the hub's container has no compose project label: start it "
                           "with docker compose")
    peers = [Peer(hub["Id"], hub["Name"].lstrip("/"), hub["Config"]["Labels"].get(COMPOSE_SERVICE, ""),
                  "hub", frozenset(hub["NetworkSettings"]["Networks"]))]
    found = api.containers(filters={"label": f"{COMPOSE_PROJECT}={project}", "status": "running"})
    for c in found:
        service = c["Labels"].get(COMPOSE_SERVICE)
        if service in services and c["Id"] != hub["Id"]:
            peers.append(Peer(c["Id"], c["Names"][0].lstrip("/"), service, services[service],
                              frozenset((c.get("NetworkSettings") or {}).get("Networks") or {})))
    return peers


def attach(api, network, peers):
    """Connect every peer that is not on `network` yet; returns the names connected."""
    connected = []
    for peer in peers:
        if network in peer.networks:
            continue
        try:
            api.connect_container_to_network(peer.id, network,
                                             aliases=[peer.alias] if peer.alias else None)
        except docker.errors.APIError as e:
            if "already exists" not in str(e.explanation or e):
                raise NetworkError(f"cannot connect {peer.name} to {network}: "
                                   f"{e.explanation or e}") from e
        connected.append(peer.name)
    return connected


def detach(api, network, peers):
    """Disconnect peers from `network`; returns the names disconnected."""
    gone = []
    for peer in peers:
        if network not in peer.networks:
            continue
        try:
            api.disconnect_container_from_network(peer.id, network, force=True)
        except docker.errors.NotFound:
            pass
        gone.append(peer.name)
    return gone


def remove_network(api, network):
    """Take everybody off a stopped server's network (hub, proxy, egress) and remove it."""
    try:
        members = api.inspect_network(network).get("Containers") or {}
    except docker.errors.NotFound:
        return
    for container in members:
        try:
            api.disconnect_container_from_network(container, network, force=True)
        except docker.errors.NotFound:
            pass
    try:
        api.remove_network(network)
    except docker.errors.NotFound:
        pass


def server_networks(api, prefix):
    """Names of this hub's server networks (made by ensure_network, named {prefix}-...)."""
    return {n["Name"] for n in api.networks(filters={"label": NETWORK_LABEL})
            if n["Name"].startswith(f"{prefix}-")}


def reconcile(api, prefix, peers, unwanted=(), skip=()):
    """Every peer on every server network but those in `skip` (being removed), and none
    of `unwanted` (e.g. the egress proxy when GPUHUB_USER_EGRESS=deny): a proxy recreated
    by `docker compose up` comes back without its attachments, a hub restarted from a new
    image too. A network removed meanwhile is skipped. Returns [(action, container, network)]."""
    changes = []
    for network in sorted(server_networks(api, prefix) - set(skip)):
        try:
            changes += [("connected", name, network) for name in attach(api, network, peers)]
            changes += [("disconnected", name, network)
                        for name in detach(api, network, unwanted)]
        except NetworkError as e:
            if not isinstance(e.__cause__, docker.errors.NotFound):
                raise
    return changes
