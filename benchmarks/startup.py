#!/usr/bin/env python3
"""The single-user server's own start-up on the Python 3.8 user image, with and without
the student's workbench (issue 16; docs/performance.md, "Server start-up").

Three images of the same Dockerfile, on the TensorFlow 2.9.3 stand-in (CPython 3.8):

- `no-workbench`: the user image as it was before the workbench (Dockerfile and lock
  of `git merge-base HEAD main`, or --before REV);
- `workbench-all-on`: this checkout's image with what gpuhub switches off switched back
  on (nbclassic, jupyter_lsp, nbgitpuller's unguarded extension; a config file in the
  container's ~/.jupyter, which plain `docker run` reads);
- `workbench`: this checkout's image as shipped.

Each round starts one container of each, interleaved, and times `docker start` until
/api/status answers (the server is `jupyter lab`, what start-singleuser.sh runs without
a hub: the same extensions as jupyterhub-singleuser, without JupyterHub's own imports,
which are the same in all three). One more run of each with PYTHONPROFILEIMPORTTIME=1
says where the import time goes, by top-level package.

    GPUHUB_E2E_ID=wb python benchmarks/startup.py --rounds 5

Writes benchmarks/results/startup.json and startup.md; removes its containers and, unless
--keep-images, its images.
"""

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import docker  # noqa: E402
import requests  # noqa: E402

from benchmarks.stats import paired_ratios, summary  # noqa: E402
from tests.e2e.stack import HOST_CA, RUN_ID, copy_repository  # noqa: E402

BASE = "gpuhub-standin/tf-gpu-jupyter:2.9.3"
INDEX = "https://pypi.org/simple"
RESULTS = REPO / "benchmarks" / "results"
ALL_ON = {"ServerApp": {"jpserver_extensions": {
    "nbclassic": True, "jupyter_lsp": True, "nbgitpuller": True}}}


def log(message):
    print(f"[startup] {message}", flush=True)


def build(context, tag):
    result = subprocess.run(
        ["docker", "build", "-q", "-f", "images/tensorflow-2.9-gpu/Dockerfile",
         "--build-arg", f"BASE_IMAGE={BASE}", "--build-arg", f"PIP_INDEX_URL={INDEX}",
         "-t", tag, "."], cwd=context, capture_output=True, text=True, timeout=3600)
    if result.returncode:
        raise RuntimeError(f"build of {tag} failed:\n{result.stderr[-3000:]}")


def contexts(workroot, before):
    """Build contexts: this checkout, and the image's files at `before`."""
    now = workroot / "now"
    now.mkdir()
    copy_repository(now)
    old = workroot / "before"
    old.mkdir()
    archive = subprocess.run(["git", "archive", before], cwd=REPO, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    if HOST_CA.exists():
        shutil.copy(HOST_CA, old / "certs" / "host-ca.crt")
    return now, old


def start_once(client, image, all_on=False, importtime=False, timeout=120):
    """Seconds from `docker start` to /api/status answering; and the server's stderr."""
    token = secrets.token_hex(8)
    env = {"PYTHONPROFILEIMPORTTIME": "1"} if importtime else {}
    command = ["start-singleuser.sh", f"--IdentityProvider.token={token}"]
    if all_on:  # the config, written where jupyter reads a user's own configuration
        command = ["bash", "-c", "mkdir -p ~/.jupyter && printf '%s' \"$1\" > "
                   "~/.jupyter/jupyter_server_config.json && shift && exec \"$@\"", "-",
                   json.dumps(ALL_ON), *command]
    container = client.containers.create(image, command, environment=env,
                                         ports={"8888/tcp": ("127.0.0.1", None)},
                                         name=f"gpuhubbenchstartup{RUN_ID}-{secrets.token_hex(3)}")
    try:
        started = time.monotonic()
        container.start()
        container.reload()
        port = container.attrs["NetworkSettings"]["Ports"]["8888/tcp"][0]["HostPort"]
        url = f"http://127.0.0.1:{port}/api/status?token={token}"
        while time.monotonic() - started < timeout:
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    return time.monotonic() - started, container.logs(stdout=False).decode()
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{image} did not answer within {timeout}s:\n"
                           f"{container.logs().decode()[-2000:]}")
    finally:
        container.remove(force=True)


def imports_by_package(stderr, top=10):
    """Self import time per top-level package (s), the biggest first, and the total."""
    per = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        parts = [p.strip() for p in line[len("import time:"):].split("|")]
        if len(parts) != 3 or not parts[0].isdigit():
            continue
        package = parts[2].strip().split(".")[0]
        per[package] = per.get(package, 0) + int(parts[0])
    ranked = sorted(per.items(), key=lambda kv: -kv[1])
    return {"total_s": round(sum(per.values()) / 1e6, 3),
            "top": {name: round(us / 1e6, 3) for name, us in ranked[:top]}}


def measure(client, workroot, rounds=5, warmup=1, before=None, keep_images=False):
    before = before or subprocess.run(["git", "merge-base", "HEAD", "main"], cwd=REPO,
                                      check=True, capture_output=True, text=True).stdout.strip()
    now, old = contexts(Path(workroot), before)
    tags = {"no-workbench": f"gpuhubbenchstartup{RUN_ID}/user:before",
            "workbench": f"gpuhubbenchstartup{RUN_ID}/user:workbench"}
    log(f"building the images (before = {before[:10]}) ...")
    build(old, tags["no-workbench"])
    build(now, tags["workbench"])
    variants = {"no-workbench": (tags["no-workbench"], False),
                "workbench-all-on": (tags["workbench"], True),
                "workbench": (tags["workbench"], False)}
    samples = {name: [] for name in variants}
    try:
        for i in range(warmup + rounds):
            for name, (image, all_on) in variants.items():
                seconds, _ = start_once(client, image, all_on)
                if i >= warmup:
                    samples[name].append(seconds)
            log(f"round {i + 1 - warmup}: " + ", ".join(
                f"{n} {s[-1]:.2f}s" for n, s in samples.items() if s and i >= warmup))
        imports = {name: imports_by_package(start_once(client, image, all_on, importtime=True)[1])
                   for name, (image, all_on) in variants.items()}
    finally:
        if not keep_images:
            for tag in tags.values():
                subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)
    result = {
        "what": "docker start until /api/status answers (`jupyter lab` with the image's "
                "extensions), interleaved rounds; imports: one run with PYTHONPROFILEIMPORTTIME=1, "
                "self time summed by top-level package",
        "before": before, "base_image": BASE,
        "start": {name: summary(values, "s") for name, values in samples.items()},
        "ratios": {
            "workbench/no-workbench": paired_ratios(samples["workbench"], samples["no-workbench"]),
            "workbench-all-on/no-workbench": paired_ratios(samples["workbench-all-on"],
                                                           samples["no-workbench"]),
            "workbench/workbench-all-on": paired_ratios(samples["workbench"],
                                                        samples["workbench-all-on"])},
        "imports": imports,
        "load_after": os.getloadavg(),
    }
    return result


def markdown(result):
    lines = ["| image | median | min | max | runs |", "|---|---|---|---|---|"]
    for name, s in result["start"].items():
        lines.append(f"| {name} | {s['median']:.2f} s | {s['min']:.2f} s | {s['max']:.2f} s | {s['runs']} |")
    lines += ["", "| ratio (paired by round) | median |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in result["ratios"].items()]
    lines += ["", "| image | imports, total self time | biggest packages |", "|---|---|---|"]
    for name, imp in result["imports"].items():
        top = ", ".join(f"{p} {s:.2f}" for p, s in list(imp["top"].items())[:6])
        lines.append(f"| {name} | {imp['total_s']:.2f} s | {top} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--before", help="revision of the image without the workbench "
                                         "(default: git merge-base HEAD main)")
    parser.add_argument("--keep-images", action="store_true")
    args = parser.parse_args(argv)
    client = docker.from_env()
    subprocess.run([str(REPO / "tests" / "standin" / "build-bases")], check=True, timeout=1800)
    workroot = tempfile.mkdtemp(prefix="gpuhubbenchstartup-")
    try:
        result = measure(client, workroot, args.rounds, args.warmup, args.before, args.keep_images)
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "startup.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "startup.md").write_text(markdown(result) + "\n")
    print(markdown(result))
    log(f"written: {RESULTS / 'startup.json'}, {RESULTS / 'startup.md'}")


if __name__ == "__main__":
    main()
