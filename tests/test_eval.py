"""utils.eval.evaluation and eval.py end to end on a 4-image VOC folder of coloured rectangles built in tmp_path."""
from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest
import torch

from tests.paths import ROOT
from tests.synthetic import ColourOracle, write_weights
from utils.data.index import load_split
from utils.data.loader import EvalDataset, build_loader, eval_collate
from utils.eval.evaluation import evaluate, predict_split
from utils.model.config import ModelConfig, build_model

CLASSES = ["red", "green", "blue"]
COLOURS = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}  # RGB
SIZES = [(150, 200), (240, 160), (200, 200), (120, 260)]  # (height, width): varied aspect ratios -> varied padding


def write_voc(root, difficult_first: bool = False):
    """VOCdevkit/VOC2007 with 4 images on grey, one rectangle per class at most; test split = all 4 images.

    A rectangle over 0-based pixel columns c0..c1 is written as the continuous box [c0, c1 + 1]."""
    year = root / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ids = []
    for n, (h, w) in enumerate(SIZES):
        image = np.full((h, w, 3), 128, np.uint8)
        ann = ET.Element("annotation")
        ET.SubElement(ann, "filename").text = f"img{n}.png"
        size = ET.SubElement(ann, "size")
        for tag, value in (("width", w), ("height", h), ("depth", 3)):
            ET.SubElement(size, tag).text = str(value)
        for k, name in enumerate(CLASSES[: 1 + n % 3]):
            x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
            x1, y1 = x0 + int(rng.integers(30, w // 2)), y0 + int(rng.integers(30, h // 2))
            image[y0:y1 + 1, x0:x1 + 1] = COLOURS[name]
            obj = ET.SubElement(ann, "object")
            ET.SubElement(obj, "name").text = name
            ET.SubElement(obj, "difficult").text = "1" if difficult_first and n == 0 and k == 0 else "0"
            box = ET.SubElement(obj, "bndbox")
            for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), (x0, y0, x1 + 1, y1 + 1), strict=True):
                ET.SubElement(box, tag).text = str(value)
        cv2.imwrite(str(year / "JPEGImages" / f"img{n}.png"), image[..., ::-1])
        ET.ElementTree(ann).write(year / "Annotations" / f"img{n}.xml")
        ids.append(f"img{n}")
    (year / "ImageSets/Main/test.txt").write_text("\n".join(ids) + "\n")
    return root


def oracle(config: ModelConfig) -> ColourOracle:
    return ColourOracle(config, [COLOURS[name] for name in CLASSES])


def loader_for(data, config, classes=CLASSES):
    index = load_split(data, "test", classes=classes)
    return build_loader(EvalDataset(index, config.input_shape), 3, 0, shuffle=False, seed=0, collate_fn=eval_collate)


@pytest.mark.parametrize("input_shape", [[128, 128], [96, 160]])
def test_oracle_detector_scores_perfectly(tmp_path, input_shape):
    config = ModelConfig(CLASSES, input_shape=input_shape)
    loader = loader_for(write_voc(tmp_path / "VOCdevkit"), config)
    model = oracle(config).train()
    metrics = evaluate(model, loader, config, torch.device("cpu"))
    assert model.training, "evaluation must hand the model back in its training mode"
    assert metrics["mAP50"] == 1.0 and metrics["coco"]["AP50"] == pytest.approx(1.0)
    assert metrics["mAP50_95"] > 0.6  # boxes go through a down- and up-scaling, so not pixel perfect
    assert metrics["precision"] == metrics["recall"] == metrics["f1"] == 1.0
    assert metrics["AP50_per_class"] == {"red": 1.0, "green": 1.0, "blue": 1.0}
    assert json.loads(json.dumps(metrics)) == metrics  # JSON-ready as it is


def test_detections_are_in_original_pixels(tmp_path):
    config = ModelConfig(CLASSES, input_shape=[128, 128])
    loader = loader_for(write_voc(tmp_path / "VOCdevkit"), config)
    detections = predict_split(oracle(config), loader, config, torch.device("cpu")).detections
    records = loader.dataset.index.records
    assert len(detections) == len(records)
    for dets, record in zip(detections, records, strict=True):
        assert dets.shape == (len(record.boxes), 6)
        order = np.argsort(dets[:, 5])
        np.testing.assert_array_equal(dets[order, 5], np.sort(record.labels))
        scale = max(record.width, record.height) / 128  # one input pixel in original pixels
        np.testing.assert_allclose(dets[order, :4], record.boxes[np.argsort(record.labels)], atol=2 * scale)


def test_difficult_objects_found_do_not_count(tmp_path):
    config = ModelConfig(CLASSES, input_shape=[128, 128])
    loader = loader_for(write_voc(tmp_path / "VOCdevkit", difficult_first=True), config)
    metrics = evaluate(oracle(config), loader, config, torch.device("cpu"), coco=False)
    assert metrics["mAP50"] == 1.0 and metrics["mAP50_95"] is None
    assert metrics["per_class"]["red"]["num_gt"] == 3  # 4 red rectangles, one difficult


def test_class_list_mismatch_is_refused(tmp_path):
    config = ModelConfig(CLASSES, input_shape=[128, 128])
    loader = loader_for(write_voc(tmp_path / "VOCdevkit"), config, classes=["blue", "green", "red"])
    with pytest.raises(ValueError, match="classes"):
        evaluate(oracle(config), loader, config, torch.device("cpu"))


# ---- eval.py ----

def random_checkpoint(path, classes=CLASSES):
    config = ModelConfig(classes, attention="eca", input_shape=[128, 128])
    torch.manual_seed(0)
    return write_weights(path, build_model(config).state_dict(), config)


@pytest.fixture
def eval_main(monkeypatch):
    """eval.py's main in this process, without it replacing pytest's log handlers."""
    import eval as eval_script
    monkeypatch.setattr("utils.eval.cli.setup_logging", lambda verbose=False: None)
    return lambda *argv: eval_script.main([str(a) for a in argv])


def test_eval_script_end_to_end(tmp_path, eval_main, capsys):
    data = write_voc(tmp_path / "VOCdevkit")
    weights = random_checkpoint(tmp_path / "w.pth")
    args = ["--weights", weights, "--data", data, "--save-dir", str(tmp_path / "runs"), "--name", "eval",
            "--workers", "0",
            "--device", "cpu", "--save-json", "--conf", "0.01"]
    assert eval_main(*args) == 0
    out = tmp_path / "runs" / "eval"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["AP50_per_class"]) == set(CLASSES) and 0 <= metrics["mAP50"] <= 1
    assert set(metrics["coco"]) == {"mAP50_95", "AP50", "AP75", "APs", "APm", "APl"}
    assert metrics["images"] == 4 and metrics["input_shape"] == [128, 128]
    assert metrics["compute_precision"] == "fp32"  # the CPU's default: fixed by the command, never measured
    assert {"pr_red.png", "pr_curves.png"} <= {p.name for p in out.iterdir()}
    results = json.loads((out / "detections.json").read_text())
    assert len(results) == metrics["detections"] > 0
    assert {r["image_id"] for r in results} <= {"img0", "img1", "img2", "img3"}
    assert set(results[0]) == {"image_id", "category_id", "bbox", "score"} and results[0]["category_id"] in (0, 1, 2)
    printed = capsys.readouterr().out
    assert "VOC mAP50" in printed and "green" in printed
    # a second run gets its own folder
    assert eval_main(*args[:-3], "--input-shape", "160") == 0
    assert json.loads((tmp_path / "runs" / "eval2" / "metrics.json").read_text())["input_shape"] == [160, 160]


def test_eval_cli_exit_status(tmp_path):
    """The script itself: a missing weights file is one line on the console and exit status 1, no traceback."""
    result = subprocess.run([sys.executable, str(ROOT / "eval.py"), "--weights", str(tmp_path / "none.pth")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    output = (result.stdout + result.stderr).strip()
    assert "none.pth not found" in output and "Traceback" not in output and len(output.splitlines()) == 1


def test_eval_errors_are_one_clear_line(tmp_path, eval_main, caplog):
    weights = random_checkpoint(tmp_path / "w.pth")
    data = write_voc(tmp_path / "VOCdevkit")
    assert eval_main("--weights", tmp_path / "missing.pth", "--data", data) == 1
    assert "missing.pth not found" in caplog.text
    assert eval_main("--weights", weights, "--data", tmp_path / "nowhere") == 1
    assert "nowhere does not exist" in caplog.text
    (data / "VOC2007/ImageSets/Main/val.txt").write_text("")
    assert eval_main("--weights", weights, "--data", data, "--split", "val") == 1
    assert "no usable images" in caplog.text
    assert "Traceback" not in caplog.text
    with pytest.raises(FileNotFoundError):
        eval_main("--weights", weights, "--data", tmp_path / "nowhere", "--verbose")


def test_eval_reports_objects_of_other_classes(tmp_path, eval_main, caplog):
    # the model knows red and green only: blue rectangles are reported, not evaluated
    weights = random_checkpoint(tmp_path / "w.pth", classes=["red", "green"])
    assert eval_main("--weights", weights, "--data", write_voc(tmp_path / "VOCdevkit"), "--save-dir", str(tmp_path),
                     "--name", "eval", "--workers", "0", "--device", "cpu", "--no-amp") == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics["AP50_per_class"]) == {"red", "green"} and metrics["unknown_objects"] == {"blue": 1}
    assert "blue x1" in caplog.text
