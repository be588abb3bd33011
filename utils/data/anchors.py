"""Anchor boxes from a dataset: IoU-distance k-means, fitness (mean best IoU, best-possible recall), and a check.

    python -m utils.anchors --data VOCdevkit -n 6 --input-shape 416 --out model_data/my_anchors.txt

All sizes are (w, h) in input pixels after letterboxing, the unit of ModelConfig.anchors.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from torchvision.ops import box_iou

from utils.common.errors import ConfigError
from utils.common.image_io import image_size, probe_image

LOGGER = logging.getLogger(__name__)
# A box counts as recallable when its best anchor is within this factor in both width and height (the peers'
# auto-anchor rule, anchor_t = 4): the head predicts w = anchor * exp(tw), and |tw| <= ln 4 keeps it trainable.
# IoU is no use here: our loss gives every box its best-IoU anchor, so an IoU-based recall would always be 1.
MAX_RATIO = 4.0
MIN_BOX_SIZE = 2.0  # input pixels; smaller boxes are label noise at this resolution (the peers drop them too)


def wh_iou(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """IoU [N, K] of boxes [N, 2] and anchors [K, 2] (w, h) placed at a common corner (torchvision box_iou)."""
    def corner_boxes(sizes: np.ndarray) -> torch.Tensor:
        sizes = torch.as_tensor(np.asarray(sizes, dtype=np.float64).reshape(-1, 2))
        return torch.cat((torch.zeros_like(sizes), sizes), dim=1)
    return box_iou(corner_boxes(wh), corner_boxes(anchors)).numpy()


def _check_wh(wh: np.ndarray, n: int) -> np.ndarray:
    wh = np.asarray(wh, dtype=np.float64)
    if wh.ndim != 2 or wh.shape[1] != 2:
        raise ValueError(f"box sizes must be an array [N, 2] of (w, h), got shape {wh.shape}")
    if (wh <= 0).any():
        raise ValueError("box sizes must be positive; drop empty boxes first")
    if len(wh) < n:
        raise ConfigError(f"{len(wh)} boxes cannot make {n} anchors; use a bigger split or fewer anchors")
    return wh


def _initial_anchors(wh: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding with distance 1 - IoU: spread-out starting anchors, so clusters are rarely merged."""
    anchors = [wh[rng.integers(len(wh))]]
    for _ in range(1, n):
        distance = 1 - wh_iou(wh, np.array(anchors)).max(axis=1)
        weights = distance ** 2
        total = weights.sum()
        index = rng.choice(len(wh), p=weights / total) if total > 0 else rng.integers(len(wh))
        anchors.append(wh[index])
    return np.array(anchors)


def kmeans_anchors(wh: np.ndarray, n: int = 6, seed: int = 0, iters: int = 300) -> np.ndarray:
    """Anchors [n, 2] (w, h) sorted by area: k-means on box sizes [N, 2] with distance 1 - IoU (corner-aligned).

    Each anchor moves to its cluster's median (w, h), which resists outliers better than the mean; an empty cluster
    takes the box that the other anchors fit worst. Deterministic for a given seed.
    """
    wh = _check_wh(wh, n)
    rng = np.random.default_rng(seed)
    anchors = _initial_anchors(wh, n, rng)
    assignment = None
    for _ in range(iters):
        iou = wh_iou(wh, anchors)
        new_assignment = iou.argmax(axis=1)
        if assignment is not None and np.array_equal(new_assignment, assignment):
            break
        assignment = new_assignment
        for k in range(n):
            members = wh[assignment == k]
            anchors[k] = np.median(members, axis=0) if len(members) else wh[iou.max(axis=1).argmin()]
    return anchors[np.argsort(anchors.prod(axis=1))]


def anchor_fitness(wh: np.ndarray, anchors: np.ndarray) -> tuple[float, float]:
    """(mean best IoU, best-possible recall) of box sizes [N, 2] against anchors [K, 2].

    Best IoU: the corner-aligned IoU with the box's best anchor. BPR: the fraction of boxes for which some anchor is
    within MAX_RATIO (4x) of the box in both width and height.
    """
    wh = _check_wh(wh, 1)
    anchors = np.asarray(anchors, dtype=np.float64).reshape(-1, 2)
    ratio = wh[:, None, :] / anchors[None, :, :]  # [N, K, 2]
    worst_side = np.maximum(ratio, 1 / ratio).max(axis=2)  # [N, K]
    bpr = float((worst_side.min(axis=1) < MAX_RATIO).mean())
    return float(wh_iou(wh, anchors).max(axis=1).mean()), bpr


def check_anchors(wh: np.ndarray, anchors: np.ndarray, threshold: float = 0.98, total: int = 6) -> float:
    """Log the anchors' best-possible recall on box sizes [N, 2]; warn below `threshold`. Returns the BPR.

    Pass the anchors the heads use (ModelConfig.used_anchors()): the stock masks leave anchor 0 out. `total`: how
    many anchors the model has in all (6 for two heads, 9 for three), the number the advice asks k-means for.
    """
    mean_iou, bpr = anchor_fitness(wh, anchors)
    LOGGER.info("anchors: best-possible recall %.4f, mean best IoU %.4f over %d boxes", bpr, mean_iou, len(wh))
    if bpr < threshold:
        LOGGER.warning(
            "anchors fit the training boxes poorly: best-possible recall %.4f < %.2f (%.1f%% of boxes have no anchor "
            "within %gx in width and height). Compute anchors for this data with: python -m utils.anchors --data "
            "<dataset> -n %d --input-shape <size> --out model_data/my_anchors.txt, then train with --anchors that "
            "file", bpr, threshold, 100 * (1 - bpr), MAX_RATIO, total)
    return bpr


# --------------------------------------------------------------------------------------------------------- data
def _image_hw(record) -> tuple[int, int]:
    """(height, width) of a record's image: its stored size, else the file header, else a full decode."""
    if getattr(record, "width", 0) and getattr(record, "height", 0):
        return int(record.height), int(record.width)
    size = image_size(record.path)
    return size if size else probe_image(record.path)[:2]


def boxes_wh(records, input_shape: list[int] | tuple[int, int]) -> np.ndarray:
    """Box sizes [N, 2] (w, h) of all records, scaled as the letterbox scales them onto an (h, w) input.

    `records` have .boxes [N, 4] (x1, y1, x2, y2) original pixels and .path (plus .width/.height when known).
    Boxes under MIN_BOX_SIZE input pixels on a side are dropped.
    """
    sizes = []
    for record in records:
        boxes = np.asarray(record.boxes, dtype=np.float64).reshape(-1, 4)
        if not len(boxes):
            continue
        height, width = _image_hw(record)
        scale = min(input_shape[1] / width, input_shape[0] / height)
        sizes.append((boxes[:, 2:4] - boxes[:, 0:2]) * scale)
    wh = np.concatenate(sizes) if sizes else np.zeros((0, 2))
    keep = (wh >= MIN_BOX_SIZE).all(axis=1)
    if (~keep).any():
        LOGGER.info("ignoring %d of %d boxes smaller than %g px at the input size", int((~keep).sum()), len(wh),
                    MIN_BOX_SIZE)
    return wh[keep]


def format_anchors(anchors: np.ndarray) -> str:
    """'10,14, 23,27, ...' rounded to whole pixels, the model_data/*.txt and Darknet cfg format."""
    return ", ".join(f"{round(w)},{round(h)}" for w, h in np.asarray(anchors))
