"""What a run leaves for the user: a log file, results.csv, loss/mAP curves, TensorBoard events."""
from __future__ import annotations

import csv
import io
import logging
import os
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; training machines often have no display
import matplotlib.pyplot as plt  # noqa: E402
from tqdm import tqdm  # noqa: E402

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


def increment_dir(save_dir: str | Path, name: str) -> Path:
    """logs/exp, logs/exp2, logs/exp3, ...: a new run never overwrites an old one."""
    base = Path(save_dir)
    candidate, n = base / name, 2
    while candidate.exists():
        candidate, n = base / f"{name}{n}", n + 1
    return candidate


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
    tmp.write_text(buffer.getvalue(), encoding="utf-8")
    os.replace(tmp, path)


RESULT_PANELS = (  # (title, results.csv columns drawn in it)
    ("box loss", ("train/box", "val/box")), ("objectness loss", ("train/obj", "val/obj")),
    ("class loss", ("train/cls", "val/cls")), ("total train loss", ("train/total",)), ("learning rate", ("lr",)),
    ("val precision / recall", ("val/precision", "val/recall")), ("val mAP@0.5", ("val/mAP50",)),
    ("val mAP@0.5:0.95", ("val/mAP50_95",)),
)


def plot_results(history: list[dict], path: Path) -> None:
    """Train and validation losses, learning rate, precision/recall and mAP curves per epoch in one PNG."""
    panels = [(title, [k for k in keys if any(row.get(k) not in (None, "") for row in history)])
              for title, keys in RESULT_PANELS]
    panels = [(title, keys) for title, keys in panels if keys]
    columns = min(len(panels), 4) or 1
    rows = -(-len(panels) // columns) or 1
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3 * rows), squeeze=False)
    for ax, (title, keys) in zip(axes.flat, panels):
        for key in keys:
            points = [(row["epoch"], row[key]) for row in history if row.get(key) not in (None, "")]
            ax.plot(*zip(*points), marker="o", markersize=2, label=key if len(keys) > 1 else None)
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


def safe_run_name(name: str) -> str:
    """A run name usable as a folder name on every OS (spaces and non-ASCII letters are fine)."""
    cleaned = re.sub(r'[<>:"/\\|?*\x00-\x1f]', "_", name).strip()
    return cleaned or "exp"


# Errors that reach the user of a command-line tool as one sentence (a traceback only with --verbose):
# bad values, missing or unreadable files, refused checkpoints (CheckpointError is a RuntimeError).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, RuntimeError, ImportError)


def run_command(action, verbose: bool, logger: logging.Logger,
                errors: tuple[type[BaseException], ...] = USER_ERRORS) -> int:
    """Run `action()` for an entry script: exit status 0, 1 with one `error: ...` line, or 130 on Ctrl-C."""
    try:
        action()
    except KeyboardInterrupt:
        return 130
    except errors as err:
        if verbose:
            raise
        logger.error("error: %s", err)
        return 1
    return 0
