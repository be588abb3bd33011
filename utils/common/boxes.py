"""Letterboxing and box-coordinate helpers. Boxes are Tensor/ndarray[N, 4] as (x1, y1, x2, y2) in pixels.

Images in this project are RGB uint8 arrays of shape (H, W, 3) until a batch is formed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:  # only tensors' own methods are called here: importing torch is left to the callers (fast --help)
    import torch

LETTERBOX_FILL = 128  # the grey the reference implementation pads with


@dataclass(frozen=True)
class LetterboxInfo:
    """How an image was placed on the canvas: new = old * scale + (pad_x, pad_y)."""

    scale: float
    pad_x: float
    pad_y: float
    orig_height: int
    orig_width: int


def letterbox(image: np.ndarray, size: tuple[int, int] | list[int]) -> tuple[np.ndarray, LetterboxInfo]:
    """Resize `image` keeping its aspect ratio and centre it on a grey (h, w) = `size` canvas."""
    height, width = image.shape[:2]
    target_h, target_w = int(size[0]), int(size[1])
    scale = min(target_w / width, target_h / height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    pad_x, pad_y = (target_w - new_w) // 2, (target_h - new_h) // 2
    canvas = np.full((target_h, target_w, 3), LETTERBOX_FILL, dtype=np.uint8)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    canvas[pad_y:pad_y + new_h, pad_x:pad_x + new_w] = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    return canvas, LetterboxInfo(scale, pad_x, pad_y, height, width)


def letterbox_boxes(boxes: np.ndarray, info: LetterboxInfo) -> np.ndarray:
    """Original-image boxes -> canvas boxes (float32 [N, 4] x1, y1, x2, y2)."""
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    out[:, [0, 2]] = out[:, [0, 2]] * info.scale + info.pad_x
    out[:, [1, 3]] = out[:, [1, 3]] * info.scale + info.pad_y
    return out


def unletterbox_boxes(boxes: torch.Tensor, info: LetterboxInfo) -> torch.Tensor:
    """Canvas boxes -> original-image boxes, clipped to the image."""
    out = boxes.clone()
    out[:, [0, 2]] = ((out[:, [0, 2]] - info.pad_x) / info.scale).clamp(0, info.orig_width)
    out[:, [1, 3]] = ((out[:, [1, 3]] - info.pad_y) / info.scale).clamp(0, info.orig_height)
    return out


def detections_to_original(detections: torch.Tensor, info: LetterboxInfo) -> np.ndarray:
    """Tensor[K, 6] (x1, y1, x2, y2, score, class) on the canvas -> float32 ndarray[K', 6] in original pixels.

    Boxes lying wholly in the grey padding collapse to zero area when clipped to the image and are dropped, so
    predict.py, eval.py and training's validation all count the same detections.
    """
    dets = detections.float().cpu()
    dets[:, :4] = unletterbox_boxes(dets[:, :4], info)
    visible = (dets[:, 2] > dets[:, 0]) & (dets[:, 3] > dets[:, 1])
    return dets[visible].numpy()


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
