"""Admin commands, run inside the hub container as `gpuhub` (or `python -m hub.cli`):

    docker compose exec hub gpuhub status|stop|free-gpu|backup|restore|backup-all|usage|images
        (hub/admin.py; `gpuhub --help` lists them, exit codes there)
    docker compose exec hub gpuhub export z2jh [--output FILE|-] (hub/z2jh.py)
    docker compose exec hub python -m hub.cli gpus [--db-url URL] [--json]
    docker compose exec hub python -m hub.cli gpu-hours [--since 7d] [--until DATE]
        [--by user|course|group|gpu] [--format table|csv|json] [--db-url URL]

Reads GPUHUB_GPUS, GPUHUB_GPU_MODE, GPUHUB_GPU_MAX_USERS and GPUHUB_GPU_GROUP_CAPS through
hub.settings, as the hub does (and completes the inventory from NVML the same way,
gpus.inventory), and the hub's database from GPUHUB_STATE_DIR. Only these settings are
read (`settings.load(only=...)`): a mistake in another one, such as a login setting,
does not keep an admin from looking at the GPUs.
"""

import argparse
import csv
import datetime
import json
import logging
import os
import sys

from . import admin, gpu_hours, gpus, settings, z2jh
from .gpu_queue_store import GpuQueue
from .gpu_store import GpuAllocator

# the settings the `gpus` command reads; the others are neither read nor required
GPU_SETTINGS = ("GPUHUB_GPUS", "GPUHUB_GPU_MODE", "GPUHUB_GPU_MAX_USERS",
                "GPUHUB_GPU_GROUP_CAPS", "GPUHUB_STATE_DIR", "GPUHUB_DB_URL")


def show_gpus(report, out=None):
    """One line per GPU: index, uuid, name, and each holder with since when."""
    out = out or sys.stdout
    print(f"{report['total']} GPUs, {report['in_use']} in use, {report['free']} with room, "
          f"mode {report['mode']}", file=out)
    for gpu in report["gpus"]:
        who = ", ".join(f"{h['user']}{'/' + h['server'] if h['server'] else ''} "
                        f"since {h['since'][:19]}Z" for h in gpu["holders"]) or "free"
        name = f" {gpu['name']}" if gpu["name"] else ""
        gone = " (no longer in the inventory)" if not gpu["in_inventory"] else ""
        print(f"{gpu['index']:>3} {gpu['uuid']}{name}{gone}: {who}", file=out)
    for place in report.get("queue", []):
        why = (f"group {place['blocking_group']} is at its cap" if place["blocking_group"]
               else f"{place['ahead']} ahead")
        about = f", expected by {place['expected'][:16]}Z" if place["expected"] else ""
        print(f"waiting {place['position']}: {place['user']}"
              f"{'/' + place['server'] if place['server'] else ''} ({place['course']}, "
              f"{place['wanted']} GPU) since {place['since'][:19]}Z, {why}{about}", file=out)


def gpus_command(args, environ=None):
    s = settings.load(environ, only=GPU_SETTINGS)
    db_url = args.db_url or s.db_url
    path = db_url.removeprefix("sqlite:///")
    if db_url.startswith("sqlite:///") and not os.path.exists(path):
        # do not leave an empty database where the hub's should be
        raise SystemExit(f"no hub database at {path}: is this the hub container? "
                         "(or pass --db-url)")
    allocator = GpuAllocator(db_url, gpus.inventory(s.gpus), s.gpu_policy)
    report = allocator.report()
    report["queue"] = GpuQueue(allocator, 0).report()  # the line in front of the GPUs
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        show_gpus(report)
    return 0


def existing_db_url(args, environ):
    db_url = args.db_url or settings.load(environ, only=("GPUHUB_STATE_DIR", "GPUHUB_DB_URL")).db_url
    path = db_url.removeprefix("sqlite:///")
    if db_url.startswith("sqlite:///") and not os.path.exists(path):
        raise SystemExit(f"no hub database at {path}: is this the hub container? "
                         "(or pass --db-url)")
    return db_url


def show_gpu_hours(report, fmt, out=None):
    """The GPU-hours report as a table, CSV or JSON."""
    out = out or sys.stdout
    by = report["by"]
    if fmt == "json":
        print(json.dumps(report, indent=2), file=out)
        return
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([by, "gpu_hours", "gpu_seconds", "allocations"])
        for row in report["rows"]:
            writer.writerow([row[by], f"{row['gpu_hours']:.6f}", f"{row['gpu_seconds']:.3f}",
                             row["allocations"]])
        return
    period = f"{report['since'] or 'the beginning'} to {report['until'] or report['now']}"
    print(f"GPU-hours by {by}, {period}", file=out)
    width = max([len(by)] + [len(_label(row[by], by)) for row in report["rows"]])
    print(f"{by:<{width}}  {'GPU-hours':>10}  {'allocations':>11}", file=out)
    for row in report["rows"]:
        print(f"{_label(row[by], by):<{width}}  {row['gpu_hours']:>10.2f}  "
              f"{row['allocations']:>11}", file=out)
    total = sum(row["gpu_hours"] for row in report["rows"]) if by != "group" else None
    if total is not None:
        print(f"{'total':<{width}}  {total:>10.2f}", file=out)


def _label(key, by):
    return key or ("(no group)" if by == "group" else "(none)")


def gpu_hours_command(args, environ=None, now=None):
    from sqlalchemy import inspect

    from .gpu_store import make_engine
    engine = make_engine(existing_db_url(args, environ))
    if not inspect(engine).has_table("gpuhub_gpu_usage"):
        raise SystemExit("no GPU usage history in this database yet (the hub creates it "
                         "when it starts with GPUs)")
    now = now or datetime.datetime.now(datetime.timezone.utc)
    since = gpu_hours.parse_moment(args.since, now, "--since") if args.since else None
    until = gpu_hours.parse_moment(args.until, now, "--until") if args.until else None
    show_gpu_hours(gpu_hours.report(engine, args.by, since, until, now), args.format)
    return 0


EPILOG = """exit codes: 0 done; 1 failed (the engine, the hub, a file; images: one is
missing); 2 bad arguments or settings; 3 refused (a running server, a held GPU, a non-empty
volume: --force overrides); 4 no such user, volume or GPU"""


def parser():
    top = argparse.ArgumentParser(prog="gpuhub", description="gpuhub's admin commands, run "
                                  "inside the hub container (docker compose exec hub gpuhub ...)",
                                  epilog=EPILOG)
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, help):
        cmd = sub.add_parser(name, help=help, description=help, epilog=EPILOG)
        cmd.add_argument("--json", action="store_true", help="print JSON")
        return cmd
    cmd = command("gpus", "one line per GPU: who holds it, since when")
    cmd.add_argument("--db-url", help="database URL (default: the hub's SQLite database)")
    hours = command("gpu-hours", "GPU-hours per user, course, group or GPU")
    hours.add_argument("--db-url", help="database URL (default: the hub's SQLite database)")
    hours.add_argument("--since", help="start of the period: 2026-11-30, 2026-11-30T08:00 "
                                       "(UTC), week (this Monday), or 7d, 12h, 30m ago; "
                                       "default: all time")
    hours.add_argument("--until", help="end of the period, as --since; default: now")
    hours.add_argument("--by", choices=gpu_hours.BY, default="user",
                       help="what to total by (a user in several groups counts in each)")
    hours.add_argument("--format", choices=("table", "csv", "json"), default="table")
    command("status", "users, servers, course, image, GPUs held, students waiting")
    command("stop", "stop a user's server (the hub frees its GPUs)").add_argument("user")
    cmd = command("free-gpu", "give back a GPU's allocations")
    cmd.add_argument("uuid")
    cmd.add_argument("--force", action="store_true", help="even while a running server holds it")
    cmd = command("backup", "a tar of a user's home volume (owners, modes, symlinks kept)")
    cmd.add_argument("user")
    cmd.add_argument("file", metavar="FILE|-", help="where to write the tar; - for stdout")
    cmd = command("restore", "unpack a backup into a user's home volume")
    cmd.add_argument("user")
    cmd.add_argument("file", metavar="FILE|-", help="the tar; - for stdin")
    cmd.add_argument("--force", action="store_true",
                     help="even while the server runs or the volume holds files")
    cmd = command("backup-all", "a consistent copy of the hub database and every home volume")
    cmd.add_argument("dir", help="a folder the hub's user can write, e.g. a mounted one")
    command("usage", "each home volume's size, largest first")
    command("images", "the user and catalog images: present or missing")
    z2jh.add_parser(sub)  # export z2jh: hub/z2jh.py
    return top


def main(argv=None, environ=None):
    # NVML's "no driver here" is an info line, not news for the person at the terminal
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    top = parser()
    args = top.parse_args(argv)  # bad arguments: usage and exit code 2 (argparse)
    try:
        if args.command == "export":
            return z2jh.run(args, environ)
        if args.command == "gpu-hours":
            if args.json:
                args.format = "json"
            return gpu_hours_command(args, environ)
        if args.command == "gpus":
            return gpus_command(args, environ)
        return admin.COMMANDS[args.command](admin.Context(environ), args)
    except settings.SettingsError as e:
        top.exit(admin.USAGE, "".join(f"{p}\n" for p in e.problems))
    except (gpus.GpuConfigError, ValueError) as e:
        top.exit(admin.USAGE, f"{e}\n")
    except admin.CliError as e:
        top.exit(e.code, f"gpuhub {args.command}: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
