"""Admin commands, run inside the hub container:

    docker compose exec hub python -m hub.cli gpus
"""

import argparse
import sys

from . import gpus
from .gpu_api import report
from .settings import SettingsError, load


def allocator_from_settings(settings, db_url=None):
    inventory = (gpus.parse_inventory(settings.gpus, "GPUHUB_GPUS") if settings.gpus
                 else gpus.discover_nvml(_Quiet()))
    policy = gpus.parse_policy(settings.gpu_mode, settings.gpu_max_users, settings.gpu_group_caps)
    return gpus.GpuAllocator(db_url or f"sqlite:///{settings.database}",
                             inventory, policy)


class _Quiet:
    def info(self, *args):
        pass


def show_gpus(allocator, out=sys.stdout):
    body = report(allocator)
    print(f"{body['total']} GPUs, {body['in_use']} in use, mode {body['mode']}", file=out)
    for gpu in body["gpus"]:
        who = ", ".join(f"{h['user']}{'/' + h['server'] if h['server'] else ''} since {h['since'][:19]}Z"
                        for h in gpu["holders"]) or "free"
        name = f" {gpu['name']}" if gpu["name"] else ""
        print(f"{gpu['index']:>3} {gpu['uuid']}{name}: {who}", file=out)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m hub.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("gpus", help="one line per GPU: who holds it since when")
    cmd.add_argument("--db-url", help="database URL (default: the hub's SQLite database)")
    args = parser.parse_args(argv)
    try:
        settings = load()
        allocator = allocator_from_settings(settings, args.db_url)
    except (SettingsError, gpus.GpuConfigError) as e:
        parser.exit(2, f"{e}\n")
    if not allocator.inventory:
        parser.exit(1, "no GPUs: none listed in GPUHUB_GPUS and none visible through NVML\n")
    show_gpus(allocator)


if __name__ == "__main__":
    main()
