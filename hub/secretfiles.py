"""Secrets kept on the hub's volume (the Traefik API password, the generated crypt key):
generated once, mode 600, the same after every restart."""

import os
import secrets


def read_or_create_secret(path, nbytes=32):
    """The secret in `path`; a new random one (hex) written there first if it is missing."""
    if not os.path.exists(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(nbytes))
    with open(path) as f:
        return f.read().strip()
