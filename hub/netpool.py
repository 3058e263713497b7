"""Server networks made ahead of time, so that a spawn does not wait for one.

Making a server's network (hub/networks.py: an internal /28, then hub, proxy and egress
proxy connected) took about 0.17 s on the spawn path, and removing it 0.26 s on the stop
path (docs/performance.md). A `NetworkPool` keeps `size` of them ready: each made exactly
like a server's own network (internal, no host address, a /28 of GPUHUB_SERVER_SUBNETS,
the peers attached), under a name no container name can have (`{prefix}-pool_<hex>`:
escaped user names never hold `_`, hub/names.py).

- `claim` hands a ready network to exactly one server: it leaves the pool under the lock
  and never comes back, so two spawns never get the same one, and a network is never
  reused: after its server stops it is removed (`teardown`) and a fresh one made
  (`refill`). Before it is handed out it is inspected again: still isolated, no container
  but the peers on it (one with a foreign container is dropped, not handed out), and any
  peer that is missing (a recreated proxy) is attached.
- Docker cannot relabel a network, so a claimed pool network keeps the user label ""
  it was made with; which server it belongs to is what is attached to it (the container is
  created on it) and the spawner's saved state.
- `sweep` runs once at start: this hub's server networks that no container uses or names
  (a teardown the last hub did not finish, an unclaimed pool network) are removed.

Plain functions over a docker.APIClient, called from threads; one lock guards the pool's
bookkeeping. Size 0: no pool, every spawn makes its network as before.
"""

import collections
import secrets
import threading

import docker.errors

from . import networks

POOL_INFIX = "pool_"
USER_LABEL = "org.gpuhub.user"  # on every user container (hub/spawner.py create_kwargs)


def pool_network_name(prefix, token=None):
    return f"{prefix}-{POOL_INFIX}{token or secrets.token_hex(6)}"


def is_pool_network(name, prefix):
    return name.startswith(f"{prefix}-{POOL_INFIX}")


class NetworkPool:
    def __init__(self, prefix, subnets, size):
        self.prefix = prefix
        self.subnets = subnets
        self.size = size
        self._lock = threading.Lock()
        self._ready = collections.deque()  # made, checked, unclaimed
        self._making = set()  # being made now (counted so that concurrent refills stay bounded)
        # every name this hub holds: ready, being made, claimed by a server (pool or not),
        # being torn down; the sweep never touches these
        self._held = set()

    def ready(self):
        with self._lock:
            return list(self._ready)

    def unclaimed(self):
        """Ready or being made: no server is on these yet."""
        with self._lock:
            return [*self._ready, *self._making]

    def wanted(self):
        """How many networks the pool lacks."""
        with self._lock:
            return max(0, self.size - len(self._ready) - len(self._making))

    def hold(self, name):
        """A server network made outside the pool (named like its container): not swept."""
        with self._lock:
            self._held.add(name)

    def let_go(self, name):
        with self._lock:
            self._held.discard(name)

    def claim(self, api, peers, unwanted=()):
        """(name of a ready network for one server or None if none is ready, [names dropped
        because something else was on them or they were no longer isolated])."""
        peer_ids = {p.id for p in [*peers, *unwanted]}
        dropped = []
        while True:
            with self._lock:
                if not self._ready:
                    return None, dropped
                name = self._ready.popleft()  # stays held: nobody else can get or sweep it
            try:
                network = networks.checked(api.inspect_network(name))
            except docker.errors.NotFound:
                self.let_go(name)
                continue
            except networks.NetworkError:
                dropped.append(name)
                continue
            if set(network.get("Containers") or {}) - peer_ids:
                # a container that is not the hub, the proxy or the egress proxy: it must not
                # see the next student's server. Left as it is for the admin (it stays held)
                dropped.append(name)
                continue
            fresh = [p for p in peers if p.id not in (network.get("Containers") or {})]
            networks.attach(api, name, fresh)
            networks.detach(api, name, [p for p in unwanted
                                        if p.id in (network.get("Containers") or {})])
            return name, dropped

    def refill(self, api, peers):
        """Make networks until `size` are ready or being made; returns the names made.
        Bounded: however many refills run at once, the pool never grows past `size`."""
        made = []
        while True:
            with self._lock:
                if len(self._ready) + len(self._making) >= self.size:
                    return made
                name = pool_network_name(self.prefix)
                self._making.add(name)
                self._held.add(name)
            try:
                networks.ensure_network(api, name, self.subnets, "")
                networks.attach(api, name, peers)
            except BaseException:
                with self._lock:
                    self._making.discard(name)
                self.teardown(api, name)
                raise
            with self._lock:
                self._making.discard(name)
                self._ready.append(name)
            made.append(name)

    def teardown(self, api, name):
        """Remove a server's network once its server is gone (everybody disconnected)."""
        try:
            networks.remove_network(api, name)
        finally:
            self.let_go(name)

    def sweep(self, api, peers):
        """At start: remove this hub's server networks that no container is on or names
        (stopped containers keep their network: HostConfig.NetworkMode). Returns names."""
        peer_ids = {p.id for p in peers}
        named = {c.get("HostConfig", {}).get("NetworkMode")
                 for c in api.containers(all=True, filters={"label": USER_LABEL})}
        removed = []
        for name in sorted(networks.server_networks(api, self.prefix) - named):
            try:
                members = set(api.inspect_network(name).get("Containers") or {})
            except docker.errors.NotFound:
                continue
            if members - peer_ids:
                continue
            with self._lock:  # held while removing: a spawn cannot take it up meanwhile
                if name in self._held:
                    continue
                networks.remove_network(api, name)
            removed.append(name)
        return removed
