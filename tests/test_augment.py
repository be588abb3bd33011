"""utils.data.augment through TrainDataset: augmented boxes still cover their (coloured) objects."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.synthetic import RECT_COLOURS, coloured_index
from utils.common.boxes import letterbox
from utils.data.augment import AugmentConfig, clip_boxes
from utils.data.loader import EvalDataset, TrainDataset


def _colour_mask(image: np.ndarray, label: int) -> np.ndarray:
    return np.abs(image.astype(np.int16) - RECT_COLOURS[label]).max(axis=2) < 40


def _check_sample(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, min_size: float) -> None:
    height, width = image.shape[:2]
    assert ((boxes[:, [0, 2]] >= 0) & (boxes[:, [0, 2]] <= width)).all()
    assert ((boxes[:, [1, 3]] >= 0) & (boxes[:, [1, 3]] <= height)).all()
    assert ((boxes[:, 2:] - boxes[:, :2]) >= min_size).all()
    for box, label in zip(boxes.round().astype(int), labels, strict=True):
        inner = image[box[1] + 1:box[3] - 1, box[0] + 1:box[2] - 1]  # 1 px margin for interpolated edges
        if inner.size:
            assert _colour_mask(inner, label).mean() > 0.9, (box, label)  # the box is filled by its object
    if min_size > 1:
        return  # slivers of objects may have been dropped by design (see test_clip_boxes_drops_...)
    for label in range(len(RECT_COLOURS)):  # ... and every object pixel lies in a box of its class
        mask = _colour_mask(image, label)
        covered = np.zeros_like(mask)
        for box in boxes[labels == label].round().astype(int):
            covered[max(box[1] - 1, 0):box[3] + 1, max(box[0] - 1, 0):box[2] + 1] = True
        stray = (mask & ~covered).sum()
        assert stray <= 0.02 * mask.sum() + 10, (label, stray, mask.sum())  # only interpolated edge pixels


@pytest.mark.parametrize("mosaic", [0.0, 1.0])
@pytest.mark.parametrize("drop_small", [False, True])
def test_augmented_boxes_cover_objects(tmp_path, mosaic, drop_small):
    """Every box is filled by its object; with the small-box rule off, every visible object pixel is in a box."""
    config = AugmentConfig(mosaic=mosaic, mixup=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0)
    if not drop_small:
        config.min_box_size, config.min_area_ratio = 1e-3, 0.0
    dataset = TrainDataset(coloured_index(tmp_path), (320, 416), config, epochs=10)
    dataset.reseed(1)
    total = 0
    for i in range(24):
        image, boxes, labels = dataset.sample(i % len(dataset))
        assert image.shape == (320, 416, 3) and image.dtype == np.uint8
        _check_sample(image, boxes, labels, config.min_box_size)
        total += len(boxes)
    assert total >= 24 * (2 if mosaic else 1) * 0.5  # boxes are kept, not filtered away wholesale


def test_mixup_keeps_both_box_sets(tmp_path):
    config = AugmentConfig(mosaic=1.0, mixup=1.0, mosaic_buffer=0)
    dataset = TrainDataset(coloured_index(tmp_path), (256, 256), config, epochs=10)
    image, targets = dataset[0]
    assert image.dtype.is_floating_point is False and image.shape == (3, 256, 256)
    assert targets.shape[1] == 5 and len(targets) >= 2
    assert set(targets[:, 0].long().tolist()) <= {0, 1, 2, 3}


def test_disabled_config_is_a_letterbox(tmp_path):
    index = coloured_index(tmp_path, count=2)
    dataset = TrainDataset(index, (256, 320), AugmentConfig.disabled(), epochs=1)
    image, boxes, _ = dataset.sample(0)
    original = cv2.imread(str(index.records[0].path))[..., ::-1]
    expected, info = letterbox(original, (256, 320))
    placed = index.records[0].boxes * info.scale + np.array([info.pad_x, info.pad_y] * 2)  # original -> canvas
    np.testing.assert_allclose(boxes, placed, atol=1.5)
    assert np.abs(image.astype(int) - expected).mean() < 3
    tensor, i, eval_info = EvalDataset(index, (256, 320))[0]
    assert i == 0 and eval_info == info and tensor.shape == (3, 256, 320)


def test_clip_boxes_drops_small_and_mostly_cut_boxes():
    config = AugmentConfig()
    boxes = np.array([[-95, 0, 5, 50],   # 5% of its area left -> dropped
                      [-50, 0, 50, 50],  # half left -> kept, clipped
                      [10, 10, 11.5, 40],  # 1.5 px wide -> dropped
                      [10, 10, 40, 40]], dtype=np.float32)
    kept, labels = clip_boxes(boxes, np.arange(4), (0, 0, 100, 100), config)
    assert labels.tolist() == [1, 3]
    np.testing.assert_array_equal(kept[0], [0, 0, 50, 50])
