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


# -- course-install: a real Python (a venv of this machine's) and wheels made here, offline --
def make_wheel(folder, name, version):
    """A minimal pure-Python wheel of `name` `version` (what pip needs, nothing more)."""
    import base64
    import hashlib
    import zipfile

    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": f"VERSION = {version!r}\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: gpuhub-test\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n"}

    def digest(text):
        raw = hashlib.sha256(text.encode()).digest()
        return "sha256=" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    record = "".join(f"{path},{digest(text)},{len(text)}\n" for path, text in files.items())
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for member, text in {**files, f"{dist}/RECORD": record + f"{dist}/RECORD,,\n"}.items():
            z.writestr(member, text)
    return path


def lock_line(wheel):
    import hashlib
    return f"{wheel} --hash=sha256:{hashlib.sha256(wheel.read_bytes()).hexdigest()}\n"


def course_env(tmp_path):
    import sys
    import venv
    home = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(home)
    python = home / "bin" / "python"
    base = make_wheel(tmp_path, "gpuhubbasepkg", "2.0")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-index", str(base)], check=True)
    return python


def course_install(tmp_path, python, *wheels):
    lock = tmp_path / "course-requirements.txt"
    lock.write_text("".join(lock_line(w) for w in wheels))
    return subprocess.run(["bash", str(SETUP), "course-install", str(lock)], capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "PYTHON": str(python),
                                          "PIP_NO_INDEX": "1"}, timeout=300)


def test_course_install_adds_packages_and_keeps_the_base(tmp_path):
    python = course_env(tmp_path)
    extra = make_wheel(tmp_path, "gpuhubcoursepkg", "1.0")
    result = course_install(tmp_path, python, extra)
    assert result.returncode == 0, result.stderr
    check = subprocess.run([str(python), "-c", "import gpuhubcoursepkg, gpuhubbasepkg; "
                            "print(gpuhubbasepkg.VERSION)"], capture_output=True, text=True)
    assert check.stdout.strip() == "2.0"


def test_course_install_refuses_to_downgrade_a_base_package(tmp_path):
    python = course_env(tmp_path)
    older = tmp_path / "older"
    older.mkdir()
    result = course_install(tmp_path, python, make_wheel(older, "gpuhubbasepkg", "1.5"))
    assert result.returncode == 1
    assert "gpuhubbasepkg 2.0 (base image) -> 1.5 (course)" in result.stderr, result.stderr
    assert "-c <base requirements.txt>" in result.stderr
