"""`make images` on a fresh host: the system's python3 (never `python`), images/build's
dependencies in a venv the Makefile makes from a hash-locked file, and `--check` as the
instructor's first step. Runs in a copy of the repository with a PATH that has no test
venv on it, as an admin's shell would be."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.stack import copy_repository

pytestmark = pytest.mark.network  # pip installs the lock from the package index


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    if not Path("/usr/bin/python3").exists():
        pytest.skip("no /usr/bin/python3 on this machine")
    root = tmp_path_factory.mktemp("clone")
    copy_repository(root)
    shutil.copy(root / "catalog" / "catalog.example.yaml", root / "catalog" / "catalog.yaml")
    return root


def make_images(root, env_text, *build_args):
    (root / ".env").write_text(env_text)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}
    for key in ("PIP_INDEX_URL", "PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        if key in os.environ:
            env[key] = os.environ[key]
    return subprocess.run(["make", "images", f"BUILD_ARGS={' '.join(build_args)}"], cwd=root,
                          env=env, capture_output=True, text=True, timeout=600)


def test_make_images_checks_the_catalog_in_its_own_venv(clone):
    result = make_images(clone, "GPUHUB_GROUPS=cs101-2025\n", "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 course(s) fine (tensorflow, cpu, cs101)" in result.stdout
    assert (clone / ".venv-images" / "bin" / "python").exists()
    # the group the example's cs101 course names, missing from .env: refused, named
    result = make_images(clone, "GPUHUB_GROUPS=\n", "--check")
    assert result.returncode != 0
    assert "field 'groups': unknown group 'cs101-2025'" in result.stderr, result.stderr
