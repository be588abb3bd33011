"""Detection metrics, all in memory: Pascal VOC AP (devkit-exact, vectorised) and COCO AP through pycocotools.

Inputs, one entry per image of the dataset, in the same order:
- detections: ndarray[K, 6] (x1, y1, x2, y2, score, class) in original-image pixels;
- ground truth: any object with `.boxes` ndarray[N, 4] (x1, y1, x2, y2 pixels), `.labels` int[N] and
  `.difficult` bool[N] (a dataset record, or `GroundTruthBoxes`).

Classes without any non-difficult ground-truth object have no defined AP (NaN here, None in JSON) and are left
out of the mean, as pycocotools does and as the VOC devkit's mean over its 20 always-present classes amounts to.
"""
from __future__ import annotations

import contextlib
import io
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

LOGGER = logging.getLogger(__name__)
COCO_STAT_NAMES = ("mAP50_95", "AP50", "AP75", "APs", "APm", "APl")


class Annotated(Protocol):
    """What the metrics need from a ground-truth record."""

    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray


@dataclass
class GroundTruthBoxes:
    """Ground truth of one image: boxes [N, 4] (x1, y1, x2, y2 pixels), labels [N], difficult [N] bool."""

    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.difficult = (np.zeros(len(self.labels), bool) if self.difficult is None
                          else np.asarray(self.difficult, dtype=bool).reshape(-1))


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07: bool = False) -> float:
    """Area under a PR curve as the VOC devkit computes it.

    use_07=False: all-point interpolation (VOC2010+): precision made monotone from the right, summed over recall steps.
    use_07=True: VOC2007's 11-point metric, the mean of max precision at recall >= 0, 0.1, ..., 1.
    """
    recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
    if use_07:
        points = np.arange(0.0, 1.1, 0.1)  # the devkit's own grid (0.30000000000000004 and all), for equal results
        return float(sum(precision[recall >= t].max(initial=0.0) for t in points) / 11.0)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the precision envelope
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def box_iou_pairs(a: np.ndarray, b: np.ndarray, pixel_offset: float = 1.0) -> np.ndarray:
    """IoU of row i of `a` [P, 4] with row i of `b` [P, 4] (x1, y1, x2, y2).

    pixel_offset=1 is the VOC devkit's convention (boxes as inclusive integer pixel indices, width = x2 - x1 + 1);
    0 treats boxes as continuous coordinates (torchvision.ops.box_iou).
    """
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]) + pixel_offset, 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]) + pixel_offset, 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0] + pixel_offset) * (a[:, 3] - a[:, 1] + pixel_offset)
    area_b = (b[:, 2] - b[:, 0] + pixel_offset) * (b[:, 3] - b[:, 1] + pixel_offset)
    return inter / np.maximum(area_a + area_b - inter, np.finfo(np.float64).eps)


@dataclass
class ClassAP:
    """One class's VOC result: AP, positives, the PR curve (detections in score order) and its scores."""

    name: str
    ap: float
    num_gt: int
    num_det: int
    recall: np.ndarray = field(repr=False)
    precision: np.ndarray = field(repr=False)
    scores: np.ndarray = field(repr=False)

    def at_threshold(self, score_thresh: float) -> tuple[float, float, float]:
        """(precision, recall, F1) of the detections scoring >= score_thresh (0 where undefined)."""
        kept = int(np.searchsorted(-self.scores, -score_thresh, side="right"))  # scores are sorted descending
        if kept == 0 or self.num_gt == 0:
            return 0.0, 0.0, 0.0
        p, r = float(self.precision[kept - 1]), float(self.recall[kept - 1])
        return p, r, (2 * p * r / (p + r) if p + r > 0 else 0.0)


@dataclass
class VOCResult:
    """Per-class results and the mean AP over classes with ground truth."""

    classes: list[ClassAP]
    iou_thresh: float
    use_07: bool

    @property
    def map(self) -> float:
        aps = [c.ap for c in self.classes if c.num_gt > 0]
        return float(np.mean(aps)) if aps else 0.0

    def ap_per_class(self) -> dict[str, float | None]:
        """{class name: AP}, None for classes without ground truth (AP undefined)."""
        return {c.name: (c.ap if c.num_gt > 0 else None) for c in self.classes}

    def prf(self, score_thresh: float = 0.5) -> dict[str, dict[str, float]]:
        """{class name: {"precision", "recall", "f1"}} at `score_thresh`, for classes with ground truth."""
        return {c.name: dict(zip(("precision", "recall", "f1"), c.at_threshold(score_thresh), strict=True))
                for c in self.classes if c.num_gt > 0}


def _flatten(detections: Sequence[np.ndarray], truths: Sequence[Annotated]):
    """Concatenate per-image arrays, remembering each row's image index."""
    dets = [np.asarray(d, np.float64).reshape(-1, 6) for d in detections]
    det_image = np.repeat(np.arange(len(dets)), [len(d) for d in dets])
    dets = np.concatenate(dets) if dets else np.zeros((0, 6))
    gt_boxes = np.concatenate([np.asarray(t.boxes, np.float64).reshape(-1, 4) for t in truths] + [np.zeros((0, 4))])
    gt_labels = np.concatenate([np.asarray(t.labels, np.int64).reshape(-1) for t in truths] + [np.zeros(0, np.int64)])
    gt_difficult = np.concatenate([np.asarray(t.difficult, bool).reshape(-1) for t in truths] + [np.zeros(0, bool)])
    gt_image = np.repeat(np.arange(len(truths)), [len(t.labels) for t in truths])
    return dets, det_image, gt_boxes, gt_labels, gt_difficult, gt_image


def _best_gt(dets, det_image, gt_boxes, gt_labels, gt_image, num_classes, pixel_offset):
    """For each detection: max IoU over the gts of its image and class, and that gt's index (-1 if none).

    Ties go to the first gt in annotation order, as np.argmax in the devkit. All pairs are formed at once:
    gts sorted by (image, class) key, each detection paired with its key's contiguous block.
    """
    det_key = det_image * num_classes + dets[:, 5].astype(np.int64)
    gt_key = gt_image * num_classes + gt_labels
    gt_order = np.argsort(gt_key, kind="stable")  # stable keeps annotation order within a block
    sorted_keys = gt_key[gt_order]
    start = np.searchsorted(sorted_keys, det_key, "left")
    count = np.searchsorted(sorted_keys, det_key, "right") - start
    pair_det = np.repeat(np.arange(len(dets)), count)
    seg_start = np.cumsum(count) - count
    pair_gt = gt_order[np.repeat(start, count) + np.arange(len(pair_det)) - np.repeat(seg_start, count)]
    iou = box_iou_pairs(dets[pair_det, :4], gt_boxes[pair_gt], pixel_offset)
    ovmax, best = np.full(len(dets), -np.inf), np.full(len(dets), -1)
    has = count > 0
    if has.any():
        ovmax[has] = np.maximum.reduceat(iou, seg_start[has])
        is_max = np.flatnonzero(iou == ovmax[pair_det])
        first = np.unique(pair_det[is_max], return_index=True)[1]
        best[pair_det[is_max[first]]] = pair_gt[is_max[first]]
    return ovmax, best


def voc_evaluate(detections: Sequence[np.ndarray], truths: Sequence[Annotated], class_names: Sequence[str],
                 iou_thresh: float = 0.5, use_07: bool = False, pixel_offset: float = 1.0) -> VOCResult:
    """VOC AP per class, matching exactly as the devkit's voc_eval.py, over the whole dataset at once.

    Per class, detections are taken in descending score order over the dataset (stable for equal scores); each is
    matched to the max-IoU gt of its image and class; IoU > iou_thresh (strict) with a difficult gt -> ignored
    (neither TP nor FP), with an unmatched gt -> TP, with a gt already matched -> FP; otherwise FP.
    Detections: one ndarray[K, 6] (x1, y1, x2, y2, score, class) per image; truths: per image, see module doc.
    """
    if len(detections) != len(truths):
        raise ValueError(f"{len(detections)} detection arrays for {len(truths)} ground-truth images")
    num_classes = len(class_names)
    dets, det_image, gt_boxes, gt_labels, gt_difficult, gt_image = _flatten(detections, truths)
    det_class = dets[:, 5].astype(np.int64)
    for what, labels in (("detection", det_class), ("ground-truth", gt_labels)):
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{what} class ids must lie in [0, {num_classes}), found {labels.min()}..{labels.max()}")
    ovmax, best = _best_gt(dets, det_image, gt_boxes, gt_labels, gt_image, num_classes, pixel_offset)

    order = np.lexsort((-dets[:, 4], det_class))  # by class, then score descending; lexsort is stable
    hit = ovmax[order] > iou_thresh
    gt_hit = best[order]
    ignored = np.zeros(len(order), bool)
    ignored[hit] = gt_difficult[gt_hit[hit]]
    claims = np.flatnonzero(hit & ~ignored)
    first_claim = claims[np.unique(gt_hit[claims], return_index=True)[1]]  # earliest (highest score) claim per gt
    tp = np.zeros(len(order))
    tp[first_claim] = 1.0
    fp = (~ignored).astype(np.float64) - tp

    npos = np.bincount(gt_labels[~gt_difficult], minlength=num_classes)
    bounds = np.searchsorted(det_class[order], np.arange(num_classes + 1))
    results = [_class_ap(name, tp[lo:hi], fp[lo:hi], dets[order[lo:hi], 4], int(npos[c]), use_07)
               for c, (name, lo, hi) in enumerate(zip(class_names, bounds[:-1], bounds[1:], strict=True))]
    return VOCResult(results, iou_thresh, use_07)


def _class_ap(name: str, tp: np.ndarray, fp: np.ndarray, scores: np.ndarray, npos: int, use_07: bool) -> ClassAP:
    """Cumulative PR curve of one class's score-sorted TP/FP flags and its AP (NaN without ground truth)."""
    tp_sum, fp_sum = np.cumsum(tp), np.cumsum(fp)
    recall = tp_sum / max(npos, 1)
    precision = tp_sum / np.maximum(tp_sum + fp_sum, np.finfo(np.float64).eps)
    ap = float("nan") if npos == 0 else (voc_ap(recall, precision, use_07) if len(tp) else 0.0)
    return ClassAP(name, ap, npos, len(tp), recall, precision, scores)


def _quiet(func, *args):
    """Call a pycocotools function with its prints sent to logging (debug) instead of stdout."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        result = func(*args)
    if buffer.getvalue().strip():
        LOGGER.debug("pycocotools: %s", buffer.getvalue().strip())
    return result


def coco_ground_truth(truths: Sequence[Annotated], class_names: Sequence[str],
                      image_sizes: Sequence[tuple[int, int]] | None = None) -> dict:
    """A COCO-format ground-truth dict: image ids 1..N in dataset order, category ids class index + 1.

    area = box w * h (no masks here). Difficult (or crowd) objects become iscrowd=1: pycocotools then ignores
    detections matched to them (neither TP nor FP), as the VOC protocol treats difficult objects. Unlike VOC, a
    crowd region matches by intersection / detection area and may absorb several detections (COCO's rule).
    `image_sizes`: (height, width) per image, stored for completeness (COCOeval does not use them).
    """
    images, annotations = [], []
    for i, truth in enumerate(truths):
        height, width = image_sizes[i] if image_sizes is not None else (0, 0)
        images.append({"id": i + 1, "height": int(height), "width": int(width)})
        boxes = np.asarray(truth.boxes, np.float64).reshape(-1, 4)
        for box, label, difficult in zip(boxes, np.asarray(truth.labels).reshape(-1),
                                         np.asarray(truth.difficult).reshape(-1), strict=True):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append({"id": len(annotations) + 1,  # ids from 1: COCOeval treats a matched id 0 as unmatched
                                "image_id": i + 1, "category_id": int(label) + 1,
                                "bbox": [float(box[0]), float(box[1]), w, h], "area": w * h,
                                "iscrowd": int(bool(difficult))})
    categories = [{"id": c + 1, "name": str(name)} for c, name in enumerate(class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_results(detections: Sequence[np.ndarray], image_ids: Sequence | None = None,
                 category_ids: Sequence[int] | None = None) -> list[dict]:
    """Detections in COCO results format: {"image_id", "category_id", "bbox": [x, y, w, h], "score"}.

    Defaults: image ids 1..N in dataset order, category id = class index + 1 (as `coco_ground_truth`).
    """
    results = []
    for i, dets in enumerate(detections):
        image_id = image_ids[i] if image_ids is not None else i + 1
        for x1, y1, x2, y2, score, cls in np.asarray(dets, np.float64).reshape(-1, 6).tolist():
            category = category_ids[int(cls)] if category_ids is not None else int(cls) + 1
            results.append({"image_id": image_id, "category_id": category,
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    return results


def coco_evaluate(detections: Sequence[np.ndarray], truths: Sequence[Annotated], class_names: Sequence[str],
                  image_sizes: Sequence[tuple[int, int]] | None = None) -> dict[str, float]:
    """COCO box metrics by pycocotools on the same detections: mAP50_95, AP50, AP75, APs, APm, APl (stats[0..5]).

    Returns zeros when there are no detections at all (pycocotools cannot load an empty result list).
    """
    results = coco_results(detections)
    if not results:
        LOGGER.warning("no detections at all: COCO metrics are 0")
        return dict.fromkeys(COCO_STAT_NAMES, 0.0)
    coco_gt = COCO()
    coco_gt.dataset = coco_ground_truth(truths, class_names, image_sizes)
    _quiet(coco_gt.createIndex)
    coco_dt = _quiet(coco_gt.loadRes, results)
    evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
    for step in (evaluator.evaluate, evaluator.accumulate, evaluator.summarize):
        _quiet(step)
    return {name: float(value) for name, value in zip(COCO_STAT_NAMES, evaluator.stats[:6], strict=True)}


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "class"


def plot_pr_curves(result: VOCResult, out_dir: str | Path) -> list[Path]:
    """One PNG per class with ground truth (pr_<class>.png) plus all classes in pr_curves.png; returns the paths."""
    # local: matplotlib takes 0.7-0.8 s to import on the 2-core CI machine (python -X importtime); only eval.py's PR
    # curves need it, not the importers of this module that want the numbers (training's validation, benchmarks)
    import matplotlib
    matplotlib.use("Agg")  # files only, never a window (also works without a display)
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    summary, summary_ax = plt.subplots(figsize=(7, 6))
    for c in (c for c in result.classes if c.num_gt > 0):
        fig, ax = plt.subplots(figsize=(5, 4.5))
        for axis in (ax, summary_ax):
            axis.plot(np.concatenate(([0.0], c.recall)), np.concatenate(([1.0], c.precision)),
                      label=f"{c.name} {c.ap:.3f}", linewidth=1.2)
        _style(ax, f"{c.name}: AP{int(result.iou_thresh * 100)} = {c.ap:.3f}")
        written.append(out_dir / f"pr_{_file_name(c.name)}.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    _style(summary_ax, f"mAP{int(result.iou_thresh * 100)} = {result.map:.3f}")
    if len(result.classes) <= 20:
        summary_ax.legend(fontsize=7, loc="lower left")
    written.append(out_dir / "pr_curves.png")
    summary.savefig(written[-1], dpi=100)
    plt.close(summary)
    return written


def _style(ax, title: str) -> None:
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.figure.tight_layout()
