"""Drawing boxes on images with OpenCV (no font files), shared by predict, training previews and TensorBoard."""
from __future__ import annotations

import colorsys

import cv2
import numpy as np

from utils.common.text import printable

FONT = cv2.FONT_HERSHEY_SIMPLEX
CAPTION_PX_PER_SCALE = 22  # text + baseline height of FONT at scale 1, in pixels (cv2.getTextSize)


def class_colors(num_classes: int) -> list[tuple[int, int, int]]:
    """A distinct, stable RGB colour per class (evenly spaced hues)."""
    hues = [i / max(num_classes, 1) for i in range(num_classes)]
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h, 0.85, 0.95)) for h in hues]


def track_color(track_id: int) -> tuple[int, int, int]:
    """A stable RGB colour per track ID (golden-ratio hue steps: neighbouring IDs look different)."""
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb((track_id * 0.618034) % 1.0, 0.85, 0.95))


def draw_detections(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, class_names: list[str],
                    scores: np.ndarray | None = None, track_ids: np.ndarray | None = None) -> np.ndarray:
    """Return a copy of RGB `image` with boxes [K,4] (x1,y1,x2,y2 pixels) and "name score" captions drawn; with
    `track_ids` [K] the captions start with "#id" and each track has its own colour."""
    canvas = np.ascontiguousarray(image).copy()
    colors = class_colors(len(class_names))
    corners, labels = np.asarray(boxes).round().astype(int), np.asarray(labels).astype(int)
    thickness, font_scale = line_and_font_size(canvas.shape[:2], corners)
    for i, (box, label) in enumerate(zip(corners, labels, strict=True)):
        color = colors[label % len(colors)] if track_ids is None else track_color(int(track_ids[i]))
        x1, y1, x2, y2 = box.tolist()
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thickness)
        caption = printable(class_names[label], 40) if label < len(class_names) else str(label)
        if track_ids is not None:
            caption = f"#{int(track_ids[i])} {caption}"
        if scores is not None:
            caption += f" {float(scores[i]):.2f}"
        (tw, th), base = cv2.getTextSize(caption, FONT, font_scale, 1)
        top = max(y1 - th - base, 0)
        cv2.rectangle(canvas, (x1, top), (x1 + tw, top + th + base), color, -1)
        cv2.putText(canvas, caption, (x1, top + th), FONT, font_scale, text_color(color), 1, cv2.LINE_AA)
    return canvas


def line_and_font_size(image_hw: tuple[int, int], corners: np.ndarray) -> tuple[int, float]:
    """Box line thickness and caption font scale: grown with the image (as Ultralytics' annotator does), but never
    much larger than the typical box drawn, so small objects on a large canvas (sliced inference on a 2000 px image)
    stay visible under their lines and captions. The caption is at most about the median box height tall."""
    thickness = max(1, round(sum(image_hw) / 600))
    font_scale = max(0.4, thickness / 3)
    if len(corners):
        sides = np.minimum(corners[:, 2] - corners[:, 0], corners[:, 3] - corners[:, 1])
        typical_side = float(np.median(sides))
        thickness = max(1, min(thickness, round(typical_side / 12)))
        font_scale = max(0.4, min(font_scale, typical_side / CAPTION_PX_PER_SCALE))
    return thickness, font_scale


def relative_luminance(color: tuple[int, int, int]) -> float:
    """WCAG 2 relative luminance of an sRGB colour (0-255 per channel): 0 for black, 1 for white."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (v / 255 for v in color)]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever contrasts more with `background` (WCAG contrast ratio): black on yellow, white on
    blue. The break-even luminance is 0.179, where (L + 0.05) / 0.05 equals 1.05 / (L + 0.05)."""
    return (0, 0, 0) if relative_luminance(background) > 0.179 else (255, 255, 255)


def image_grid(images: list[np.ndarray], columns: int = 4) -> np.ndarray:
    """Tile same-sized RGB images into one grid image (missing cells stay black)."""
    rows = (len(images) + columns - 1) // columns
    h, w = images[0].shape[:2]
    grid = np.zeros((rows * h, columns * w, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = img
    return grid
