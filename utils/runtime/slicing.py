"""Sliced inference (SAHI: Akyon et al., "Slicing Aided Hyper Inference and Fine-tuning for Small Object Detection",
ICIP 2022): small objects in a large image vanish when the whole image is letterboxed to the model's input, so the
image is also cut into overlapping tiles that the model sees at (near) their own scale.

`SlicedDetector` wraps any detector (PyTorch or ONNX): per image, tiles of `size` px overlapping by `overlap` (SAHI's
placement: a regular grid whose last row and column are moved back to end at the image border), each letterboxed to
the model's input, run through the wrapped detector in batches of `batch` canvases, plus the whole image letterboxed
(SAHI's "standard prediction"); the per-canvas detections (after the detector's own NMS, at most max_det each) are
shifted into image pixels and merged:

- "nms" (default, SAHI's NMS postprocess with its IOS match metric): per class, in score order, a box drops every
  lower-scored box that overlaps it by >= 0.5 of the smaller one (intersection over smaller, IOS): a duplicate from a
  neighbouring tile or from the whole-image pass, and a part of the object cut by a tile border, give way to the best
  box, which is kept as the model drew it.
- "nmm" (SAHI's GREEDYNMM, its default): the same clusters, but the best box becomes the union of the boxes it takes,
  which joins an object cut by a tile border, and also grows the box by every low-scored box around it: on the
  small-object sample (`python -m utils.sample_data --small-objects`, a model trained on the bundled sample, 320 px
  tiles) eval.py scored mAP50 0.00 with it at its --conf 0.001 and 0.65 at --conf 0.5, against 0.82 and 0.69 with
  "nms"; hence not the default here.

Memory: at most `batch` canvases at a time, and the detections (at most max_det per canvas: for the largest image the
pixel budget admits, 2^28 px in 320 px tiles at 0.2 overlap, about 4100 tiles x 300 x 6 float32 = 30 MB). The merge
needs memory linear in the detections (no N x N overlap matrix) and time O(N x kept).

Why not the sahi package itself: its merge functions build a dense N x N float32 overlap matrix per class (numpy
on the CPU; 9000 detections of one class, as an eval at --conf 0.001 gives, are 324 MB; the 1.2 million of the
largest image, terabytes), which breaks the memory bound above, and its slicing is one short
function behind a package that adds shapely, fire and click; so the placement and the greedy merge are reimplemented
here (same rules, tested against straightforward references) on the project's ndarray[K, 6] boxes.
"""
from __future__ import annotations

import time
from typing import Iterator, Sequence

import numpy as np
import torch

from utils.common.boxes import letterbox
from utils.runtime.detector import BaseDetector, DetectOptions, Prepared, batched
from utils.runtime.slice_options import MERGES, SliceOptions  # noqa: F401 (MERGES: part of this module's API)

MATCH_IOS = 0.5  # SAHI's default postprocess_match_threshold with match_metric "IOS"


def tile_starts(length: int, size: int, overlap: float) -> list[int]:
    """Start offsets of tiles of `size` along a side of `length` px: every size - int(overlap * size) px, the last
    moved back to end at the border (SAHI's get_slice_bboxes); one tile [0] when the side fits in one."""
    if length <= size:
        return [0]
    step = size - int(overlap * size)
    return [*range(0, length - size, step), length - size]


def tile_windows(height: int, width: int, size: int, overlap: float) -> np.ndarray:
    """int64 ndarray[T, 4] (x1, y1, x2, y2) of the tiles covering a height x width image, row by row; a side shorter
    than `size` gives tiles as long as that side."""
    windows = [(x, y, min(x + size, width), min(y + size, height))
               for y in tile_starts(height, size, overlap) for x in tile_starts(width, size, overlap)]
    return np.asarray(windows, dtype=np.int64).reshape(-1, 4)


def overlap_with(box: np.ndarray, boxes: np.ndarray, metric: str = "ios") -> np.ndarray:
    """Intersection over the smaller area ("ios") or over the union ("iou") of one box [4] with boxes [N, 4]
    (x1, y1, x2, y2): float ndarray[N]; 0 where an area is 0."""
    width = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = width * height
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    denominator = np.minimum(area, areas) if metric == "ios" else area + areas - inter
    return np.divide(inter, denominator, out=np.zeros_like(inter, dtype=np.float64), where=denominator > 0)


def greedy_nmm(detections: np.ndarray, threshold: float = MATCH_IOS, metric: str = "ios", union: bool = True
               ) -> np.ndarray:
    """SAHI's greedy non-maximum merging, per class: ndarray[N, 6] (x1, y1, x2, y2, score, class) -> [K, 6].

    In descending score order, each box not yet taken keeps its place and takes every lower-scored box of its class
    that overlaps it by >= threshold; with `union`, those are merged into it one by one (in score order) while they
    still overlap the grown box: the box becomes their union, the score stays the highest (GREEDYNMM). Without, the
    taken boxes are dropped (SAHI's NMS with the same match metric). Rows come out in score order. Memory O(N); time
    O(N x kept) within each class."""
    order = np.argsort(-detections[:, 4], kind="stable")
    dets = detections[order].astype(np.float32, copy=True)
    boxes = dets[:, :4].astype(np.float64)
    kept: list[int] = []
    for label in np.unique(dets[:, 5]):
        remaining = np.flatnonzero(dets[:, 5] == label)  # this class's rows, best first
        while len(remaining):
            i, rest = remaining[0], remaining[1:]
            close = overlap_with(boxes[i], boxes[rest], metric) >= threshold
            taken, remaining = rest[close], rest[~close]
            if union:
                dets[i, :4] = grown_box(boxes[i], boxes[taken], threshold, metric)
            kept.append(int(i))
    return dets[sorted(kept)]


def grown_box(box: np.ndarray, candidates: np.ndarray, threshold: float, metric: str) -> np.ndarray:
    """`box` grown into the union with each of `candidates` (in order) that still overlaps the grown box by
    >= threshold, as SAHI re-checks each before merging it."""
    box = box.copy()
    for other in candidates:
        if overlap_with(box, other[None], metric)[0] >= threshold:
            box[:2], box[2:] = np.minimum(box[:2], other[:2]), np.maximum(box[2:], other[2:])
    return box


def merge_detections(detections: np.ndarray, merge: str, max_det: int) -> np.ndarray:
    """Merge the shifted detections of all canvases of one image ("nmm" or "nms", see the module docstring); at most
    max_det rows, highest scores first."""
    if not len(detections):
        return detections.reshape(0, 6).astype(np.float32)
    return greedy_nmm(detections, union=merge == "nmm")[:max_det]  # rows already in score order


class SlicedDetector(BaseDetector):
    """`detector` run on overlapping tiles of each image (and on the whole image), merged; same interface as the
    detectors of utils.runtime.detector: RGB uint8 images of any size in, float32 ndarray[K, 6] in image pixels out.

    Its `options` are the wrapped detector's (thresholds apply per canvas; max_det also to the merged result) and its
    `times` count whole images: pre-processing is reading, inference is tiling + every canvas's forward and NMS,
    NMS is the merge."""

    def __init__(self, detector: BaseDetector, options: SliceOptions):
        super().__init__(detector.config, detector.options, detector.input_shape)
        self.detector, self.slicing = detector, options.check()

    @property
    def options(self) -> DetectOptions:
        return self.detector.options

    @options.setter
    def options(self, value: DetectOptions) -> None:
        if hasattr(self, "detector"):  # BaseDetector.__init__ sets it before the wrapped detector is known
            self.detector.options = value

    def forward(self, batch: np.ndarray) -> torch.Tensor:
        return self.detector.forward(batch)

    def prepare(self, image: np.ndarray, item=None) -> Prepared:
        """The image as it is (tiles are cut batch by batch in detect_prepared, so that memory stays bounded)."""
        return Prepared(item, image, None)

    def canvases(self, image: np.ndarray) -> Iterator[tuple[Prepared, tuple[int, int]]]:
        """(letterboxed canvas, its offset (x, y) in the image) for every tile, then for the whole image."""
        height, width = image.shape[:2]
        for x1, y1, x2, y2 in tile_windows(height, width, self.slicing.size, self.slicing.overlap).tolist():
            canvas, info = letterbox(image[y1:y2, x1:x2], self.input_shape)
            yield Prepared(None, canvas, info), (x1, y1)
        if self.slicing.full_image:
            canvas, info = letterbox(image, self.input_shape)
            yield Prepared(None, canvas, info), (0, 0)

    def detect_image(self, image: np.ndarray) -> np.ndarray:
        """Sliced detections of one RGB image: float32 ndarray[K, 6] in image pixels."""
        parts = []
        for chunk in batched(self.canvases(image), self.slicing.batch):
            results, _ = self.detector.detect_prepared([prepared for prepared, _ in chunk])
            for dets, (_, (x, y)) in zip(results, chunk, strict=True):
                parts.append(dets + np.array([x, y, x, y, 0, 0], np.float32))
        start = time.perf_counter()
        merged = merge_detections(np.concatenate(parts) if parts else np.zeros((0, 6), np.float32),
                                  self.slicing.merge, self.options.max_det)
        self._merge_seconds += time.perf_counter() - start
        return merged

    def detect_prepared(self, prepared: Sequence[Prepared]) -> tuple[list[np.ndarray], None]:
        """Sliced detection of each prepared image -> (per-image ndarray[K, 6], None: no decoded canvas)."""
        start, self._merge_seconds = time.perf_counter(), 0.0
        results = [self.detect_image(p.canvas) for p in prepared]
        self.times.add("infer", time.perf_counter() - start - self._merge_seconds)
        self.times.add("nms", self._merge_seconds, images=len(prepared))
        return results, None
