"""YOLO-format datasets (utils/yolo_format.py): data.yaml and images/ + labels/ folders, one problem line per bad
label row (file:line), truth as written in pixels, containment of paths from inside the data, the same data in
train.py, eval.py and utils.data.anchors."""
from __future__ import annotations

import os
import stat
import zlib

import numpy as np
import pytest

import eval as eval_script
import train as train_script
from tests.synthetic import make_yolo
from utils import anchors
from utils.common.errors import ConfigError, UserError
from utils.data.annotations import MAX_NOTES_SHOWN
from utils.data.formats.yolo import label_path
from utils.data.index import load_split
from utils.eval.evaluation import compute_metrics

BAD_ROWS = {  # row text -> what its problem line says (None: no line)
    "0 0.5 0.5 0.2 0.2": None,
    "x 0.5 0.5 0.2 0.2": "non-numeric",
    "0 0.5 0.5": "3 columns",
    "0 0.5 0.5 0.2 0.2 0.9": "6 columns",
    "0 1.1 0.5 0.4 0.2": "outside [0, 1] (clipped)",
    "0 0.5 0.5 0 0.1": "zero or negative width/height",
    "7 0.5 0.5 0.1 0.1": "class id 7 is not in the 2 class names",
    "0.5 0.5 0.5 0.1 0.1": "not a non-negative whole number",
    "0 0.50 0.5 0.2 0.2": "repeats line 1",
    "1 0.1 0.1 0.3 0.1 0.3 0.4": "polygon of 3 points",
    "0 1.5 1.5 0.2 0.2": "entirely outside",
    "1 nan 0.5 0.2 0.2": "nan or inf",
}


@pytest.fixture()
def yolo(tmp_path):
    return make_yolo(tmp_path / "data", images=3)


def test_every_bad_row_is_one_line_with_file_and_line_number(yolo):
    """The first MAX_NOTES_SHOWN bad rows of a file are one line each (file:line); the others one counting line."""
    label = yolo.parent / "labels" / "train" / "img000.txt"
    label.write_text("\n".join(BAD_ROWS) + "\n")
    index = load_split(yolo, "train")
    lines = [p for p in index.problems if str(label) in p]
    expected = [(n, text) for n, text in enumerate(BAD_ROWS.values(), 1) if text]
    assert len(expected) == MAX_NOTES_SHOWN + 1 and len(lines) == len(expected), lines
    for (number, text), line in zip(expected[:MAX_NOTES_SHOWN], lines, strict=False):
        assert f"{label}:{number}:" in line and text in line, line
    assert lines[-1].endswith(f"{label}: and 1 more like these (nan or inf value x1)"), lines[-1]
    record = next(r for r in index.records if r.path.stem == "img000")
    # training: row 1, the clipped row 5, the polygon's box; truth: every known-class numeric row as written
    assert len(record.boxes) == 3 and record.boxes[:, [0, 2]].max() <= record.width
    assert len(record.truth.boxes) == 6  # rows 1, 5, 6 (zero area), 9 (repeat), 10 (polygon), 11 (outside)
    np.testing.assert_allclose(record.truth.boxes[0], [0.4 * 128, 0.4 * 96, 0.6 * 128, 0.6 * 96])
    np.testing.assert_allclose(record.boxes[2], [0.1 * 128, 0.1 * 96, 0.3 * 128, 0.4 * 96], rtol=1e-6)
    assert index.unknown_objects == {"class id 7": 1}


@pytest.mark.parametrize("as_dict", [False, True])
def test_yaml_names_as_list_or_dict(tmp_path, as_dict):
    yaml_path = make_yolo(tmp_path, images=2, names_as_dict=as_dict, classes=("red", "green", "blue"))
    index = load_split(yaml_path, "val")
    assert index.classes == ["red", "green", "blue"] and len(index) == 2
    assert index.pixel_offset == 0.0


def test_yaml_errors_name_the_file(tmp_path):
    yaml_path = make_yolo(tmp_path, images=1)
    splits = "train: images/train\nval: images/val\n"
    for bad, expected in ((splits + "names: {0: a, 2: b}\n", "without gaps"), (splits + "nc: 3\nnames: [a, b]\n",
                          "nc: 3"), ("train: [unclosed\n", "not a valid YAML"), ("- a list\n", "expected a mapping")):
        yaml_path.write_text(bad)
        with pytest.raises(ConfigError, match=expected) as info:
            load_split(yaml_path, "train")
        assert str(yaml_path) in str(info.value)


def test_list_files_roboflow_paths_and_missing_labels(tmp_path):
    root = tmp_path / "ds"
    make_yolo(root, images=3, splits=("train",))
    (root / "labels" / "train" / "img001.txt").unlink()  # missing label: a background image
    (root / "train.txt").write_text("./images/train/img000.jpg\nimages/train/img001.jpg\n\n../../etc/passwd.jpg\n")
    (root / "data.yaml").write_text("path: .\ntrain: train.txt\nval: ../images/train\nnames: [red, blue]\n")
    train = load_split(root / "data.yaml", "train")
    assert sorted(r.path.name for r in train.records) == ["img000.jpg", "img001.jpg"]
    assert train.background == 1
    assert any("train.txt:4" in p and "outside" in p for p in train.problems), train.problems
    assert len(load_split(root / "data.yaml", "val")) == 3  # '../images/train' read as 'images/train' (Roboflow)


def test_yaml_entry_leading_outside_is_refused(tmp_path):
    root = tmp_path / "ds"
    make_yolo(root, images=1)
    make_yolo(tmp_path / "other", images=1)
    (root / "data.yaml").write_text("train: ../other/images/train\nval: images/val\nnames: [red, blue]\n")
    with pytest.raises(UserError, match="outside"):
        load_split(root / "data.yaml", "train")


def test_folder_without_yaml_splits_in_memory_and_writes_nothing(tmp_path):
    root = tmp_path / "flat"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    make_yolo(tmp_path / "src", images=5, splits=("train",))
    for image in (tmp_path / "src" / "images" / "train").iterdir():
        os.link(image, root / "images" / image.name)
        os.link(label_path(image), root / "labels" / f"{image.stem}.txt")
    (root / "classes.txt").write_text("red\nblue\n")
    for path in [root, root / "images", root / "labels"]:
        path.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        splits = {s: load_split(root, s) for s in ("train", "val", "test")}
    finally:
        for path in [root, root / "images", root / "labels"]:
            path.chmod(stat.S_IRWXU)
    names = [{r.path.name for r in index.records} for index in splits.values()]
    assert all(names) and not (names[0] & names[1]) and not (names[0] & names[2])
    assert sum(map(len, names)) == 5 and splits["train"].classes == ["red", "blue"]


def test_folder_without_names_uses_ids_or_the_callers_list(tmp_path):
    root = tmp_path / "ds"
    make_yolo(root, images=2, splits=("train", "val"))
    (root / "data.yaml").unlink()
    assert load_split(root, "train").classes == ["0", "1"]
    assert load_split(root, "val", classes=["red", "blue"]).classes == ["red", "blue"]


def test_evaluation_scores_the_rows_in_pixels_with_continuous_iou(yolo):
    index = load_split(yolo, "val", keep_unreadable=True)
    detections = [np.column_stack([r.truth.boxes, np.ones(len(r.truth.boxes)), r.truth.labels]).astype(np.float32)
                  for r in index.records]
    metrics, _ = compute_metrics(detections, index, index.classes, coco=False)
    assert metrics["mAP50"] == pytest.approx(1.0) and metrics["iou_pixel_offset"] == 0.0


def test_anchors_train_and_eval_read_a_data_yaml(yolo, tmp_path, capsys):
    out = tmp_path / "anchors.txt"
    assert anchors.main(["--data", str(yolo), "--input-shape", "64", "-n", "3", "--out", str(out)]) == 0
    assert out.is_file()
    assert train_script.main(["--data", str(yolo), "--epochs", "1", "--batch-size", "2", "--input-shape", "64",
                              "--workers", "0", "--device", "cpu", "--save-dir", str(tmp_path / "runs"),
                              "--no-preview"]) == 0
    weights = next((tmp_path / "runs").glob("*/best.pth"))
    assert eval_script.main(["--weights", str(weights), "--data", str(yolo), "--split", "val", "--input-shape", "64",
                             "--device", "cpu", "--workers", "0", "--save-dir", str(tmp_path), "--name", "eval"]) == 0


def test_unreadable_yolo_images_count_as_missed_in_evaluation(tmp_path):
    """Issue 13's rule for YOLO data: a zero-byte image, a listed image that is missing, and a decompression bomb keep
    their label rows as ground truth (missed objects) when evaluating; training skips them."""
    root = tmp_path / "ds"
    make_yolo(root, images=4, splits=("val",))
    images = root / "images" / "val"
    (images / "img000.jpg").write_bytes(b"")
    (images / "img001.jpg").unlink()
    bomb = b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + b"IHDR" + (40000).to_bytes(4, "big") * 2 + b"\x08\x02\0\0\0"
    (images / "img002.png").write_bytes(bomb + zlib.crc32(bomb[12:]).to_bytes(4, "big"))
    os.replace(label_path(images / "img002.jpg"), label_path(images / "img002.png"))
    (images / "img002.jpg").unlink()
    (root / "val.txt").write_text("".join(f"images/val/img00{i}.{'png' if i == 2 else 'jpg'}\n" for i in range(4)))
    (root / "data.yaml").write_text("path: .\ntrain: val.txt\nval: val.txt\nnames: [red, blue]\n")
    rows = sum(len(label_path(images / f"img00{i}.jpg").read_text().splitlines()) for i in range(4))
    scored = load_split(root / "data.yaml", "val", keep_unreadable=True)
    assert len(scored.records) == 4 and sum(len(r.truth.boxes) for r in scored.records) == rows
    assert sum(r.image_error is not None for r in scored.records) == 3
    bomb_record = next(r for r in scored.records if r.path.suffix == ".png")
    assert (bomb_record.width, bomb_record.height) == (40000, 40000)
    assert bomb_record.truth.boxes[:, 2].max() > 1000  # rows scaled by the declared size, not left normalised
    assert len(load_split(root / "data.yaml", "train").records) == 1  # training: only the readable image
