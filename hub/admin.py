"""The `gpuhub` admin commands (hub/cli.py parses the arguments): status, stop, free-gpu,
backup, restore, backup-all, usage, images. Run inside the hub container:

    docker compose exec hub gpuhub status
    docker compose exec -T hub gpuhub backup alice - > alice.tar

Docker work goes through the Docker API guard (hub/volumes.py), as the hub's does; the
hub's own state through its REST API (stop: the hub stops the server and frees its GPUs),
with the token of the `gpuhub-cli` service (made at the hub's start, in its state folder,
readable by the hub's user only), and its database (GPU allocations, the backup copy).

Exit codes: 0 done; 1 failed (the engine, the hub or a file); 2 bad arguments or
settings; 3 refused (a running server, a held GPU, a non-empty volume: --force overrides);
4 no such user, volume or GPU.
"""

import json
import os
import sqlite3
import subprocess
import sys

import docker
import requests

from . import courses, gpus, names, settings, volumes
from .gpu_queue_store import GpuQueue
from .gpu_store import GpuAllocator

OK, FAILED, USAGE, REFUSED, NOT_FOUND = 0, 1, 2, 3, 4
HUB_API = "http://127.0.0.1:8081/hub/api"
TOKEN_FILE = "admin-cli-token"
SETTINGS = ("GPUHUB_USER_IMAGE", "GPUHUB_NOTEBOOK_DIR",
            "GPUHUB_CONTAINER_PREFIX", "GPUHUB_VOLUME_PREFIX", "GPUHUB_CONTAINER_USER",
            "GPUHUB_STATE_DIR", "GPUHUB_USERNAME_PATTERN", "GPUHUB_CATALOG", "GPUHUB_GPUS",
            "GPUHUB_GPU_MODE", "GPUHUB_GPU_MAX_USERS", "GPUHUB_GPU_GROUP_CAPS",
            "GPUHUB_HOME_QUOTA", "GPUHUB_DB_URL")


class CliError(Exception):
    def __init__(self, message, code=FAILED):
        super().__init__(message)
        self.code = code


class Context:
    """What the commands share: settings, the engine (through the guard), the hub's API."""

    def __init__(self, environ=None, db_url=None):
        self.s = settings.load(environ, only=SETTINGS)
        self.db_url = db_url or self.s.db_url
        self._api = None

    @property
    def docker(self):
        if self._api is None:
            self._api = docker.from_env(version="auto").api
        return self._api

    def hub(self, method, path, **kwargs):
        try:
            with open(os.path.join(self.s.state_dir, TOKEN_FILE)) as f:
                token = f.read().strip()
        except OSError as e:
            raise CliError(f"cannot read the CLI's token ({e}): is this the hub container, "
                           "and has the hub started once?") from None
        try:
            return requests.request(method, HUB_API + path, timeout=60,
                                    headers={"Authorization": f"token {token}"}, **kwargs)
        except requests.RequestException as e:
            raise CliError(f"the hub's API does not answer at {HUB_API}: {e}") from None

    def allocator(self):
        path = self.db_url.removeprefix("sqlite:///")
        if self.db_url.startswith("sqlite:///") and not os.path.exists(path):
            raise CliError(f"no hub database at {path}: is this the hub container?")
        return GpuAllocator(self.db_url, gpus.inventory(self.s.gpus), self.s.gpu_policy)

    def username(self, raw):
        name = names.normalize(raw)
        if not names.valid_username(name, self.s.username_pattern):
            raise CliError(f"{raw!r} is not a user name ({names.describe(self.s.username_pattern)})",
                           USAGE)
        return name

    def containers(self):
        """{(user, server): container summary} of the user servers (helpers left out)."""
        found = {}
        for c in self.docker.containers(all=True, filters={"label": volumes.USER_LABEL}):
            labels = c.get("Labels") or {}
            if not volumes.is_helper(labels) and any(
                    n.startswith(f"/{self.s.container_prefix}-") for n in c.get("Names") or []):
                found[(labels[volumes.USER_LABEL], labels.get(volumes.SERVER_LABEL, ""))] = c
        return found

    def running(self, user):
        return [k for k, c in self.containers().items() if k[0] == user and c["State"] == "running"]


def emit(args, data, text):
    print(json.dumps(data, indent=2) if args.json else text())


# -- the commands --

def status(ctx, args):
    r = ctx.hub("GET", "/users")
    if r.status_code != 200:
        raise CliError(f"the hub answered {r.status_code} to GET /users: {r.text[:200]}")
    containers = ctx.containers()
    report = ctx.allocator().report()
    held = {}
    for gpu in report["gpus"]:
        for h in gpu["holders"]:
            held.setdefault((h["user"], h["server"] or ""), []).append(gpu["uuid"])
    rows = []
    for user in r.json():
        for server, model in (user.get("servers") or {}).items():
            c = containers.get((user["name"], server)) or {}
            rows.append({"user": user["name"], "server": server,
                         "state": "ready" if model.get("ready") else model.get("pending") or "stopped",
                         "course": (model.get("user_options") or {}).get("course") or "",
                         "image": c.get("Image", ""), "started": model.get("started"),
                         "gpus": held.get((user["name"], server), [])})
    queue = GpuQueue(ctx.allocator(), 0).report()
    data = {"users": len(r.json()), "servers": rows, "gpus_total": report["total"],
            "gpus_in_use": report["in_use"], "queue": queue}

    def text():
        lines = [f"{data['users']} users, {len(rows)} servers, GPUs {report['in_use']}/"
                 f"{report['total']} in use, {len(queue)} waiting"]
        for row in rows:
            who = row["user"] + (f"/{row['server']}" if row["server"] else "")
            lines.append(f"{who:<24} {row['state']:<8} {row['course'] or '-':<16} "
                         f"{row['image'] or '-':<32} {','.join(row['gpus']) or '-'}")
        for place in queue:
            lines.append(f"waiting {place['position']}: {place['user']} ({place['course']}, "
                         f"{place['wanted']} GPU) since {place['since'][:19]}Z")
        return "\n".join(lines)
    emit(args, data, text)
    return OK


def stop(ctx, args):
    user = ctx.username(args.user)
    r = ctx.hub("DELETE", f"/users/{user}/server")
    if r.status_code == 404:
        raise CliError(f"no user {user} on this hub", NOT_FOUND)
    if r.status_code not in (202, 204):
        raise CliError(f"the hub answered {r.status_code}: {r.text[:200]}")
    emit(args, {"user": user, "stopping": r.status_code == 202},
         lambda: f"{user}: {'stopping' if r.status_code == 202 else 'stopped'}")
    return OK


def free_gpu(ctx, args):
    allocator = ctx.allocator()
    gpu = next((g for g in allocator.report()["gpus"]
                if g["uuid"].lower() == args.uuid.lower()), None)
    if gpu is None:
        raise CliError(f"no GPU {args.uuid} in the inventory or the allocations", NOT_FOUND)
    containers = ctx.containers()
    running = [f"{h['user']}/{h['server']}" if h["server"] else h["user"] for h in gpu["holders"]
               if (containers.get((h["user"], h["server"] or "")) or {}).get("State") == "running"]
    if running and not args.force:
        raise CliError(f"GPU {gpu['uuid']} is held by the running server of {', '.join(running)}: "
                       "stop it (gpuhub stop USER), or --force", REFUSED)
    released = allocator.release_gpu(gpu["uuid"])
    holders = [a.user + (f"/{a.server_name}" if a.server_name else "") for a in released]
    emit(args, {"uuid": gpu["uuid"], "released_from": holders},
         lambda: f"GPU {gpu['uuid']}: freed" + (f" (held by {', '.join(holders)})" if holders
                                                else " (it was free)"))
    return OK


def _open_out(path):
    return sys.stdout.buffer if path == "-" else open(path, "wb")


def backup(ctx, args):
    user = ctx.username(args.user)
    volume = volumes.user_volume(ctx.s, user)
    if not volumes.exists(ctx.docker, volume):
        raise CliError(f"{user} has no home volume ({volume})", NOT_FOUND)
    out = _open_out(args.file)
    try:
        size = volumes.backup(ctx.docker, ctx.s, volume, out)
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    message = {"user": user, "volume": volume, "file": args.file, "bytes": size}
    # with FILE "-" the tar is on stdout: the summary goes to stderr
    print(json.dumps(message) if args.json else f"{user}: {size} bytes of {volume} to {args.file}",
          file=sys.stderr if args.file == "-" else sys.stdout)
    return OK


def restore(ctx, args):
    user = ctx.username(args.user)
    volume = volumes.user_volume(ctx.s, user)
    if ctx.running(user) and not args.force:
        raise CliError(f"{user}'s server is running: stop it first (gpuhub stop {user}), "
                       "or --force", REFUSED)
    if not args.force and not volumes.is_empty(ctx.docker, ctx.s, volume):
        raise CliError(f"{volume} is not empty: restoring writes over its files (others "
                       "stay); --force to do it anyway", REFUSED)
    try:
        source = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")
    except OSError as e:
        raise CliError(f"cannot read {args.file}: {e.strerror}", NOT_FOUND) from None
    with source:
        volumes.restore(ctx.docker, ctx.s, volume, source)
    emit(args, {"user": user, "volume": volume, "file": args.file},
         lambda: f"{user}: {volume} restored from {args.file}")
    return OK


def copy_database(db_url, dest_dir):
    """A consistent copy of the hub's database in dest_dir: SQLite's online backup API
    (a snapshot even while the hub writes), or pg_dump for PostgreSQL. Returns its path."""
    if db_url.startswith("sqlite:///"):
        dest = os.path.join(dest_dir, "jupyterhub.sqlite")
        path = db_url.removeprefix("sqlite:///")
        try:
            source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            target = sqlite3.connect(dest)
            try:
                source.backup(target)
            finally:
                target.close()
                source.close()
        except sqlite3.Error as e:
            raise CliError(f"cannot copy the hub's database {path} to {dest}: {e}") from None
        return dest
    if db_url.startswith(("postgresql", "postgres")):
        # pg_dump is in the hub image; the password comes as PGPASSWORD (compose)
        dest = os.path.join(dest_dir, "jupyterhub.sql")
        url = db_url.replace("postgresql+psycopg2://", "postgresql://")
        with open(dest, "wb") as f:
            done = subprocess.run(["pg_dump", "--no-owner", "--dbname", url], stdout=f,
                                  stderr=subprocess.PIPE)
        if done.returncode:
            raise CliError(f"pg_dump failed: {done.stderr.decode(errors='replace')[-500:]}")
        return dest
    raise CliError(f"backup-all copies SQLite and PostgreSQL databases, not {db_url.split(':')[0]}")


def backup_all(ctx, args):
    os.makedirs(os.path.join(args.dir, "volumes"), exist_ok=True)
    database = copy_database(ctx.db_url, args.dir)
    homes = {}
    for user, volume in sorted(volumes.home_volumes(ctx.docker, ctx.s).items()):
        path = os.path.join(args.dir, "volumes", f"{volume}.tar")
        with open(path, "wb") as out:
            homes[user] = {"volume": volume, "file": path,
                           "bytes": volumes.backup(ctx.docker, ctx.s, volume, out)}
    data = {"database": database, "homes": homes}
    with open(os.path.join(args.dir, "manifest.json"), "w") as f:
        json.dump(data, f, indent=2)
    emit(args, data, lambda: f"database: {database}\n" + "\n".join(
        f"{u}: {h['file']} ({h['bytes']} bytes)" for u, h in homes.items()))
    return OK


def usage(ctx, args):
    homes = volumes.home_volumes(ctx.docker, ctx.s)
    used = volumes.sizes(ctx.docker, ctx.s, list(homes.values()))
    quota = ctx.s.home_quota
    rows = sorted(({"user": u, "volume": v, "bytes": used.get(v),
                    "over_quota": bool(quota and (used.get(v) or 0) > quota)}
                   for u, v in homes.items()), key=lambda r: -(r["bytes"] or 0))
    emit(args, {"quota_bytes": quota, "homes": rows}, lambda: "\n".join(
        [f"quota: {volumes.human(quota) if quota else 'none'}"] +
        [f"{volumes.human(r['bytes']) if r['bytes'] is not None else '?':>8}  {r['user']}"
         f"{'  (over the quota)' if r['over_quota'] else ''}" for r in rows]))
    return OK


def images(ctx, args):
    wanted = {ctx.s.user_image: ["GPUHUB_USER_IMAGE"]}
    if ctx.s.catalog:
        try:
            catalog = courses.load_catalog(ctx.s.catalog)
        except (OSError, courses.CatalogError) as e:
            raise CliError(str(e), USAGE) from None
        for course in catalog.courses:
            wanted.setdefault(course.image, []).append(course.slug)
    rows = []
    for image, used_by in wanted.items():
        try:
            ctx.docker.inspect_image(image)
            present = True
        except docker.errors.NotFound:
            present = False
        rows.append({"image": image, "present": present, "used_by": used_by})
    emit(args, {"images": rows}, lambda: "\n".join(
        f"{'present' if r['present'] else 'MISSING':<8} {r['image']}  ({', '.join(r['used_by'])})"
        for r in rows))
    return OK if all(r["present"] for r in rows) else FAILED


COMMANDS = {"status": status, "stop": stop, "free-gpu": free_gpu, "backup": backup,
            "restore": restore, "backup-all": backup_all, "usage": usage, "images": images}
