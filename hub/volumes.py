"""Students' home volumes, through the Docker API guard: sizes, backups, restores.

The hub has no Docker socket and no access to the engine's data root, so every look into
a volume goes through a short-lived helper container that mounts it, created the way the
guard allows a user container (gpuhub's name prefix and labels, the user image, the
container user, no capabilities, no network):
  - sizes: `du` in a helper that runs for a moment and prints them (its logs);
  - backup and restore: a helper that is created and never started; the engine's archive
    API (GET/PUT /containers/{id}/archive) reads or writes the volume through it and keeps
    owners, modes, symlinks and empty folders.
Helper names are `{prefix}-_{what}-{random}`: escaped user names never hold `_`
(hub/names.py), so a helper can never take a student's container name.
"""

import secrets

import docker

from . import names

USER_LABEL = "org.gpuhub.user"
SERVER_LABEL = "org.gpuhub.server"
HELPER_LABEL = "org.gpuhub.helper"
SIZES_MOUNT = "/gpuhub-volumes"


class VolumeError(RuntimeError):
    """A volume operation that cannot be done; the message says why."""


def is_helper(labels):
    return HELPER_LABEL in (labels or {})


def _helper(api, s, what, binds, entrypoint=None, command=None):
    """A helper container (not started); its ID."""
    host = api.create_host_config(
        binds=binds, cap_drop=["ALL"], security_opt=["no-new-privileges:true"], pids_limit=64)
    host.pop("NetworkMode", None)  # docker-py's "default": no network at all is the point
    created = api.create_container(
        s.user_image, command=command, entrypoint=entrypoint,
        name=f"{s.container_prefix}-_{what}-{secrets.token_hex(4)}", user=s.container_user,
        # the guard wants these labels on every container; empty: no student's server
        labels={USER_LABEL: "", SERVER_LABEL: "", HELPER_LABEL: what},
        environment={"NVIDIA_VISIBLE_DEVICES": "void"}, network_disabled=True,
        host_config=host)
    return created["Id"]


def _remove(api, container_id):
    try:
        api.remove_container(container_id, force=True)
    except docker.errors.NotFound:
        pass


def home_volumes(api, s):
    """{user name: volume name} of every home volume (`{volume prefix}-{escaped name}`)."""
    prefix = f"{s.volume_prefix}-"
    found = {}
    for volume in api.volumes().get("Volumes") or []:
        name = volume["Name"]
        if name.startswith(prefix):
            try:
                found[names.from_docker_name_part(name[len(prefix):])] = name
            except ValueError:
                continue  # not one the spawner made
    return found


def exists(api, volume):
    try:
        api.inspect_volume(volume)
        return True
    except docker.errors.NotFound:
        return False


def _du(api, s, binds, args, timeout):
    """du's output lines in a helper mounting `binds` read-only."""
    helper = _helper(api, s, "du", binds, entrypoint=["du", "-x", "-B1", *args[:-1]],
                     command=args[-1])
    try:
        api.start(helper)
        api.wait(helper, timeout=timeout)
        return api.logs(helper, stdout=True, stderr=False).decode(errors="replace").splitlines()
    finally:
        _remove(api, helper)


def sizes(api, s, volumes, timeout=600):
    """{volume: bytes on disk} (`du -s -B1`: what a quota counts), all in one helper that
    mounts them read-only. Folders the container user cannot read (a student's chmod 000)
    are not counted: a soft quota is a reminder, hard quotas enforce (docs/operations.md)."""
    if not volumes:
        return {}
    order = sorted(volumes)
    binds = {v: {"bind": f"{SIZES_MOUNT}/{i}", "mode": "ro"} for i, v in enumerate(order)}
    lines = _du(api, s, binds, ["-s", [f"{SIZES_MOUNT}/{i}" for i in range(len(order))]], timeout)
    result = {v: None for v in order}
    for line in lines:
        used, _, path = line.partition("\t")
        index = path.rsplit("/", 1)[-1]
        if used.isdigit() and index.isdigit() and int(index) < len(order):
            result[order[int(index)]] = int(used)
    return result


def largest(api, s, volume, count=5, timeout=600):
    """[(folder relative to the home, bytes)]: the biggest folders two levels down, for
    the message that says what to delete."""
    lines = _du(api, s, {volume: {"bind": SIZES_MOUNT, "mode": "ro"}},
                ["-d", "2", [SIZES_MOUNT]], timeout)
    found = []
    for line in lines:
        used, _, path = line.partition("\t")
        if used.isdigit() and path.startswith(f"{SIZES_MOUNT}/"):
            found.append((path[len(SIZES_MOUNT) + 1:], int(used)))
    # a folder's parent counts it too: keep the deepest big ones first, then by size
    return sorted(found, key=lambda f: -f[1])[:count]


def backup(api, s, volume, out):
    """Write the volume's files to `out` as a tar (entries ./...), streamed; bytes written."""
    if not exists(api, volume):
        raise VolumeError(f"there is no volume {volume}")
    helper = _helper(api, s, "backup", {volume: {"bind": s.notebook_dir, "mode": "ro"}})
    written = 0
    try:
        stream, _ = api.get_archive(helper, f"{s.notebook_dir}/.", chunk_size=1 << 16)
        for chunk in stream:
            out.write(chunk)
            written += len(chunk)
    finally:
        _remove(api, helper)
    return written


def is_empty(api, s, volume):
    """True if the volume is missing or holds nothing; only the first entries are read."""
    import tarfile
    if not exists(api, volume):
        return True
    helper = _helper(api, s, "check", {volume: {"bind": "/gpuhub-check", "mode": "ro"}})
    try:
        stream, _ = api.get_archive(helper, "/gpuhub-check/.", chunk_size=1 << 16)
        with tarfile.open(fileobj=_Reader(stream), mode="r|") as tar:
            for member in tar:
                if member.name not in (".", "./"):
                    return False
        return True
    finally:
        _remove(api, helper)


def restore(api, s, volume, tar_stream):
    """Unpack a tar made by `backup` (a file object) into the volume, created if missing.
    Mounted where the user image has its home, so a new volume's top folder belongs to
    the container user, as after a first spawn (the image's files come along)."""
    helper = _helper(api, s, "restore", {volume: {"bind": s.notebook_dir, "mode": "rw"}})
    try:
        if not api.put_archive(helper, s.notebook_dir, iter(lambda: tar_stream.read(1 << 16), b"")):
            raise VolumeError(f"the engine did not unpack the archive into {volume}")
    except docker.errors.APIError as e:
        raise VolumeError(f"restoring {volume} failed: {e.explanation or e}") from None
    finally:
        _remove(api, helper)


class _Reader:
    """A file object over an iterator of byte chunks (tarfile's stream mode reads it)."""

    def __init__(self, chunks):
        self.chunks, self.buffer = iter(chunks), b""

    def read(self, size=-1):
        while size < 0 or len(self.buffer) < size:
            chunk = next(self.chunks, None)
            if chunk is None:
                break
            self.buffer += chunk
        if size < 0:
            size = len(self.buffer)
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data


def user_volume(s, username):
    return names.user_volume(s.volume_prefix, username)


def human(n):
    """1536 -> '1.5K', in powers of 1024 as GPUHUB_HOME_QUOTA's 10g is."""
    for unit in ("B", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024


def over_quota_message(used, quota, folders):
    """What a student over the soft quota reads instead of a server."""
    biggest = "; ".join(f"~/{path} {human(size)}" for path, size in folders) or "none found"
    return (f"Your home folder uses {human(used)}, over its quota of {human(quota)}, so your "
            f"server was not started. Delete what you no longer need to get below "
            f"{human(quota)}: caches (~/.cache, ~/.local/lib pip installs), old checkpoints "
            f"and datasets. Largest folders: {biggest}. Without a server, ask an admin: they "
            "can back up and remove files for you (gpuhub backup/usage, docs/operations.md).")
