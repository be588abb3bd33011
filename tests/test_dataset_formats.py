"""Dataset formats behind one interface (utils/data/formats/): the registry, detection in one place, and the recipe of
docs/architecture.md ("Add a dataset format") held to its word: a toy format written as that recipe says (one class,
one registration) is read by load_split, split in memory, converted, and trained and evaluated on by the tools."""
from __future__ import annotations

import csv
import pkgutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import eval as eval_script
import train as train_script
import utils.data.formats as formats_package
from tests.synthetic import make_voc, make_yolo
from utils import anchors
from utils.common.errors import ConfigError, DatasetError
from utils.common.registry import Registry
from utils.data.annotations import RawAnnotation
from utils.data.convert import convert, stated_splits
from utils.data.formats import FORMATS, READER_MODULES, DatasetReader, detect_format
from utils.data.index import load_split, read_split_file
from utils.data.reader import Entry, SourceSplit, split_ids
from utils.eval.evaluation import compute_metrics


def test_registry_gets_by_name_lists_valid_names_and_keeps_order():
    registry: Registry[int] = Registry("widget")
    registry.register("b")(2)
    registry.register("a")(1)
    assert list(registry) == ["b", "a"] and registry.get("a") == 1 and "b" in registry and len(registry) == 2
    with pytest.raises(ConfigError, match=r"unknown widget 'c'; expected one of: b, a"):
        registry.get("c")
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("a")(3)
    assert registry.unregister("b") == 2 and list(registry) == ["a"]


def test_every_reader_module_is_listed_once_in_detection_order():
    """The one line a new format touches outside its module: READER_MODULES (docs/architecture.md)."""
    modules = {m.name for m in pkgutil.iter_modules(formats_package.__path__)}
    assert sorted(READER_MODULES) == sorted(modules) and len(set(READER_MODULES)) == len(READER_MODULES)
    assert list(FORMATS) == ["yolo", "coco", "folder", "voc"]
    for name, reader in FORMATS.items():
        assert reader.__module__ == f"utils.data.formats.{name}" and reader.description


@pytest.mark.parametrize("layout, name, offset", [("voc", "voc", 1.0), ("yolo", "yolo", 0.0)])
def test_detection_and_box_convention_come_from_the_reader(tmp_path, layout, name, offset):
    data = make_voc(tmp_path, images=3) if layout == "voc" else make_yolo(tmp_path, images=3)
    assert detect_format(data)[0] == name
    index = load_split(data, "train")
    assert index.source_format == name and index.pixel_offset == offset


def test_unknown_layout_names_every_format(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DatasetError, match="not a dataset in a format this project reads") as info:
        load_split(tmp_path / "stuff", "train")
    assert all(name in str(info.value) for name in FORMATS)


# ---------------------------------------------------------------------------------------------------- a toy format
class CsvBoxesReader(DatasetReader):
    """A folder with boxes.csv (file,x1,y1,x2,y2,class; continuous pixel boxes) and the images beside it: the whole
    of a new format, as docs/architecture.md describes it."""

    description = "a folder with boxes.csv (file,x1,y1,x2,y2,class) and its images"
    pixel_offset = 0.0

    def detect(self, data: Path) -> bool:
        return data.is_dir() and (data / "boxes.csv").is_file()

    def stated_splits(self, data: Path) -> list[str]:
        return []

    def read(self, data: Path, split: str, classes: list[str] | None, seed: int) -> SourceSplit:
        rows: dict[str, list[list[str]]] = {}
        with open(data / "boxes.csv", newline="", encoding="utf-8") as handle:
            for row in csv.reader(handle):
                rows.setdefault(row[0], []).append(row)
        entries = []
        for name in split_ids(sorted(rows), split, seed, data):
            boxes = np.array([[float(v) for v in row[1:5]] for row in rows[name]], np.float64)
            raw = RawAnnotation([row[5] for row in rows[name]], boxes, np.zeros(len(boxes), bool), None)
            entries.append(Entry(data / name, data / "boxes.csv", raw, relative=name, root=data,
                                 field=f"{data / 'boxes.csv'}: {name}"))
        return SourceSplit(entries, None, data, made=split != "all")


@pytest.fixture()
def csv_format():
    FORMATS.register("csvboxes")(CsvBoxesReader)
    yield "csvboxes"
    FORMATS.unregister("csvboxes")


def csv_dataset(root: Path, images: int = 6) -> Path:
    root.mkdir(parents=True)
    rows = []
    for i in range(images):
        image = np.full((96, 128, 3), 235, np.uint8)
        x1, y1 = 10 + 5 * i, 8 + 3 * i
        cv2.rectangle(image, (x1, y1), (x1 + 40, y1 + 30), (0, 0, 255) if i % 2 else (255, 0, 0), -1)
        cv2.imwrite(str(root / f"img{i}.jpg"), image)
        rows.append(f"img{i}.jpg,{x1},{y1},{x1 + 40},{y1 + 30},{'red' if i % 2 else 'blue'}\n")
    (root / "boxes.csv").write_text("".join(rows), encoding="utf-8")
    return root


def test_a_new_format_is_one_class_and_one_registration(tmp_path, csv_format):
    data = csv_dataset(tmp_path / "csv")
    assert detect_format(data)[0] == csv_format
    every = load_split(data, "all", keep_unreadable=True)
    assert len(every) == 6 and every.classes == ["blue", "red"] and every.source_format == csv_format
    train, val = load_split(data, "train"), load_split(data, "val")
    assert train.made_split and not {r.path for r in train.records} & {r.path for r in val.records}
    assert read_split_file(train.write_split(tmp_path / "run")) == [r.path.name for r in train.records]
    detections = [np.column_stack([r.truth.boxes, [0.9], r.truth.labels]) for r in every.records]
    metrics, _ = compute_metrics(detections, every, every.classes, coco=False)
    assert metrics["iou_pixel_offset"] == 0.0 and metrics["mAP50"] == pytest.approx(1.0)  # the reader's convention
    assert stated_splits(data) == ["all"]
    convert(data, tmp_path / "voc", "voc")
    back = load_split(tmp_path / "voc", "all")
    assert sorted(r.boxes.tolist()[0][0] for r in back.records) == sorted(r.boxes.tolist()[0][0] for r in every.records)


@pytest.mark.slow
def test_the_tools_read_a_new_format(tmp_path, csv_format):
    """utils.anchors, train.py and eval.py take the toy format as --data without a line changed in them."""
    data = csv_dataset(tmp_path / "csv", images=6)
    assert anchors.main(["--data", str(data), "--split", "all", "-n", "2", "--input-shape", "64", "--out",
                         str(tmp_path / "anchors.txt")]) == 0
    assert train_script.main(["--data", str(data), "--epochs", "1", "--batch-size", "2", "--input-shape", "64",
                              "--workers", "0", "--device", "cpu", "--save-dir", str(tmp_path / "runs"),
                              "--no-preview", "--no-amp"]) == 0
    run = next((tmp_path / "runs").iterdir())
    assert {p.name for p in (run / "splits").iterdir()} == {"train.txt", "val.txt"}
    assert eval_script.main(["--weights", str(run / "best.pth"), "--data", str(data), "--split", "test",
                             "--device", "cpu", "--workers", "0", "--save-dir", str(tmp_path),
                             "--name", "eval"]) == 0
    tested = read_split_file(tmp_path / "eval" / "splits" / "test.txt")
    trained = read_split_file(run / "splits" / "train.txt") + read_split_file(run / "splits" / "val.txt")
    assert tested and not set(tested) & set(trained) and len(tested) + len(trained) == 6
