"""k-means anchors: recovery of known clusters, hand-computed fitness, the low-recall warning, the CLI."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest

from tests.paths import ROOT
from utils.anchors import main
from utils.data.anchors import (
    MAX_RATIO,
    anchor_fitness,
    boxes_wh,
    check_anchors,
    format_anchors,
    kmeans_anchors,
    wh_iou,
)
from utils.model.config import ModelConfig, read_anchors

CENTRES = np.array([[12, 16], [40, 28], [24, 70], [90, 100], [170, 130], [330, 300]], dtype=np.float64)


def clustered_boxes(seed: int = 0, per_cluster: int = 150, spread: float = 0.08) -> np.ndarray:
    """Box sizes scattered around CENTRES by a multiplicative (log-normal) factor, as real box sizes scatter."""
    rng = np.random.default_rng(seed)
    wh = np.repeat(CENTRES, per_cluster, axis=0)
    return wh * np.exp(rng.normal(0, spread, wh.shape))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_recovers_known_clusters(seed):
    anchors = kmeans_anchors(clustered_boxes(seed), n=6, seed=seed)
    assert anchors.shape == (6, 2)
    assert np.all(np.diff(anchors.prod(axis=1)) > 0), "sorted by area"
    np.testing.assert_allclose(anchors, CENTRES, rtol=0.05)


def test_kmeans_is_deterministic_and_validates_input():
    wh = clustered_boxes(3)
    np.testing.assert_array_equal(kmeans_anchors(wh, seed=7), kmeans_anchors(wh, seed=7))
    with pytest.raises(ValueError, match="cannot make 6 anchors"):
        kmeans_anchors(wh[:5])
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        kmeans_anchors(np.ones((10, 3)))
    with pytest.raises(ValueError, match="positive"):
        kmeans_anchors(np.vstack([wh, [[0, 5]]]))


def test_wh_iou_is_corner_aligned():
    # 40x10 vs 20x20: overlap 20x10 = 200, union 400 + 400 - 200 = 600
    np.testing.assert_allclose(wh_iou(np.array([[40, 10]]), np.array([[10, 10], [20, 20]])), [[0.25, 1 / 3]])


def test_fitness_by_hand():
    wh = np.array([[10, 10], [20, 20], [40, 10], [100, 10]], dtype=float)
    anchors = np.array([[10, 10], [20, 20]], dtype=float)
    # best IoUs: 1, 1, max(100/400, 200/600) = 1/3, max(100/1000, 200/1200) = 1/6
    # recallable (some anchor within 4x on both sides): 40x10 vs 20x20 (2x, 2x) yes; 100x10: 10x and 5x, no
    mean_iou, bpr = anchor_fitness(wh, anchors)
    assert mean_iou == pytest.approx((1 + 1 + 1 / 3 + 1 / 6) / 4)
    assert bpr == pytest.approx(3 / 4)
    assert MAX_RATIO == 4


def test_check_anchors_warns_when_recall_is_low(caplog):
    wh = clustered_boxes(4)
    with caplog.at_level(logging.INFO, logger="utils.data.anchors"):
        assert check_anchors(wh, CENTRES) == 1.0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="utils.data.anchors"):
        bpr = check_anchors(wh, np.array([[300, 300]]))  # one big anchor: small boxes are out of reach
    assert bpr < 0.98
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "python -m utils.anchors" in warning[0] and f"{bpr:.4f}" in warning[0]


def test_used_anchors_follow_the_masks():
    config = ModelConfig(classes=["a"])  # stock masks [[3, 4, 5], [1, 2, 3]]: anchor 0 unused
    np.testing.assert_array_equal(config.used_anchors(), np.array(config.anchors[1:]))


def test_boxes_scaled_like_the_letterbox(tmp_path):
    wide = SimpleNamespace(path=tmp_path / "a.jpg", width=832, height=416,
                           boxes=np.array([[0, 0, 100, 50], [10, 10, 11, 11]], dtype=np.float32))
    tall = SimpleNamespace(path=tmp_path / "b.jpg", width=200, height=800, boxes=np.array([[5, 5, 45, 85]]))
    empty = SimpleNamespace(path=tmp_path / "c.jpg", width=10, height=10, boxes=np.zeros((0, 4)))
    # 832x416 onto 416x416: scale 0.5; the 1x1 box becomes 0.5 px and is dropped. 200x800: scale 0.52
    np.testing.assert_allclose(boxes_wh([wide, tall, empty], (416, 416)), [[50, 25], [40 * 0.52, 80 * 0.52]])


def test_anchor_file_format(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text(format_anchors(np.array([[10.4, 13.6], [23, 27]])))
    assert path.read_text() == "10,14, 23,27"
    assert read_anchors(path) == [[10, 14], [23, 27]]


def test_cli_on_the_bundled_voc_sample(tmp_path, capsys):
    data = ROOT / "VOCdevkit"
    if not (data / "VOC2007" / "Annotations").is_dir():
        pytest.skip(f"{data} (the bundled VOC sample) is absent")
    out = tmp_path / "my_anchors.txt"
    assert main(["--data", str(data), "-n", "6", "--input-shape", "320", "--out", str(out)]) == 0
    anchors = np.asarray(read_anchors(out))
    assert anchors.shape == (6, 2)
    assert (anchors <= 320 * 1.01).all()
    printed = capsys.readouterr().out
    assert printed.count("best-possible recall") == 2 and "k-means" in printed and "default" in printed
