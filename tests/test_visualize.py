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


def caption_height(drawn: np.ndarray, box: np.ndarray, background: int = 128) -> int:
    """Rows above `box` that the filled caption covers (the caption sits on the box's top edge)."""
    x1, y1 = int(box[0]), int(box[1])
    column = drawn[:y1, x1 + 1]
    return int((column != background).any(axis=1).sum())


def test_captions_and_lines_follow_the_objects_not_only_the_canvas():
    image = np.full((1800, 1800, 3), 128, np.uint8)
    small = np.array([[900, 900, 920, 920], [300, 300, 318, 322]])
    large = np.array([[900, 900, 1500, 1500]])
    drawn_small = draw_detections(image, small, np.array([0, 0]), ["shape"], scores=np.array([0.9, 0.8]))
    drawn_large = draw_detections(image, large, np.array([0]), ["shape"], scores=np.array([0.9]))
    # 20 px objects on a 1800 px canvas: a caption about as tall as the objects (the canvas alone would give 44 px),
    # a 2 px line, the box inside still visible
    assert caption_height(drawn_small, small[0]) <= 30
    assert (drawn_small[905:915, 905:915] == 128).all()
    # a large object keeps the caption and line grown with the canvas (6 px line, font scale 2 at 1800 px)
    assert caption_height(drawn_large, large[0]) >= 40
    assert ((drawn_large[1000, 890:910] != 128).any(axis=1)).sum() >= 6
    assert ((drawn_small[910, 895:905] != 128).any(axis=1)).sum() <= 3
