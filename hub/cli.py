"""Admin commands, run inside the hub container:

    docker compose exec hub python -m hub.cli gpus [--db-url URL] [--json]

Reads GPUHUB_GPUS, GPUHUB_GPU_MODE, GPUHUB_GPU_MAX_USERS and GPUHUB_GPU_GROUP_CAPS through
hub.settings, as the hub does (and completes the inventory from NVML the same way,
gpus.inventory), and the hub's database from GPUHUB_STATE_DIR. Only these settings are
read (`settings.load(only=...)`): a mistake in another one, such as a login setting,
does not keep an admin from looking at the GPUs.
"""

import argparse
import json
import logging
import os
import sys

from . import gpus, settings
from .gpu_store import GpuAllocator

# the settings the `gpus` command reads; the others are neither read nor required
GPU_SETTINGS = ("GPUHUB_GPUS", "GPUHUB_GPU_MODE", "GPUHUB_GPU_MAX_USERS",
                "GPUHUB_GPU_GROUP_CAPS", "GPUHUB_STATE_DIR")


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
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        show_gpus(report)
    return 0


def main(argv=None, environ=None):
    # NVML's "no driver here" is an info line, not news for the person at the terminal
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="python -m hub.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("gpus", help="one line per GPU: who holds it, since when")
    cmd.add_argument("--db-url", help="database URL (default: the hub's SQLite database)")
    cmd.add_argument("--json", action="store_true", help="print GET /hub/api/gpus's JSON")
    args = parser.parse_args(argv)
    try:
        return gpus_command(args, environ)
    except settings.SettingsError as e:
        parser.exit(2, "".join(f"{p}\n" for p in e.problems))
    except gpus.GpuConfigError as e:
        parser.exit(2, f"{e}\n")


if __name__ == "__main__":
    sys.exit(main())
