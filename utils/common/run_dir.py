"""Run folders: claimed atomically (two runs never share one), probed for writing, removed again while empty, locked
by the process training in them, and written file by file atomically (a reader never sees half a picture)."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from utils.common.errors import UserError
from utils.common.filenames import safe_run_name

LOGGER = logging.getLogger(__name__)


def claim_run_dir(save_dir: str | Path, name: str) -> Path:
    """Create and return a new run folder: save_dir/name, else name2, name3, ... (never an existing one).

    mkdir without exist_ok is atomic, so two processes that start at the same moment never get the same folder: the
    loser of each race moves on to the next number. `name` is made safe as a folder name (see safe_run_name).
    """
    base, name = Path(save_dir), safe_run_name(name)
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputFolderError(f"cannot create the output folder {base} ({err.strerror or err}); choose a writable "
                                "--save-dir") from None
    number = 1
    while True:
        candidate = base / (name if number == 1 else f"{name}{number}")
        try:
            candidate.mkdir()
        except FileExistsError:  # an earlier run, or another process that took this name meanwhile
            number += 1
            continue
        except OSError as err:
            raise OutputFolderError(f"cannot create a run folder in {base} ({err.strerror or err}); it is read-only "
                                    "or not writable: choose another --save-dir") from None
        _check_writable(candidate)
        return candidate


class OutputFolderError(UserError, OSError):
    """An output location that cannot be written (read-only file system, no permission)."""


def _check_writable(folder: Path) -> None:
    """Write and remove a probe file, so a read-only location is found before any work starts (mkdir can succeed
    where files cannot be written, e.g. on some network and overlay file systems)."""
    probe = folder / ".write_test"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        remove_if_empty(folder)
        raise OutputFolderError(f"the run folder {folder} is not writable ({err.strerror or err}); choose another "
                                "--save-dir") from None


def remove_if_empty(folder: str | Path | None) -> None:
    """Remove a claimed run folder that is still empty (the run failed before writing anything): no empty run is
    left behind. A folder holding anything is kept."""
    if folder is None:
        return
    try:
        Path(folder).rmdir()  # fails unless empty
    except OSError:
        pass


# ----------------------------------------------------------------------------------------------------- atomic outputs
PARTIAL_GLOB = ".*.partial.*"  # what atomic_output writes before the rename


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path` to write into; rename it to `path` when the block ends without error.

    A reader (TensorBoard, a person, another tool) sees the previous file or the complete new one, never half a
    picture. The temporary name keeps the suffix (`.results.partial.png`), since matplotlib and OpenCV choose the
    format by it; a failed write removes it, and `remove_partial_outputs` clears those a killed process left."""
    path = Path(path)
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def remove_partial_outputs(folder: str | Path) -> list[Path]:
    """Delete the temporary files of atomic_output that a killed process left in `folder` (call under its lock)."""
    stale = sorted(Path(folder).glob(PARTIAL_GLOB))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


# ------------------------------------------------------------------------------------------------------------ lock
LOCK_NAME = ".train.lock"


class RunFolderBusyError(UserError, RuntimeError):
    """Another live process is training in this run folder."""


class RunLock:
    """An exclusive lock on a run folder for the process training in it.

    fcntl.flock on `<folder>/.train.lock`, whose content names the holder (pid, host, start time). The kernel drops
    the lock when its process dies, however it dies, so the lock of a killed run is taken over (said in one line)
    and never blocks a `--resume`. The file is removed on release. Without fcntl (Windows) the folder is not locked.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._handle = None

    def acquire(self) -> RunLock:
        """Take the lock, or raise RunFolderBusyError naming the folder and its holder."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no advisory locks to rely on
            LOGGER.debug("no fcntl here: %s is not locked", self.folder)
            return self
        for _ in range(10):  # retried only when the holder removed the file between our open and our flock
            handle = open(self.path, "a+", encoding="utf-8")  # held open while the lock lives
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(handle)
                handle.close()
                raise RunFolderBusyError(f"{self.folder} is in use: {holder} is training in it; wait for it to end "
                                         "(or stop it), then --resume the run") from None
            if _same_file(handle, self.path):
                self._handle = handle
                self._write_holder(_read_holder(handle, default=""))
                return self
            handle.close()
        raise RunFolderBusyError(f"{self.folder}: could not lock {self.path}; another process keeps replacing it")

    def _write_holder(self, previous: str) -> None:
        if previous:  # the file outlived its holder: that process died without releasing
            LOGGER.info("taking over the lock of %s left by %s, which no longer holds it (it was killed)",
                        self.folder, previous)
        handle = self._handle
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        handle.flush()

    def release(self) -> None:
        """Remove the lock file and drop the lock (removed first, while still held, so no other process locks a
        file that is about to vanish without noticing: acquire checks the file is still the one at the path)."""
        if self._handle is None:
            return
        self.path.unlink(missing_ok=True)
        self._handle.close()
        self._handle = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(handle, default: str = "another process") -> str:
    """'process 1234 on host x (since 2024-05-01 10:00:00)' from a lock file's content."""
    handle.seek(0)
    try:
        holder = json.loads(handle.read() or "null")
    except ValueError:
        return default
    if not isinstance(holder, dict):
        return default
    return f"process {holder.get('pid')} on {holder.get('host')} (since {holder.get('since')})"


def _same_file(handle, path: Path) -> bool:
    try:
        return os.fstat(handle.fileno()).st_ino == path.stat().st_ino
    except FileNotFoundError:
        return False
