"""What a run leaves for the user: a log file, results.csv, loss/mAP curves, TensorBoard events."""
from __future__ import annotations

import argparse
import contextlib
import csv
import errno
import io
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator

import torch
from tqdm import tqdm

from utils.errors import UserError
from utils.filenames import safe_run_name

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class TqdmHandler(logging.StreamHandler):
    """Log lines that do not tear the progress bar apart."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except (OSError, ValueError):
            self.handleError(record)


def setup_logging(verbose: bool = False, log_file: Path | None = None, main_process: bool = True) -> None:
    """Console logging through tqdm on the main process (warnings only elsewhere), plus an optional log file."""
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    console = TqdmHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    console.setLevel(logging.DEBUG if verbose else (logging.INFO if main_process else logging.WARNING))
    root.addHandler(console)
    if log_file is not None:
        add_log_file(log_file)


def add_log_file(path: Path) -> None:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every default, except where it would say nothing or repeat itself: None and '' (the help text says
    what no value means: 'default: the checkpoint's', 'default: best available'), switches that are off unless given
    (store_true / store_false), and help texts that already name their default. Descriptions keep their layout."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        switch = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        if action.default in (None, "") or switch or "default" in text.lower():
            return text
        return super()._get_help_string(action)


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


def write_results_csv(history: list[dict], path: Path) -> None:
    """Rewrite results.csv from the full history (atomically), so it always matches the checkpoint."""
    if not history:
        return
    columns = list(dict.fromkeys(key for row in history for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    tmp = path.with_suffix(".csv.tmp")
    try:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
    except OSError as err:  # name the file (a failed write carries no file name): "no space left on <path>"
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror, str(path)) from None
    os.replace(tmp, path)


RESULT_PANELS = (  # (title, results.csv columns drawn in it)
    ("box loss", ("train/box", "val/box")), ("objectness loss", ("train/obj", "val/obj")),
    ("class loss", ("train/cls", "val/cls")), ("total train loss", ("train/total",)), ("learning rate", ("lr",)),
    ("val precision / recall", ("val/precision", "val/recall")), ("val mAP@0.5", ("val/mAP50",)),
    ("val mAP@0.5:0.95", ("val/mAP50_95",)),
)


def plot_results(history: list[dict], path: Path) -> None:
    """Train and validation losses, learning rate, precision/recall and mAP curves per epoch in one PNG."""
    # local: matplotlib takes 0.7-0.8 s to import on the 2-core CI machine (python -X importtime), which predict.py
    # and eval.py would pay at start-up for run_command alone
    import matplotlib
    matplotlib.use("Agg")  # files only; training machines often have no display
    import matplotlib.pyplot as plt

    panels = [(title, [k for k in keys if any(row.get(k) not in (None, "") for row in history)])
              for title, keys in RESULT_PANELS]
    panels = [(title, keys) for title, keys in panels if keys]
    columns = min(len(panels), 4) or 1
    rows = -(-len(panels) // columns) or 1
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3 * rows), squeeze=False)
    for ax, (title, keys) in zip(axes.flat[:len(panels)], panels, strict=True):
        for key in keys:
            points = [(row["epoch"], row[key]) for row in history if row.get(key) not in (None, "")]
            ax.plot(*zip(*points, strict=True), marker="o", markersize=2, label=key if len(keys) > 1 else None)
        if len(keys) > 1:
            ax.legend(fontsize=7)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# Running out of host or GPU memory is no bug: say what to lower (the original error with --verbose).
OUT_OF_MEMORY = (MemoryError, torch.cuda.OutOfMemoryError)
OUT_OF_MEMORY_FIX = "lower --batch-size, --input-shape or --workers (run with --verbose for the original error)"


class Terminated(KeyboardInterrupt):
    """SIGTERM (what SLURM, Kubernetes and `timeout` send), raised like Ctrl-C so the same clean-up runs (train.py
    saves last.pth); run_command then exits with 143 (128 + SIGTERM), as a process killed by it would."""


def _raise_terminated(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut short the clean-up of the first
    raise Terminated


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises Terminated inside the block (main thread only: only it can set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_command(action: Callable[[], object], verbose: bool, logger: logging.Logger) -> int:
    """Run `action()` for an entry script and return its exit status.

    0 on success; 130 on Ctrl-C; 1 with one `error: ...` line for what the user can fix (UserError, OSError) and with
    one line naming the fix for running out of memory. With `verbose` those re-raise, so the traceback shows.
    Anything else (a bug here, in torch or in a dependency) propagates with its traceback: it is what to report.
    """
    try:
        with _sigterm_raises():
            action()
    except Terminated:
        logger.warning("terminated (SIGTERM): exit 143")
        return 143
    except KeyboardInterrupt:
        return 130
    except (UserError, OSError) as err:
        if verbose:
            raise
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            logger.error("error: no space left on %s; free some space (then --resume a training run)",
                         err.filename or "the output device")
            return 1
        logger.error("error: %s", err)
        return 1
    except OUT_OF_MEMORY as err:
        if verbose:
            raise
        logger.error("error: out of memory (%s): %s", type(err).__name__, OUT_OF_MEMORY_FIX)
        return 1
    return 0
