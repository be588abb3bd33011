"""Sliced inference (--slice): SAHI's tile placement and greedy merging against straightforward references, batched
and bounded canvases, small objects found only when sliced, and eval.py / predict.py --slice end to end."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision

import eval as eval_script
import predict
from tests.synthetic import ColourOracle, voc_xml
from utils.common.errors import ConfigError
from utils.model.config import ModelConfig
from utils.runtime.detector import DetectOptions, Detector
from utils.runtime.loader import Loaded
from utils.runtime.slicing import SlicedDetector, SliceOptions, greedy_nmm, merge_detections, tile_windows

RGB = [(230, 20, 20), (20, 230, 20), (20, 20, 230)]
CLASSES = ["red", "green", "blue"]


def sahi_windows_reference(height: int, width: int, size: int, overlap: float) -> list[list[int]]:
    """SAHI's get_slice_bboxes (sahi/slicing.py) as written there: walk rows and columns, clamp the last ones."""
    boxes, y_max, y_min = [], 0, 0
    step_overlap = int(overlap * size)
    while y_max < height:
        x_min = x_max = 0
        y_max = y_min + size
        while x_max < width:
            x_max = x_min + size
            if y_max > height or x_max > width:
                x_max, y_max = min(width, x_max), min(height, y_max)
                x_min, y_min = max(0, x_max - size), max(0, y_max - size)
            boxes.append([x_min, y_min, x_max, y_max])
            x_min = x_max - step_overlap
        y_min = y_max - step_overlap
    return boxes


@pytest.mark.parametrize("height, width, size, overlap", [
    (1000, 1500, 320, 0.2), (320, 320, 320, 0.2), (640, 960, 320, 0.0), (700, 333, 320, 0.5), (100, 90, 320, 0.2),
    (2049, 1023, 416, 0.25)])
def test_tiles_are_sahis_and_cover_the_image(height, width, size, overlap):
    windows = tile_windows(height, width, size, overlap)
    if height >= size and width >= size:  # SAHI assumes tiles fit; below that our tile is the whole side
        assert windows.tolist() == sahi_windows_reference(height, width, size, overlap)
    covered = np.zeros((height, width), bool)
    for x1, y1, x2, y2 in windows:
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert (x2 - x1, y2 - y1) == (min(size, width), min(size, height))
        covered[y1:y2, x1:x2] = True
    assert covered.all()


def greedy_nmm_reference(dets: np.ndarray, threshold: float = 0.5, union: bool = True) -> list[list[float]]:
    """SAHI's GreedyNMMPostprocess spelled out with Python lists: score order, per class, IOS, re-check on merge;
    union=False: its NMSPostprocess with the IOS metric (the taken boxes are dropped)."""
    def ios(a, b):
        inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
        return inter / smaller if smaller > 0 else 0.0
    rows = sorted(dets.tolist(), key=lambda r: -r[4])
    taken, out = [False] * len(rows), []
    for i, row in enumerate(rows):
        if taken[i]:
            continue
        group = [j for j in range(i + 1, len(rows)) if not taken[j] and rows[j][5] == row[5]
                 and ios(row, rows[j]) >= threshold]
        box = row[:4]
        for j in group:
            taken[j] = True
            if union and ios(box, rows[j]) >= threshold:
                box = [min(box[0], rows[j][0]), min(box[1], rows[j][1]), max(box[2], rows[j][2]),
                       max(box[3], rows[j][3])]
        out.append([*box, row[4], row[5]])
    return out


def random_detections(seed: int, count: int = 300) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 300, (count, 2))
    wh = rng.uniform(5, 60, (count, 2))
    return np.column_stack([xy, xy + wh, rng.permutation(count) / count + 0.001, rng.integers(0, 3, count)]
                           ).astype(np.float32)


@pytest.mark.parametrize("seed", range(4))
def test_greedy_nmm_equals_sahis_rule(seed):
    dets = random_detections(seed)
    assert greedy_nmm(dets) == pytest.approx(np.array(greedy_nmm_reference(dets), np.float32), abs=1e-4)
    suppressed = greedy_nmm(dets, union=False)
    assert suppressed == pytest.approx(np.array(greedy_nmm_reference(dets, union=False), np.float32), abs=1e-4)
    assert set(map(tuple, suppressed.tolist())) <= set(map(tuple, dets.tolist()))  # boxes kept as drawn


def test_merge_joins_a_box_cut_by_a_tile_border_and_nms_keeps_the_best():
    """The object lies whole in one tile (0.8) and cut by the border of its neighbour (0.9, a part of it): merging
    gives the whole box with the best score; NMS keeps the best box as it is (here the cut one)."""
    cut, whole = [100, 100, 121, 130, 0.9, 1], [100, 100, 140, 130, 0.8, 1]
    other_class, elsewhere = [100, 100, 140, 130, 0.7, 2], [300, 300, 320, 320, 0.6, 1]
    dets = np.array([whole, cut, other_class, elsewhere], np.float32)
    merged = merge_detections(dets, "nmm", 300)
    np.testing.assert_allclose(merged, [[100, 100, 140, 130, 0.9, 1], other_class, elsewhere], atol=1e-6)
    nms = merge_detections(dets, "nms", 300)
    np.testing.assert_allclose(nms, dets[[1, 2, 3]])
    assert nms[:, 2].tolist() == [121, 140, 320]
    assert len(merge_detections(random_detections(0), "nmm", 7)) == 7


def test_default_merge_keeps_a_confident_box_among_low_scored_ones_around_it():
    """Evaluation runs at --conf 0.001, so every object comes with low-scored boxes around it that the detector's own
    NMS left (IoU < --iou): the default merge drops them and keeps the object's box as drawn; NMM makes it their
    union."""
    found = [100, 100, 120, 120, 0.9, 0]
    around = [[90, 95, 140, 130, 0.01, 0], [100, 100, 160, 118, 0.003, 0], [70, 100, 121, 121, 0.002, 0]]
    dets = np.array([found, *around], np.float32)
    merged = merge_detections(dets, SliceOptions().merge, 300)
    np.testing.assert_allclose(merged[0], found)
    assert merge_detections(dets, "nmm", 300)[0, :4].tolist() == [70, 95, 160, 130]


def oracle_detector(size: int = 128) -> Detector:
    config = ModelConfig(classes=CLASSES, input_shape=[size, size])
    return Detector(ColourOracle(config, RGB, distinct_scores=True).eval(), config, "cpu",
                    DetectOptions(0.5, 0.5, 300), optimize=False, precision="fp32")


def small_objects_image(height: int = 700, width: int = 900) -> tuple[np.ndarray, np.ndarray]:
    """One small square per class, far apart, the green one across the border between the first two tiles."""
    image = np.full((height, width, 3), 40, np.uint8)
    boxes = np.array([[50, 60, 62, 72, 0], [96, 300, 110, 312, 1], [700, 500, 713, 513, 2]], np.float32)
    for x1, y1, x2, y2, label in boxes.astype(int):
        image[y1:y2, x1:x2] = RGB[label]
    return image, boxes


def test_small_objects_are_found_when_sliced_only():
    """At 128 px the whole image shrinks the 12 px squares to under 2 px: found at best +-7 px off (IoU < 0.5 for
    most); the 128 px tiles show them at full size (merging unites a tile's box with the whole image's coarser
    one, so a box can grow by that error: IoU >= 0.8)."""
    image, truth = small_objects_image()
    detector = oracle_detector()
    plain = detector([image])[0]
    iou = torchvision.ops.box_iou(torch.tensor(plain[:, :4]), torch.tensor(truth[:, :4])).numpy()
    assert (iou.max(axis=0, initial=0) >= 0.5).sum() < len(truth)
    sliced = SlicedDetector(detector, SliceOptions(size=128, overlap=0.2, merge="nmm", batch=4))
    found = sliced([image])[0]
    assert len(found) == len(truth)
    found = found[np.argsort(found[:, 5])]
    assert found[:, 5].tolist() == truth[:, 4].tolist()
    iou = torchvision.ops.box_iou(torch.tensor(found[:, :4]), torch.tensor(truth[:, :4])).numpy()
    assert iou.diagonal().min() >= 0.8


def test_canvases_go_in_bounded_batches_and_each_tile_once():
    image, _ = small_objects_image()
    detector = oracle_detector()
    sizes = []
    original = detector.detect_prepared
    detector.detect_prepared = lambda prepared: (sizes.append(len(prepared)), original(prepared))[1]
    sliced = SlicedDetector(detector, SliceOptions(size=128, overlap=0.2, batch=5))
    sliced([image])
    tiles = len(tile_windows(700, 900, 128, 0.2))
    assert max(sizes) == 5 and sum(sizes) == tiles + 1  # every tile and the whole image, never more than 5 at once
    assert sliced.times.images == 1 and detector.times.images == tiles + 1


@pytest.mark.parametrize("options, message", [
    (SliceOptions(size=16), "--slice: 16"), (SliceOptions(overlap=1.0), "--slice-overlap"),
    (SliceOptions(merge="wbf"), "--slice-merge"), (SliceOptions(batch=0), "--batch-size")])
def test_bad_slice_options_name_their_flag(options, message):
    with pytest.raises(ConfigError, match=message):
        options.check()


def oracle_weights(monkeypatch, module, size: int = 128) -> None:
    config = ModelConfig(classes=CLASSES, input_shape=[size, size])
    loaded = Loaded(Path("oracle.pth"), config, torch.device("cpu"),
                    model=ColourOracle(config, RGB, distinct_scores=True).eval())
    monkeypatch.setattr(module, "load_runnable", lambda *args, **kwargs: loaded)


def small_objects_voc(root: Path, images: int = 3) -> Path:
    year = root / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year / sub).mkdir(parents=True)
    for i in range(images):
        image, boxes = small_objects_image(700 + 20 * i, 900)
        cv2.imwrite(str(year / "JPEGImages" / f"{i}.png"), image[..., ::-1])
        objects = [(CLASSES[int(b[4])], (int(b[0]) + 1, int(b[1]) + 1, int(b[2]), int(b[3]))) for b in boxes]
        (year / "Annotations" / f"{i}.xml").write_text(voc_xml(f"{i}", 900, 700 + 20 * i, objects).replace(
            f"{i}.jpg", f"{i}.png"))
    (year / "ImageSets" / "Main" / "test.txt").write_text("".join(f"{i}\n" for i in range(images)))
    return root


def test_eval_slice_measures_the_gain(monkeypatch, tmp_path, capsys):
    from utils.runtime import loader
    oracle_weights(monkeypatch, loader)  # eval.py imports load_runnable from here when its work starts
    data = small_objects_voc(tmp_path / "data", images=2)
    common = ["--data", str(data), "--save-dir", str(tmp_path), "--workers", "0", "--device", "cpu"]
    assert eval_script.main([*common, "--name", "plain"]) == 0
    assert eval_script.main([*common, "--name", "sliced", "--slice", "128", "--slice-overlap", "0.2"]) == 0
    plain = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    sliced = json.loads((tmp_path / "sliced" / "metrics.json").read_text())
    assert sliced["mAP50"] == pytest.approx(1.0) and plain["mAP50"] < 0.7
    assert sliced["slice"] == {"size": 128, "overlap": 0.2, "full_image": True, "merge": "nms", "batch": 8}
    assert "slice" not in plain


def test_predict_slice_writes_the_sliced_detections(monkeypatch, tmp_path, capsys):
    from utils.deploy import cli
    oracle_weights(monkeypatch, cli)
    image, truth = small_objects_image()
    cv2.imwrite(str(tmp_path / "big.png"), image[..., ::-1])
    assert predict.main(["--source", str(tmp_path / "big.png"), "--slice", "128", "--batch-size", "4", "--save-txt",
                         "--save-dir", str(tmp_path), "--name", "run", "--device", "cpu"]) == 0
    rows = np.loadtxt(tmp_path / "run" / "labels" / "big.txt", ndmin=2)
    assert sorted(rows[:, 0].astype(int).tolist()) == [0, 1, 2]
    assert "3 image(s)" not in capsys.readouterr().out and (tmp_path / "run" / "big.png").is_file()
    assert predict.main(["--source", str(tmp_path / "big.png"), "--slice", "128", "--heatmap",
                         "--save-dir", str(tmp_path)]) == 1
    assert "--slice runs many" in capsys.readouterr().err


def test_bench_slice_runs(monkeypatch, tmp_path, capsys):
    """Smoke run of benchmarks/bench_slice.py (its figures are not checked here)."""
    from benchmarks import bench_slice
    oracle_weights(monkeypatch, bench_slice)
    data = small_objects_voc(tmp_path / "data", images=1)
    assert bench_slice.main(["--weights", "oracle.pth", "--data", str(data), "--split", "test", "--slice", "128",
                             "--rounds", "1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    cost = lines[-1]
    assert cost["bench"] == "slice_cost" and cost["canvases_per_image"] == len(tile_windows(700, 900, 128, 0.2)) + 1
    assert 0 < cost["sliced_vs_whole"]
