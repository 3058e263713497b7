"""A real multi-node Docker Swarm on this one machine, for the swarm-mode tests.

Every node is a dockerd of its own: its own network namespace (`ip netns add`), data
root, exec root (so its own containerd) and socket. dockerd is started with
`nsenter --net=...`, not `ip netns exec`: the latter remounts /sys and hides the cgroup
mounts dockerd needs. The nodes are linked by veth pairs to a bridge that lives in a
namespace of its own (the "switch"), so nothing is added to the host's own network
namespace: no route, no address, no iptables rule there. Images reach the nodes with
`docker save | docker load` (there is no registry).

Names carry the run id (GPUHUB_E2E_ID) so that runs from several checkouts do not meet;
`down()` removes everything `up()` made, also after a half-finished `up()`.
"""

import ipaddress
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import docker

from .stack import RUN_ID, wait_for

# The nodes' link network. 10.231.0.0/16 is used by no other test of this repository;
# up() still refuses to start when the host routes any part of the chosen /24.
LINK_POOL = ipaddress.ip_network("10.231.0.0/16")
# Overlay networks inside the swarm; only the nodes' namespaces ever route them.
OVERLAY_POOL = "10.232.0.0/16"
SHIM_DIR = "/opt/gpuhub-ci/bin"  # the no-op nvidia-container-runtime-hook (.ci/docker-up)
TAG = f"gs{RUN_ID}"[:6]  # interface names have at most 15 characters: tag + n9a


def run(*cmd, check=True, timeout=120, **kwargs):
    result = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def host_routes():
    """The host's routed networks (root namespace), to keep clear of them."""
    out = run("ip", "-j", "route", "show", "table", "all").stdout
    nets = []
    for route in json.loads(out or "[]"):
        dst = route.get("dst", "")
        if dst in ("default", "") or ":" in dst:
            continue
        try:
            nets.append(ipaddress.ip_network(dst, strict=False))
        except ValueError:
            pass
    return nets


def free_link_subnet():
    used = host_routes()
    for subnet in LINK_POOL.subnets(new_prefix=24):
        if subnet.network_address.packed[2] < 10:
            continue
        if not any(subnet.overlaps(u) for u in used):
            return subnet
    raise RuntimeError(f"no /24 of {LINK_POOL} is free of the host's routes")


def unmount(wanted):
    """Lazily unmount every mount point for which wanted(path) holds, deepest first."""
    points = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for point in sorted(filter(wanted, points), key=len, reverse=True):
        run("umount", "-l", point, check=False)


class Node:
    def __init__(self, swarm, index, role, generic_resources=()):
        self.swarm = swarm
        self.index = index
        self.role = role
        self.name = f"{swarm.tag}n{index}"  # its network namespace
        self.hostname = f"gpuhub-{swarm.tag}-{role}{index}"
        self.root = swarm.root / self.name
        self.sock = f"/run/gpuhub-swarm-{swarm.tag}-{index}.sock"
        # short: containerd's socket lives in it, and a socket path has at most 107 bytes
        self.exec_root = Path(f"/run/gpuhub-swarm-{swarm.tag}-{index}")
        # outside the run's data root: a later run finds the daemon of one that was killed
        self.pidfile = Path(f"/run/gpuhub-swarm-{swarm.tag}-{index}.pid")
        self.url = f"unix://{self.sock}"
        self.generic_resources = list(generic_resources)
        self.proc = None
        self._client = None

    @property
    def addr(self):
        return str(self.swarm.subnet.network_address + 10 + self.index)

    @property
    def client(self):
        if self._client is None:
            self._client = docker.DockerClient(base_url=self.url, timeout=120)
        return self._client

    def docker(self, *args, check=True, timeout=120, **kwargs):
        return run("docker", "-H", self.url, *args, check=check, timeout=timeout, **kwargs)

    def start(self):
        """The namespace, its link to the switch, and the daemon."""
        veth_node, veth_switch = f"{self.name}a", f"{self.name}b"
        run("ip", "netns", "add", self.name)
        run("ip", "link", "add", veth_node, "type", "veth", "peer", "name", veth_switch)
        run("ip", "link", "set", veth_node, "netns", self.name)
        run("ip", "link", "set", veth_switch, "netns", self.swarm.switch)
        ns = ["ip", "netns", "exec", self.name]
        run(*ns, "ip", "link", "set", "lo", "up")
        run(*ns, "ip", "addr", "add", f"{self.addr}/{self.swarm.subnet.prefixlen}", "dev", veth_node)
        run(*ns, "ip", "link", "set", veth_node, "up")
        sw = ["ip", "netns", "exec", self.swarm.switch]
        run(*sw, "ip", "link", "set", veth_switch, "master", "br0")
        run(*sw, "ip", "link", "set", veth_switch, "up")
        # the daemon
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        self.exec_root.mkdir(parents=True, exist_ok=True)
        config = {
            "hosts": [self.url],
            "data-root": str(self.root / "data"),
            "exec-root": str(self.exec_root),
            "pidfile": str(self.pidfile),
            "storage-driver": "overlay2",
            # node-generic-resources: the GPUs this node advertises to the swarm
            "node-generic-resources": self.generic_resources,
            "runtimes": {"nvidia": {"path": "runc"}},
            "default-address-pools": [{"base": f"172.{30 + self.index}.0.0/16", "size": 24}],
            "log-driver": "json-file",
            "shutdown-timeout": 3,  # test containers need no grace period
        }
        (self.root / "daemon.json").write_text(json.dumps(config))
        log = open(self.root / "dockerd.log", "w")
        env = {**os.environ, "PATH": f"{SHIM_DIR}:{os.environ['PATH']}"}
        self.proc = subprocess.Popen(
            # a UTS namespace of its own too, so that each node has its own hostname
            ["nsenter", f"--net=/var/run/netns/{self.name}", "unshare", "--uts", "sh", "-c",
             f'hostname {self.hostname} && exec dockerd --config-file {self.root / "daemon.json"}'],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True)
        wait_for(self._answers, 90, f"dockerd of {self.name} ({self.root / 'dockerd.log'})")

    def _answers(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"dockerd of {self.name} exited:\n"
                                 + (self.root / "dockerd.log").read_text()[-3000:])
        return self.docker("info", "--format", "{{.ID}}", check=False).returncode == 0

    def stop(self, timeout=60):
        """Stop the daemon (SIGTERM, then SIGKILL) and its containers' processes."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._client = None

    def node_id(self):
        return self.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()


class Swarm:
    """A manager and `workers` workers; `gpus` maps a node index to the GPU UUIDs that
    node advertises as the generic resource `NVIDIA-GPU` (fake ones: there is no GPU)."""

    def __init__(self, workdir, workers=2, gpus=None, tag=TAG):
        self.root = Path(workdir)
        self.tag = tag
        self.switch = f"{tag}sw"
        self.subnet = None
        gpus = gpus or {}
        self.nodes = [Node(self, i, "manager" if i == 0 else "worker",
                           [f"NVIDIA-GPU={g}" for g in gpus.get(i, ())])
                      for i in range(workers + 1)]

    @property
    def manager(self):
        return self.nodes[0]

    @property
    def workers(self):
        return self.nodes[1:]

    def clear_stale(self):
        """What a run of this tag that was killed (no teardown) left: its daemons (by their
        pid files, if they still are dockerd), namespaces, sockets and exec roots."""
        for node in self.nodes:
            try:
                pid = int(node.pidfile.read_text())
                if b"dockerd" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass
        # the killed run's data roots (elsewhere under /tmp) stay mounted: unmount them
        names = [f"/{node.name}/data" for node in self.nodes]
        unmount(lambda m: any(n in m for n in names))
        self.down()

    def up(self):
        self.clear_stale()
        self.subnet = free_link_subnet()
        run("ip", "netns", "add", self.switch)
        sw = ["ip", "netns", "exec", self.switch]
        run(*sw, "ip", "link", "add", "br0", "type", "bridge")
        run(*sw, "ip", "link", "set", "br0", "up")
        for node in self.nodes:
            node.start()
        m = self.manager
        m.docker("swarm", "init", "--advertise-addr", m.addr, "--listen-addr", f"{m.addr}:2377",
                 "--default-addr-pool", OVERLAY_POOL, "--default-addr-pool-mask-length", "24")
        token = m.docker("swarm", "join-token", "-q", "worker").stdout.strip()
        for node in self.workers:
            node.docker("swarm", "join", "--token", token, "--advertise-addr", node.addr,
                        "--listen-addr", f"{node.addr}:2377", f"{m.addr}:2377")
        wait_for(lambda: self.ready_nodes() == len(self.nodes), 60, "every node Ready in the swarm")

    def ready_nodes(self):
        out = self.manager.docker("node", "ls", "--format", "{{.Status}}").stdout.split()
        return out.count("Ready")

    def load_image(self, image, nodes=None):
        """`docker save` from the host's engine, `docker load` into each node."""
        for node in nodes or self.nodes:
            save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
            load = subprocess.run(["docker", "-H", node.url, "load", "-q"], stdin=save.stdout,
                                  capture_output=True, text=True, timeout=600)
            save.stdout.close()
            if save.wait(600) or load.returncode:
                raise RuntimeError(f"loading {image} into {node.name} failed: {load.stderr}")

    def down(self):
        # no `swarm leave`: the namespaces and data roots go anyway, and it takes seconds
        t0 = time.monotonic()
        for node in self.nodes:  # all at once: each waits for its containers
            if node.proc and node.proc.poll() is None:
                os.killpg(node.proc.pid, signal.SIGTERM)
        for node in self.nodes:
            node.stop()
        for node in self.nodes:
            # leftovers of a killed daemon: its containers' shims and their processes
            leftovers = run("pgrep", "-f", str(node.exec_root), check=False).stdout.split()
            for pid in leftovers:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            run("ip", "netns", "delete", node.name, check=False)
            for path in (Path(node.sock), node.pidfile):
                if path.exists():
                    path.unlink()
            unmount(lambda m: m.startswith(f"{node.exec_root}/"))  # a killed daemon's netns
            run("rm", "-rf", "--one-file-system", str(node.exec_root), check=False)
        run("ip", "netns", "delete", self.switch, check=False)
        # overlay2 mounts of the nodes' containers would keep rm from finishing
        unmount(lambda m: m.startswith(f"{self.root}/"))
        run("rm", "-rf", "--one-file-system", str(self.root), check=False, timeout=300)
        print(f"swarm: torn down in {time.monotonic() - t0:.0f}s")


def load_images(images, nodes, workdir):
    """`docker save` the host's `images` once into `workdir`, then `docker load` them into
    every node of `nodes` at once (the user image is several GB)."""
    archive = Path(workdir) / "images.tar"
    run("docker", "save", "-o", str(archive), *images, timeout=900)
    try:
        loads = [subprocess.Popen(["docker", "-H", node.url, "load", "-q", "-i", str(archive)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for node in nodes]
        for node, load in zip(nodes, loads):
            _, err = load.communicate(timeout=900)
            if load.returncode:
                raise RuntimeError(f"loading {images} into {node.name} failed: {err}")
    finally:
        archive.unlink()


def netns_request(node, method, url, headers=None, json_body=None, timeout=30):
    """An HTTP request from inside `node`'s network namespace (where the bridge networks of
    its containers are; the host's namespace has no route to them), with curl."""
    cmd = ["nsenter", f"--net=/var/run/netns/{node.name}", "curl", "-sS", "-k", "-X", method,
           "--max-time", str(timeout), "-w", "\n%{http_code}"]
    for key, value in (headers or {}).items():
        cmd += ["-H", f"{key}: {value}"]
    if json_body is not None:
        cmd += ["-H", "Content-Type: application/json", "-d", json.dumps(json_body)]
    out = run(*cmd, url, timeout=timeout + 10).stdout
    text, _, code = out.rpartition("\n")
    return Response(int(code), text)


class Response:
    """What tests/e2e/stack.py reads of a requests.Response."""

    def __init__(self, status_code, text):
        self.status_code = status_code
        self.text = text
        self.ok = 200 <= status_code < 400

    def json(self):
        return json.loads(self.text)
