"""Docker Swarm mode: which GPU is on which node, where a server's task may run, and what
a server's service spec adds to DockerSpawner's SwarmSpawner. Plain functions on what the
Docker API returns; `hub.spawner.GpuhubSwarmSpawner` wires them in.

GPUs reach a task through the NVIDIA runtime (the default runtime on every node) and
NVIDIA_VISIBLE_DEVICES, and the task is pinned to its GPU's node by a `node.id`
constraint. Why not Swarm's own generic resources (`--generic-resource NVIDIA-GPU=1`):
the hub's database already hands out GPUs without double-booking, and Swarm's accounting
adds its own failure modes -- on Docker 20.10 tasks asking for a generic resource were
rejected with "assigned node no longer meets constraints" on this test swarm, and the
exposed DOCKER_RESOURCE_NVIDIA_GPU variable is only honoured by a runtime configured to
read it (docs/scale-out.md lists the upstream reports). The nodes' advertised generic
resources (`node-generic-resources` in daemon.json) are still the inventory: each node
says which GPUs it has, so the hub's list cannot drift from the machines.
"""

from docker.types import DriverConfig, Mount, RestartPolicy

from .gpus import Gpu, GpuConfigError, parse_inventory

GPU_KIND = "NVIDIA-GPU"  # the generic resource's kind in node-generic-resources
HOME_MODES = ("pinned", "shared")


def hostname(node):
    return node.get("Description", {}).get("Hostname", "") or node.get("ID", "")


def node_gpus(nodes, kind=GPU_KIND):
    """The swarm's GPUs, [Gpu(node=node ID)], from each node's advertised generic
    resources of `kind` (docker API `nodes()`), by host name then as advertised. A GPU must
    be named by its UUID (indexes repeat from node to node) and be on one node only."""
    found, seen = [], {}
    for node in sorted(nodes, key=hostname):
        resources = (node.get("Description", {}).get("Resources", {})
                     .get("GenericResources") or [])
        values = [r["NamedResourceSpec"]["Value"] for r in resources
                  if r.get("NamedResourceSpec", {}).get("Kind") == kind]
        source = f"node {hostname(node)}: node-generic-resources {kind}"
        for position, gpu in enumerate(parse_inventory(",".join(values), source)):
            if gpu.uuid.isdigit():
                raise GpuConfigError(f"{source}={gpu.uuid}: name the GPU by its UUID "
                                     "(`nvidia-smi -L`); indexes repeat on every node")
            key = gpu.uuid.lower()
            if key in seen:
                raise GpuConfigError(f"{source}: {gpu.uuid} is also advertised by node "
                                     f"{seen[key]}; a GPU is on one node")
            seen[key] = hostname(node)
            found.append(Gpu(index=position, uuid=gpu.uuid, node=node["ID"]))
    return found


def ready_nodes(nodes):
    """IDs of the nodes that are up and take tasks (ready and active)."""
    return {n["ID"] for n in nodes
            if n.get("Status", {}).get("State") == "ready"
            and n.get("Spec", {}).get("Availability") == "active"}


def server_node(gpus, home_node=""):
    """The node a server must run on: its GPUs' node, else the node holding its home
    (pinned homes), else "" (any node with room). Refuses GPUs on two nodes."""
    nodes = {g.node for g in gpus}
    if len(nodes) > 1:
        raise ValueError(f"GPUs on {len(nodes)} nodes for one server: {sorted(nodes)}")
    node = nodes.pop() if nodes else ""
    if node and home_node and node != home_node:
        raise ValueError(f"GPU on node {node} but the home is on node {home_node}")
    return node or home_node


def placement(node):
    """Placement spec of the server's task: on `node` when it has one."""
    return {"constraints": [f"node.id=={node}"] if node else []}


def container_spec(user, labels):
    """ContainerSpec fields a server's container gets besides image, env and mounts: the
    same lock-down as on a single host, as far as services can express it (docker-py 7,
    API 1.41: no no-new-privileges, pids limit or storage quota; docs/security.md)."""
    return {"user": user, "init": True, "cap_drop": ["ALL"], "labels": labels}


def task_spec():
    """A server whose task ends stays ended, as a container would: Swarm must not start it
    again elsewhere (without its GPU, or on another node than its home)."""
    return {"restart_policy": RestartPolicy(condition="none")}


def endpoint_spec():
    """DNS round robin: the service name resolves to the task's own address. The default,
    a virtual IP, is load-balanced by IPVS, which not every kernel has; one task needs none."""
    return {"mode": "dnsrr"}


def home_mount(volume, target, mode="pinned", nfs_export="", username=""):
    """The student's home: a named volume on the node the server runs on (pinned), or on
    NFS through the `local` driver (shared), one directory per user under `nfs_export`
    ("server:/path"). The directory must exist on the server (the driver does not create it)."""
    if mode not in HOME_MODES:
        raise ValueError(f"home mode {mode!r}: expected one of {HOME_MODES}")
    driver = None
    if mode == "shared":
        host, _, path = nfs_export.partition(":")
        if not host or not path.startswith("/"):
            raise ValueError(f"NFS export {nfs_export!r}: expected server:/path")
        driver = DriverConfig("local", {"type": "nfs", "o": f"addr={host},rw,nfsvers=4",
                                        "device": f":{path.rstrip('/')}/{username}"})
    return Mount(target=target, source=volume, type="volume", driver_config=driver)


def task_node(task):
    """The node ID a task was given ("" while unassigned)."""
    return (task or {}).get("NodeID", "")


def gone_reason(task, nodes):
    """Why a server whose task Swarm still calls running is gone: its node is down (a dead
    node's tasks keep their last reported state); None while its node is up."""
    node = task_node(task)
    if node and node not in ready_nodes(nodes):
        return f"node {node} is down"
    return None
