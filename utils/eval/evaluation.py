"""Model evaluation on a dataset split: the one code path of eval.py and training's validation.

predict_split: letterboxed batches -> forward -> decode -> NMS -> boxes back in original pixels, per record; with a
    loss function also the validation loss of the same forward passes. An image that cannot be read is not shown to
    the model: it has no detections, so its objects count as missed.
predict_split_sliced: the same per record, by sliced inference (utils.runtime.slicing: overlapping tiles at full
    resolution plus the whole image, merged), for eval.py --slice.
compute_metrics: VOC mAP@0.5 (devkit matching), COCO stats by pycocotools, precision/recall/F1 at a score threshold,
    the confusion matrix and the precision/recall/F1-confidence curves, all against the split's ground truth as the
    annotation files state it (`ImageRecord.ground_truth()`; for a COCO json, the json itself).
evaluate: both, on a loader of utils.data.loader.EvalDataset batched by eval_collate.
"""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from utils.common.boxes import LetterboxInfo, detections_to_original, letterbox_boxes
from utils.common.device import autocast
from utils.common.image_io import ImageReadError, read_image, to_model_input
from utils.data.formats import coco
from utils.data.index import DatasetIndex, ImageRecord, missed_objects
from utils.eval.metrics import (
    Annotated,
    VOCResult,
    best_f1_threshold,
    coco_ground_truth,
    coco_results,
    coco_stats,
    confidence_curves,
    confusion_matrix,
    normalize_rows,
    voc_evaluate,
)
from utils.model.config import ModelConfig
from utils.model.decode import decode_outputs, non_max_suppression
from utils.runtime.detector import BaseDetector, Prefetcher
from utils.runtime.slicing import SlicedDetector

LOGGER = logging.getLogger(__name__)
CONFUSION_IOU = 0.5
CURVE_THRESHOLDS = np.linspace(0.0, 1.0, 101)  # the confidence grid of the curves stored in metrics.json


@dataclass
class SplitPredictions:
    """Detections per record (float32 ndarray[K, 6] x1, y1, x2, y2, score, class in original pixels) and the mean
    validation loss per image {"box", "obj", "cls", "total"} (None without a loss function)."""

    detections: list[np.ndarray]
    losses: dict[str, float] | None = None


def predict_split(model: nn.Module | BaseDetector, loader, config: ModelConfig, device: torch.device,
                  conf: float = 0.001, iou: float = 0.5, max_det: int = 300, precision: str = "fp32",
                  progress: bool = False, loss_fn: nn.Module | None = None) -> SplitPredictions:
    """Run the model over the loader's split (see the module docstring).

    `loader` yields (images uint8 [B, 3, H, W], record indices, LetterboxInfo or the error of an unreadable image).
    The model's train/eval mode is restored afterwards, so training can call this on its live model. loss_fn: a
    YoloLoss, scoring the raw outputs against the records' training targets (letterboxed like the images).
    """
    records = loader.dataset.index.records
    detections: list[np.ndarray | None] = [None] * len(records)
    loss_sums: dict[str, float] = {}
    scored = 0
    is_module = isinstance(model, nn.Module)
    was_training = is_module and model.training
    if is_module:
        model.eval()
    try:
        with torch.inference_mode():
            for images, indices, infos in tqdm(loader, desc="evaluating", disable=not progress, leave=False):
                keep = _readable_rows(records, indices, infos)
                if not keep:
                    continue
                indices, infos = [indices[k] for k in keep], [infos[k] for k in keep]
                outputs, decoded = forward_batch(model, images[keep], config, device, precision)
                for dets, i, info in zip(non_max_suppression(decoded, conf, iou, max_det), indices, infos,
                                          strict=True):
                    detections[i] = detections_to_original(dets, info)
                if loss_fn is not None and outputs is not None:
                    losses = loss_fn(outputs, batch_targets(loader.dataset.index, indices, infos, device))
                    for key, value in losses.items():
                        loss_sums[key] = loss_sums.get(key, 0.0) + float(value) * len(indices)
                    scored += len(indices)
    finally:
        if is_module:
            model.train(was_training)
    _warn_missing(records, detections)
    losses = {k: v / scored for k, v in loss_sums.items()} if scored else None
    return SplitPredictions([np.zeros((0, 6), np.float32) if d is None else d for d in detections], losses)


def predict_split_sliced(detector: SlicedDetector, index: DatasetIndex, progress: bool = False) -> SplitPredictions:
    """Sliced detections of every record of `index` (full-resolution images, read on a background thread); an image
    that cannot be read has none, and is marked and reported as predict_split does."""
    records = index.records
    detections: list[np.ndarray] = [np.zeros((0, 6), np.float32)] * len(records)

    def read(i: int) -> tuple[int, np.ndarray | str]:
        if records[i].image_error is not None:
            return i, records[i].image_error
        try:
            return i, read_image(records[i].path)
        except ImageReadError as err:
            return i, str(err)

    reader = Prefetcher(range(len(records)), read, depth=2)
    try:
        for i, image in tqdm(reader, total=len(records), desc="evaluating (sliced)", disable=not progress,
                             leave=False):
            if isinstance(image, str):
                _readable_rows(records, [i], [image])
                continue
            start = time.perf_counter()
            detections[i] = detector([image])[0]
            detector.times.wall += time.perf_counter() - start
    finally:
        reader.close()
    return SplitPredictions(detections)


def _readable_rows(records: list[ImageRecord], indices: list[int], infos: list) -> list[int]:
    """Batch rows whose image was read. An image found unreadable only now (it passed the header check) is marked on
    its record, so the summary counts it, and reported once."""
    keep = []
    for k, (i, info) in enumerate(zip(indices, infos, strict=True)):
        if isinstance(info, LetterboxInfo):
            keep.append(k)
        elif records[i].image_error is None:
            records[i].image_error = str(info)
            scored = int((~records[i].ground_truth().difficult).sum())
            LOGGER.warning("unreadable: %s (%s)", info, missed_objects(scored))
    return keep


def _warn_missing(records: list[ImageRecord], detections: list[np.ndarray | None]) -> None:
    missing = sum(d is None and r.image_error is None for d, r in zip(detections, records, strict=True))
    if missing:  # e.g. a sampler that covers only part of the dataset
        LOGGER.warning("%d of %d images were not in the loader; counted as images without detections",
                       missing, len(detections))


def forward_batch(model: nn.Module | BaseDetector, images: torch.Tensor, config: ModelConfig, device: torch.device,
                  precision: str) -> tuple[tuple[torch.Tensor, ...] | None, torch.Tensor]:
    """uint8 letterboxed images [B, 3, H, W] -> (raw head outputs, decoded predictions [B, N, 5 + nc]).

    `model` is a YoloBody, or a detector that decodes by itself (an exported .onnx run by onnxruntime; its raw
    outputs are None)."""
    if isinstance(model, BaseDetector):
        return None, model.forward(images.permute(0, 2, 3, 1).numpy())
    batch = to_model_input(images, device, torch.contiguous_format)
    with autocast(device, precision):
        outputs = model(batch)
    return outputs, decode_outputs(outputs, config, input_shape=tuple(batch.shape[2:]))


def batch_targets(index: DatasetIndex, indices: list[int], infos: list[LetterboxInfo],
                  device: torch.device) -> torch.Tensor:
    """Training targets of the batch's records on the letterboxed canvas: float32 [M, 6] (batch row, class, x1, y1,
    x2, y2) input pixels, as utils.data.loader.train_collate builds them for YoloLoss."""
    rows = []
    for row, (i, info) in enumerate(zip(indices, infos, strict=True)):
        boxes, labels = index.training_targets(i)
        canvas = letterbox_boxes(boxes, info)
        rows.append(np.column_stack([np.full(len(labels), row, np.float32), labels.astype(np.float32), canvas]))
    targets = np.concatenate(rows) if rows else np.zeros((0, 6), np.float32)
    return torch.from_numpy(targets.astype(np.float32)).to(device)


# ---------------------------------------------------------------------------------------------------------- metrics
def compute_metrics(detections: Sequence[np.ndarray], records: DatasetIndex | Sequence[ImageRecord | Annotated],
                    class_names: Sequence[str], voc07: bool = False, score_thresh: float = 0.5, coco: bool = True,
                    pixel_offset: float | None = None) -> tuple[dict, VOCResult]:
    """(JSON-ready metrics dict, VOCResult with the PR curves) for per-record detections.

    records: the split's index (its COCO json, when it has one, is what pycocotools scores against, areas and crowd
    flags as written), or its records (each scored by `ground_truth()`), or GroundTruthBoxes objects.
    Keys: mAP50 (VOC, all-point or 11-point with voc07), mAP50_95 and `coco` {mAP50_95, AP50, AP75, APs, APm, APl}
    (pycocotools; None with coco=False), AP50_per_class {name: AP}, precision/recall/f1 (means over classes with
    ground truth at score >= score_thresh), per_class details, confusion_matrix, confidence_curves, best_f1, and the
    ground-truth counts. Undefined figures (no ground truth for them) are None, never 0 or -1.
    pixel_offset: 1 = the VOC devkit's inclusive-pixel IoU (VOC XML boxes), 0 = continuous boxes (COCO json, YOLO);
    None: the index's (its format's reader states it), or the devkit's for bare records.
    """
    index = records if isinstance(records, DatasetIndex) else None
    records = index.records if index is not None else list(records)
    truths = [r.ground_truth() if isinstance(r, ImageRecord) else r for r in records]
    if pixel_offset is None:
        pixel_offset = index.pixel_offset if index is not None else 1.0
    voc = voc_evaluate(detections, truths, class_names, use_07=voc07, pixel_offset=pixel_offset)
    coco_figures = _coco_figures(detections, records, truths, class_names, index) if coco else None
    prf = voc.prf(score_thresh)
    mean = {k: (float(np.mean([v[k] for v in prf.values()])) if prf else None) for k in ("precision", "recall", "f1")}
    per_class = {c.name: {"AP50": c.ap if c.num_gt else None, "num_gt": c.num_gt, "num_det": c.num_det,
                          **prf.get(c.name, {"precision": None, "recall": None, "f1": None})}
                 for c in voc.classes}
    metrics = {"mAP50": _defined(voc.map), "mAP50_95": coco_figures["mAP50_95"] if coco_figures else None,
               "AP50_per_class": voc.ap_per_class(), **mean, "score_thresh": score_thresh, "coco": coco_figures,
               "voc07": voc07, "iou_pixel_offset": pixel_offset, **_ground_truth_counts(records, truths),
               "detections": int(sum(len(d) for d in detections)),
               "classes_with_gt": sum(c.num_gt > 0 for c in voc.classes), "per_class": per_class,
               **diagnostics(detections, truths, voc, class_names, score_thresh, pixel_offset)}
    return metrics, voc


def _defined(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _ground_truth_counts(records: Sequence, truths: Sequence[Annotated]) -> dict:
    unreadable = [i for i, r in enumerate(records) if getattr(r, "image_error", None) is not None]
    scored = [int((~np.asarray(t.difficult, bool)).sum()) for t in truths]
    return {"images": len(records), "unreadable_images": len(unreadable),
            "unreadable_objects": sum(scored[i] for i in unreadable), "objects": sum(scored)}


def diagnostics(detections: Sequence[np.ndarray], truths: Sequence[Annotated], voc: VOCResult,
                class_names: Sequence[str], score_thresh: float, pixel_offset: float) -> dict:
    """The confusion matrix at IoU 0.5 and score_thresh, the precision/recall/F1-confidence curves and the best-F1
    threshold, JSON-ready (see utils.eval.metrics for the definitions)."""
    matrix = confusion_matrix(detections, truths, len(class_names), score_thresh, CONFUSION_IOU, pixel_offset)
    curves = confidence_curves(voc, CURVE_THRESHOLDS)
    rounded = functools.partial(np.round, decimals=4)
    per_class = {name: {key: rounded(curves[key][c]).tolist() for key in ("precision", "recall", "f1")}
                 for c, name in enumerate(curves["names"])}
    return {
        "confusion_matrix": {"names": [*map(str, class_names), "background"], "rows": "true class",
                             "columns": "predicted class", "iou_thresh": CONFUSION_IOU, "score_thresh": score_thresh,
                             "counts": matrix.tolist(), "normalized": rounded(normalize_rows(matrix)).tolist()},
        "confidence_curves": {"thresholds": rounded(CURVE_THRESHOLDS).tolist(), "per_class": per_class,
                              "all": {key: rounded(curves[f"all_{key}"]).tolist()
                                      for key in ("precision", "recall", "f1")}},
        "best_f1": best_f1_threshold(voc),
    }


def _coco_figures(detections: Sequence[np.ndarray], records: Sequence, truths: Sequence[Annotated],
                  class_names: Sequence[str], index: DatasetIndex | None) -> dict[str, float | None]:
    """pycocotools' six box figures: against the COCO json itself when the split comes from one (bbox, area and
    iscrowd as written), else against the annotated boxes (area = w * h, difficult as crowd)."""
    if index is not None and index.coco_json is not None:
        ground_truth = coco_json_ground_truth(index.coco_json, [r.coco_id for r in records])
        by_name: dict[str, int] = {}
        for category in ground_truth["categories"]:
            by_name.setdefault(str(category["name"]), int(category["id"]))
        category_ids = [by_name.get(str(name)) for name in class_names]
        results = coco_results(detections, [r.coco_id for r in records], category_ids)
        return coco_stats(ground_truth, results, [c for c in category_ids if c is not None])
    sizes = [(getattr(r, "height", 0), getattr(r, "width", 0)) for r in records]
    return coco_stats(coco_ground_truth(truths, class_names, sizes), coco_results(detections))


def coco_json_ground_truth(json_path: Path, image_ids: Sequence[int]) -> dict:
    """The json's own images and annotations for `image_ids`, as pycocotools reads them: exactly the entries the
    index kept (utils.data.formats.coco.ground_truth: an annotation with a NaN bbox or area was reported and is not
    scored), areas as written (w * h when absent)."""
    return coco.ground_truth(Path(json_path), [int(i) for i in image_ids])


def evaluate(model: nn.Module, loader, config: ModelConfig, device: torch.device, conf: float = 0.001,
             iou: float = 0.5, max_det: int = 300, voc07: bool = False, precision: str = "fp32",
             score_thresh: float = 0.5,
             coco: bool = True, progress: bool = False, loss_fn: nn.Module | None = None,
             detections_out: list | None = None) -> dict:
    """Metrics of `model` on the loader's dataset (see compute_metrics for the keys; `val_loss` with a loss_fn).

    Ground truth is `loader.dataset.index` (load it with keep_unreadable=True so that every image counts); class
    names are the model config's, which the index must have been loaded with (load_split(..., classes=...)).
    detections_out: a list that receives the per-record detections (training draws a few of them).
    """
    index = loader.dataset.index
    if list(index.classes) != list(config.classes):
        raise ValueError(f"the dataset was indexed with classes {index.classes[:5]}... but the model predicts "
                         f"{config.classes[:5]}...; load it with load_split(..., classes=config.classes)")
    predictions = predict_split(model, loader, config, device, conf, iou, max_det, precision, progress, loss_fn)
    metrics, _ = compute_metrics(predictions.detections, index, config.classes, voc07, score_thresh, coco)
    if detections_out is not None:
        detections_out[:] = predictions.detections
    if predictions.losses is not None:
        metrics["val_loss"] = predictions.losses
    return metrics
