"""results.csv and results.png: one row per epoch (losses, LR, validation metrics, timings)."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path


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


# Wall-clock columns: they measure the machine, not the learning (never equal in two runs).
TIMING_COLUMNS = ("images_per_s", "train_s", "val_s")


def write_results(history: list[dict], run_dir: Path, separate_timing: bool = False) -> None:
    """results.csv of the run; separate_timing (--deterministic): the TIMING_COLUMNS go to timing.csv instead, so
    that the same command twice writes the same results.csv."""
    if not separate_timing:
        write_results_csv(history, run_dir / "results.csv")
        return
    write_results_csv([{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in history],
                      run_dir / "results.csv")
    write_results_csv([{"epoch": row["epoch"], **{k: v for k, v in row.items() if k in TIMING_COLUMNS}}
                       for row in history], run_dir / "timing.csv")


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
