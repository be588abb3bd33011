"""Names turned into file names that stay where they are put.

Names from data (class names) go through `safe_stem` / `unique_stems`: a class name such as `../../x`, `C:\\x`, `con`,
a name of 300 characters, or two names that only differ in case or in characters a file system cannot hold must never
escape the output folder nor overwrite each other's files. Run names (--name, --save-dir) go through `safe_run_name`,
which keeps what the user typed readable (spaces, dots, non-ASCII letters) and only replaces what no file system
accepts; claim_run_dir never reuses an existing folder.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Sequence

_UNSAFE = re.compile(r"[^\w-]+")  # \w is Unicode-aware: letters of every script, digits and _ are kept
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
MAX_STEM = 64


def safe_stem(name: str, fallback: str = "item") -> str:
    """A file stem for `name`: NFKC-normalised, every run of other characters than letters, digits, _ and - (path
    separators, dots, spaces, controls) replaced by one _, at most MAX_STEM characters, never empty nor a Windows
    device name."""
    stem = _UNSAFE.sub("_", unicodedata.normalize("NFKC", str(name))).strip("_")[:MAX_STEM].strip("_") or fallback
    return f"_{stem}" if stem.casefold() in _RESERVED else stem


def unique_stems(names: Sequence[str], fallback: str = "item") -> list[str]:
    """safe_stem of each name, unique ignoring case (as Windows and macOS file systems compare names): a name whose
    stem is taken gets _<its position> appended, so two names that sanitise alike keep separate files."""
    used: set[str] = set()
    stems = []
    for position, name in enumerate(names):
        stem = safe_stem(name, fallback)
        while stem.casefold() in used:
            stem = f"{stem}_{position}"
        used.add(stem.casefold())
        stems.append(stem)
    return stems


def safe_run_name(name: str) -> str:
    """A run name usable as a folder name on every OS (spaces and non-ASCII letters are fine)."""
    cleaned = re.sub(r'[<>:"/\\|?*\x00-\x1f]', "_", name).strip()
    return cleaned or "exp"
