"""Model evaluation on a dataset split: the one code path of eval.py and training's periodic validation.

collect_detections: letterboxed batches -> forward -> decode -> NMS -> boxes back in original pixels, per record.
compute_metrics: VOC mAP@0.5 (devkit matching), precision/recall/F1 at a score threshold, COCO stats by pycocotools.
evaluate: both, on a loader of utils.dataloader.EvalDataset batched by eval_collate.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from utils.boxes import detections_to_original
from utils.config import ModelConfig
from utils.decode import decode_outputs, non_max_suppression
from utils.device import autocast
from utils.image_io import to_model_input
from utils.inference import BaseDetector
from utils.metrics import Annotated, VOCResult, coco_evaluate, voc_evaluate

LOGGER = logging.getLogger(__name__)


def collect_detections(model: nn.Module | BaseDetector, loader, config: ModelConfig, device: torch.device,
                       conf: float = 0.001, iou: float = 0.5, max_det: int = 300, amp: bool = True,
                       progress: bool = False) -> list[np.ndarray]:
    """One float32 ndarray[K, 6] (x1, y1, x2, y2, score, class) in original-image pixels per dataset record.

    `loader` yields (images uint8 [B, 3, H, W], dataset indices, LetterboxInfo list). The model's train/eval mode is
    restored afterwards, so training can call this on its live model.
    """
    detections: list[np.ndarray | None] = [None] * len(loader.dataset)
    is_module = isinstance(model, nn.Module)
    was_training = is_module and model.training
    if is_module:
        model.eval()
    try:
        with torch.inference_mode():
            for images, indices, infos in tqdm(loader, desc="evaluating", disable=not progress, leave=False):
                decoded = decoded_batch(model, images, config, device, amp)
                for dets, i, info in zip(non_max_suppression(decoded, conf, iou, max_det), indices, infos, strict=True):
                    detections[i] = detections_to_original(dets, info)
    finally:
        if is_module:
            model.train(was_training)
    missing = sum(d is None for d in detections)
    if missing:  # e.g. a sampler that covers only part of the dataset
        LOGGER.warning("%d of %d images were not in the loader; counted as images without detections",
                       missing, len(detections))
    return [np.zeros((0, 6), np.float32) if d is None else d for d in detections]


def decoded_batch(model: nn.Module | BaseDetector, images: torch.Tensor, config: ModelConfig, device: torch.device,
                  amp: bool) -> torch.Tensor:
    """uint8 letterboxed images [B, 3, H, W] -> decoded predictions [B, N, 5 + nc] (see utils.decode).

    `model` is a YoloBody, or a detector that decodes by itself (an exported .onnx run by onnxruntime)."""
    if isinstance(model, BaseDetector):
        return model.forward(images.permute(0, 2, 3, 1).numpy())
    batch = to_model_input(images, device, torch.contiguous_format)
    with autocast(device, amp):
        outputs = model(batch)
    return decode_outputs(outputs, config, input_shape=tuple(batch.shape[2:]))


def compute_metrics(detections: Sequence[np.ndarray], records: Sequence[Annotated], class_names: Sequence[str],
                    voc07: bool = False, score_thresh: float = 0.5, coco: bool = True,
                    pixel_offset: float = 1.0) -> tuple[dict, VOCResult]:
    """(JSON-ready metrics dict, VOCResult with the PR curves) for per-record detections.

    Keys: mAP50 (VOC, all-point or 11-point with voc07), mAP50_95 and `coco` {mAP50_95, AP50, AP75, APs, APm, APl}
    (pycocotools; None with coco=False), AP50_per_class {name: AP or None without ground truth}, precision/recall/f1
    (means over classes with ground truth at score >= score_thresh) and per_class details.
    pixel_offset: 1 = the VOC devkit's inclusive-pixel IoU (VOC XML boxes), 0 = continuous boxes (COCO json).
    """
    voc = voc_evaluate(detections, records, class_names, use_07=voc07, pixel_offset=pixel_offset)
    prf = voc.prf(score_thresh)
    sizes = [(getattr(r, "height", 0), getattr(r, "width", 0)) for r in records]
    coco_stats = coco_evaluate(detections, records, class_names, sizes) if coco else None
    per_class = {c.name: {"AP50": c.ap if c.num_gt else None, "num_gt": c.num_gt, "num_det": c.num_det,
                          **prf.get(c.name, {"precision": None, "recall": None, "f1": None})}
                 for c in voc.classes}
    mean = {k: float(np.mean([v[k] for v in prf.values()])) if prf else 0.0 for k in ("precision", "recall", "f1")}
    metrics = {"mAP50": voc.map, "mAP50_95": coco_stats["mAP50_95"] if coco_stats else None,
               "AP50_per_class": voc.ap_per_class(), **mean, "score_thresh": score_thresh, "coco": coco_stats,
               "voc07": voc07, "iou_pixel_offset": pixel_offset, "images": len(records),
               "detections": int(sum(len(d) for d in detections)),
               "classes_with_gt": sum(c.num_gt > 0 for c in voc.classes), "per_class": per_class}
    return metrics, voc


def iou_pixel_offset(records: Sequence) -> float:
    """The devkit's +1 pixel IoU for VOC XML boxes (inclusive integer pixels); 0 for COCO json (continuous) boxes."""
    return 0.0 if records and getattr(records[0], "coco_id", None) is not None else 1.0


def evaluate(model: nn.Module, loader, config: ModelConfig, device: torch.device, conf: float = 0.001,
             iou: float = 0.5, max_det: int = 300, voc07: bool = False, amp: bool = True, score_thresh: float = 0.5,
             coco: bool = True, progress: bool = False) -> dict:
    """Metrics of `model` on the loader's dataset (see compute_metrics for the keys).

    Ground truth is `loader.dataset.index.records` (boxes in original pixels, difficult flags); class names are the
    model config's, which the index must have been loaded with (load_split(..., classes=config.classes)).
    """
    index = loader.dataset.index
    if list(index.classes) != list(config.classes):
        raise ValueError(f"the dataset was indexed with classes {index.classes[:5]}... but the model predicts "
                         f"{config.classes[:5]}...; load it with load_split(..., classes=config.classes)")
    records = index.records
    detections = collect_detections(model, loader, config, device, conf, iou, max_det, amp, progress)
    metrics, _ = compute_metrics(detections, records, config.classes, voc07, score_thresh, coco,
                                 iou_pixel_offset(records))
    return metrics
