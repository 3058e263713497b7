"""images/common/image-setup, the set-up step every image shares: its TensorFlow guard,
run against a stand-in `python3` (a script) that says which TensorFlow is installed and
what `pip install` changes. The CA and mirror steps run in the e2e image builds."""

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETUP = REPO / "images" / "common" / "image-setup"

FAKE_PYTHON = """#!/bin/sh
# -c ...: print the installed TensorFlow; -m pip install ...: install what $AFTER says
state="$STATE"
if [ "$1" = "-c" ]; then cat "$state"; exit 0; fi
if [ "$1 $2 $3" = "-m pip install" ]; then echo "$@" > "$state.args"; printf '%s\\n' "$AFTER" > "$state"; fi
"""


def run(tmp_path, *args, before="2.9.3", after="2.9.3"):
    python = tmp_path / "python3"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    state = tmp_path / "tf-version"
    state.write_text(before + "\n")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("sympy==1.12 --hash=sha256:00\n")
    args = [str(requirements) if a == "REQUIREMENTS" else a for a in args]
    return subprocess.run(["bash", str(SETUP), *args], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": str(python), "STATE": str(state),
                               "AFTER": after, "PIP_INDEX_URL": "https://mirror.example/simple"})


def test_pip_install_is_hash_checked_through_the_mirror(tmp_path):
    result = run(tmp_path, "pip-install", "REQUIREMENTS")
    assert result.returncode == 0, result.stderr
    args = (tmp_path / "tf-version.args").read_text()
    assert "--require-hashes" in args and "--index-url https://mirror.example/simple" in args


def test_pip_install_fails_when_tensorflow_changes(tmp_path):
    result = run(tmp_path, "pip-install", "REQUIREMENTS", after="2.15.0")
    assert result.returncode == 1
    assert "tensorflow changed from 2.9.3 to 2.15.0" in result.stderr


def test_tf_is_holds_the_label_to_what_is_installed(tmp_path):
    assert run(tmp_path, "tf-is", "2.9.3").returncode == 0
    result = run(tmp_path, "tf-is", "2.9.3", before="none")
    assert result.returncode == 1 and "TensorFlow none is installed" in result.stderr


def test_an_unknown_step_is_refused(tmp_path):
    result = run(tmp_path, "mirrors")
    assert result.returncode == 2 and "usage" in result.stderr
