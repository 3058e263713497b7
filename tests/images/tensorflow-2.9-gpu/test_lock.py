"""The hash-locked requirements of the TensorFlow 2.9 user image.

The image installs them with `pip install --require-hashes` into the base image's Python
3.8, whose pip is 20.2 (TF's images pin pip<20.3). These tests check, without Docker and
without downloading the 500 MB TensorFlow wheel, that such an install can succeed:
every pin is exact and hashed, the index has a file for it that this pip accepts on
CPython 3.8 / manylinux x86-64 with one of the lock's hashes, and the lock keeps to
TensorFlow 2.9.3's own pins. The index is the one pip is configured with (PIP_INDEX_URL,
`pip config`, else PyPI), asked through its simple API (PEP 691 JSON, PEP 503 HTML).
"""

import email.parser
import hashlib
import html.parser
import io
import json
import os
import re
import ssl
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import (InvalidSdistFilename, InvalidWheelFilename, canonicalize_name,
                             parse_sdist_filename, parse_wheel_filename)
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[3]
IMAGE = ROOT / "images" / "tensorflow-2.9-gpu"
LOCK = IMAGE / "requirements.txt"
INPUT = IMAGE / "requirements.in"
LOCK_COMMAND = ("cd images/tensorflow-2.9-gpu && uv pip compile requirements.in "
                "--python-version 3.8 --python-platform x86_64-manylinux_2_17 "
                "--only-binary :all: --generate-hashes -o requirements.txt")
SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"
PYPI = "https://pypi.org/simple"

# The tags pip 20.2 accepts on CPython 3.8, x86-64 Linux with glibc 2.31 (Ubuntu 20.04).
# That pip predates PEP 600, so a wheel must carry a legacy manylinux name: one tagged
# only `manylinux_2_17_x86_64` would be refused, even though newer pips take it.
PLATFORMS = ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64",
             "linux_x86_64"]
SUPPORTED = set(cpython_tags((3, 8), abis=["cp38"], platforms=PLATFORMS)) | set(
    compatible_tags((3, 8), interpreter="cp38", platforms=PLATFORMS))
# Markers evaluated as on the image's Python.
TARGET_ENV = {
    "implementation_name": "cpython", "implementation_version": "3.8.10",
    "os_name": "posix", "platform_machine": "x86_64", "platform_release": "",
    "platform_system": "Linux", "platform_version": "",
    "platform_python_implementation": "CPython", "python_full_version": "3.8.10",
    "python_version": "3.8", "sys_platform": "linux", "extra": "",
}
# Small pins that pip itself downloads for the target: pure Python and compiled.
PIP_DOWNLOAD = ["jupyterhub", "jupyterlab", "nbgitpuller", "markupsafe", "wrapt"]


# ---------------------------------------------------------------- the lock file
@dataclass
class Pin:
    name: str
    version: str
    hashes: set
    line: str


def read_lock(text):
    """The lock's requirements, with `\\`-continued lines joined and comments dropped."""
    pins, logical = [], ""
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        if logical.strip():
            requirement, *options = logical.split(" --")
            hashes = {o.split(":", 1)[1].strip() for o in options
                      if o.startswith("hash=sha256:")}
            name, _, version = requirement.strip().partition("==")
            pins.append(Pin(canonicalize_name(name), version.strip(), hashes, logical.strip()))
        logical = ""
    return pins


@pytest.fixture(scope="module")
def pins():
    return read_lock(LOCK.read_text())


def test_every_pin_is_exact_and_hashed(pins):
    assert len(pins) > 50, "the lock looks truncated"
    bad = [p.line[:80] for p in pins
           if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*==[0-9][0-9A-Za-z.+!-]*", p.line.split(" ")[0])
           or not p.hashes or not all(re.fullmatch(r"[0-9a-f]{64}", h) for h in p.hashes)]
    assert not bad, f"not `name==version --hash=sha256:...`: {bad}"
    names = [p.name for p in pins]
    assert len(names) == len(set(names)), "a package is pinned twice"


def test_lock_says_how_it_was_made_and_names_no_index():
    text = LOCK.read_text()
    assert LOCK_COMMAND in text.splitlines()[1], "the header must record the lock command"
    # the image is built through a mirror given at build time
    assert not re.search(r"^\s*--(extra-)?index-url|^\s*--find-links", text, re.M)


def test_lock_satisfies_requirements_in(pins):
    locked = {p.name: Version(p.version) for p in pins}
    for line in INPUT.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in locked, f"{req.name} is in requirements.in but not in the lock"
        assert req.specifier.contains(locked[name], prereleases=True), \
            f"{name}=={locked[name]} does not satisfy requirements.in's {req}"
    assert str(locked["tensorflow"]) == "2.9.3"


# ---------------------------------------------------------------- the index
def ssl_context():
    # The machine may reach the index through a TLS-inspecting proxy whose CA is only in
    # the system bundle (certifi's alone would fail).
    return ssl.create_default_context(cafile=SYSTEM_CA if os.path.exists(SYSTEM_CA) else None)


def configured_index():
    """The index pip would use: PIP_INDEX_URL, else `pip config`, else PyPI."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"].rstrip("/")
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                         capture_output=True, text=True, timeout=60).stdout
    found = dict(re.findall(r"^([\w:.-]+)\.index-url='([^']*)'$", out, re.M))
    for scope in (":env:", "install", "download", "global"):
        if found.get(scope):
            return found[scope].rstrip("/")
    return PYPI


def get(url, headers=None, ranged=None):
    request = urllib.request.Request(url, headers=dict(headers or {}))
    if ranged:
        request.add_header("Range", ranged)
    last = None
    for _ in range(3):  # a flaky proxy is not a broken lock
        try:
            return urllib.request.urlopen(request, context=ssl_context(), timeout=120)
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, OSError) as e:
            last = e
    raise last


@dataclass
class IndexFile:
    filename: str
    url: str
    sha256: str
    yanked: bool = False
    metadata: object = None  # PEP 658/714: False, True or {"sha256": ...}
    requires_python: str = None


class _Anchors(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.anchors = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.anchors.append(dict(attrs))


def project_files(index, name, accept=("application/vnd.pypi.simple.v1+json, "
                                       "application/vnd.pypi.simple.v1+html;q=0.2, "
                                       "text/html;q=0.1")):
    """Every file the index lists for a project (PEP 691 JSON, else PEP 503 HTML)."""
    with get(f"{index}/{name}/", {"Accept": accept}) as response:
        base, kind = response.geturl(), response.headers.get("Content-Type", "")
        body = response.read()
    files = []
    if "json" in kind:
        for f in json.loads(body)["files"]:
            files.append(IndexFile(
                f["filename"], urllib.parse.urljoin(base, f["url"]),
                f.get("hashes", {}).get("sha256", ""), bool(f.get("yanked")),
                f.get("core-metadata", f.get("data-dist-info-metadata")),
                f.get("requires-python")))
        return files
    parser = _Anchors()
    parser.feed(body.decode("utf-8", "replace"))
    for a in parser.anchors:
        url = urllib.parse.urljoin(base, a.get("href", ""))
        path, _, fragment = url.partition("#")
        digest = fragment[len("sha256="):] if fragment.startswith("sha256=") else ""
        meta = a.get("data-core-metadata", a.get("data-dist-info-metadata"))
        if meta is not None:
            meta = {"sha256": meta.split("=", 1)[1]} if meta.startswith("sha256=") else True
        files.append(IndexFile(urllib.parse.unquote(path.rsplit("/", 1)[-1]), path, digest,
                               "data-yanked" in a, meta, a.get("data-requires-python")))
    return files


def file_version(filename):
    try:
        name, version, _, tags = parse_wheel_filename(filename)
        return name, version, tags
    except InvalidWheelFilename:
        pass
    try:
        name, version = parse_sdist_filename(filename)
        return name, version, None  # an sdist: pip can build it anywhere
    except InvalidSdistFilename:
        return None, None, None


def installable(pin, files):
    """The files pip 20.2 on the image may install for a pin: wheels whose tags it accepts
    and sdists, either only where their Requires-Python admits Python 3.8."""
    chosen = []
    for f in files:
        name, version, tags = file_version(f.filename)
        if name != pin.name or version != Version(pin.version):
            continue
        if f.requires_python and not SpecifierSet(f.requires_python).contains(
                TARGET_ENV["python_full_version"]):
            continue
        if tags is None or tags & SUPPORTED:
            chosen.append(f)
    return chosen


@pytest.fixture(scope="module")
def index():
    return configured_index()


@pytest.fixture(scope="module")
def listings(index, pins):
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            pages = pool.map(lambda p: (p.name, project_files(index, p.name)), pins)
            return dict(pages)
    except (urllib.error.URLError, OSError) as e:
        pytest.fail(f"the package index {index} did not answer: {e}")


@pytest.mark.network
def test_index_has_an_installable_file_with_a_locked_hash(pins, listings, index):
    problems = []
    for pin in pins:
        files = installable(pin, listings[pin.name])
        if not files:
            problems.append(f"{pin.name}=={pin.version}: no cp38 manylinux2014 (or older) "
                            f"x86-64 wheel, py3-none-any wheel or sdist for Python 3.8 "
                            f"on {index}")
            continue
        matching = [f for f in files if f.sha256 in pin.hashes]
        if not matching:
            problems.append(f"{pin.name}=={pin.version}: none of {[f.filename for f in files]}"
                            " has a hash in the lock")
        elif all(f.yanked for f in matching):
            problems.append(f"{pin.name}=={pin.version} is yanked")
    assert not problems, "\n".join(problems)


@pytest.mark.network
def test_pip_downloads_representative_pins_for_the_image(pins, tmp_path):
    """pip itself, as configured, takes these pins with their hashes for CPython 3.8 on
    manylinux2014 x86-64: wheel tags, hash checking and Requires-Python all apply."""
    chosen = [p for p in pins if p.name in PIP_DOWNLOAD]
    assert {p.name for p in chosen} == set(PIP_DOWNLOAD)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("".join(f"{p.line}\n" for p in chosen))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--python-version", "3.8", "--platform", "manylinux2014_x86_64",
         "--implementation", "cp", "--abi", "cp38", "--require-hashes", "--progress-bar", "off",
         "-d", str(tmp_path / "wheels"), "-r", str(requirements)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    got = sorted(canonicalize_name(parse_wheel_filename(w.name)[0])
                 for w in (tmp_path / "wheels").glob("*.whl"))
    assert got == sorted(PIP_DOWNLOAD)


# ---------------------------------------------------------------- TensorFlow's own pins
class RangeFile(io.RawIOBase):
    """A remote file read through HTTP range requests, so zipfile can pull one member out
    of a wheel without fetching the rest (what pip and uv call a "lazy wheel")."""

    BLOCK = 1 << 18

    def __init__(self, url):
        super().__init__()
        self.url, self.pos, self.blocks = url, 0, {}
        with get(url, ranged=f"bytes=-{self.BLOCK}") as response:
            if response.status != 206:
                raise NotImplementedError(f"{urllib.parse.urlsplit(url).netloc} ignores "
                                          "HTTP range requests")
            self.size = int(response.headers["Content-Range"].rsplit("/", 1)[1])
            tail = response.read()
        start = self.size - len(tail)
        self.tail = (start, tail)

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self.pos

    def seek(self, offset, whence=io.SEEK_SET):
        self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset
        return self.pos

    def _block(self, i):
        if i not in self.blocks:
            start, end = i * self.BLOCK, min(self.size, (i + 1) * self.BLOCK) - 1
            with get(self.url, ranged=f"bytes={start}-{end}") as response:
                assert response.status == 206, response.status
                self.blocks[i] = response.read()
        return self.blocks[i]

    def readinto(self, buffer):
        n = max(0, min(len(buffer), self.size - self.pos))
        out = bytearray()
        while len(out) < n:
            at = self.pos + len(out)
            tail_start, tail = self.tail
            if at >= tail_start:
                chunk = tail[at - tail_start:]
            else:
                i = at // self.BLOCK
                chunk = self._block(i)[at - i * self.BLOCK:]
            out += chunk[:n - len(out)]
        buffer[:n] = out
        self.pos += n
        return n


def wheel_metadata(wheel):
    """The METADATA of a wheel: its PEP 658 file when the index has one (hash-checked),
    else read out of the wheel by range requests; None when neither works."""
    if wheel.metadata:
        with get(wheel.url + ".metadata") as response:
            data = response.read()
        expected = wheel.metadata.get("sha256") if isinstance(wheel.metadata, dict) else None
        assert expected in (None, hashlib.sha256(data).hexdigest()), "metadata hash mismatch"
        return data.decode(), "PEP 658 metadata file"
    try:
        remote = RangeFile(wheel.url)
    except (NotImplementedError, urllib.error.HTTPError) as e:
        return None, str(e)
    with zipfile.ZipFile(io.BufferedReader(remote, buffer_size=1 << 16)) as archive:
        name = next(n for n in archive.namelist()
                    if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        return archive.read(name).decode(), f"range requests ({len(remote.blocks) + 1} of them)"


@pytest.mark.network
def test_lock_keeps_to_tensorflows_own_pins(pins, listings):
    tf = next(p for p in pins if p.name == "tensorflow")
    wheels = [f for f in installable(tf, listings["tensorflow"])
              if f.filename.endswith(".whl") and f.sha256 in tf.hashes]
    assert wheels, "no locked cp38 manylinux wheel of tensorflow on the index"
    metadata, how = wheel_metadata(wheels[0])
    if metadata is None:
        pytest.skip(f"TensorFlow's Requires-Dist unreadable without downloading its 500 MB "
                    f"wheel: the index offers no PEP 658 metadata file and {how}")
    requires = email.parser.Parser().parsestr(metadata).get_all("Requires-Dist") or []
    assert len(requires) > 10, f"implausible Requires-Dist read through {how}: {requires}"
    locked = {p.name: Version(p.version) for p in pins}
    problems = []
    for line in requires:
        req = Requirement(line)
        if req.marker and not req.marker.evaluate(TARGET_ENV):
            continue
        name = canonicalize_name(req.name)
        if name not in locked:
            problems.append(f"tensorflow needs {req}, which the lock does not pin")
        elif not req.specifier.contains(locked[name], prereleases=True):
            problems.append(f"tensorflow needs {req}; the lock has {name}=={locked[name]}")
    assert not problems, "\n".join(problems)
