"""Run folders: claimed atomically (two runs never share one), probed for writing, removed again while empty."""
from __future__ import annotations

from pathlib import Path

from utils.common.errors import UserError
from utils.common.filenames import safe_run_name


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
