"""The pictures people look at: PR curves, the confusion matrix, precision/recall/F1 against confidence (eval.py and
every validation in training) and the labels picture (training start). Files only (Agg backend), never a window.

Each function draws from numbers computed elsewhere (utils.eval.metrics, the JSON sections of utils.eval.evaluation) and
returns the PNG paths it wrote. Per-class file names go through utils.common.filenames.unique_stems.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from utils.common.atomic import atomic_output
from utils.common.boxes import LetterboxInfo, letterbox_boxes
from utils.common.filenames import unique_stems
from utils.common.text import printable
from utils.eval.metrics import VOCResult

MAX_ANNOTATED_CLASSES = 30  # larger confusion matrices get no numbers in the cells (they would be unreadable)
MAX_LEGEND_CLASSES = 20
MAX_LABEL_POINTS = 50_000  # the w/h scatter of the labels picture draws at most this many boxes


def _pyplot():
    """matplotlib.pyplot on the Agg backend, imported on first use.

    Local: matplotlib takes 0.7-0.8 s to import on the 2-core CI machine (python -X importtime); importers of this
    module (the training engine, eval.py) should not pay it before a picture is drawn, nor predict.py at all.
    """
    import matplotlib
    matplotlib.use("Agg")  # files only; training machines often have no display
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # names in scripts the default font lacks: drawn as boxes, said once here
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.tight_layout()
        with atomic_output(path) as tmp:  # a killed run leaves no half-drawn PNG
            fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".") or "png")
    _pyplot().close(fig)
    return path


def _short(name: str, limit: int = 18) -> str:
    """A class name for a picture: escaped (utils.common.text.printable), cut to `limit` characters, and with '$'
    escaped so that matplotlib never parses a name as mathtext (a name like '$\\frac$' would fail the plot)."""
    name = printable(name, None)
    name = name if len(name) <= limit else name[:limit - 1] + "…"
    return name.replace("$", r"\$")


def plot_pr_curves(result: VOCResult, out_dir: str | Path) -> list[Path]:
    """One PNG per class with ground truth (pr_<class>.png) plus all classes in pr_curves.png; returns the paths."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    stems = unique_stems([c.name for c in result.classes], fallback="class")
    written = []
    summary, summary_ax = plt.subplots(figsize=(7, 6))
    for c, stem in ((c, s) for c, s in zip(result.classes, stems, strict=True) if c.num_gt > 0):
        fig, ax = plt.subplots(figsize=(5, 4.5))
        for axis in (ax, summary_ax):
            axis.plot(np.concatenate(([0.0], c.recall)), np.concatenate(([1.0], c.precision)),
                      label=f"{_short(c.name)} {c.ap:.3f}", linewidth=1.2)
        _style_pr(ax, f"{_short(c.name, 40)}: AP{int(result.iou_thresh * 100)} = {c.ap:.3f}")
        written.append(_save(fig, out_dir / f"pr_{stem}.png"))
    mean = result.map
    _style_pr(summary_ax, f"mAP{int(result.iou_thresh * 100)} = " + ("-" if np.isnan(mean) else f"{mean:.3f}"))
    if sum(c.num_gt > 0 for c in result.classes) <= MAX_LEGEND_CLASSES:
        summary_ax.legend(fontsize=7, loc="lower left")
    written.append(_save(summary, out_dir / "pr_curves.png"))
    return written


def _style_pr(ax, title: str) -> None:
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)


def plot_confusion_matrix(section: dict, path: str | Path) -> Path:
    """Counts and row-normalised matrix side by side, from the `confusion_matrix` section of the metrics."""
    plt = _pyplot()
    counts, normalized = np.array(section["counts"]), np.array(section["normalized"])
    names = [_short(n) for n in section["names"]]
    size = min(4 + 0.45 * len(names), 30)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    annotate = len(names) <= MAX_ANNOTATED_CLASSES
    for ax, values, title, fmt in ((axes[0], counts, "counts", "d"), (axes[1], normalized, "row-normalised", ".2f")):
        image = ax.imshow(values, cmap="Blues", vmin=0)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        ax.set(xticks=range(len(names)), yticks=range(len(names)), xlabel=section["columns"],
               ylabel=section["rows"], title=f"{title}: IoU > {section['iou_thresh']}, score >= "
                                               f"{section['score_thresh']}")
        ax.set_xticklabels(names, rotation=90, fontsize=7)
        ax.set_yticklabels(names, fontsize=7)
        if annotate:
            limit = values.max() / 2 if values.size else 0
            for (row, col), value in np.ndenumerate(values):
                if value:
                    ax.text(col, row, format(value, fmt), ha="center", va="center", fontsize=6,
                            color="white" if value > limit else "black")
    return _save(fig, Path(path))


def plot_confidence_curves(section: dict, best: dict | None, path: str | Path) -> Path:
    """Precision, recall and F1 against the score threshold (per class thin, mean over classes thick), from the
    `confidence_curves` section of the metrics; the best-F1 threshold marked."""
    plt = _pyplot()
    thresholds = np.array(section["thresholds"])
    per_class = section["per_class"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    legend = len(per_class) <= MAX_LEGEND_CLASSES
    for ax, key in zip(axes, ("f1", "precision", "recall"), strict=True):
        for name, curves in per_class.items():
            ax.plot(thresholds, curves[key], linewidth=0.8, alpha=0.8 if legend else 0.3,
                    label=_short(name) if legend else None, color=None if legend else "grey")
        ax.plot(thresholds, section["all"][key], linewidth=2.5, color="tab:blue", label="all classes")
        ax.set(xlabel="confidence (score threshold)", ylabel=key, xlim=(0, 1), ylim=(0, 1.02), title=f"{key} curve")
        ax.grid(alpha=0.3)
    if best is not None:
        axes[0].axvline(best["conf"], color="tab:red", linestyle="--", linewidth=1)
        axes[0].set_title(f"F1 curve: all classes {best['f1']:.2f} at conf {best['conf']}")
    axes[0].legend(fontsize=7, loc="lower left")
    return _save(fig, Path(path))


def plot_labels(boxes: np.ndarray, labels: np.ndarray, class_names: Sequence[str], input_shape: Sequence[int],
                path: str | Path) -> Path:
    """Instances per class, box width/height and box-centre density, in input pixels after the letterbox.

    boxes: float [N, 4] (x1, y1, x2, y2) letterboxed input pixels (see letterboxed_boxes); labels: int [N].
    """
    plt = _pyplot()
    height, width = int(input_shape[0]), int(input_shape[1])
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    counts = np.bincount(np.asarray(labels, np.int64), minlength=len(class_names))
    axes[0].bar(range(len(class_names)), counts, color="tab:blue")
    axes[0].set(title=f"instances per class ({len(labels)} boxes)", ylabel="instances")
    if len(class_names) <= 40:
        axes[0].set_xticks(range(len(class_names)))
        axes[0].set_xticklabels([_short(n) for n in class_names], rotation=90, fontsize=7)
    wh = boxes[:, 2:] - boxes[:, :2]
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    shown = np.random.default_rng(0).permutation(len(wh))[:MAX_LABEL_POINTS]
    axes[1].scatter(wh[shown, 0], wh[shown, 1], s=3, alpha=0.3, color="tab:blue")
    axes[1].set(title="box width / height (input px)", xlabel="width", ylabel="height", xlim=(0, width),
                ylim=(0, height))
    axes[2].hist2d(centres[:, 0], centres[:, 1], bins=[max(width // 16, 1), max(height // 16, 1)],
                   range=[[0, width], [0, height]], cmap="Blues")
    axes[2].set(title="box centres (input px)", xlabel="x", ylabel="y", aspect="equal")
    axes[2].invert_yaxis()
    for ax in axes[1:]:
        ax.grid(alpha=0.3)
    return _save(fig, Path(path))


def letterboxed_boxes(records: Sequence, targets, input_shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """All training boxes of `records` placed as the letterbox puts their images on the input canvas.

    targets(i) -> (boxes [N, 4] original pixels, labels [N]) for record i (DatasetIndex.training_targets)."""
    height, width = int(input_shape[0]), int(input_shape[1])
    all_boxes, all_labels = [np.zeros((0, 4), np.float32)], [np.zeros(0, np.int64)]
    for i, record in enumerate(records):
        boxes, labels = targets(i)
        if not len(labels) or record.width <= 0 or record.height <= 0:
            continue
        scale = min(width / record.width, height / record.height)
        new_w, new_h = max(1, round(record.width * scale)), max(1, round(record.height * scale))
        info = LetterboxInfo(scale, (width - new_w) // 2, (height - new_h) // 2, record.height, record.width)
        all_boxes.append(letterbox_boxes(boxes, info))
        all_labels.append(np.asarray(labels, np.int64))
    return np.concatenate(all_boxes), np.concatenate(all_labels)
