"""Detection metrics, all in memory: Pascal VOC AP (devkit-exact, vectorised) and COCO AP through pycocotools.

Inputs, one entry per image of the dataset, in the same order:
- detections: ndarray[K, 6] (x1, y1, x2, y2, score, class) in original-image pixels;
- ground truth: any object with `.boxes` ndarray[N, 4] (x1, y1, x2, y2 pixels), `.labels` int[N] and
  `.difficult` bool[N]: a `GroundTruthBoxes`, for a dataset image `ImageRecord.ground_truth()` (the objects as
  annotated).

Classes without any non-difficult ground-truth object have no defined AP (NaN here, None in JSON) and are left
out of the mean, as pycocotools does and as the VOC devkit's mean over its 20 always-present classes amounts to.
Also here: the confusion matrix and precision / recall / F1 against the score threshold (diagnostics).
"""
from __future__ import annotations

import contextlib
import io
import logging
import signal
import threading
from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

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
    0 treats boxes as continuous coordinates (torchvision.ops.box_iou). The division is the devkit's, unguarded:
    a degenerate annotated box (zero or negative area, as some files state) gives what voc_eval.py gives (0, a
    negative value or NaN), and none of those is a match.
    """
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]) + pixel_offset, 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]) + pixel_offset, 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0] + pixel_offset) * (a[:, 3] - a[:, 1] + pixel_offset)
    area_b = (b[:, 2] - b[:, 0] + pixel_offset) * (b[:, 3] - b[:, 1] + pixel_offset)
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / (area_a + area_b - inter)


def box_iou_matrix(a: np.ndarray, b: np.ndarray, pixel_offset: float = 1.0) -> np.ndarray:
    """IoU of every row of `a` [P, 4] with every row of `b` [Q, 4] -> [P, Q], with box_iou_pairs' convention."""
    rows, cols = np.repeat(np.arange(len(a)), len(b)), np.tile(np.arange(len(b)), len(a))
    return box_iou_pairs(a[rows], b[cols], pixel_offset).reshape(len(a), len(b))


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

    def at_thresholds(self, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(precision, recall, F1) arrays of the detections scoring >= each threshold (0 where undefined)."""
        thresholds = np.asarray(thresholds, np.float64)
        kept = np.searchsorted(-self.scores, -thresholds, side="right")  # scores are sorted descending
        zero = np.zeros(len(thresholds))
        if self.num_gt == 0 or len(self.scores) == 0:
            return zero, zero.copy(), zero.copy()
        last = np.maximum(kept - 1, 0)
        p = np.where(kept > 0, self.precision[last], 0.0)
        r = np.where(kept > 0, self.recall[last], 0.0)
        with np.errstate(invalid="ignore"):
            f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
        return p, r, f1

    def at_threshold(self, score_thresh: float) -> tuple[float, float, float]:
        """(precision, recall, F1) of the detections scoring >= score_thresh (0 where undefined)."""
        p, r, f1 = self.at_thresholds(np.array([score_thresh]))
        return float(p[0]), float(r[0]), float(f1[0])


@dataclass
class VOCResult:
    """Per-class results and the mean AP over classes with ground truth."""

    classes: list[ClassAP]
    iou_thresh: float
    use_07: bool

    @property
    def map(self) -> float:
        """Mean AP over classes with ground truth; NaN (undefined) when no class has any."""
        aps = [c.ap for c in self.classes if c.num_gt > 0]
        return float(np.mean(aps)) if aps else float("nan")

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
        ovmax[has] = np.maximum.reduceat(iou, seg_start[has])  # NaN propagates, as np.max in the devkit
        is_max = np.flatnonzero(iou == ovmax[pair_det])
        first = np.unique(pair_det[is_max], return_index=True)[1]
        best[pair_det[is_max[first]]] = pair_gt[is_max[first]]
    return ovmax, best


@dataclass
class Matching:
    """The devkit's verdict on every detection of a dataset; rows in per-image order (images in dataset order).

    dets [D, 6] with det_image [D]; tp [D]: matched a not yet matched object; ignored [D]: matched a difficult object
    (neither TP nor FP); every other detection is a false positive. gt_of [D]: the object a TP matched (index into
    the flattened gt_* arrays), else -1.
    """

    dets: np.ndarray
    det_image: np.ndarray
    tp: np.ndarray
    ignored: np.ndarray
    gt_of: np.ndarray
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    gt_difficult: np.ndarray
    gt_image: np.ndarray


def match_detections(detections: Sequence[np.ndarray], truths: Sequence[Annotated], num_classes: int,
                     iou_thresh: float = 0.5, pixel_offset: float = 1.0) -> Matching:
    """Match detections to ground truth exactly as the devkit's voc_eval.py, over the whole dataset at once.

    Per class, detections are taken in descending score order over the dataset (stable for equal scores); each is
    matched to the max-IoU gt of its image and class; IoU > iou_thresh (strict) with a difficult gt -> ignored
    (neither TP nor FP), with an unmatched gt -> TP, with a gt already matched -> FP; otherwise FP.
    """
    if len(detections) != len(truths):
        raise ValueError(f"{len(detections)} detection arrays for {len(truths)} ground-truth images")
    dets, det_image, gt_boxes, gt_labels, gt_difficult, gt_image = _flatten(detections, truths)
    det_class = dets[:, 5].astype(np.int64)
    for what, labels in (("detection", det_class), ("ground-truth", gt_labels)):
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{what} class ids must lie in [0, {num_classes}), found {labels.min()}..{labels.max()}")
    ovmax, best = _best_gt(dets, det_image, gt_boxes, gt_labels, gt_image, num_classes, pixel_offset)
    hit = ovmax > iou_thresh
    ignored = np.zeros(len(dets), bool)
    ignored[hit] = gt_difficult[best[hit]]
    order = np.lexsort((-dets[:, 4], det_class))  # by class, then score descending; lexsort is stable
    claims = order[(hit & ~ignored)[order]]
    first_claim = claims[np.unique(best[claims], return_index=True)[1]]  # earliest (highest score) claim per gt
    tp = np.zeros(len(dets), bool)
    tp[first_claim] = True
    gt_of = np.full(len(dets), -1)
    gt_of[first_claim] = best[first_claim]
    return Matching(dets, det_image, tp, ignored, gt_of, gt_boxes, gt_labels, gt_difficult, gt_image)


def voc_evaluate(detections: Sequence[np.ndarray], truths: Sequence[Annotated], class_names: Sequence[str],
                 iou_thresh: float = 0.5, use_07: bool = False, pixel_offset: float = 1.0) -> VOCResult:
    """VOC AP per class, matching exactly as the devkit's voc_eval.py (see match_detections).

    Detections: one ndarray[K, 6] (x1, y1, x2, y2, score, class) per image; truths: per image, see module doc.
    """
    num_classes = len(class_names)
    m = match_detections(detections, truths, num_classes, iou_thresh, pixel_offset)
    det_class = m.dets[:, 5].astype(np.int64)
    order = np.lexsort((-m.dets[:, 4], det_class))
    tp = m.tp[order].astype(np.float64)
    fp = (~m.tp & ~m.ignored)[order].astype(np.float64)
    npos = np.bincount(m.gt_labels[~m.gt_difficult], minlength=num_classes)
    bounds = np.searchsorted(det_class[order], np.arange(num_classes + 1))
    results = [_class_ap(name, tp[lo:hi], fp[lo:hi], m.dets[order[lo:hi], 4], int(npos[c]), use_07)
               for c, (name, lo, hi) in enumerate(zip(class_names, bounds[:-1], bounds[1:], strict=True))]
    return VOCResult(results, iou_thresh, use_07)


def _class_ap(name: str, tp: np.ndarray, fp: np.ndarray, scores: np.ndarray, npos: int, use_07: bool) -> ClassAP:
    """Cumulative PR curve of one class's score-sorted TP/FP flags and its AP (NaN without ground truth)."""
    tp_sum, fp_sum = np.cumsum(tp), np.cumsum(fp)
    recall = tp_sum / max(npos, 1)
    precision = tp_sum / np.maximum(tp_sum + fp_sum, np.finfo(np.float64).eps)
    ap = float("nan") if npos == 0 else (voc_ap(recall, precision, use_07) if len(tp) else 0.0)
    return ClassAP(name, ap, npos, len(tp), recall, precision, scores)


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """Hold a SIGINT that arrives inside the block and deliver it to the previous handler when the block ends.

    For third-party code that catches everything (a bare `except:` also catches KeyboardInterrupt): Ctrl-C still
    stops the program, a moment later. Only the main thread can set signal handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)  # SIGTERM (SLURM, Kubernetes, timeout) raises like Ctrl-C (run_command)
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum)) for sig in held}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(received):
            signal.raise_signal(sig)


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
                 category_ids: Sequence[int | None] | None = None) -> list[dict]:
    """Detections in COCO results format: {"image_id", "category_id", "bbox": [x, y, w, h], "score"}.

    Defaults: image ids 1..N in dataset order, category id = class index + 1 (as `coco_ground_truth`). A class whose
    category id is None (not in the ground truth's categories) cannot be scored; its detections are left out.
    """
    results = []
    for i, dets in enumerate(detections):
        image_id = image_ids[i] if image_ids is not None else i + 1
        for x1, y1, x2, y2, score, cls in np.asarray(dets, np.float64).reshape(-1, 6).tolist():
            category = category_ids[int(cls)] if category_ids is not None else int(cls) + 1
            if category is not None:
                results.append({"image_id": image_id, "category_id": category,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    return results


def coco_stats(ground_truth: dict, results: list[dict], category_ids: Sequence[int] | None = None
               ) -> dict[str, float | None]:
    """COCO box metrics by pycocotools: mAP50_95, AP50, AP75, APs, APm, APl (stats[0..5]).

    ground_truth: a COCO dataset dict (images, annotations, categories) as pycocotools reads it from a file;
    results: detections in COCO results format; category_ids: the categories scored (default: all of the ground
    truth's). A figure without any ground truth (pycocotools' -1, e.g. APs when no object is small) is None.
    """
    coco_gt = COCO()
    coco_gt.dataset = ground_truth
    _quiet(coco_gt.createIndex)
    if results:
        coco_dt = _quiet(coco_gt.loadRes, results)
    else:  # loadRes cannot take an empty list; no detections is a valid result (AP 0 where there is ground truth)
        coco_dt = COCO()
        coco_dt.dataset = {"images": list(ground_truth["images"]), "categories": list(ground_truth["categories"]),
                           "annotations": []}
        _quiet(coco_dt.createIndex)
    evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
    if category_ids is not None:
        evaluator.params.catIds = sorted(int(c) for c in category_ids)
    _quiet(evaluator.evaluate)
    with _ctrl_c_held():  # accumulate() has a bare `except: pass` inside its loops, which would swallow a Ctrl-C
        _quiet(evaluator.accumulate)
    _quiet(evaluator.summarize)
    return {name: (float(value) if value > -1 else None)
            for name, value in zip(COCO_STAT_NAMES, evaluator.stats[:6], strict=True)}


def coco_evaluate(detections: Sequence[np.ndarray], truths: Sequence[Annotated], class_names: Sequence[str],
                  image_sizes: Sequence[tuple[int, int]] | None = None) -> dict[str, float | None]:
    """COCO box metrics by pycocotools for detections and ground truth given as arrays (see coco_ground_truth)."""
    return coco_stats(coco_ground_truth(truths, class_names, image_sizes), coco_results(detections))


# ---------------------------------------------------------------------------------------------------- diagnostics
def confusion_matrix(detections: Sequence[np.ndarray], truths: Sequence[Annotated], num_classes: int,
                     score_thresh: float = 0.5, iou_thresh: float = 0.5, pixel_offset: float = 1.0) -> np.ndarray:
    """int64 [nc + 1, nc + 1] counts: row = true class, column = predicted class; the last row and column are the
    background (row: detections of no object, false positives; column: objects not detected).

    Detections scoring >= score_thresh. First the devkit's matching (match_detections): a TP adds to the diagonal,
    a detection of a difficult object is left out. Then, per image, the remaining detections and not yet found
    (non-difficult) objects of another class pair greedily by IoU > iou_thresh, highest first: a swapped class.
    So row c sums to class c's positives, the diagonal is the TP count behind recall and precision at score_thresh,
    and column c sums to class c's TP + FP.
    """
    kept = [d[d[:, 4] >= score_thresh] for d in (np.asarray(d, np.float64).reshape(-1, 6) for d in detections)]
    m = match_detections(kept, truths, num_classes, iou_thresh, pixel_offset)
    det_class = m.dets[:, 5].astype(np.int64)
    matrix = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    np.add.at(matrix, (det_class[m.tp], det_class[m.tp]), 1)
    open_det = ~m.tp & ~m.ignored
    open_gt = ~m.gt_difficult
    open_gt[m.gt_of[m.tp]] = False
    det_bounds = np.searchsorted(m.det_image, np.arange(len(truths) + 1))  # rows are in image order
    gt_bounds = np.searchsorted(m.gt_image, np.arange(len(truths) + 1))
    for image in np.unique(m.det_image[open_det]):
        dets = np.arange(det_bounds[image], det_bounds[image + 1])
        gts = np.arange(gt_bounds[image], gt_bounds[image + 1])
        dets, gts = dets[open_det[dets]], gts[open_gt[gts]]
        for d, g in _swapped_pairs(m.dets[dets], det_class[dets], m.gt_boxes[gts], m.gt_labels[gts], iou_thresh,
                                   pixel_offset):
            matrix[m.gt_labels[gts[g]], det_class[dets[d]]] += 1
            open_det[dets[d]] = open_gt[gts[g]] = False
    np.add.at(matrix, (num_classes, det_class[open_det]), 1)
    np.add.at(matrix, (m.gt_labels[open_gt], num_classes), 1)
    return matrix


def _swapped_pairs(dets: np.ndarray, det_class: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray,
                   iou_thresh: float, pixel_offset: float) -> list[tuple[int, int]]:
    """Greedy one-to-one pairs (detection, object) of different classes with IoU > iou_thresh, highest IoU first."""
    if not len(dets) or not len(gt_boxes):
        return []
    iou = box_iou_matrix(dets[:, :4], gt_boxes, pixel_offset)
    candidates = np.argwhere((iou > iou_thresh) & (det_class[:, None] != gt_labels[None, :]))
    order = np.argsort(-iou[candidates[:, 0], candidates[:, 1]], kind="stable")
    pairs, used_d, used_g = [], set(), set()
    for d, g in candidates[order].tolist():
        if d not in used_d and g not in used_g:
            pairs.append((d, g))
            used_d.add(d)
            used_g.add(g)
    return pairs


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (rows summing to 0 stay 0): for a true class, where its objects went."""
    sums = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, sums, out=np.zeros(matrix.shape), where=sums > 0)


def confidence_curves(result: VOCResult, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall and F1 against the score threshold, for classes with ground truth and their mean ("all").

    Returns {"thresholds": [T], "precision"/"recall"/"f1": [C, T] per class with ground truth, "all_precision" /
    "all_recall" / "all_f1": [T] means over those classes, "names": their names}.
    """
    classes = [c for c in result.classes if c.num_gt > 0]
    curves = [c.at_thresholds(thresholds) for c in classes]
    stack = np.array(curves).reshape(len(classes), 3, len(thresholds))
    out: dict = {"thresholds": np.asarray(thresholds, np.float64), "names": [c.name for c in classes]}
    for k, key in enumerate(("precision", "recall", "f1")):
        out[key] = stack[:, k]
        out[f"all_{key}"] = stack[:, k].mean(axis=0) if classes else np.zeros(len(thresholds))
    return out


MAX_THRESHOLD_CANDIDATES = 5000


def best_f1_threshold(result: VOCResult) -> dict[str, float] | None:
    """The score threshold whose mean F1 over classes with ground truth is highest (the highest such threshold on a
    tie), with that F1, precision and recall; None without ground truth or detections.

    F1 changes only at detection scores, so the candidates are the scores themselves (rounded to 0.001 when there
    are more than MAX_THRESHOLD_CANDIDATES). `conf` is the roundest number that keeps exactly the same detections
    (in (next lower candidate, threshold]): what to pass to predict.py --conf.
    """
    classes = [c for c in result.classes if c.num_gt > 0]
    scores = np.concatenate([c.scores for c in classes] + [np.zeros(0)])
    if not len(scores):
        return None
    candidates = np.unique(scores)[::-1]
    if len(candidates) > MAX_THRESHOLD_CANDIDATES:
        candidates = np.unique(np.floor(scores * 1000) / 1000)[::-1]
    curves = confidence_curves(result, candidates)
    best = int(np.argmax(curves["all_f1"]))
    lower = candidates[best + 1] if best + 1 < len(candidates) else 0.0
    return {"conf": _roundest_in(lower, float(candidates[best])), "threshold": float(candidates[best]),
            "f1": float(curves["all_f1"][best]), "precision": float(curves["all_precision"][best]),
            "recall": float(curves["all_recall"][best])}


def _roundest_in(low: float, high: float) -> float:
    """The number with the fewest decimals in (low, high] (high itself when none with up to 6 decimals is)."""
    for decimals in range(7):
        value = np.floor(high * 10**decimals) / 10**decimals
        if low < value <= high:
            return float(round(value, decimals))
    return float(high)
