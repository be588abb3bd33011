"""utils.eval.metrics: VOC AP against hand-computed cases and a slow re-typing of the devkit; COCO vs pycocotools."""
from __future__ import annotations

import json
import signal

import numpy as np
import pytest
from pycocotools.cocoeval import COCOeval

from tests.paths import TINY_COCO, needs_shared
from tests.reference import devkit_voc_eval, standard_pycocotools, to_results
from tests.synthetic import random_dataset
from utils.common.boxes import GroundTruthBoxes
from utils.eval.metrics import coco_evaluate, voc_ap, voc_evaluate
from utils.eval.plots import plot_pr_curves

NAMES = ["a", "b", "c"]


def one_image(gt_boxes, gt_labels, dets, difficult=None):
    return [np.asarray(dets, float).reshape(-1, 6)], [GroundTruthBoxes(gt_boxes, gt_labels, difficult)]


GTS = [[0, 0, 49, 49], [100, 0, 149, 49], [200, 0, 249, 49], [300, 0, 349, 49]]


# ---- hand-computed cases ----

def test_voc_ap_known_curve():
    # npos 4; in score order TP FP TP FP TP -> recall .25 .25 .5 .5 .75, precision 1 .5 2/3 .5 .6
    rec = np.array([0.25, 0.25, 0.5, 0.5, 0.75])
    prec = np.array([1, 0.5, 2 / 3, 0.5, 0.6])
    assert voc_ap(rec, prec) == pytest.approx(0.25 * 1 + 0.25 * 2 / 3 + 0.25 * 0.6)  # 0.5667
    assert voc_ap(rec, prec, use_07=True) == pytest.approx((3 * 1 + 3 * 2 / 3 + 2 * 0.6) / 11)  # 0.5636
    assert voc_ap(np.array([]), np.array([])) == 0.0


def test_known_sequence_through_matching():
    dets = [GTS[0] + [0.9, 0], [500, 500, 540, 540, 0.8, 0], GTS[1] + [0.7, 0],
            [1, 1, 50, 50, 0.6, 0],  # second hit on gt 0 -> FP
            GTS[2] + [0.5, 0]]
    result = voc_evaluate(*one_image(GTS, [0, 0, 0, 0], dets), ["a"])
    np.testing.assert_allclose(result.classes[0].recall, [0.25, 0.25, 0.5, 0.5, 0.75])
    np.testing.assert_allclose(result.classes[0].precision, [1, 0.5, 2 / 3, 0.5, 0.6])
    assert result.map == pytest.approx(0.566667, abs=1e-6)
    assert voc_evaluate(*one_image(GTS, [0, 0, 0, 0], dets), ["a"], use_07=True).map == pytest.approx(6.2 / 11)


def test_perfect_detections_give_one():
    dets = [g + [0.9 - 0.1 * i, i % 2] for i, g in enumerate(GTS)]
    for use_07 in (False, True):
        result = voc_evaluate(*one_image(GTS, [0, 1, 0, 1], dets), ["a", "b"], use_07=use_07)
        assert result.map == 1.0
        assert result.ap_per_class() == {"a": 1.0, "b": 1.0}


def test_iou_threshold_is_strict():
    # with the devkit's +1: gt 10x10 px, det 20x10 px over it -> IoU exactly 0.5 -> not a match
    exact = voc_evaluate(*one_image([[0, 0, 9, 9]], [0], [[0, 0, 19, 9, 0.9, 0]]), ["a"])
    assert exact.map == 0.0
    above = voc_evaluate(*one_image([[0, 0, 9, 9]], [0], [[0, 0, 18, 9, 0.9, 0]]), ["a"])
    assert above.map == 1.0


def test_difficult_objects_are_neither_tp_nor_fp():
    gts, labels, difficult = GTS[:2], [0, 0], [True, False]
    # the difficult object is found with the highest score: it must not lower precision nor count as a positive
    result = voc_evaluate(*one_image(gts, labels, [GTS[0] + [0.9, 0], GTS[1] + [0.8, 0]], difficult), ["a"])
    assert result.classes[0].num_gt == 1 and result.map == 1.0
    np.testing.assert_allclose(result.classes[0].precision, [0.0, 1.0])  # the ignored detection adds no TP/FP
    only_difficult = voc_evaluate(*one_image(gts, labels, [GTS[0] + [0.9, 0]], difficult), ["a"])
    assert only_difficult.map == 0.0 and only_difficult.prf(0.5)["a"]["precision"] == 0.0


def test_no_detections():
    result = voc_evaluate(*one_image(GTS, [0, 1, 0, 1], np.zeros((0, 6))), ["a", "b"])
    assert result.map == 0.0 and result.ap_per_class() == {"a": 0.0, "b": 0.0}
    coco = coco_evaluate([np.zeros((0, 6))], [GroundTruthBoxes(GTS, [0, 1, 0, 1])], ["a", "b"])
    # 49 x 49 px objects are all medium (32^2 < area < 96^2): APs and APl have no ground truth -> None, not -1
    assert coco == {"mAP50_95": 0.0, "AP50": 0.0, "AP75": 0.0, "APs": None, "APm": 0.0, "APl": None}
    empty = voc_evaluate([], [], ["a"])
    assert np.isnan(empty.map) and empty.ap_per_class() == {"a": None}  # no ground truth: undefined, not 0


def test_class_without_ground_truth_is_left_out_of_the_mean():
    # class b: detections but no ground truth -> AP undefined (None), not averaged in; class c: gt, no detections -> 0
    dets = [GTS[0] + [0.9, 0], [300, 300, 350, 350, 0.95, 1]]
    result = voc_evaluate(*one_image(GTS[:2], [0, 2], dets), NAMES)
    assert result.ap_per_class() == {"a": 1.0, "b": None, "c": 0.0}
    assert result.map == pytest.approx(0.5)
    assert set(result.prf()) == {"a", "c"}


def test_precision_recall_f1_at_threshold():
    dets = [GTS[0] + [0.9, 0], [500, 500, 540, 540, 0.8, 0], GTS[1] + [0.4, 0]]
    result = voc_evaluate(*one_image(GTS, [0, 0, 0, 0], dets), ["a"])
    p, r, f1 = result.classes[0].at_threshold(0.5)
    assert (p, r) == (0.5, 0.25) and f1 == pytest.approx(2 * 0.5 * 0.25 / 0.75)
    assert result.classes[0].at_threshold(0.1)[:2] == (pytest.approx(2 / 3), 0.5)
    assert result.classes[0].at_threshold(0.8)[:2] == (0.5, 0.25)  # score == threshold is kept
    assert result.classes[0].at_threshold(0.95) == (0.0, 0.0, 0.0)


def test_bad_class_ids_are_refused():
    with pytest.raises(ValueError, match="class ids"):
        voc_evaluate(*one_image(GTS[:1], [0], [GTS[0] + [0.9, 3]]), ["a"])


# ---- equality with the devkit reference ----

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("use_07", [False, True])
def test_equals_devkit_reference(seed, use_07):
    detections, truths = random_dataset(seed)
    result = voc_evaluate(detections, truths, NAMES, use_07=use_07)
    for c, class_ap in enumerate(result.classes):
        expected = devkit_voc_eval(detections, truths, c, use_07_metric=use_07)
        if np.isnan(expected):
            assert np.isnan(class_ap.ap)
        else:
            assert class_ap.ap == pytest.approx(expected, abs=1e-12), class_ap.name
    assert 0.1 < result.map < 0.95  # the random data is neither trivial nor hopeless


def test_iou_threshold_parameter_matches_reference():
    detections, truths = random_dataset(5)
    result = voc_evaluate(detections, truths, NAMES, iou_thresh=0.7)
    for c, class_ap in enumerate(result.classes):
        assert class_ap.ap == pytest.approx(devkit_voc_eval(detections, truths, c, ovthresh=0.7), abs=1e-12)


# ---- COCO: pycocotools run the standard way on files ----

def test_coco_equals_pycocotools_files_synthetic(tmp_path):
    detections, truths = random_dataset(3, images=30)
    ours = coco_evaluate(detections, truths, NAMES)
    gt_json = {"images": [{"id": 10 + i} for i in range(len(truths))],
               "categories": [{"id": 7 * (c + 1), "name": n} for c, n in enumerate(NAMES)],
               "annotations": [{"id": 1000 + k, "image_id": 10 + i, "category_id": 7 * (int(lab) + 1),
                                "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": (b[2] - b[0]) * (b[3] - b[1]),
                                "iscrowd": int(d)}
                               for i, t in enumerate(truths)
                               for k, (b, lab, d) in enumerate(zip(t.boxes.tolist(), t.labels, t.difficult,
                                                                   strict=True),
                                                               start=100 * i)]}
    expected = standard_pycocotools(gt_json, to_results(detections, [10 + i for i in range(30)], [7, 14, 21]),
                                    tmp_path)
    np.testing.assert_allclose(list(ours.values()), expected, rtol=0, atol=1e-12)
    assert ours["AP50"] > 0.1


@needs_shared
def test_coco_equals_pycocotools_on_tiny_coco(tmp_path):
    path = TINY_COCO / "annotations" / "instances_val2017.json"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    data = json.loads(path.read_text())
    cat_ids = sorted(c["id"] for c in data["categories"])
    cat_index = {cid: i for i, cid in enumerate(cat_ids)}
    image_ids = [im["id"] for im in data["images"]]
    rng = np.random.default_rng(0)
    truths, detections = [], []
    for image_id in image_ids:
        anns = [a for a in data["annotations"] if a["image_id"] == image_id]
        xywh = np.array([a["bbox"] for a in anns], float).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        labels = np.array([cat_index[a["category_id"]] for a in anns], int)
        truths.append(GroundTruthBoxes(boxes, labels, [a["iscrowd"] for a in anns]))
        jitter = boxes + rng.normal(0, 1, boxes.shape) * (boxes[:, 2:] - boxes[:, :2]).repeat(2, 1).reshape(-1, 4) * 0.1
        dets = np.column_stack([jitter, rng.random(len(boxes)), labels])[rng.random(len(boxes)) < 0.8]
        fp = np.column_stack([rng.uniform(0, 300, (3, 2)), rng.uniform(300, 600, (3, 2)), rng.random(3),
                              rng.integers(0, 80, 3)])
        detections.append(np.concatenate([dets, fp]))
    sizes = [(im["height"], im["width"]) for im in data["images"]]
    ours = coco_evaluate(detections, truths, [str(c) for c in cat_ids], sizes)
    results = to_results(detections, image_ids, cat_ids)
    # 1. the official file untouched: identical mAP, AP50, AP75 (the area ranges only affect APs/m/l)
    official = standard_pycocotools(data, results, tmp_path)
    np.testing.assert_allclose([ours["mAP50_95"], ours["AP50"], ours["AP75"]], official[:3], rtol=0, atol=1e-12)
    # 2. with area = box w*h (what we know without masks): all six numbers identical
    for ann in data["annotations"]:
        ann["area"] = ann["bbox"][2] * ann["bbox"][3]
    np.testing.assert_allclose(list(ours.values()), standard_pycocotools(data, results, tmp_path), rtol=0, atol=1e-12)
    assert 0.2 < ours["mAP50_95"] < 0.95


def test_ctrl_c_inside_pycocotools_accumulate_is_not_swallowed(monkeypatch):
    """COCOeval.accumulate catches everything in a loop (a bare except): a Ctrl-C arriving there used to vanish, and a
    training run went on to its last epoch. It now stops the program once accumulate returns."""
    real, reached = COCOeval.accumulate, []

    def accumulate(self, *args, **kwargs):
        try:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C while pycocotools' own loop runs
        except BaseException:  # as pycocotools' bare except around its loop: KeyboardInterrupt included
            pass
        reached.append(True)
        return real(self, *args, **kwargs)
    monkeypatch.setattr(COCOeval, "accumulate", accumulate)
    detections, truths = random_dataset(4, images=5)
    with pytest.raises(KeyboardInterrupt):
        coco_evaluate(detections, truths, NAMES)
    assert reached == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is given back


def test_pycocotools_prints_are_silenced(capsys):
    detections, truths = random_dataset(4, images=5)
    coco_evaluate(detections, truths, NAMES)
    assert capsys.readouterr().out == ""


def test_plot_pr_curves(tmp_path):
    detections, truths = random_dataset(0, images=20)
    paths = plot_pr_curves(voc_evaluate(detections, truths, NAMES), tmp_path / "pr")
    assert {p.name for p in paths} == {"pr_a.png", "pr_b.png", "pr_c.png", "pr_curves.png"}
    assert all(p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG" for p in paths)
