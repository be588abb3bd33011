"""Diagnostics: the confusion matrix and the F1-optimal threshold on hand-built cases with known answers, names that
must not become paths, COCO figures against a json as written (its own areas, undefined figures None), the
validation loss, and the pictures eval.py writes."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from tests.reference import standard_pycocotools, to_results
from tests.synthetic import make_voc, random_dataset, write_weights
from utils.common.boxes import GroundTruthBoxes, letterbox, letterbox_boxes
from utils.common.filenames import safe_stem, unique_stems
from utils.common.image_io import read_image
from utils.data.index import load_split
from utils.data.loader import EvalDataset, build_loader, eval_collate
from utils.eval.evaluation import compute_metrics, evaluate
from utils.eval.metrics import best_f1_threshold, confusion_matrix, match_detections, normalize_rows, voc_evaluate
from utils.eval.plots import plot_pr_curves
from utils.model.config import ModelConfig, build_model
from utils.train.loss import YoloLoss

A, B, C = [0, 0, 49, 49], [100, 0, 149, 49], [200, 0, 249, 49]


# ---- confusion matrix ----

def test_confusion_matrix_hand_built_case():
    """A found, a swapped class, a background false positive, a missed object; a found difficult object, a
    below-threshold detection and a duplicate detection on the side."""
    truths = [GroundTruthBoxes([A, B, C, [300, 0, 349, 49]], [0, 1, 2, 0], [False, False, False, True]),
              GroundTruthBoxes([A], [1])]
    detections = [np.array([A + [0.9, 0],                  # a found as a
                            B + [0.8, 2],                  # the b object called c: a swapped class
                            [400, 400, 440, 440, 0.7, 0],  # an a where there is nothing: background
                            [300, 0, 349, 49, 0.95, 0],    # the difficult a: neither right nor wrong
                            A + [0.3, 1]]),                # below --score-thresh: not counted
                  np.array([[1, 1, 50, 50, 0.6, 1],        # b found as b
                            [2, 2, 50, 50, 0.55, 1]])]     # the same b again: a false positive, background row
    matrix = confusion_matrix(detections, truths, 3, score_thresh=0.5)
    expected = [[1, 0, 0, 0],   # true a: found
                [0, 1, 1, 0],   # true b: found once, called c once
                [0, 0, 0, 1],   # true c: missed (background column)
                [1, 1, 0, 0]]   # background: an a and a b where no object is
    np.testing.assert_array_equal(matrix, expected)
    np.testing.assert_allclose(normalize_rows(matrix), [[1, 0, 0, 0], [0, .5, .5, 0], [0, 0, 0, 1], [.5, .5, 0, 0]])
    # at 0.25 the b detection on the a object counts too: that object is already found, so it is a false positive
    np.testing.assert_array_equal(confusion_matrix(detections, truths, 3, score_thresh=0.25)[3], [1, 2, 0, 0])


@pytest.mark.parametrize("seed", [0, 1])
def test_confusion_matrix_agrees_with_the_voc_counts(seed):
    """Row c sums to class c's positives, the diagonal is its TP count and column c sums to its TP + FP, all at the
    score threshold, so the matrix and the P/R figures never disagree."""
    detections, truths = random_dataset(seed)
    thresh = 0.4
    matrix = confusion_matrix(detections, truths, 3, score_thresh=thresh)
    kept = [d[d[:, 4] >= thresh] for d in detections]
    m = match_detections(kept, truths, 3)
    classes = m.dets[:, 5].astype(int)
    npos = np.bincount(m.gt_labels[~m.gt_difficult], minlength=3)
    np.testing.assert_array_equal(matrix[:3].sum(axis=1), npos)
    np.testing.assert_array_equal(np.diag(matrix)[:3], np.bincount(classes[m.tp], minlength=3))
    np.testing.assert_array_equal(matrix[:, :3].sum(axis=0), np.bincount(classes[~m.ignored], minlength=3))
    result = voc_evaluate(detections, truths, ["a", "b", "c"])
    for c, class_ap in enumerate(result.classes):
        assert class_ap.at_threshold(thresh)[1] == pytest.approx(matrix[c, c] / npos[c])
    assert matrix[3, 3] == 0 and matrix[:3, :3].sum() > np.trace(matrix[:3, :3]) > 0  # some swaps happen here


# ---- the F1-optimal threshold ----

def one_class_result(flags: list[int], scores: list[float], npos: int):
    """A one-class VOCResult whose score-sorted detections are TP (1) or FP (0) as `flags` say."""
    gts = [[100 * k, 0, 100 * k + 49, 49] for k in range(npos)]
    dets, used = [], 0
    for flag, score in zip(flags, scores, strict=True):
        box = gts[used] if flag else [1000, 1000, 1040, 1040]
        used += flag
        dets.append(box + [score, 0])
    return voc_evaluate([np.array(dets)], [GroundTruthBoxes(gts, [0] * npos)], ["x"])


def test_best_f1_threshold_hand_built():
    # npos 4, in score order TP FP TP TP FP FP TP: F1 .4 .333 .571 .75 .667 .6 .727 -> best .75 at score 0.6
    result = one_class_result([1, 0, 1, 1, 0, 0, 1], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], 4)
    best = best_f1_threshold(result)
    assert best["threshold"] == pytest.approx(0.6) and best["conf"] == 0.6
    assert best["f1"] == pytest.approx(0.75) and best["precision"] == pytest.approx(0.75)
    assert best["recall"] == pytest.approx(0.75)
    # the suggested --conf is the roundest value that keeps exactly the best set: 0.52 keeps 0.5271, drops 0.5134
    best = best_f1_threshold(one_class_result([1, 0], [0.5271, 0.5134], 1))
    assert best["conf"] == 0.52 and best["f1"] == 1.0


def test_best_f1_threshold_maximises_the_mean_over_classes():
    # class x: TP 0.9, FP 0.6 (1 object); class y: TP 0.8, TP 0.4 (2 objects). Mean F1: 0.5 at 0.9, 0.833 at 0.8,
    # 0.667 at 0.6, 0.833 at 0.4: the tie goes to the higher threshold (fewer detections, same F1).
    gts = GroundTruthBoxes([A, B, C], [0, 1, 1])
    dets = np.array([A + [0.9, 0], [500, 500, 540, 540, 0.6, 0], B + [0.8, 1], C + [0.4, 1]])
    best = best_f1_threshold(voc_evaluate([dets], [gts], ["x", "y"]))
    assert best["threshold"] == pytest.approx(0.8) and best["conf"] == 0.8 and best["f1"] == pytest.approx(5 / 6)
    assert best_f1_threshold(voc_evaluate([np.zeros((0, 6))], [gts], ["x", "y"])) is None


# ---- names that become file names ----

def test_unique_stems_are_safe_and_distinct():
    names = ["../../x", "x", "猫", "犬", "Cat", "cat", "con", "", "a/b\\c:d", "é", "e\u0301", "a" * 300, "x_1"]
    stems = unique_stems(names)
    assert len({s.casefold() for s in stems}) == len(names)
    for stem in stems:
        assert stem and "/" not in stem and "\\" not in stem and ".." not in stem and ":" not in stem
        assert len(stem) <= 70 and stem.casefold() not in ("con", "nul", "aux")
    assert stems[:4] == ["x", "x_1", "猫", "犬"] and safe_stem("../../x") == "x"


def test_pr_curves_of_hostile_class_names_stay_inside_and_apart(tmp_path):
    names = ["../../evil", "猫", "犬", "evil"]
    detections, truths = random_dataset(1, images=30, num_classes=4)
    out = tmp_path / "deep" / "out"
    paths = plot_pr_curves(voc_evaluate(detections, truths, names), out)
    assert len(paths) == len(set(paths)) == 5 and all(p.parent == out for p in paths)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)
    assert not list(tmp_path.glob("*.png")) and not (tmp_path / "evil.png").exists()


# ---- COCO: the json as written ----

def write_coco(root) -> tuple:
    """A COCO json with sparse category ids, areas that are not w*h (as mask areas are), a crowd region and one image
    whose file is missing; returns (json path, the json)."""
    (root / "val2017").mkdir(parents=True)
    images = [{"id": 11 + i, "file_name": f"{i}.jpg", "height": 120, "width": 160} for i in range(4)]
    for image in images[:3]:  # the 4th image file is missing: its objects still count
        cv2.imwrite(str(root / "val2017" / image["file_name"]), np.full((120, 160, 3), 90, np.uint8))
    boxes = [(11, 3, [10, 10, 40, 40], 500.0, 0), (11, 7, [60, 20, 90, 80], 5000.0, 0),
             (12, 3, [5, 5, 20, 20], 300.0, 0), (12, 7, [30, 30, 100, 80], 7000.0, 1),
             (13, 3, [50, 40, 100, 70], 2500.0, 0), (14, 7, [0, 0, 120, 100], 9000.0, 0)]
    annotations = [{"id": 100 + k, "image_id": i, "category_id": c, "bbox": b, "area": a, "iscrowd": crowd}
                   for k, (i, c, b, a, crowd) in enumerate(boxes)]
    content = {"images": images, "annotations": annotations,
               "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]}
    path = root / "annotations" / "instances_val2017.json"
    path.parent.mkdir()
    path.write_text(json.dumps(content))
    return path, content


def test_coco_json_is_scored_as_written(tmp_path):
    _, content = write_coco(tmp_path)
    index = load_split(tmp_path, "val", keep_unreadable=True)
    assert index.classes == ["cat", "dog"] and len(index.records) == 4 and len(index.unreadable) == 1
    rng = np.random.default_rng(0)
    by_image = {r.coco_id: i for i, r in enumerate(index.records)}
    detections = [np.zeros((0, 6)) for _ in index.records]
    for ann in content["annotations"]:
        x, y, w, h = ann["bbox"]
        box = np.array([x, y, x + w, y + h]) + rng.normal(0, 2, 4)
        row = np.concatenate([box, [rng.uniform(0.3, 1.0), [3, 7].index(ann["category_id"])]])
        detections[by_image[ann["image_id"]]] = np.vstack([detections[by_image[ann["image_id"]]], row])
    detections[0] = np.vstack([detections[0], [100, 60, 150, 110, 0.8, 0]])  # a false positive
    metrics, _ = compute_metrics(detections, index, index.classes)
    results = to_results(detections, [r.coco_id for r in index.records], [3, 7])
    # the official way on the json's own content: its areas, crowd flags and sparse category ids
    expected = [None if v == -1 else v for v in standard_pycocotools(content, results, tmp_path / "reference")]
    assert list(metrics["coco"].values()) == pytest.approx(expected, abs=1e-12)
    assert metrics["coco"]["APs"] is not None  # only the json's areas make these objects small (w*h would not)
    assert metrics["coco"]["APl"] is None  # no large object: undefined, not -1
    assert metrics["unreadable_images"] == 1 and metrics["unreadable_objects"] == 1


# ---- the validation loss ----

def test_validation_loss_is_the_training_loss_of_the_same_images(tmp_path):
    data = make_voc(tmp_path / "VOCdevkit", images=4)
    config = ModelConfig(["blue", "red"], input_shape=[96, 96])
    torch.manual_seed(0)
    model = build_model(config).eval()
    index = load_split(data, "val", classes=config.classes, keep_unreadable=True)
    loader = build_loader(EvalDataset(index, config.input_shape), 4, 0, shuffle=False, seed=0, collate_fn=eval_collate)
    loss_fn = YoloLoss(config)
    metrics = evaluate(model, loader, config, torch.device("cpu"), precision="fp32", loss_fn=loss_fn)
    images, targets = [], []
    for i, record in enumerate(index.records):  # by hand: letterbox, targets on the canvas, one forward
        canvas, info = letterbox(read_image(record.path), config.input_shape)
        images.append(torch.from_numpy(canvas).permute(2, 0, 1))
        boxes, labels = index.training_targets(i)
        for box, label in zip(letterbox_boxes(boxes, info), labels, strict=True):
            targets.append([i, label, *box])
    with torch.no_grad():
        expected = loss_fn(model(torch.stack(images).float() / 255), torch.tensor(targets, dtype=torch.float32))
    assert set(metrics["val_loss"]) == {"box", "obj", "cls", "total"}
    for key, value in expected.items():
        assert metrics["val_loss"][key] == pytest.approx(float(value), rel=1e-5)


# ---- eval.py writes and prints the diagnostics ----

def test_eval_writes_confusion_matrix_and_f1_curve(tmp_path, monkeypatch, capsys):
    import eval as eval_script
    monkeypatch.setattr("utils.eval.cli.setup_logging", lambda verbose=False: None)
    data = make_voc(tmp_path / "VOCdevkit", images=4)
    config = ModelConfig(["blue", "red"], attention="none", input_shape=[96, 96])
    torch.manual_seed(0)
    weights = write_weights(tmp_path / "w.pth", build_model(config).state_dict(), config)
    argv = ["--weights", weights, "--data", data, "--save-dir", str(tmp_path), "--name", "eval", "--workers", "0",
            "--device",
            "cpu", "--no-amp", "--score-thresh", "0.01"]
    assert eval_script.main([str(a) for a in argv]) == 0
    out = tmp_path / "eval"
    for name in ("confusion_matrix.png", "f1_curve.png", "pr_curves.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    metrics = json.loads((out / "metrics.json").read_text())
    section = metrics["confusion_matrix"]
    assert section["names"] == ["blue", "red", "background"] and section["score_thresh"] == 0.01
    counts = np.array(section["counts"])
    assert counts.shape == (3, 3) and counts[:2].sum() == metrics["objects"]
    assert len(metrics["confidence_curves"]["thresholds"]) == 101
    assert set(metrics["confidence_curves"]["per_class"]) <= {"blue", "red"}
    printed = capsys.readouterr().out
    assert metrics["best_f1"] is not None  # a random model at --conf 0.001 detects plenty
    assert f"suggested predict.py --conf {metrics['best_f1']['conf']}" in printed
    assert "test: 4 images" in printed
