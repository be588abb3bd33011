"""Containment of paths that come from inside a dataset (list files, yaml entries, json file names).

# placeholder until the hardening branch lands: issue 12 owns this module; the lead keeps its version at merge.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from utils.errors import UserError


class UnsafePathError(UserError, ValueError):
    """A path written inside a data file that leads outside the dataset, or to something that is not a file."""


def is_regular_file(path: str | Path) -> bool:
    """True for a regular file (after following symlinks); never opens FIFOs or device files."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def resolve_inside(root: Path, relative: str, what: str) -> Path:
    """The resolved path of the regular file `relative` (relative to `root`, or absolute) when it lies inside `root`
    after following symlinks; else UnsafePathError naming `what` (the file and field it came from)."""
    base = Path(root).resolve()
    target = (base / relative).resolve()
    if not target.is_relative_to(base):
        raise UnsafePathError(f"{what}: the path leads outside the dataset folder {base}; keep the data's paths "
                              "inside its folder")
    if not is_regular_file(target):
        raise UnsafePathError(f"{what}: {'is not a regular file' if target.exists() else 'file not found'} "
                              f"({target.name}); fix the path")
    return target
