"""The study folder: the only coordination between the processes of one study (one machine's study command, or the
shards of a SLURM array / Kubernetes indexed job / GNU parallel on many machines sharing the folder).

    <study>/study.json          settings every run shares, the factors, their levels so far, the seeds
    <study>/study.lock          held briefly (flock) while study.json or the report is written
    <study>/locks/<run>.lock    held (flock) by the process training that run, and by its train.py
    <study>/<run>/              a train.py run folder; <run>/result.json, written atomically last, means finished
    <study>/console/<run>.txt   the console output of the run's train.py and eval.py

flock works on local file systems and on NFSv4, and on Lustre or BeeGFS mounted with flock support; without it (on
Windows) nothing stops two processes from training one run, so give every process its own shard there.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import IO, Iterator

from utils.common.errors import ConfigError, UserError
from utils.study.factors import Run

try:
    import fcntl  # POSIX advisory locks
except ImportError:  # Windows: no advisory locks here
    fcntl = None

RESULT_FILE = "result.json"  # written last, atomically: its presence means the run is finished
STUDY_FORMAT = 2  # 1: before --vary (study.json without "format": the attention ablation of phi and attention_at)
OLD_FACTORS = ["phi", "attention_at"]
FIXED_SETTINGS = ("data", "epochs", "eval_split", "evaluate", "train_flags")  # equal for every run of a study


class StudyError(UserError, RuntimeError):
    """A study that cannot go on as asked (its folder is in an unexpected state, no run finished); the message says
    what to do."""


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: shards may write side by side
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)


class StudyFolder:
    """The study's folder: its settings (study.json), its locks, the run folders and their results."""

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The study-wide lock, held while study.json or the report is read and written (waits for the holder)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / "study.lock", "a") as handle:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def claim(self, run: Run) -> IO | None:
        """The run's own lock, or None while another process holds it (another shard, a second study command, or
        the train.py of a study process that died). Close the returned file to release it."""
        folder = self.path / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / f"{run.name}.lock", "a")  # noqa: SIM115 - held while the run trains
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                return None
        return handle

    def read_settings(self) -> dict | None:
        path = self.path / "study.json"
        if not path.is_file():
            return None
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise StudyError(f"{path} is not valid JSON; restore it, or pass another --study folder") from None
        if stored.get("format", 1) > STUDY_FORMAT:
            raise StudyError(f"{path} was written by a newer version of utils.ablate (format {stored['format']}); "
                             "update this checkout, or pass another --study folder")
        return stored

    def record(self, settings: dict, grid: dict[str, list[str]], seeds: int) -> dict:
        """Write study.json on the first start; afterwards the settings that shape every run and the factors must be
        the same, while levels and seeds may be added (merged into study.json). Hold `locked()` around it."""
        stored = self.read_settings()
        if stored is None:
            self.path.mkdir(parents=True, exist_ok=True)
            study = {"format": STUDY_FORMAT, **settings, "factors": list(grid), "grid": grid, "seeds": seeds}
            write_json_atomic(self.path / "study.json", study)
            return study
        changed = [k for k in FIXED_SETTINGS if stored.get(k) != settings[k]]
        if changed:
            key = changed[0]
            raise ConfigError(f"{self.path} holds a study made with {key} = {stored.get(key)!r}, not "
                              f"{settings[key]!r}; rerun it with the same settings to resume, or pass another "
                              "--study folder")
        self._check_factors(stored, list(grid))
        merged = {name: list(dict.fromkeys([*stored.get("grid", {}).get(name, []), *levels]))
                  for name, levels in grid.items()}
        study = {**stored, "format": STUDY_FORMAT, "factors": list(grid), "grid": merged,
                 "seeds": max(seeds, stored.get("seeds", 0))}
        if study != stored:
            write_json_atomic(self.path / "study.json", study)
        return study

    def _check_factors(self, stored: dict, factors: list[str]) -> None:
        old = stored.get("factors", OLD_FACTORS)
        if old == factors:
            return
        if "format" not in stored:
            raise ConfigError(f"{self.path} was made before studies could vary other train.py options: it compares "
                              "--phi and --at only. Resume it with --phi/--at (no --vary), or pass another --study "
                              "folder")
        raise ConfigError(f"{self.path} is a study of {', '.join(old)}; this command varies {', '.join(factors)}. A "
                          "study keeps its factors (levels and seeds may be added): pass another --study folder")

    def run_dir(self, run: Run) -> Path:
        return self.path / run.name

    def result(self, run: Run) -> dict | None:
        """The finished run's result.json, or None while it is missing, unreadable or for another run."""
        path = self.run_dir(run) / RESULT_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("run") == run.name and "mAP50" in data else None
