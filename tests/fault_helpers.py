"""Helpers for the fault suite (tests/test_faults_*.py): run the CLIs as real subprocesses, build tiny datasets, take
file snapshots, and a child-side hook runner that marks phases of a training run so a test can SIGKILL it there.

Run as a script it is that hook runner:

    python -m tests.fault_helpers MARKER_DIR SAVE_PAUSE_S EVAL_PAUSE_S -- train.py ARGS...   (from the repository root)

It runs train.py unchanged (runpy) with a callback added to its run and torch.save wrapped, so that they leave marker
files in MARKER_DIR: `step_<epoch>_<i>` before training iteration i, `eval_<epoch>` when validation starts (then it
pauses EVAL_PAUSE_S so the parent can kill inside it), and `save_<name>_<epoch>` once half of a checkpoint's bytes are
in its temporary file (then it pauses SAVE_PAUSE_S before writing the rest). The kills themselves are real SIGKILLs of
this process.
"""
from __future__ import annotations

import hashlib
import io
import os
import runpy
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.paths import ROOT

SAMPLE = ROOT / "VOCdevkit" / "VOC2007"


def child_env() -> dict[str, str]:
    """Environment for CLI subprocesses: one thread each (CI has 2 cores), headless matplotlib, UTF-8 output."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONIOENCODING="utf-8",
               PYTHONUNBUFFERED="1")
    env.pop("DISPLAY", None)
    return env


def cli(script: str, *args: str, timeout: float = 240, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run `python <script> args...` from the repository root; stdout and stderr merged into `.stdout`."""
    command = [sys.executable, str(ROOT / script), *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, encoding="utf-8", errors="replace", timeout=timeout)


def cli_many(jobs: list[tuple[str, list]], workers: int = 2) -> list[subprocess.CompletedProcess]:
    """Run several `cli(script, *args)` jobs, two at a time: CI has 2 cores and each start is mostly importing torch."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda job: cli(job[0], *job[1]), jobs))


TRAIN_FAST = ("--input-shape", "64", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--no-preview",
              "--eval-period", "1", "--no-amp", "--mosaic", "0", "--mixup", "0")


def tiny_voc(dest: Path, train: int = 8, val: int = 4) -> Path:
    """A VOCdevkit with `train` + `val` images copied from the bundled sample and explicit split files."""
    ids = sorted(p.stem for p in (SAMPLE / "Annotations").glob("*.xml"))[: train + val]
    year = dest / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year / sub).mkdir(parents=True, exist_ok=True)
    for stem in ids:
        shutil.copy(SAMPLE / "Annotations" / f"{stem}.xml", year / "Annotations")
        shutil.copy(SAMPLE / "JPEGImages" / f"{stem}.jpg", year / "JPEGImages")
    main = year / "ImageSets" / "Main"
    (main / "train.txt").write_text("\n".join(ids[:train]) + "\n", encoding="utf-8")
    (main / "val.txt").write_text("\n".join(ids[train:]) + "\n", encoding="utf-8")
    (main / "test.txt").write_text("\n".join(ids[train:]) + "\n", encoding="utf-8")
    (main / "trainval.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
    return dest


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """{relative path: (sha256, mtime_ns)} of every file under `folder`."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def wait_for(predicate, timeout: float, process: subprocess.Popen | None = None, poll: float = 0.005):
    """Poll `predicate()` until it returns something truthy (returned) or `timeout` passes / `process` exits (None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if process is not None and process.poll() is not None:
            return predicate() or None
        time.sleep(poll)
    return None


def kill_hard(process: subprocess.Popen) -> None:
    """SIGKILL the process (and only it) and reap it."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def start_hooked(markers: Path, output: Path, *train_args: str, save_pause: float = 0.0,
                 eval_pause: float = 0.0) -> subprocess.Popen:
    """Start train.py under the marker hooks (see the module docstring); its output goes to the file `output`."""
    markers.mkdir(parents=True, exist_ok=True)
    with open(output, "ab") as sink:  # a file, not a pipe: a full pipe would stall the child
        return subprocess.Popen([sys.executable, "-m", "tests.fault_helpers", str(markers), str(save_pause),
                                 str(eval_pause), "--",
                                 "train.py", *map(str, train_args)], cwd=ROOT, env=child_env(), stdout=sink,
                                stderr=subprocess.STDOUT)


def marker_epochs(markers: Path) -> int:
    """The highest epoch (1-based) that any marker names: the epoch in progress when the process stopped."""
    epochs = [int(p.name.split("_")[-1 if p.name.startswith(("eval", "save")) else 1]) for p in markers.iterdir()]
    return max(epochs, default=0)


# ---------------------------------------------------------------------------------------------------- child side
def _touch(folder: Path, name: str) -> None:
    (folder / name).write_bytes(b"")


def install_hooks(markers: Path, save_pause: float, eval_pause: float) -> None:
    """A marker callback added to train.py's run (through utils.train.cli.train: the engine is not touched) and a
    wrapped torch.save (as utils.model.checkpoint sees it)."""
    import functools

    import torch

    import utils.model.checkpoint as checkpoint
    import utils.train.cli as train_cli

    real_save = torch.save

    class Markers:
        def on_batch_start(self, trainer, batch) -> None:
            _touch(markers, f"step_{batch.epoch}_{batch.index}")

        def on_validation_start(self, trainer, epoch: int) -> None:
            _touch(markers, f"eval_{epoch}")
            time.sleep(eval_pause)  # a window inside validation for the parent's kill

    def save(payload, handle, *args, **kwargs):
        if not hasattr(handle, "write") or save_pause <= 0:
            return real_save(payload, handle, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(payload, buffer, *args, **kwargs)
        data = buffer.getvalue()
        handle.write(data[: len(data) // 2])
        handle.flush()
        # save_checkpoint hands over an os.fdopen handle (its .name is the fd): ask the OS for the temp file name
        name = Path(os.readlink(f"/proc/self/fd/{handle.fileno()}")).name.split(".")[1]  # .last.pth.X.tmp -> last
        _touch(markers, f"save_{name}_{payload.get('epoch')}")
        time.sleep(save_pause)  # half a checkpoint on disk: the parent kills here
        handle.write(data[len(data) // 2:])
        return None

    train_cli.train = functools.partial(train_cli.train, callbacks=[Markers()])
    checkpoint.torch.save = save  # patches torch.save for this child process only


def main(argv: list[str]) -> None:
    split = argv.index("--")
    markers, save_pause, eval_pause = Path(argv[0]), float(argv[1]), float(argv[2])
    install_hooks(markers, save_pause, eval_pause)
    script = argv[split + 1]
    sys.argv = [script, *argv[split + 2:]]
    runpy.run_path(str(ROOT / script), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
