"""Paths that come from untrusted places, checked before anything is opened.

Two kinds of path reach the project from outside:
- paths written INSIDE a dataset (a COCO `file_name`, the ids of a VOC split file that become Annotations/<id>.xml and
  JPEGImages/<id>.jpg, the entries of YOLO list files): `resolve_inside(root, relative, what)` resolves them against
  the dataset folder (following symlinks) and refuses anything that leaves it, is absolute, or is not a regular file.
  A refusal is an `UnsafePathError` naming the annotation file/field, never the content of what it points at.
- paths the USER gives (--data, --weights, --names, --cfg, --anchors, --source, --resume): `check_user_path` makes
  sure a FIFO or a device file is never opened (reading one blocks forever or never ends).

`is_regular_file` is the test both use: os.stat + S_ISREG, which never opens the file.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from utils.common.errors import UserError


class UnsafePathError(UserError, ValueError):
    """A path from inside a dataset that leaves it or is not a regular file, or a user path that is a FIFO/device."""


def is_regular_file(path: str | Path) -> bool:
    """True for a regular file (after following symlinks); False for a FIFO, device, socket, folder or missing path.
    Never opens the path."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):  # ValueError: a NUL byte in the path
        return False


def _kind(path: Path) -> str:
    """'a FIFO', 'a device file', ... for messages about what a path is instead of a file."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return "missing"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def resolve_inside(root: str | Path, relative: str, what: str) -> Path:
    """The resolved path of `relative` under `root`, when it is a regular file inside `root` (after following
    symlinks); else UnsafePathError naming `what` (e.g. "instances_train.json: images[3].file_name") and the path.

    A missing file inside root is returned as is (the caller reports a missing image, which is no safety matter).
    """
    text = str(relative)
    root_resolved = Path(root).resolve()
    if "\x00" in text:
        raise UnsafePathError(f"{what}: path contains a NUL character; refused (the entry is skipped)")
    if not text or Path(text).is_absolute() or text.startswith(("/", "\\")) or Path(text).drive:
        raise UnsafePathError(f"{what}: {text!r} is not a path relative to the dataset folder {root_resolved}; "
                              "refused (the entry is skipped): write paths relative to the dataset")
    candidate = (root_resolved / text).resolve()
    if candidate != root_resolved and root_resolved not in candidate.parents:
        raise UnsafePathError(f"{what}: {text!r} points outside the dataset folder {root_resolved}; refused (the "
                              "entry is skipped): keep every file inside the dataset")
    if candidate.exists() and not is_regular_file(candidate):
        raise UnsafePathError(f"{what}: {text!r} is {_kind(candidate)}, not a regular file; refused (the entry is "
                              "skipped)")
    return candidate


def check_user_path(path: str | Path, flag: str, folder_ok: bool = False) -> Path:
    """`path` unchanged when it is a regular file (or, with folder_ok, a folder) or does not exist (the caller says
    what is missing); UnsafePathError for a FIFO, device file or socket, which would hang or never end when read."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return path
    if stat.S_ISREG(mode) or (folder_ok and stat.S_ISDIR(mode)):
        return path
    expected = "a file or a folder" if folder_ok else "a regular file"
    raise UnsafePathError(f"{flag} {path} is {_kind(path)}, not {expected}; refused (reading it could block "
                          "forever): give a regular file")
