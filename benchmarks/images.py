"""Course image builds: the first build, the rebuild after one pin changes, and the size a
course adds over its base. Uses images/course-template/ on top of the benchmark's user
image, with lock files made at run time (two versions of one small pure-Python package
appended to the template's own hash-locked requirements)."""

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import docker

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "images" / "course-template"
# pure Python, tiny, not in the user image, both versions install on Python 3.8 and 3.11
PACKAGE, VERSIONS = "tabulate", ("0.8.10", "0.9.0")


def pip_cert():
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"),
                      "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and os.path.exists(candidate):
            return ["--cert", candidate]
    return []


def wheel_hash(package, version, index_url, dest):
    """sha256 of the wheel pip would install (what `pip hash` prints), from `index_url`;
    --isolated so that a local wheelhouse or constraints file cannot answer instead."""
    where = dest / version
    subprocess.run([sys.executable, "-m", "pip", "download", "--isolated", "--quiet",
                    "--disable-pip-version-check", *pip_cert(), "--index-url", index_url,
                    "--no-deps", "--only-binary", ":all:", "-d", str(where),
                    f"{package}=={version}"], check=True, capture_output=True, timeout=300)
    (wheel,) = where.glob("*.whl")
    return hashlib.sha256(wheel.read_bytes()).hexdigest()


def lock_files(workdir, index_url):
    """Two requirements.txt that differ in one pin; the nonce keeps a previous run's cached
    layers from answering this run's rebuild."""
    base = (TEMPLATE / "requirements.txt").read_text()
    nonce = f"# benchmark run {time.time_ns()}\n"
    locks = []
    for version in VERSIONS:
        digest = wheel_hash(PACKAGE, version, index_url, workdir / "wheels")
        locks.append(nonce + base.rstrip("\n") + f"\n{PACKAGE}=={version} \\\n"
                     f"    --hash=sha256:{digest}\n    # the pin the benchmark changes\n")
    return locks


def build(context, tag, base_image, index_url, no_cache=False):
    """Seconds `docker build` takes, with the legacy builder as images/build uses it."""
    cmd = ["docker", "build", "-q", "-t", tag, "--build-arg", f"BASE_IMAGE={base_image}",
           "--build-arg", f"PIP_INDEX_URL={index_url}", *(["--no-cache"] if no_cache else []),
           str(context)]
    start = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1800,
                            env={**os.environ, "DOCKER_BUILDKIT": "0"})
    elapsed = time.monotonic() - start
    if result.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return elapsed


def size_mb(client, image):
    return client.images.get(image).attrs["Size"] / 1e6


def benchmark(client, base_image, workdir, rounds, index_url, prefix):
    """Per round: first build (no cache) with lock A, rebuild with lock B (one pin
    changed, cache on), rebuild with nothing changed. Returns samples and sizes."""
    context = workdir / "course"
    tags = [f"{prefix}/course:first", f"{prefix}/course:changed"]
    samples = {"first_build": [], "one_pin_changed": [], "nothing_changed": []}
    sizes = {}
    try:
        for _ in range(rounds):
            shutil.rmtree(context, ignore_errors=True)
            shutil.copytree(TEMPLATE, context)
            lock_a, lock_b = lock_files(workdir, index_url)
            (context / "requirements.txt").write_text(lock_a)
            samples["first_build"].append(build(context, tags[0], base_image, index_url, no_cache=True))
            (context / "requirements.txt").write_text(lock_b)
            samples["one_pin_changed"].append(build(context, tags[1], base_image, index_url))
            samples["nothing_changed"].append(build(context, tags[1], base_image, index_url))
        base = size_mb(client, base_image)
        sizes = {"base_mb": round(base, 1),
                 "course_mb": round(size_mb(client, tags[1]), 1),
                 "added_mb": round(size_mb(client, tags[1]) - base, 1)}
        image_ids = {tag: client.images.get(tag).id for tag in tags}
    finally:
        for tag in tags:
            try:
                client.images.remove(tag, force=True)
            except docker.errors.ImageNotFound:
                pass
    return {"samples": samples, "sizes": sizes, "image_ids": image_ids,
            "package": PACKAGE, "versions": list(VERSIONS)}
