"""The spawner: DockerSpawner with gpuhub's per-user wiring.

Logic (course choice, GPU allocation) lives in plain modules; this class only wires
it into DockerSpawner's hooks, as systemdspawner keeps systemd.py apart from its spawner.
"""

from dockerspawner import DockerSpawner


class GpuhubSpawner(DockerSpawner):
    """One container per user server, on the user network, with the user's volume."""
