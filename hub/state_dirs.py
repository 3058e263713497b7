"""The hub runs as its own user (not root): its volumes must be writable by it.

Deployments from before that change have volumes owned by root; the hub then stops at
start-up naming them and the one-off command that hands them over (docs/admin.md,
"Upgrading: the hub no longer runs as root").
"""

import os

# compose names the volumes <project>_<volume>; the project is "gpuhub" for a clone in ~/gpuhub
UPGRADE_COMMAND = (
    "docker run --rm --user 0 --entrypoint chown"
    " -v gpuhub_hub-state:/srv/jupyterhub -v gpuhub_routes:/srv/traefik-routes"
    " -v gpuhub_tls:/certs gpuhub/hub:local -R {uid}:{gid}"
    " /srv/jupyterhub /srv/traefik-routes /certs")


class StateDirError(RuntimeError):
    """A directory the hub writes to is not writable by the hub's user."""


def check_writable(dirs):
    """Raise StateDirError naming every directory the hub cannot write, and the fix."""
    unwritable = [d for d in dirs if os.path.isdir(d) and not os.access(d, os.W_OK)]
    if not unwritable:
        return
    uid, gid = os.getuid(), os.getgid()
    owners = ", ".join(f"{d} (owned by uid {os.stat(d).st_uid})" for d in unwritable)
    raise StateDirError(
        f"gpuhub cannot start: the hub runs as uid {uid} and cannot write to {owners}.\n"
        "Volumes made by an older gpuhub, whose hub ran as root, belong to root. Stop the "
        "stack and hand them over once (docs/admin.md, 'Upgrading'; volume names as in "
        "`docker volume ls`):\n  " + UPGRADE_COMMAND.format(uid=uid, gid=gid))
