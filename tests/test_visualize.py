"""Drawing boxes: class labels are black or white, whichever reads better on the box colour (WCAG contrast)."""
from __future__ import annotations

import numpy as np
import pytest

from utils.common.visualize import class_colors, draw_detections, relative_luminance, text_color


def contrast(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """WCAG 2 contrast ratio, the slow obvious way."""
    high, low = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


@pytest.mark.parametrize("background, expected", [((0, 0, 0), (255, 255, 255)), ((255, 255, 255), (0, 0, 0)),
                                                  ((36, 36, 242), (255, 255, 255)),  # the dark blue of 3 classes
                                                  ((242, 221, 36), (0, 0, 0)), ((128, 0, 128), (255, 255, 255))])
def test_text_colour_by_luminance(background, expected):
    assert text_color(background) == expected


@pytest.mark.parametrize("classes", [1, 3, 20, 80])
def test_every_class_label_gets_the_more_readable_of_black_and_white(classes):
    for color in class_colors(classes):
        chosen, other = text_color(color), (255, 255, 255) if text_color(color) == (0, 0, 0) else (0, 0, 0)
        assert contrast(chosen, color) >= contrast(other, color), color


def test_caption_on_a_dark_box_is_drawn_in_white():
    image = np.full((100, 200, 3), 128, np.uint8)
    blue = class_colors(3)[2]  # (36, 36, 242): black text on it was hard to read
    drawn = draw_detections(image, np.array([[20, 40, 180, 90]]), np.array([2]), ["a", "b", "blue thing"])
    label = drawn[:40, 20:180].reshape(-1, 3)
    label = label[(label != 128).any(axis=1)]  # the filled label box above the detection, with its text
    text = label[(label != blue).any(axis=1)]  # anti-aliased text pixels
    luminance = [relative_luminance(tuple(int(v) for v in pixel)) for pixel in text]
    assert len(text) > 20 and min(luminance) > relative_luminance(blue)  # every text pixel lighter than the box
    assert max(luminance) > 0.9  # near white at the strokes' centres (black text used to be darker than the box)
