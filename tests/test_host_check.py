"""scripts/host-check against sample daemon.json files: what it reports and the merged
file it prints (valid JSON, the admin's entries kept, the missing ones added)."""

import importlib.machinery
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "host-check"
NVIDIA_ONLY = {"runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}}}
MIRROR_ONLY = {"registry-mirrors": ["https://mirror.example.edu"]}
COMPLETE = {**NVIDIA_ONLY, **MIRROR_ONLY, "log-opts": {"max-size": "10m"},
            "default-address-pools": [{"base": "10.64.0.0/12", "size": 24}]}


def load_module():
    loader = importlib.machinery.SourceFileLoader("host_check", str(SCRIPT))
    spec = importlib.util.spec_from_loader("host_check", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def run(tmp_path, content, *args):
    path = tmp_path / "daemon.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    result = subprocess.run([sys.executable, str(SCRIPT), "--file", str(path), *args],
                            capture_output=True, text=True, timeout=30)
    return result


def merged_of(output):
    return json.loads(output[output.index("\n{") + 1:])


@pytest.mark.parametrize("content, missing", [
    (None, {"registry-mirrors", "runtimes.nvidia", "log-opts.max-size", "default-address-pools"}),
    (NVIDIA_ONLY, {"registry-mirrors", "log-opts.max-size", "default-address-pools"}),
    (MIRROR_ONLY, {"runtimes.nvidia", "log-opts.max-size", "default-address-pools"}),
    ({**NVIDIA_ONLY, **MIRROR_ONLY}, {"log-opts.max-size", "default-address-pools"}),
])
def test_findings_and_merged_file(tmp_path, content, missing):
    result = run(tmp_path, content)
    assert result.returncode == 1, result.stderr
    reported = {line.split(":")[0].strip("- ").strip() for line in result.stdout.splitlines()
                if line.startswith("  - ")}
    assert reported == missing
    merged = merged_of(result.stdout)
    # both entries end up in the one file, with what the admin had kept as it was
    assert merged["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
    assert merged["registry-mirrors"] == (content or {}).get(
        "registry-mirrors", ["https://docker.mirrors.tuna.tsinghua.edu.cn"])
    assert merged["log-opts"]["max-size"]
    module = load_module()
    assert module.pool_capacity(merged["default-address-pools"]) >= 64
    assert not module.overlapping(merged["default-address-pools"], "10.128.0.0/16")
    for key, value in (content or {}).items():
        assert merged[key] == value


def test_nothing_missing(tmp_path):
    result = run(tmp_path, COMPLETE)
    assert result.returncode == 0
    assert "nothing missing" in result.stdout


def test_own_mirror_and_no_mirror(tmp_path):
    own = run(tmp_path, NVIDIA_ONLY, "--mirror", "https://hub-mirror.example.org")
    assert merged_of(own.stdout)["registry-mirrors"] == ["https://hub-mirror.example.org"]
    none = run(tmp_path, NVIDIA_ONLY, "--no-mirror")
    assert "registry-mirrors" not in merged_of(none.stdout)


def test_small_pool_is_reported_and_kept(tmp_path):
    enough = run(tmp_path, {**COMPLETE, "default-address-pools": [{"base": "10.10.0.0/16", "size": 24}]})
    assert enough.returncode == 0, enough.stdout  # 256 networks: enough
    result = run(tmp_path, {**COMPLETE, "default-address-pools": [{"base": "10.10.0.0/20", "size": 24}]})
    assert "room for 16 networks" in result.stdout
    assert merged_of(result.stdout)["default-address-pools"] == [{"base": "10.10.0.0/20", "size": 24}]


def test_a_pool_overlapping_the_server_networks_is_reported(tmp_path):
    pools = [{"base": "10.128.0.0/12", "size": 24}]
    result = run(tmp_path, {**COMPLETE, "default-address-pools": pools})
    assert result.returncode == 1
    assert "10.128.0.0/12 overlaps gpuhub's server networks (10.128.0.0/16" in result.stdout
    env = tmp_path / "gpuhub.env"
    env.write_text("GPUHUB_SERVER_SUBNETS=10.200.0.0/16\n")
    moved = run(tmp_path, {**COMPLETE, "default-address-pools": pools}, "--env-file", str(env))
    assert moved.returncode == 0, moved.stdout


def test_invalid_json_names_the_file(tmp_path):
    result = run(tmp_path, '{"runtimes": {')
    assert result.returncode == 2
    assert str(tmp_path / "daemon.json") in result.stderr and "not valid JSON" in result.stderr
    assert result.stdout == ""


def test_never_writes_the_file(tmp_path):
    run(tmp_path, NVIDIA_ONLY)
    assert json.loads((tmp_path / "daemon.json").read_text()) == NVIDIA_ONLY
