"""Where a git-pull link may write: the allow-list check for nbgitpuller's `targetpath`.

nbgitpuller joins `targetpath` to the notebook directory as it is, so an absolute path,
`..` or a dot-folder (`.local`, `.jupyter`, `.ipython`) lets one click on a link write
code that runs as the student at the next start (jupyterhub/nbgitpuller#330, open).
`gitpull` calls this before nbgitpuller writes anything.
"""

import os
import re

# One folder name: starts with a letter or digit (so neither hidden nor an option to
# git), then letters, digits and a few separators. Unicode letters are fine (\w).
FOLDER = re.compile(r"\w[\w .,+@=-]{0,99}")
MAX_DEPTH = 8


class TargetPathRefused(ValueError):
    """str() says what was refused and what is accepted; meant for the student."""


def checked_target(root, targetpath):
    """The absolute folder a git-pull link may write for `targetpath` under `root` (the
    notebook directory plus NBGITPULLER_PARENTPATH), or TargetPathRefused.

    Accepted: a relative path of at most MAX_DEPTH folder names, each matching FOLDER
    (so no `..`, no `.`, no empty part, no dot-folder), that also does not lead into a
    hidden folder or out of `root` once existing symbolic links are followed."""
    rule = ("a git-pull link may only write to a relative, non-hidden folder inside "
            "your home, such as 'course' or 'cs101/week1'")
    if not isinstance(targetpath, str) or not targetpath:
        raise TargetPathRefused(f"empty targetpath refused: {rule}")
    shown = targetpath if len(targetpath) <= 80 and targetpath.isprintable() else repr(targetpath[:80])
    parts = targetpath.split("/")
    if targetpath.startswith("/") or "\\" in targetpath:
        raise TargetPathRefused(f"targetpath {shown!r} refused (absolute path): {rule}")
    if len(parts) > MAX_DEPTH:
        raise TargetPathRefused(f"targetpath {shown!r} refused (more than {MAX_DEPTH} "
                                f"folders deep): {rule}")
    for part in parts:
        if part in ("..", "."):
            raise TargetPathRefused(f"targetpath {shown!r} refused ({part!r}): {rule}")
        if part.startswith("."):
            raise TargetPathRefused(f"targetpath {shown!r} refused (hidden folder "
                                    f"{part!r}): {rule}")
        if not FOLDER.fullmatch(part):
            raise TargetPathRefused(f"targetpath {shown!r} refused (folder name "
                                    f"{part[:40]!r}): {rule}")
    # an existing symbolic link (say ~/notes -> ~/.local) must not lead elsewhere
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, *parts))
    if os.path.commonpath([real_root, real]) != real_root:
        raise TargetPathRefused(f"targetpath {shown!r} refused (leads out of your home): "
                                f"{rule}")
    inside = os.path.relpath(real, real_root)
    if inside != "." and any(p.startswith(".") for p in inside.split(os.sep)):
        raise TargetPathRefused(f"targetpath {shown!r} refused (leads into a hidden "
                                f"folder): {rule}")
    if real == real_root:
        raise TargetPathRefused(f"targetpath {shown!r} refused (your home itself): {rule}")
    return real
