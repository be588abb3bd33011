"""Output files that appear whole or not at all: written under a temporary name in the same folder, renamed last.

A command killed at any moment (SIGKILL, power cut of the process, a full disk) then leaves either the previous file
or none, never a half-written one that passes for a result: a truncated labels .txt reads as "fewer detections", a
0-byte metrics.json as a finished evaluation. The rename is atomic because source and target share a folder.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


def temporary_name(path: Path, suffix: str = "") -> Path:
    """A hidden name next to `path`, unique to this process: .<name>.<pid>.tmp<suffix> (suffix: for writers that
    choose the format by the extension, such as OpenCV's)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")


@contextlib.contextmanager
def atomic_output(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path to write; on leaving the block it becomes `path` (os.replace), or is removed when the
    block raised. A failed write names `path` (an OSError from a temporary name would puzzle the reader)."""
    path = Path(path)
    tmp = temporary_name(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))
