"""Training augmentation on RGB uint8 (H, W, 3) images; boxes float32 [N, 4] (x1, y1, x2, y2) pixels.

The geometry follows the YOLOv4-tiny reference (random scale and aspect jitter on a grey letterbox canvas, horizontal
flip, 4-image mosaic around a random centre, mixup of a mosaic with a second sample), done with OpenCV: one warpAffine
per image computing only its visible pixels, no float images. The colour jitter is albumentations' ColorJitter, which is
the HSV jitter of the reference: value gain = brightness, saturation gain, hue shift as a fraction of the colour circle.

Why not albumentations' Mosaic/Affine: A.Mosaic fits every tile to a fixed cell (no per-tile random scale or aspect
jitter), and an A.Compose of LongestMaxSize + PadIfNeeded + Affine + HorizontalFlip resamples the image three times;
a single warp is both closer to the reference and about twice as fast (see benchmarks/bench_data.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from utils.common.boxes import LETTERBOX_FILL

if TYPE_CHECKING:
    import albumentations as A


@dataclass
class AugmentConfig:
    """Strengths and probabilities of the training augmentations (defaults: the YOLOv4-tiny reference)."""

    mosaic: float = 0.5  # probability that a sample is a 4-image mosaic
    mixup: float = 0.5  # probability that a mosaic sample is blended 50/50 with a second augmented image
    hsv_h: float = 0.1  # hue shift, fraction of the colour circle (+-)
    hsv_s: float = 0.7  # saturation gain 1 +- hsv_s
    hsv_v: float = 0.4  # value (brightness) gain 1 +- hsv_v
    flip: float = 0.5  # horizontal flip probability
    scale: tuple[float, float] = (0.25, 2.0)  # single images: longer side relative to the canvas
    mosaic_scale: tuple[float, float] = (0.4, 1.0)  # mosaic tiles, relative to the canvas (reference values)
    jitter: float = 0.3  # aspect-ratio jitter: ratio multiplied by U(1-j, 1+j) / U(1-j, 1+j)
    mosaic_center: tuple[float, float] = (0.3, 0.7)  # mosaic centre, fraction of the canvas
    mosaic_epochs_fraction: float = 0.7  # mosaic and mixup stop after this fraction of the epochs
    mosaic_buffer: int = 64  # mosaic/mixup partners come from this many recently loaded images (0: any image)
    translate: bool = True  # random position on the canvas (False: centred, i.e. a plain letterbox)
    min_box_size: float = 2.0  # boxes narrower or lower than this (pixels) after augmentation are dropped
    min_area_ratio: float = 0.1  # boxes keeping less than this fraction of their area after clipping are dropped

    @classmethod
    def disabled(cls) -> "AugmentConfig":
        """No augmentation: every sample is the image letterboxed onto the canvas (used for validation)."""
        return cls(mosaic=0.0, mixup=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, flip=0.0, scale=(1.0, 1.0), jitter=0.0,
                   translate=False)


def colour_jitter(config: AugmentConfig) -> A.ColorJitter | None:
    """The HSV jitter as an albumentations transform (None when all strengths are 0)."""
    if config.hsv_h == config.hsv_s == config.hsv_v == 0:
        return None
    import albumentations as A  # here: train.py --help reads AugmentConfig's defaults without importing it (~1.5 s)

    return A.ColorJitter(brightness=config.hsv_v, contrast=0.0, saturation=config.hsv_s, hue=config.hsv_h, p=1.0)


def random_size(image_hw: tuple[int, int], canvas_hw: tuple[int, int], scale: tuple[float, float], jitter: float,
                rng: np.random.Generator, fit: bool = False) -> tuple[int, int]:
    """(new_h, new_w) for an image of size image_hw: the aspect ratio jittered, the longer side a random fraction
    `scale` of the canvas side (the reference's rule). fit=True shrinks the result to fit inside the canvas."""
    ratio = image_hw[1] / image_hw[0]
    if jitter > 0:
        ratio *= rng.uniform(1 - jitter, 1 + jitter) / rng.uniform(1 - jitter, 1 + jitter)
    factor = rng.uniform(*scale) if scale[0] != scale[1] else scale[0]
    if ratio < 1:
        new_h = factor * canvas_hw[0]
        new_w = new_h * ratio
    else:
        new_w = factor * canvas_hw[1]
        new_h = new_w / ratio
    if fit:
        shrink = min(1.0, canvas_hw[0] / new_h, canvas_hw[1] / new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return max(int(round(new_h)), 1), max(int(round(new_w)), 1)


def place(canvas: np.ndarray, image: np.ndarray, size_hw: tuple[int, int], flip: bool, x: int, y: int,
          region: tuple[int, int, int, int]) -> None:
    """Draw `image` resized to size_hw (mirrored if flip) with its top-left corner at (x, y) into canvas, only
    inside region (x0, y0, x1, y1).

    One cv2.warpAffine computes just the visible pixels (a mosaic tile or a 2x-scaled image is mostly cropped away).
    Strong shrinking first halves the image (2x2 averaging), so the warp never shrinks by more than 2 (no aliasing).
    """
    x0, y0 = max(region[0], x), max(region[1], y)
    x1, y1 = min(region[2], x + size_hw[1]), min(region[3], y + size_hw[0])
    if x1 <= x0 or y1 <= y0:
        return
    while size_hw[0] < 0.5 * image.shape[0] and size_hw[1] < 0.5 * image.shape[1]:
        # bilinear at exactly 1/2 averages 2x2 blocks: a cheap anti-aliasing step before the warp
        image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_LINEAR)
    sx, sy = size_hw[1] / image.shape[1], size_hw[0] / image.shape[0]
    # pixel centres map as (u + 0.5) = s * (X + 0.5) + offset, the convention of cv2.resize
    tx = (x + size_hw[1] - 0.5 * sx - 0.5, -sx) if flip else (x + 0.5 * sx - 0.5, sx)
    matrix = np.array([[tx[1], 0.0, tx[0] - x0], [0.0, sy, y + 0.5 * sy - 0.5 - y0]], dtype=np.float64)
    canvas[y0:y1, x0:x1] = cv2.warpAffine(image, matrix, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                                          borderMode=cv2.BORDER_REPLICATE)


def move_boxes(boxes: np.ndarray, image_hw: tuple[int, int], size_hw: tuple[int, int], flip: bool, x: int,
               y: int) -> np.ndarray:
    """Boxes of an image_hw image -> boxes after resizing to size_hw, mirroring, and placing at (x, y)."""
    sx, sy = size_hw[1] / image_hw[1], size_hw[0] / image_hw[0]
    out = boxes * np.array([sx, sy, sx, sy], dtype=np.float32)
    if flip:
        out[:, [0, 2]] = size_hw[1] - out[:, [2, 0]]
    out += np.array([x, y, x, y], dtype=np.float32)
    return out


def clip_boxes(boxes: np.ndarray, labels: np.ndarray, region: tuple[int, int, int, int],
               config: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """Clip boxes to region (x0, y0, x1, y1); drop those under min_box_size px or keeping < min_area_ratio of
    their area."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    clipped = np.empty_like(boxes)
    clipped[:, [0, 2]] = boxes[:, [0, 2]].clip(region[0], region[2])
    clipped[:, [1, 3]] = boxes[:, [1, 3]].clip(region[1], region[3])
    width, height = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    keep = (width >= config.min_box_size) & (height >= config.min_box_size) & (
        width * height >= config.min_area_ratio * area)
    return clipped[keep], labels[keep]


Sample = tuple[np.ndarray, np.ndarray, np.ndarray]  # image RGB uint8 (H, W, 3), boxes float32 [N, 4], labels int64 [N]


def random_placement(sample: Sample, canvas_hw: tuple[int, int], config: AugmentConfig,
                     rng: np.random.Generator) -> Sample:
    """One image randomly scaled, aspect-jittered, flipped and placed on a grey canvas (a letterbox when the
    config is disabled())."""
    image, boxes, labels = sample
    size = random_size(image.shape[:2], canvas_hw, config.scale, config.jitter, rng, fit=not config.translate)
    flip = rng.random() < config.flip
    if config.translate:
        # an image larger than the canvas gets a negative offset, i.e. a random crop (as in the reference)
        x, y = int(rng.random() * (canvas_hw[1] - size[1])), int(rng.random() * (canvas_hw[0] - size[0]))
    else:
        x, y = (canvas_hw[1] - size[1]) // 2, (canvas_hw[0] - size[0]) // 2
    canvas = np.full((*canvas_hw, 3), LETTERBOX_FILL, dtype=np.uint8)
    place(canvas, image, size, flip, x, y, (0, 0, canvas_hw[1], canvas_hw[0]))
    moved = move_boxes(boxes, image.shape[:2], size, flip, x, y)
    return (canvas, *clip_boxes(moved, labels, (0, 0, canvas_hw[1], canvas_hw[0]), config))


def mosaic(samples: list[Sample], canvas_hw: tuple[int, int], config: AugmentConfig,
           rng: np.random.Generator) -> Sample:
    """Four images around a random centre (mosaic_center of the canvas), each in its own quadrant, anchored at the
    centre and cropped at the centre lines, as in the reference."""
    height, width = canvas_hw
    cx = int(width * rng.uniform(*config.mosaic_center))
    cy = int(height * rng.uniform(*config.mosaic_center))
    canvas = np.full((height, width, 3), LETTERBOX_FILL, dtype=np.uint8)
    quadrants = [(0, 0, cx, cy), (cx, 0, width, cy), (0, cy, cx, height), (cx, cy, width, height)]
    all_boxes, all_labels = [], []
    for (image, boxes, labels), region in zip(samples, quadrants, strict=True):
        size = random_size(image.shape[:2], canvas_hw, config.mosaic_scale, config.jitter, rng)
        flip = rng.random() < config.flip
        # anchor the corner that touches the centre: left quadrants end at cx, top quadrants end at cy
        x = cx - size[1] if region[0] == 0 else cx
        y = cy - size[0] if region[1] == 0 else cy
        place(canvas, image, size, flip, x, y, region)
        kept = clip_boxes(move_boxes(boxes, image.shape[:2], size, flip, x, y), labels, region, config)
        all_boxes.append(kept[0])
        all_labels.append(kept[1])
    return canvas, np.concatenate(all_boxes), np.concatenate(all_labels)


def mixup(first: Sample, second: Sample) -> Sample:
    """Blend two samples 50/50 (the reference's weight) and keep both sets of boxes."""
    image = cv2.addWeighted(first[0], 0.5, second[0], 0.5, 0.0)
    return image, np.concatenate([first[1], second[1]]), np.concatenate([first[2], second[2]])
