"""The routes file, readable by the proxy's group.

jupyterhub-traefik-proxy 2.x writes the dynamic configuration through
`traefik_utils.atomic_writing`, a NamedTemporaryFile moved into place (its PR #41): always
mode 600. While the hub ran as root that suited Traefik, root too. Now the hub runs as
uid 10001 and Traefik as root *without* CAP_DAC_OVERRIDE, so a 600 file of the hub's is
unreadable to it and Traefik would serve no routes. Wrapped here, in one place: the
same atomic write, then mode 640 (group 10001, which the proxy joins: docker-compose.yml
group_add) before the file is moved into place. No upstream issue yet.
"""

import os
from contextlib import contextmanager

MODE = 0o640


def install():
    """Make jupyterhub-traefik-proxy's routes file group-readable (idempotent)."""
    from jupyterhub_traefik_proxy import traefik_utils
    original = getattr(traefik_utils.atomic_writing, "unwrapped", traefik_utils.atomic_writing)

    @contextmanager
    def group_readable_atomic_writing(path):
        with original(path) as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), MODE)

    group_readable_atomic_writing.unwrapped = original
    traefik_utils.atomic_writing = group_readable_atomic_writing
