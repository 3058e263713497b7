#!/usr/bin/env python3
"""Does the hub block, or is it starved? The hub API's latency during a burst of spawns,
on one gpuhub stack in two variants, interleaved (shared, split, shared, split ...):

- shared: hub and user servers on every CPU (what `docker compose up` does);
- split: the hub on one CPU (benchmarks/compose.cpusets.yml), the user servers on the
  others (GPUHUB_CPUSET_CPUS, which the spawner passes to Docker as --cpuset-cpus).

If the split variant's p99 falls to the idle hub's, the shared variant's was CPU
starvation; if it stays high, the hub's own event loop blocks, and the hub's own event
loop metric (jupyterhub_event_loop_interval_seconds, scraped with the metrics token before
and after each burst) and its "Event loop was unresponsive" log lines say for how long.
See docs/performance.md.

    python benchmarks/cpusets.py                  # make bench runs it with the defaults
    python benchmarks/cpusets.py --burst 20 --rounds 2

Writes benchmarks/results/cpusets.json and cpusets.md. Everything it creates (compose
project gpuhubcpusets<GPUHUB_E2E_ID>, its containers, networks, volumes) is removed at the end.
"""

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import docker  # noqa: E402
import requests  # noqa: E402

from benchmarks.alternatives import BenchStack, HubAlternative, workdir_for  # noqa: E402
from benchmarks.histograms import buckets, delta, loop_summary, parse_schedstat, thread_time  # noqa: E402
from benchmarks.run import ApiLoad, loadavg, log, machine, run_burst, write  # noqa: E402
from tests.e2e.stack import wait_for  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
LOOP = "jupyterhub_event_loop_interval_seconds"
NAME = "gpuhubcpusets"  # the compose project, with GPUHUB_E2E_ID appended
UNRESPONSIVE = re.compile(r"Event loop was unresponsive for at least ([0-9.]+)s")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=20, help="users starting at once (20)")
    parser.add_argument("--rounds", type=int, default=1, help="bursts per variant (1)")
    parser.add_argument("--concurrency", type=int, default=8, help="API clients under load (8)")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="API load on the idle hub first (5)")
    parser.add_argument("--hub-cpus", default="0", help="the hub's CPUs in the split variant (0)")
    parser.add_argument("--user-cpus", default=None,
                        help="the user servers' CPUs in the split variant (default: all but the hub's)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    ncpu = os.cpu_count()
    if ncpu < 2:
        parser.error("the split needs at least 2 CPUs")
    if args.user_cpus is None:
        hub = {int(x) for x in args.hub_cpus.split(",")}
        args.user_cpus = ",".join(str(i) for i in range(ncpu) if i not in hub)
    if not 1 <= args.burst <= 100 or args.rounds < 1:
        parser.error("--burst must be 1 to 100, --rounds at least 1")
    return args


def variants(args):
    every = f"0-{os.cpu_count() - 1}"
    return {"shared": {"hub": every, "users": ""},
            "split": {"hub": args.hub_cpus, "users": args.user_cpus}}


class CpusetStack(BenchStack):
    """gpuhub with the hub's cpuset from compose.cpusets.yml; `switch` recreates only the
    hub with another split (its database is on its volume: users and tokens stay)."""

    def __init__(self, workdir, client, cpus):
        self.metrics_token = secrets.token_hex(24)
        # not gpuhubbench*: run.py sweeps those at its start, and may run at the same time
        super().__init__(workdir, client, NAME, real_traefik=False,
                         extra_env={"GPUHUB_METRICS_TOKEN": self.metrics_token,
                                    "GPUHUB_BENCH_HUB_CPUSET": cpus["hub"],
                                    "GPUHUB_CPUSET_CPUS": cpus["users"]},
                         extra_files=["benchmarks/compose.cpusets.yml"])

    def switch(self, cpus):
        self.env.update(GPUHUB_BENCH_HUB_CPUSET=cpus["hub"], GPUHUB_CPUSET_CPUS=cpus["users"])
        self.write_env()
        self.compose("up", "-d", "--no-build", "--no-deps", "hub")  # the proxy (and the relay in it) stay
        self.wait_healthy()
        hub = self.container("hub")
        hub.reload()
        assert hub.attrs["HostConfig"]["CpusetCpus"] == cpus["hub"], hub.attrs["HostConfig"]["CpusetCpus"]

    def scrape(self):
        r = requests.get(f"{self.hub_url}/hub/metrics", timeout=30,
                         headers={"Authorization": f"Bearer {self.metrics_token}"})
        r.raise_for_status()
        return r.text


def user_cpusets(client, stack, users):
    """The cpusets Docker gave the burst's containers (all the same, or a problem)."""
    found = set()
    for user in users:
        for c in client.containers.list(filters={"name": f"{stack.prefix}-{user}"}):
            found.add(c.attrs["HostConfig"].get("CpusetCpus") or "")
    return sorted(found)


def hub_main_thread(stack):
    """schedstat of the hub's main thread (its event loop), read from the host's /proc
    (the engine is local); None where it cannot be read."""
    hub = stack.container("hub")
    hub.reload()
    pid = hub.attrs["State"]["Pid"]
    try:
        with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
            return parse_schedstat(f.read())
    except OSError:
        return None


def measure(client, stack, alt, users, args, label, r):
    """One burst with the API under load; the event loop's histogram around it."""
    since = int(time.time())
    before = buckets(stack.scrape(), LOOP)
    load_before = loadavg()
    sched_before, t0 = hub_main_thread(stack), time.monotonic()
    with ApiLoad(stack, users, args.concurrency) as during:
        results, all_ready = run_burst(alt, users, 120 + 6 * args.burst)
        cpusets = user_cpusets(client, stack, users)
    sched_after, wall = hub_main_thread(stack), time.monotonic() - t0
    after = buckets(stack.scrape(), LOOP)
    logs = stack.container("hub").logs(since=since).decode(errors="replace")
    blocks = [float(x) for x in UNRESPONSIVE.findall(logs)]
    alt.stop(users)
    out = {"api": ApiLoad.combined([during]), "all_ready_s": all_ready,
           "failures": sum(not x["ok"] for x in results),
           "errors": [x["error"][:300] for x in results if not x["ok"]][:3],
           "event_loop": loop_summary(delta(before, after)),
           "logged_blocks_s": blocks, "user_cpusets": cpusets,
           "hub_main_thread": thread_time(sched_before, sched_after, wall)
           if sched_before and sched_after else None,
           "load_before": load_before, "load_after": loadavg()}
    log(f"{label} round {r + 1}: API p99 {out['api']['latency'].get('p99', 0):.0f} ms, "
        f"p50 {out['api']['latency'].get('p50', 0):.0f} ms; loop p99 <= {out['event_loop']['p99_at_most_s']} s, "
        f"{len(blocks)} logged blocks >= 1 s; main thread {out['hub_main_thread']}; all ready in {all_ready or 0:.1f} s; load {out['load_after']}")
    return out


def sched(t):
    if not t:
        return "-"
    return f"{t['on_cpu_s']:.0f} / {t['waiting_for_cpu_s']:.0f} / {t['sleeping_s']:.0f} of {t['wall_s']:.0f}"


def markdown(doc):
    lines = [f"# Hub API during a burst: shared CPUs or a core of its own\n",
             f"{doc['started']} UTC, {doc['machine']['nproc']} CPUs ({doc['machine']['cpu_model']}); "
             f"load average {doc['load_before']} before, {doc.get('load_after', '(run cut short)')} after "
             f"(the machine is shared: other benchmarks and tests ran on it). "
             f"Burst of {doc['settings']['burst']} spawns, {doc['settings']['concurrency']} API clients "
             f"(GET /hub/api/users/<name>), {doc['settings']['rounds']} round(s) per variant, interleaved.\n",
             "| variant | hub CPUs | user CPUs | API p50 ms | API p99 ms | API max ms | loop p99 ≤ s | loop max ≤ s "
             "| ticks late >0.1 s | blocks ≥1 s logged | hub thread on CPU / waiting for CPU / sleeping s | all ready s | failures | load after |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    idle = doc["idle"]
    lat = idle["api"]["latency"]
    lines.append(f"| idle (before) | all | - | {lat.get('p50', 0):.0f} | {lat.get('p99', 0):.0f} | "
                 f"{lat.get('max', 0):.0f} | {idle['event_loop']['p99_at_most_s']} | {idle['event_loop']['max_at_most_s']} | "
                 f"{idle['event_loop']['share_over_0.1s'] or 0:.1%} | - | {sched(idle.get('hub_main_thread'))} | - | - | {doc['load_before']} |")
    for label, runs in doc["variants"].items():
        cpus = doc["cpus"][label]
        for r, run in enumerate(runs):
            lat, loop = run["api"]["latency"], run["event_loop"]
            blocks = run["logged_blocks_s"]
            ready = "-" if run["all_ready_s"] is None else f"{run['all_ready_s']:.1f}"  # None: some failed
            lines.append(
                f"| {label} {r + 1} | {cpus['hub']} | {cpus['users'] or 'all'} | {lat.get('p50', 0):.0f} | "
                f"{lat.get('p99', 0):.0f} | {lat.get('max', 0):.0f} | {loop['p99_at_most_s']} | {loop['max_at_most_s']} | "
                f"{(loop['share_over_0.1s'] or 0):.1%} | {len(blocks)} (max {max(blocks, default=0):.1f} s) | "
                f"{sched(run.get('hub_main_thread'))} | "
                f"{ready} | {run['failures']} | {run['load_after']} |")
    lines.append("\nloop: jupyterhub_event_loop_interval_seconds between scrapes just before and after the "
                 "burst; bounds are the histogram's bucket bounds (≤), not interpolated. Blocks logged: the "
                 "hub's own \"Event loop was unresponsive for at least N s\" warnings. Hub thread: the main "
                 "thread's /proc schedstat over the burst: on a CPU (its own work), runnable but waiting "
                 "for a CPU (starved), sleeping (idle or blocked on I/O).")
    return "\n".join(lines) + "\n"


def interrupted(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupted)
    client = docker.from_env()
    cpus = variants(args)
    doc = {"started": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "machine": machine(client),
           "settings": {k: str(v) for k, v in vars(args).items()}, "cpus": cpus,
           "load_before": loadavg(), "variants": {label: [] for label in cpus}}
    subprocess.run([str(REPO / "tests" / "standin" / "build-bases")], check=True, timeout=900)
    workroot = Path(tempfile.mkdtemp(prefix="gpuhubcpusets-"))
    stack = None
    try:
        log("starting gpuhub (compose build, up) ...")
        stack = CpusetStack(workdir_for(workroot, "gpuhub"), client, cpus["shared"])
        stack.up()  # the e2e Stack's: build, up (another subnet if one was taken), healthy
        stack.start_relay()
        alt = HubAlternative("gpuhub", stack)
        # a warm-up spawn (first start of the image) and the idle hub's latency
        alt.create_users(["warm"])
        result = alt.spawn("warm", 180, probe=False)
        if not result["ok"]:
            raise RuntimeError(f"the warm-up spawn failed: {result['error']}")
        alt.stop(["warm"])
        users = [f"cpu{i}" for i in range(args.burst)]
        alt.create_users(users)
        before = buckets(stack.scrape(), LOOP)
        sched_before, t0 = hub_main_thread(stack), time.monotonic()
        with ApiLoad(stack, users, args.concurrency) as idle:
            time.sleep(args.idle_seconds)  # a fixed measuring window, not a readiness wait
        sched_after, wall = hub_main_thread(stack), time.monotonic() - t0
        doc["idle"] = {"api": ApiLoad.combined([idle]),
                       "event_loop": loop_summary(delta(before, buckets(stack.scrape(), LOOP))),
                       "hub_main_thread": thread_time(sched_before, sched_after, wall)
                       if sched_before and sched_after else None}
        log(f"idle hub: API p99 {doc['idle']['api']['latency'].get('p99', 0):.0f} ms, "
            f"main thread {doc['idle']['hub_main_thread']}")
        current = "shared"
        for r in range(args.rounds):
            for label in cpus:
                if label != current:
                    log(f"switching to {label}: hub on CPUs {cpus[label]['hub']}, "
                        f"users on {cpus[label]['users'] or 'all'} ...")
                    stack.switch(cpus[label])
                    current = label
                doc["variants"][label].append(measure(client, stack, alt, users, args, label, r))
                # what is measured so far, in case a later round fails
                write(args.output_dir / "cpusets.json", json.dumps(doc, indent=2) + "\n")
    finally:
        log("cleaning up ...")
        if stack:
            try:
                stack.down()
            except Exception as e:
                print(f"cleanup of {stack.project} failed: {e}", file=sys.stderr)
        shutil.rmtree(workroot, ignore_errors=True)
    doc["load_after"] = loadavg()
    write(args.output_dir / "cpusets.json", json.dumps(doc, indent=2) + "\n")
    text = markdown(doc)
    write(args.output_dir / "cpusets.md", text)
    print(text)


if __name__ == "__main__":
    main()
