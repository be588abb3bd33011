"""Every image of a split counts: evaluation against the annotation files as written, checked with a slow port of the
VOC devkit's voc_eval.py and with pycocotools run the standard way on a json written from the same raw XML.

The test split holds a truncated JPEG (used as far as it decodes), a zero-byte JPEG or a missing image (their objects
count as missed), a box reaching outside its image (clipped for training, scored as written) and an object annotated
twice (dropped for training, scored twice, as the devkit does). A colour-thresholding stand-in detector makes the
detections, and so the figures, deterministic.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.reference import devkit_voc_eval, standard_pycocotools, to_results
from tests.synthetic import ColourOracle, voc_xml, write_weights
from utils.common.boxes import GroundTruthBoxes
from utils.data.index import load_split
from utils.data.loader import EvalDataset, build_loader, eval_collate
from utils.eval.evaluation import compute_metrics, predict_split
from utils.model.config import ModelConfig, build_model

CLASSES = ["blue", "red"]  # sorted, as discovered from the annotations
RGB = {"red": (230, 20, 20), "blue": (20, 20, 230)}
H, W = 96, 128
# per image: (class, drawn box, box stated in the XML (None: as drawn), difficult); boxes (x1, y1, x2, y2) with the
# rectangle covering pixel columns x1..x2-1. One rectangle per class and image (what the oracle can find), sizes differ
# so that scores never tie.
SCENES = [
    [("red", (10, 4, 44, 30), None, 0), ("blue", (64, 60, 110, 94), None, 0)],  # img0: the broken image
    [("red", (20, 30, 62, 72), None, 0)],
    [("blue", (4, 6, 40, 46), None, 0), ("red", (66, 40, 124, 92), None, 0)],
    [("red", (100, 20, 128, 52), (100, 20, 170, 52), 0), ("blue", (10, 50, 52, 88), None, 0)],  # reaches outside
    [("blue", (30, 28, 72, 66), None, 0), ("blue", (30, 28, 72, 66), None, 0)],  # annotated twice
    [("red", (40, 20, 92, 61), None, 1), ("blue", (6, 60, 37, 91), None, 0)],  # one difficult
    [("red", (14, 14, 57, 47), None, 0)],
    [],  # background
]


def write_split(root: Path, broken: str) -> Path:
    """VOCdevkit/VOC2007 with SCENES as the test split; img0 broken as `broken` says."""
    year = root / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year / sub).mkdir(parents=True, exist_ok=True)
    for n, scene in enumerate(SCENES):
        image = np.full((H, W, 3), 200, np.uint8)
        for name, (x1, y1, x2, y2), _, _ in scene:
            image[y1:y2, x1:x2] = RGB[name]
        jpg = year / "JPEGImages" / f"img{n}.jpg"
        cv2.imwrite(str(jpg), image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        objects = [(name, stated or drawn, difficult) for name, drawn, stated, difficult in scene]
        (year / "Annotations" / f"img{n}.xml").write_text(voc_xml(f"img{n}", W, H, objects), encoding="utf-8")
    jpg = year / "JPEGImages" / "img0.jpg"
    if broken == "truncated":  # a camera dump cut short: the top half of the picture arrived
        jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size * 6 // 10])
    elif broken == "zero_byte":
        jpg.write_bytes(b"")
    elif broken == "missing":
        jpg.unlink()
    (year / "ImageSets/Main/test.txt").write_text("".join(f"img{n}\n" for n in range(len(SCENES))))
    return root


# ---- the slow, obvious references (tests/reference.py) on the raw annotation files ----

def parse_rec(filename: Path) -> list[dict]:
    """voc_eval.py's parse_rec: every object of the XML as written."""
    objects = []
    for obj in ET.parse(filename).findall("object"):
        bbox = obj.find("bndbox")
        objects.append({"name": obj.find("name").text, "difficult": int(obj.find("difficult").text),
                        "bbox": [int(bbox.find(tag).text) for tag in ("xmin", "ymin", "xmax", "ymax")]})
    return objects


def raw_truths(year: Path, names: list[str]) -> list[GroundTruthBoxes]:
    """The objects of each image's XML as written (parse_rec), for the devkit reference."""
    truths = []
    for name in names:
        objects = parse_rec(year / "Annotations" / f"{name}.xml")
        truths.append(GroundTruthBoxes(np.array([o["bbox"] for o in objects], float).reshape(-1, 4),
                                       np.array([CLASSES.index(o["name"]) for o in objects], int),
                                       np.array([o["difficult"] for o in objects], bool)))
    return truths


def devkit_map(year: Path, detections: dict[str, np.ndarray]) -> float:
    """voc_eval.py (all-point AP) over the ids of ImageSets/Main/test.txt and their raw XML files, mean over classes."""
    names = (year / "ImageSets/Main/test.txt").read_text().split()
    truths = raw_truths(year, names)
    per_image = [detections.get(name, np.zeros((0, 6))) for name in names]
    return float(np.mean([devkit_voc_eval(per_image, truths, c) for c in range(len(CLASSES))]))


def pycocotools_on_files(year: Path, detections: dict[str, np.ndarray], tmp_path: Path) -> list[float | None]:
    """pycocotools the standard way, on a json written from the raw XML (bbox x, y, w, h; area w * h; difficult as
    crowd) and a results file of the same detections."""
    names = (year / "ImageSets/Main/test.txt").read_text().split()
    annotations = []
    for i, name in enumerate(names):
        for o in parse_rec(year / "Annotations" / f"{name}.xml"):
            x1, y1, x2, y2 = o["bbox"]
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "iscrowd": o["difficult"],
                                "category_id": CLASSES.index(o["name"]) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": (x2 - x1) * (y2 - y1)})
    gt = {"images": [{"id": i + 1} for i in range(len(names))], "annotations": annotations,
          "categories": [{"id": c + 1, "name": n} for c, n in enumerate(CLASSES)]}
    results = to_results([detections.get(name, np.zeros((0, 6))) for name in names], range(1, len(names) + 1),
                         range(1, len(CLASSES) + 1))
    return [None if v == -1 else float(v) for v in standard_pycocotools(gt, results, tmp_path)]


# ---- the tests ----

def run_oracle(root: Path):
    """(index, detections per image id, metrics) of the oracle on the test split, as eval.py indexes it."""
    index = load_split(root, "test", classes=CLASSES, keep_unreadable=True)
    config = ModelConfig(CLASSES, input_shape=[128, 128])
    loader = build_loader(EvalDataset(index, config.input_shape), 3, 0, shuffle=False, seed=0, collate_fn=eval_collate)
    model = ColourOracle(config, [RGB[name] for name in CLASSES], distinct_scores=True)
    detections = predict_split(model, loader, config, torch.device("cpu")).detections
    metrics, _ = compute_metrics(detections, index, CLASSES)
    return index, {r.image_id: d for r, d in zip(index.records, detections, strict=True)}, metrics


SUMMARIES = {
    "truncated": "test: 8 images, 11 objects (1 difficult, not scored)",
    "zero_byte": "test: 8 images, 1 unreadable (its 2 objects count as missed), 11 objects (1 difficult, not scored)",
    "missing": "test: 8 images, 1 unreadable (its 2 objects count as missed), 11 objects (1 difficult, not scored)",
}


@pytest.mark.parametrize("broken", ["truncated", "zero_byte", "missing"])
def test_every_object_counts_as_the_devkit_and_pycocotools_count_it(tmp_path, broken):
    root = write_split(tmp_path / "VOCdevkit", broken)
    year = root / "VOC2007"
    index, detections, metrics = run_oracle(root)
    assert index.ground_truth_summary() == SUMMARIES[broken]
    assert metrics["images"] == 8 and metrics["objects"] == 11
    assert metrics["unreadable_images"] == (broken != "truncated")
    assert metrics["mAP50"] == pytest.approx(devkit_map(year, detections), abs=1e-12)
    coco = pycocotools_on_files(year, detections, tmp_path)
    assert [metrics["coco"][k] for k in ("mAP50_95", "AP50", "AP75", "APs", "APm", "APl")] == pytest.approx(coco,
                                                                                                       abs=1e-12)
    assert metrics["mAP50_95"] == pytest.approx(coco[0], abs=1e-12)
    # the broken image's objects are in the denominator: dropping that image would have flattered the model
    readable = {k: v for k, v in detections.items() if k != "img0"}
    (year / "ImageSets/Main/test.txt").write_text("".join(f"img{n}\n" for n in range(1, len(SCENES))))
    assert devkit_map(year, readable) > metrics["mAP50"] + 0.01
    found = {CLASSES[int(c)] for c in detections["img0"][:, 5]}
    assert found == ({"red"} if broken == "truncated" else set())  # the top half arrived; nothing else was seen


def test_clipped_and_duplicated_objects_are_scored_as_written(tmp_path):
    """Training cleans the boxes (clipped to the image, the duplicate dropped); evaluation must not: a devkit run on
    the same XML files would not."""
    root = write_split(tmp_path / "VOCdevkit", "none")
    index, detections, metrics = run_oracle(root)
    by_id = {r.image_id: r for r in index.records}
    np.testing.assert_array_equal(by_id["img3"].boxes[by_id["img3"].labels == 1], [[100, 20, 128, 52]])  # clipped
    np.testing.assert_array_equal(by_id["img3"].ground_truth().boxes[0], [100, 20, 170, 52])  # as written
    assert len(by_id["img4"].boxes) == 1 and len(by_id["img4"].ground_truth().boxes) == 2
    assert metrics["mAP50"] == pytest.approx(devkit_map(root / "VOC2007", detections), abs=1e-12)
    assert metrics["per_class"]["blue"]["num_gt"] == 6 and metrics["per_class"]["red"]["num_gt"] == 5
    # the cleaned boxes would score higher: the clipped red box would be found and the duplicate gone
    cleaned, _ = compute_metrics(list(detections.values()), [_cleaned(r) for r in index.records], CLASSES)
    assert cleaned["mAP50"] > metrics["mAP50"] + 0.01
    assert metrics["mAP50"] < 1.0 and cleaned["mAP50"] == 1.0


def _cleaned(record):
    return GroundTruthBoxes(record.boxes, record.labels, record.difficult)


# ---- eval.py end to end ----

@pytest.fixture
def eval_main(monkeypatch):
    """eval.py's main in this process, without it replacing pytest's log handlers."""
    import eval as eval_script
    monkeypatch.setattr("utils.eval.cli.setup_logging", lambda verbose=False: None)
    return lambda *argv: eval_script.main([str(a) for a in argv])


@pytest.mark.parametrize("broken", ["truncated", "zero_byte"])
def test_eval_script_counts_the_broken_image_and_says_so(tmp_path, eval_main, capsys, caplog, broken):
    root = write_split(tmp_path / "VOCdevkit", broken)
    config = ModelConfig(CLASSES, attention="none", input_shape=[128, 128])
    torch.manual_seed(0)
    weights = write_weights(tmp_path / "w.pth", build_model(config).state_dict(), config)
    assert eval_main("--weights", weights, "--data", root, "--save-dir", str(tmp_path), "--name", "eval",
                     "--workers", "0",
                     "--device", "cpu", "--no-amp", "--save-json") == 0
    printed = capsys.readouterr().out
    assert SUMMARIES[broken] in printed.splitlines()
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["images"] == 8 and metrics["summary"] == SUMMARIES[broken]
    lines = [r.getMessage() for r in caplog.records if "img0" in r.getMessage()]
    assert len(lines) == 1, lines  # one line names the broken file
    if broken == "truncated":
        assert lines[0].startswith("fixed: ") and "JPEG is truncated" in lines[0] and "used as decoded" in lines[0]
    else:
        assert lines[0].startswith("unreadable: ") and "(its 2 objects count as missed)" in lines[0]
    detections = {}
    for row in json.loads((tmp_path / "eval" / "detections.json").read_text()):
        x, y, w, h = row["bbox"]
        detections.setdefault(row["image_id"], []).append([x, y, x + w, y + h, row["score"], row["category_id"]])
    detections = {k: np.array(v) for k, v in detections.items()}
    assert metrics["mAP50"] == pytest.approx(devkit_map(root / "VOC2007", detections), abs=1e-9)
