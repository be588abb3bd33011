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

import fnmatch
import glob
import os
import stat
from pathlib import Path
from typing import Iterator

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


def walk_files(folder: str | Path, within: str | Path | None = None,
               refused: list[Path] | None = None) -> Iterator[Path]:
    """Every file under `folder` (sorted, top-down), following links to folders but never into a folder already
    visited: a link loop (`images/loop -> ..`) or two links to one folder list each file once, and the walk ends.
    Real folders are walked before links, so a file is named by its path without links where it has one.

    within: links to folders whose real path leaves it are not followed (appended to `refused` when given): paths
    from inside a dataset stay inside it. Files are yielded as found (links to files included); the caller checks
    them (resolve_inside)."""
    folder = Path(folder)
    inside = Path(within).resolve() if within is not None else None
    visited: set[tuple[int, int]] = set()
    for current, dirs, files in os.walk(folder, followlinks=True):
        identity = _identity(current)
        if identity is None or identity in visited:  # reached again through a link: already listed
            dirs[:] = []
            continue
        visited.add(identity)
        kept = []
        for name in sorted(dirs, key=lambda d: (os.path.islink(os.path.join(current, d)), d)):  # links last
            path = Path(current) / name
            if inside is not None and not path.resolve().is_relative_to(inside):
                if refused is not None:
                    refused.append(path)
                continue
            if _identity(path) not in visited:
                kept.append(name)
        dirs[:] = kept
        yield from (Path(current) / name for name in sorted(files))


def _identity(path: str | Path) -> tuple[int, int] | None:
    """(device, inode) of a folder after following links; None when it cannot be read."""
    try:
        status = os.stat(path)
    except (OSError, ValueError):
        return None
    return status.st_dev, status.st_ino


def glob_files(pattern: str) -> list[Path]:
    """Files matching a glob pattern (sorted), `**` matching any number of folders: glob.glob(pattern,
    recursive=True) without its flaw, which follows a link loop until the path is too long (a folder of 8 images and
    `loop -> .` gave 1968 matches) or forever. Folders are walked with walk_files; as in glob, `*`, `?` and `[...]`
    never match a leading dot unless the pattern component starts with one."""
    parts = Path(pattern).parts
    static = next((i for i, part in enumerate(parts) if any(c in part for c in "*?[")), len(parts))
    base = Path(*parts[:static]) if static else Path(".")
    wanted = parts[static:]
    if "**" not in wanted:  # no recursion: glob itself cannot loop
        return sorted(Path(p) for p in glob.glob(pattern) if Path(p).is_file())
    if not base.is_dir():
        return []
    matches = []
    for path in walk_files(base):
        relative = path.relative_to(base).parts
        if _glob_match(list(wanted), list(relative)):
            matches.append(path)
    return sorted(matches)


def _glob_match(pattern: list[str], parts: list[str]) -> bool:
    """Whether path components `parts` match the pattern's components (`**`: zero or more folders)."""
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_glob_match(rest, parts[i:]) for i in range(len(parts) + 1)
                   if not any(p.startswith(".") for p in parts[:i]))
    if not parts or (parts[0].startswith(".") and not head.startswith(".")):
        return False
    return fnmatch.fnmatchcase(parts[0], head) and _glob_match(rest, parts[1:])
