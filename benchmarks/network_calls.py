#!/usr/bin/env python3
"""What a gpuhub spawn's own network costs in Docker calls, and what the Docker API guard
adds to them: one stack (docker-compose.yml with the Traefik API stand-in), then, in
interleaved rounds, the calls hub/networks.py makes for one server (ensure_network,
find_peers, attach the hub, proxy and egress proxy; on stop remove_network), timed once
straight at the engine's socket and once through the guard's socket (the hub's path).
A note for docs/performance.md, not part of `make bench`.

    GPUHUB_E2E_ID=xy python benchmarks/network_calls.py --rounds 10
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import docker  # noqa: E402

from benchmarks.alternatives import BenchStack, workdir_for  # noqa: E402
from benchmarks.stats import summary  # noqa: E402
from hub import networks  # noqa: E402


def cycle(api, name, pool, user, hub_id):
    """One server's network, as the spawner makes and removes it (no user container)."""
    t0 = time.perf_counter()
    networks.ensure_network(api, name, pool, user)
    peers = networks.find_peers(api, networks.own_container(api, hostname=hub_id),
                                {"proxy": "", "egress": "egress"})
    networks.attach(api, name, peers)
    t1 = time.perf_counter()
    networks.remove_network(api, name)
    return t1 - t0, time.perf_counter() - t1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    client = docker.from_env()
    root = Path(tempfile.mkdtemp(prefix="gpuhubnetcalls-"))
    stack = BenchStack(workdir_for(root, "stack"), client, "gpuhubnetcalls", False)
    try:
        stack.start()
        stack.wait_healthy()
        hub_id = stack.container("hub").id
        socket = Path(client.volumes.get(f"{stack.project}_docker-api").attrs["Mountpoint"]) / "docker.sock"
        paths = {"engine": docker.APIClient(base_url="unix:///var/run/docker.sock"),
                 "guard": docker.APIClient(base_url=f"unix://{socket}")}
        pool = stack.env.get("GPUHUB_SERVER_SUBNETS", "10.128.0.0/16")
        samples = {k: {"start": [], "stop": [], "version": []} for k in paths}
        for r in range(args.rounds):
            for label, api in paths.items():
                start, stop = cycle(api, f"{stack.prefix}-netcalls{r}{label}", pool, f"netcalls{r}", hub_id)
                t = time.perf_counter()
                api.version()
                samples[label]["version"].append(time.perf_counter() - t)
                samples[label]["start"].append(start)
                samples[label]["stop"].append(stop)
        out = {label: {k: summary(v, "s") for k, v in s.items()} for label, s in samples.items()}
        for label in out:
            for v in out[label].values():
                v.pop("samples", None)
        print(json.dumps(out, indent=2))
    finally:
        stack.down()


if __name__ == "__main__":
    main()
