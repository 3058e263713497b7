"""The user image's own Python (images/tensorflow-2.9-gpu/workbench/gpuhub_workbench),
without Docker: the git-pull targetpath check and the "My GPU" page. The image tests
(tests/e2e/test_user_image.py) and the browser test run them inside the server."""

import os
import sys
from pathlib import Path

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "images" / "tensorflow-2.9-gpu" / "workbench"))

from gpuhub_workbench import gpu_page  # noqa: E402
from gpuhub_workbench.targetpath import TargetPathRefused, checked_target  # noqa: E402

from hub.gpus import Gpu  # noqa: E402
from hub.spawner import gpu_info_env  # noqa: E402


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "home"
    (home / ".local" / "lib").mkdir(parents=True)
    (home / ".jupyter").mkdir()
    (home / "course").mkdir()
    (home / "notes").symlink_to(home / ".local")          # a link into a dot-folder
    (home / "outside").symlink_to(tmp_path)               # a link out of the home
    (home / "course" / "up").symlink_to(home / ".jupyter")
    return home


ATTACKS = [
    "/home/jovyan/.local", "/etc", "/", "..", "../..", "../jovyan2", "course/../../x",
    "course/..", ".", "./", "", ".local", ".local/lib/python3.8/site-packages",
    ".jupyter", ".ipython/profile_default/startup", "course/.git", "a/.hidden/b",
    "notes", "notes/lib", "outside", "outside/x", "course/up", "course//x", "course/",
    "-upload-pack=touch", "\\etc", "course\\..\\.local", "x\x00y", "a/" * 9 + "a",
    "\u2024local", "．local",
]


@pytest.mark.parametrize("target", ATTACKS)
def test_attacks_are_refused_with_the_rule(home, target):
    with pytest.raises(TargetPathRefused, match="only write to a relative, non-hidden "
                                                "folder inside your home"):
        checked_target(str(home), target)


@pytest.mark.parametrize("target", ["course", "cs101", "cs101/week1", "course/new",
                                    "Deep Learning 2025", "课程", "a.b", "v1.0-notes"])
def test_ordinary_folders_are_accepted(home, target):
    assert checked_target(str(home), target) == os.path.join(os.path.realpath(home), target)


def inside_and_visible(home, path):
    real_home = os.path.realpath(home)
    rel = os.path.relpath(os.path.realpath(path), real_home)
    return (rel != "." and not rel.startswith("..")
            and not any(p.startswith(".") for p in rel.split(os.sep)))


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=60) | st.lists(
    st.sampled_from(["..", ".", ".local", "course", "notes", "outside", "up", "", "x",
                     "/", "a b", ".git"]), max_size=5).map("/".join))
@example("course/up/x")
def test_whatever_is_accepted_stays_in_a_visible_folder_of_the_home(tmp_path_factory, target):
    home = tmp_path_factory.mktemp("h")
    (home / ".local").mkdir()
    (home / "course").mkdir()
    (home / "notes").symlink_to(home / ".local")
    (home / "course" / "up").symlink_to(home / ".local")
    (home / "outside").symlink_to(home.parent)
    try:
        result = checked_target(str(home), target)
    except TargetPathRefused as e:
        assert "refused" in str(e)
        return
    assert inside_and_visible(home, result), (target, result)
    assert result == os.path.realpath(os.path.join(home, target))


@given(st.lists(st.from_regex(r"[a-z0-9][a-z0-9_-]{0,15}", fullmatch=True),
                min_size=1, max_size=4))
def test_plain_relative_folders_are_always_accepted(tmp_path_factory, parts):
    home = tmp_path_factory.mktemp("h")
    assert checked_target(str(home), "/".join(parts)) == os.path.join(
        os.path.realpath(home), *parts)


def test_gpu_page_names_the_held_gpu_and_escapes_it():
    env = {"NVIDIA_VISIBLE_DEVICES": "GPU-1,GPU-2", "GPUHUB_GPU_NAMES": "Fake A100,<b>x</b>",
           "GPUHUB_GPU_MEMORY_MIB": "40960,"}
    assert gpu_page.held_gpus(env) == [("GPU-1", "Fake A100", "40960"), ("GPU-2", "<b>x</b>", "")]
    page = gpu_page.render(env)
    assert "Fake A100" in page and "40 GiB" in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "<b>x</b>" not in page
    assert "has no GPU" in gpu_page.render({"NVIDIA_VISIBLE_DEVICES": "void"})


def test_spawner_passes_the_inventorys_names_and_memory():
    gpus = [Gpu(0, "GPU-a", "NVIDIA A100, 40GB", 40960), Gpu(1, "GPU-b")]
    assert gpu_info_env(gpus) == {"GPUHUB_GPU_NAMES": "NVIDIA A100  40GB,",
                                  "GPUHUB_GPU_MEMORY_MIB": "40960,"}
    assert gpu_info_env([]) == {"GPUHUB_GPU_NAMES": "", "GPUHUB_GPU_MEMORY_MIB": ""}
