"""Drawing boxes on images with OpenCV (no font files), shared by predict, training previews and TensorBoard."""
from __future__ import annotations

import colorsys

import cv2
import numpy as np

from utils.common.text import printable

FONT = cv2.FONT_HERSHEY_SIMPLEX


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
    thickness = max(1, round(sum(canvas.shape[:2]) / 600))
    font_scale = max(0.4, thickness / 3)
    corners, labels = np.asarray(boxes).round().astype(int), np.asarray(labels).astype(int)
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
