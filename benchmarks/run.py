#!/usr/bin/env python3
"""gpuhub's benchmarks: what a spawn costs, next to a plain DockerSpawner hub and a raw
`docker run` of the same user image, measured side by side and interleaved (A, B, C, A,
B, C, ...) so that ratios hold on a shared machine. See docs/performance.md.

    make bench                              # bash .ci/setup, then this with the defaults
    python benchmarks/run.py --burst 100    # a bigger burst (and more patience)

Writes benchmarks/results/latest.json (every figure with its unit and number of runs,
the machine, the versions) and benchmarks/results/latest.md, and prints the tables.
Everything it creates (compose projects gpuhubbench*, containers, networks, volumes,
course images) is removed at the end, also on failure or Ctrl-C.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import docker  # noqa: E402
import requests  # noqa: E402
import urllib3  # noqa: E402

from benchmarks import images, report  # noqa: E402
from benchmarks.alternatives import (  # noqa: E402
    PROJECT, BenchStack, HubAlternative, PlainStack, RawAlternative, memory_mib, sweep_leftovers,
    workdir_for)
from benchmarks.stats import paired_ratios, ratio, summary  # noqa: E402
from tests.e2e.stack import compose_command, image_exists, traefik_image  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
# self-signed certificates are expected where real Traefik answers
warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)

T0 = time.monotonic()


def log(message):
    print(f"[{time.monotonic() - T0:6.1f}s] {message}", flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="single spawns per alternative (3)")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted spawns per alternative first (1)")
    parser.add_argument("--burst", type=int, default=20, help="users starting at once, 1 to 100 (20)")
    parser.add_argument("--burst-rounds", type=int, default=1, help="bursts per alternative (1)")
    parser.add_argument("--concurrency", type=int, default=8, help="API clients under load (8)")
    parser.add_argument("--idle-load-seconds", type=float, default=3.0,
                        help="API load on an idle hub first, for comparison (3)")
    parser.add_argument("--build-rounds", type=int, default=1, help="course image build rounds (1)")
    parser.add_argument("--no-builds", action="store_true", help="skip the image build benchmark")
    parser.add_argument("--pip-index-url", default=os.environ.get("BENCH_PIP_INDEX_URL", "https://pypi.org/simple"),
                        help="index for the course image builds (default: pypi.org)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not 1 <= args.burst <= 100:
        parser.error("--burst must be between 1 and 100")
    if args.rounds < 1 or args.burst_rounds < 1 or args.concurrency < 1:
        parser.error("--rounds, --burst-rounds and --concurrency must be at least 1")
    return args


# -- the machine --
def foreign_containers(client):
    """Running containers that are not this benchmark's: someone else is using the engine."""
    return sorted(c.name for c in client.containers.list()
                  if not c.name.startswith(PROJECT)
                  and not c.labels.get("com.docker.compose.project", "").startswith(PROJECT))


def machine(client):
    info, version = client.info(), client.version()
    cpu_model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                      if line.startswith("model name")), platform.processor())
    mem_kib = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    compose = subprocess.run(compose_command() + ["version"], capture_output=True, text=True)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "os": platform.platform(),
        "docker_server": version.get("Version"),
        "docker_api": version.get("ApiVersion"),
        "docker_storage_driver": info.get("Driver"),
        "cgroup_version": info.get("CgroupVersion"),
        "compose": (compose.stdout.strip().splitlines() or ["?"])[0],
        "python": platform.python_version(),
    }


def loadavg():
    return [round(x, 2) for x in os.getloadavg()]


VERSION_CODE = "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in %r}))"


def versions(client, hub, user_image):
    hub_packages = ["jupyterhub", "dockerspawner", "jupyterhub-traefik-proxy", "tornado", "sqlalchemy"]
    code, out = hub.container("hub").exec_run(["python3", "-c", VERSION_CODE % hub_packages])
    result = {"hub": json.loads(out) if code == 0 else {"error": out.decode()[-300:]}}
    user_packages = ["jupyterhub", "jupyter-server", "jupyterlab"]
    out = client.containers.run(user_image, ["python3", "-c", VERSION_CODE % user_packages], remove=True)
    result["user_image"] = json.loads(out)
    return result


# -- measurements --
def single_spawns(alternatives, rounds, warmup, timeout):
    """Interleaved: every round spawns once on each alternative, in the same order."""
    runs = {alt.label: [] for alt in alternatives}
    warm = {alt.label: [] for alt in alternatives}
    for r in range(-warmup, rounds):
        for alt in alternatives:
            user = f"warm{-r}" if r < 0 else f"single{r}"
            alt.create_users([user])
            result = alt.spawn(user, timeout)
            alt.stop([user])
            if r < 0 and not result["ok"]:
                raise RuntimeError(f"{alt.label}: the warm-up spawn failed: {result['error']}")
            (warm if r < 0 else runs)[alt.label].append(result)
            log(f"single spawn {'warm-up' if r < 0 else f'round {r + 1}/{rounds}'} {alt.label}: "
                + (f"{result['total']:.2f} s" if result["ok"] else f"FAILED {result['error'][:200]}"))
    out = {"what": "seconds from the REST request (hubs) or `docker run` (raw) to HTTP 200 from "
                   "/user/<name>/api/status with a token, at the route's target (raw: the container; "
                   "gpuhub: through benchmarks/relay.py in the proxy's network namespace, since the "
                   "host has no address on a gpuhub server's own network); "
                   "container_started: Docker's StartedAt; server_up: the server's unauthenticated /api "
                   "answers at the container's address; route_seen: the route is in the routes file; "
                   "after_server_up: total minus server_up, what the hub and proxy add once the server runs",
           "alternatives": {}}
    for label, results in runs.items():
        ok = [x for x in results if x["ok"]]
        out["alternatives"][label] = {
            "total": summary([x["total"] for x in ok], "s"),
            "container_started": summary([x["container_started"] for x in ok], "s"),
            "server_up": summary([x["server_up"] for x in ok], "s"),
            "route_seen": summary([x["route_seen"] for x in ok], "s"),
            "after_server_up": summary([x["total"] - x["server_up"] for x in ok
                                        if x["server_up"] is not None], "s"),
            "failures": len(results) - len(ok),
            "errors": [x["error"][:500] for x in results if not x["ok"]][:5],
            "warmup": summary([x.get("total") for x in warm[label]], "s"),
        }
    add_ratios(out, {label: [x.get("total") for x in results] for label, results in runs.items()})
    return out


def add_ratios(out, samples):
    alts = out["alternatives"]
    pairs = [("gpuhub", "raw"), ("gpuhub", "plain"), ("plain", "raw")]
    out["ratios"] = {f"{a}/{b}": ratio(alts[a]["total"], alts[b]["total"])
                     for a, b in pairs if a in alts and b in alts}
    out["paired_ratios"] = {f"{a}/{b}": paired_ratios(samples[a], samples[b])
                            for a, b in pairs if a in alts and b in alts}


def run_burst(alt, users, timeout):
    """All `users` start at once, one thread each; returns per-user results and the time
    from the first request to the last server answering (None if any failed)."""
    with ThreadPoolExecutor(len(users)) as pool:
        start = time.monotonic()
        results = list(pool.map(lambda user: alt.spawn(user, timeout, probe=False), users))
    ok = [x for x in results if x["ok"]]
    all_ready = max(x["t0"] + x["total"] for x in ok) - start if len(ok) == len(results) else None
    return results, all_ready


def bursts(alternatives, n, rounds, timeout, footprint):
    per_alt = {alt.label: {"all_ready": [], "per_user": [], "failures": 0, "attempts": 0, "errors": []}
               for alt in alternatives}
    for r in range(rounds):
        for alt in alternatives:
            users = [f"burst{r}u{i}" for i in range(n)]
            alt.create_users(users)
            results, all_ready = run_burst(alt, users, timeout)
            if r == 0 and isinstance(alt, HubAlternative):  # the hub with n servers running
                footprint[alt.label]["hub_with_burst_running"] = memory_mib(alt.stack.container("hub"))
            alt.stop(users)
            data = per_alt[alt.label]
            data["all_ready"].append(all_ready)
            data["per_user"] += [x["total"] for x in results if x["ok"]]
            data["failures"] += sum(not x["ok"] for x in results)
            data["attempts"] += len(results)
            data["errors"] += [x["error"][:300] for x in results if not x["ok"]][:3]
            log(f"burst {r + 1}/{rounds} of {n} on {alt.label}: "
                + (f"all ready in {all_ready:.2f} s" if all_ready else
                   f"{sum(not x['ok'] for x in results)} failed"))
    out = {"users": n, "rounds": rounds,
           "what": "all ready: seconds from the first request to the last server answering; "
                   "per user: its own request to its own 200",
           "alternatives": {}}
    for label, data in per_alt.items():
        out["alternatives"][label] = {
            "all_ready": summary(data["all_ready"], "s"),
            "per_user": summary(data["per_user"], "s", percentiles=(50, 95)),
            "failures": data["failures"], "attempts": data["attempts"], "errors": data["errors"][:5],
        }
    alts = out["alternatives"]
    out["ratios"] = {f"{a}/{b}": ratio(alts[a]["all_ready"], alts[b]["all_ready"])
                     for a, b in [("gpuhub", "raw"), ("gpuhub", "plain"), ("plain", "raw")]
                     if a in alts and b in alts}
    return out


class ApiLoad:
    """`concurrency` clients, each with its own keep-alive session, GET
    /hub/api/users/<name> with the service token, round the users, until stopped."""

    def __init__(self, stack, users, concurrency, limit=1800):
        self.url = f"{stack.hub_url}/hub/api/users/"
        self.headers = {"Authorization": f"token {stack.token}"}
        self.users, self.concurrency, self.limit = list(users), concurrency, limit
        self.latencies, self.errors = [], 0
        self.lock, self.stopping = threading.Lock(), threading.Event()

    def _client(self, i):
        session = requests.Session()
        deadline = time.monotonic() + self.limit  # bounded even if nobody stops it
        while not self.stopping.is_set() and time.monotonic() < deadline:
            user = self.users[i % len(self.users)]
            i += self.concurrency
            start = time.perf_counter()
            try:
                ok = session.get(self.url + user, headers=self.headers, timeout=30, verify=False).ok
            except requests.RequestException:
                ok = False
            elapsed = (time.perf_counter() - start) * 1000
            with self.lock:
                if ok:
                    self.latencies.append(elapsed)
                else:
                    self.errors += 1

    def __enter__(self):
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True)
                        for i in range(self.concurrency)]
        self.started = time.monotonic()
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)
        self.elapsed = time.monotonic() - self.started

    @staticmethod
    def combined(loads):
        """One result for several measuring windows."""
        latencies = [x for load in loads for x in load.latencies]
        seconds = sum(load.elapsed for load in loads)
        latency = summary(latencies, "ms", percentiles=(50, 99))
        latency.pop("samples", None)  # thousands of them
        return {"latency": latency, "errors": sum(load.errors for load in loads),
                "seconds": round(seconds, 2), "per_second": len(latencies) / seconds if seconds else None}


def api_load(hubs, n, concurrency, idle_seconds, timeout, windows=6):
    """The idle phase alternates short windows between the hubs (A, B, A, B, ...); the
    burst phase is one burst per hub, one after the other."""
    out = {"endpoint": "GET /hub/api/users/<name>", "concurrency": concurrency, "burst_users": n,
           "what": f"latency of authenticated API calls (service token): on the idle hubs for "
                   f"{idle_seconds} s each, in {windows} interleaved windows; then while a burst "
                   f"of {n} spawns runs on that hub",
           "alternatives": {}}
    users = [f"load{i}" for i in range(n)]
    idle = {alt.label: [] for alt in hubs}
    for alt in hubs:
        alt.create_users(users)
    for _ in range(windows):
        for alt in hubs:
            with ApiLoad(alt.stack, users, concurrency) as load:
                time.sleep(idle_seconds / windows)  # a fixed measuring window, not a readiness wait
            idle[alt.label].append(load)
    for alt in hubs:
        with ApiLoad(alt.stack, users, concurrency) as during:
            results, all_ready = run_burst(alt, users, timeout)
        alt.stop(users)
        data = out["alternatives"][alt.label] = {
            "idle": ApiLoad.combined(idle[alt.label]), "during_burst": ApiLoad.combined([during]),
            "burst_all_ready": summary([all_ready], "s"),
            "burst_failures": sum(not x["ok"] for x in results),
        }
        log(f"API load on {alt.label}: p50 {data['during_burst']['latency'].get('p50', 0):.1f} ms "
            f"during the burst, {data['idle']['latency'].get('p50', 0):.1f} ms idle")
    alts = out["alternatives"]
    out["ratios"] = {}
    if "gpuhub" in alts and "plain" in alts:
        for phase in ("idle", "during_burst"):
            for p in ("p50", "p99"):
                a, b = alts["gpuhub"][phase]["latency"].get(p), alts["plain"][phase]["latency"].get(p)
                out["ratios"][f"gpuhub/plain {p} {phase.replace('_', ' ')}"] = round(a / b, 3) if a and b else None
    return out


def footprints(alternatives, timeout, settle=5.0):
    """Memory of the hub and the proxy with one idle user server, and of that server."""
    result = {alt.label: {} for alt in alternatives}
    for alt in alternatives:
        user = "idle"
        alt.create_users([user])
        spawned = alt.spawn(user, timeout)
        if not spawned["ok"]:
            raise RuntimeError(f"{alt.label}: spawn for the footprint failed: {spawned['error']}")
        time.sleep(settle)  # "idle": nothing touched it for `settle` seconds
        result[alt.label]["user_server_idle"] = memory_mib(alt.container(user))
        if isinstance(alt, HubAlternative):
            result[alt.label]["hub"] = memory_mib(alt.stack.container("hub"))
            result[alt.label]["proxy"] = memory_mib(alt.stack.container("proxy"))
        alt.stop([user])
        log(f"footprint {alt.label}: {result[alt.label]}")
    return result


def startup_imports(client, image):
    """Where a user server's start-up goes: cumulative import times in the user image
    (python -X importtime, one run). Imported in this order, each module's figure counts
    only what the ones before it had not imported yet."""
    modules = ["jupyter_server.serverapp", "jupyterlab", "jupyterhub.singleuser"]
    watched = modules + ["jsonschema", "rfc3987_syntax", "jupyterhub.orm", "alembic"]
    err = client.containers.run(image, ["python3", "-X", "importtime", "-c", "import " + ", ".join(modules)],
                                remove=True, stdout=False, stderr=True).decode()
    seconds = {}
    for line in err.splitlines():
        parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
        if len(parts) == 3 and parts[2] in watched and parts[1].isdigit():
            seconds.setdefault(parts[2], round(int(parts[1]) / 1e6, 3))  # first import counts
    seconds = {name: seconds[name] for name in watched if name in seconds}
    return {"unit": "s", "runs": 1, "cumulative_import": seconds,
            "what": "python -X importtime of `import " + ", ".join(modules) + "` in the user image: "
                    "jupyter lab needs the first two, jupyterhub-singleuser all three"}


def image_builds(client, user_image, workroot, rounds, index_url):
    data = images.benchmark(client, user_image, workroot, rounds, index_url, PROJECT)
    builds = {name: summary(values, "s") for name, values in data["samples"].items()}
    return {"what": f"images/course-template FROM the user image; lock A then lock B differ in one pin "
                    f"({data['package']} {' -> '.join(data['versions'])}); first build with --no-cache, "
                    "then with the layer cache; legacy builder; packages come from the index each time",
            "builds": builds, "sizes": data["sizes"], "image_ids": data["image_ids"],
            "ratios": {"one_pin_changed/first_build": ratio(builds["one_pin_changed"], builds["first_build"]),
                       "nothing_changed/first_build": ratio(builds["nothing_changed"], builds["first_build"])}}


# -- the run --
def write(path, text):
    """Atomically: a reader never sees half a file (*.tmp is git-ignored)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def header(doc, markdown=False):
    m = doc["machine"]
    busy = doc["busy"]
    others = busy["other_containers_before"] or busy["other_containers_after"]
    note = "the engine was shared: " + ", ".join(others[:8]) if others else "no other containers running"
    title = "# Benchmark results\n\n" if markdown else "gpuhub benchmarks\n"
    return (f"{title}{doc['started']} UTC on {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, "
            f"kernel {m['kernel']}, Docker {m['docker_server']} ({m['docker_storage_driver']}, cgroup v{m['cgroup_version']}); "
            f"load average {busy['load_before']} before, {busy['load_after']} after; {note}. "
            f"JupyterHub {doc['versions']['hub'].get('jupyterhub')}, DockerSpawner {doc['versions']['hub'].get('dockerspawner')}; "
            f"proxy: {doc['proxy']}. Run took {doc['duration_s']:.0f} s.")


def interrupted(signum, frame):
    raise KeyboardInterrupt  # so that `finally` removes what the run created


def main(argv=None):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupted)
    client = docker.from_env()
    try:
        client.ping()
    except Exception as e:
        sys.exit(f"no Docker engine answers ({e}); start one with: bash .ci/docker-up")
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    doc = {"started": started, "machine": machine(client), "settings": vars(args) | {"output_dir": str(args.output_dir)},
           "busy": {"load_before": loadavg(), "other_containers_before": foreign_containers(client)},
           "phases": {}, "results": {}}
    log(f"load average {doc['busy']['load_before']}; other containers: "
        f"{doc['busy']['other_containers_before'] or 'none'}")
    sweep_leftovers(client, log)
    subprocess.run([str(REPO / "tests" / "standin" / "build-bases")], check=True, timeout=900)
    real_traefik = image_exists(client, traefik_image())
    doc["proxy"] = ("Traefik " + traefik_image() if real_traefik else
                    "tests/e2e/traefik_api_standin.py (no Traefik image here): servers are reached at "
                    "their route's target (gpuhub's through benchmarks/relay.py in the proxy's network "
                    "namespace), Traefik's own forwarding is not measured")
    workroot = Path(tempfile.mkdtemp(prefix="gpuhubbench-"))
    stacks, raw = [], None
    try:
        phase = time.monotonic()
        log("starting gpuhub (compose build, up) ...")
        gpuhub = BenchStack(workdir_for(workroot, "gpuhub"), client, PROJECT, real_traefik)
        stacks.append(gpuhub)
        gpuhub.start()
        user_image = gpuhub.env["GPUHUB_USER_IMAGE"]
        # built after gpuhub's networks exist, so that it picks another control subnet
        plain = PlainStack(workdir_for(workroot, "plain"), client, f"{PROJECT}plain", real_traefik, user_image)
        stacks.append(plain)
        plain.start()
        for stack in (gpuhub, plain):
            stack.wait_healthy()
        gpuhub.start_relay()  # its servers' networks are out of the host's reach
        doc["phases"]["stacks_up_s"] = round(time.monotonic() - phase, 1)
        log(f"both hubs healthy after {doc['phases']['stacks_up_s']} s")
        hubs = [HubAlternative("gpuhub", gpuhub), HubAlternative("plain", plain)]
        raw = RawAlternative(client, user_image, gpuhub.env["GPUHUB_USER_NETWORK"], gpuhub.prefix)
        alternatives = [*hubs, raw]
        doc["versions"] = versions(client, gpuhub, user_image)
        doc["images"] = {"hub": client.images.get(f"gpuhub/hub:{gpuhub.env['GPUHUB_VERSION']}").id,
                         "user": client.images.get(user_image).id,
                         "proxy": gpuhub.container("proxy").image.id}

        def timed(name, fn, *a):
            start = time.monotonic()
            value = fn(*a)
            doc["phases"][f"{name}_s"] = round(time.monotonic() - start, 1)
            doc["busy"][f"load_after_{name}"] = loadavg()
            return value

        results = doc["results"]
        results["startup_imports"] = timed("startup_imports", startup_imports, client, user_image)
        results["single_spawn"] = timed("single_spawn", single_spawns, alternatives, args.rounds, args.warmup, 180)
        fp = timed("footprint", footprints, alternatives, 180)
        burst_timeout = 120 + 6 * args.burst
        results["burst"] = timed("burst", bursts, alternatives, args.burst, args.burst_rounds, burst_timeout, fp)
        results["footprint"] = {
            "unit": "MiB", "runs": 1, "burst_users": args.burst, "alternatives": fp,
            "note": "docker stats memory_stats.usage minus stats.cache (v1) / inactive_file (v2); "
                    f"proxy = {'Traefik' if real_traefik else 'the stand-in for Traefik API (Python), not Traefik'}"}
        results["api_load"] = timed("api_load", api_load, hubs, args.burst, args.concurrency,
                                    args.idle_load_seconds, burst_timeout)
        if args.no_builds:
            results["image_build"] = {"skipped": "--no-builds"}
        else:
            log("course image builds ...")
            results["image_build"] = timed("image_build", image_builds, client, user_image, workroot,
                                           args.build_rounds, args.pip_index_url)
            log(f"image builds: {results['image_build']['builds']['first_build'].get('median', 0):.1f} s first, "
                f"{results['image_build']['builds']['one_pin_changed'].get('median', 0):.1f} s after one pin changed")
    finally:
        log("cleaning up ...")
        if raw:
            raw.cleanup()
        for stack in reversed(stacks):
            try:
                stack.down()
            except Exception as e:  # keep removing the rest
                print(f"cleanup of {stack.project} failed: {e}", file=sys.stderr)
        shutil.rmtree(workroot, ignore_errors=True)
        log("cleaned up")

    doc["busy"]["load_after"] = loadavg()
    doc["busy"]["other_containers_after"] = foreign_containers(client)
    doc["duration_s"] = round(time.monotonic() - T0, 1)
    write(args.output_dir / "latest.json", json.dumps(doc, indent=2) + "\n")
    write(args.output_dir / "latest.md", report.markdown(doc["results"], header(doc, markdown=True)) + "\n")
    print()
    print(report.text(doc["results"], header(doc)))
    print(f"written: {args.output_dir / 'latest.json'}, {args.output_dir / 'latest.md'}")


if __name__ == "__main__":
    main()
