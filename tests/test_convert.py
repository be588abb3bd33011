"""utils.data.convert: VOC -> YOLO -> COCO -> VOC keeps every box (within rounding), the class names and the splits; the
difficult flag survives VOC <-> COCO and is reported where YOLO cannot hold it; the source is never written to."""
from __future__ import annotations

import numpy as np
import pytest

from tests.paths import TINY_COCO, needs_shared
from tests.synthetic import make_voc, voc_xml
from utils.common.errors import ConfigError
from utils.data.convert import convert, main, stated_splits
from utils.data.index import load_split


def _snapshot(root) -> dict:
    return {p.relative_to(root): p.stat().st_mtime_ns for p in root.rglob("*")}


def _objects(data, split) -> dict:
    index = load_split(data, split, keep_unreadable=True)
    return {r.path.stem: (r.truth.boxes.round(3).tolist(), [index.classes[k] for k in r.truth.labels],
                          r.truth.difficult.tolist(), (r.width, r.height)) for r in index.records}


@pytest.fixture()
def voc(tmp_path):
    root = make_voc(tmp_path / "voc", images=5, splits={"train": [0, 1, 2], "val": [3], "test": [4]})
    xml = root / "VOC2007" / "Annotations" / "img000.xml"
    xml.write_text(voc_xml("img000", 128, 96, [("red", (3.5, 4, 60, 50), 1), ("blue", (70, 10, 120, 90))]))
    return root


def test_voc_yolo_coco_voc_round_trip(voc, tmp_path, capsys):
    before = _snapshot(voc)
    assert main(["--to", "yolo", str(voc), str(tmp_path / "yolo")]) == 0
    assert "1 difficult/iscrowd object(s) written as ordinary rows" in capsys.readouterr().out
    assert main(["--to", "coco", str(tmp_path / "yolo" / "data.yaml"), str(tmp_path / "coco")]) == 0
    assert main(["--to", "voc", str(tmp_path / "coco"), str(tmp_path / "back")]) == 0
    assert _snapshot(voc) == before  # the source is never written to
    for split in ("train", "val", "test"):
        original, back = _objects(voc, split), _objects(tmp_path / "back", split)
        assert original.keys() == back.keys()
        for stem, (boxes, names, _, size) in original.items():
            np.testing.assert_allclose(back[stem][0], boxes, atol=1e-3)
            assert back[stem][1] == names and back[stem][3] == size
    assert stated_splits(tmp_path / "yolo" / "data.yaml") == ["train", "val", "test"]
    assert (tmp_path / "back" / "classes.txt").read_text().split() == ["blue", "red"]


def test_difficult_survives_voc_coco_voc(voc, tmp_path):
    convert(voc, tmp_path / "coco", "coco")
    convert(tmp_path / "coco", tmp_path / "voc2", "voc")
    assert _objects(tmp_path / "voc2", "train")["img000"][2] == [True, False]


def test_destination_must_be_new_and_outside_the_source(voc, tmp_path):
    with pytest.raises(ConfigError, match="inside the source"):
        convert(voc, voc / "out", "yolo")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        convert(voc, tmp_path / "full", "coco")


def test_hard_links_when_asked(voc, tmp_path):
    report = convert(voc, tmp_path / "linked", "yolo", link=True)
    assert report.linked == 5 and report.copied == 0


@needs_shared
def test_tiny_coco_to_yolo_keeps_every_box(tmp_path):
    convert(TINY_COCO, tmp_path / "yolo", "yolo")
    split = stated_splits(TINY_COCO)[0]
    original, converted = _objects(TINY_COCO, split), _objects(tmp_path / "yolo" / "data.yaml", split)
    assert sorted(len(v[0]) for v in original.values()) == sorted(len(v[0]) for v in converted.values())
