"""utils.data.index: every bad input gives one line naming its file (fixed or skipped), splits are deterministic, real
datasets load completely."""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.paths import RACCOON, TINY_COCO, needs_shared
from utils.data.index import load_split, make_splits, read_split_file

W, H = 64, 48


def _image(path: Path, ext: str = ".jpg") -> None:
    ys, xs = np.mgrid[0:H, 0:W]
    image = np.dstack([xs * 4, ys * 5, np.full((H, W), 90)]).astype(np.uint8)
    cv2.imencode(ext, image)[1].tofile(str(path))


def _xml(path: Path, objects=(("thing", (5, 5, 30, 30), 0),), size=(W, H), body: str | None = None) -> None:
    if body is None:
        size_xml = ("" if size is None
                    else f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
        objs = "".join(f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{c[0]}</xmin><ymin>{c[1]}"
                       f"</ymin><xmax>{c[2]}</xmax><ymax>{c[3]}</ymax></bndbox></object>" for n, c, d in objects)
        body = f"<annotation><filename>{path.stem}.jpg</filename>{size_xml}{objs}</annotation>"
    path.write_text(body, encoding="utf-8")


# name -> (how to build the image, how to build the XML, expected text in its problem line or None for no line)
def _bad_dataset(root: Path) -> None:
    images, anns = root / "images", root / "annotations"
    images.mkdir(parents=True)
    anns.mkdir()
    for stem in ("good", "difficult", "truncated", "cut", "zero", "text", "pngjpg", "gray16", "malformed", "nosize",
                 "wrongsize", "nonnumeric", "outside", "clipped", "zeroarea", "unknown", "empty", "doctype"):
        _image(images / f"{stem}.jpg")
        _xml(anns / f"{stem}.xml")
    data = (images / "truncated.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(data[: data.index(b"\xff\xda")])  # cut before the image data
    (images / "cut.jpg").write_bytes(data[: (data.index(b"\xff\xda") + len(data)) // 2])  # cut inside it
    (images / "zero.jpg").write_bytes(b"")
    (images / "text.jpg").write_text("<html>404</html>")
    _image(images / "pngjpg.jpg", ".png")
    (images / "gray16.jpg").unlink()
    cv2.imwrite(str(images / "gray16.png"), np.full((H, W), 40000, np.uint16))
    _xml(anns / "difficult.xml", objects=[("thing", (5, 5, 30, 30), 1), ("thing", (30, 10, 60, 40), 0)])
    _xml(anns / "malformed.xml", body="<annotation><object><name>thing</name>")
    _xml(anns / "nosize.xml", size=None)
    _xml(anns / "wrongsize.xml", size=(500, 375))
    _xml(anns / "nonnumeric.xml", objects=[("thing", ("abc", 5, 30, 30), 0), ("thing", (1, 1, 20, 20), 0)])
    _xml(anns / "outside.xml", objects=[("thing", (100, 100, 120, 120), 0), ("thing", (1, 1, 20, 20), 0)])
    _xml(anns / "clipped.xml", objects=[("thing", (-10, 5, 80, 30), 0)])
    _xml(anns / "zeroarea.xml", objects=[("thing", (10, 10, 10, 30), 0), ("thing", (20, 20, 5, 40), 0),
                                         ("thing", (1, 1, 20, 20), 0)])
    _xml(anns / "unknown.xml", objects=[("cat", (5, 5, 30, 30), 0), ("thing", (1, 1, 20, 20), 0)])
    _xml(anns / "empty.xml", objects=[])
    _xml(anns / "doctype.xml", body='<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">]><annotation/>')
    _xml(anns / "noimage.xml")
    _image(images / "noxml.jpg")


EXPECTED = {  # stem -> (kind, text in its line)
    "truncated": ("skipped", "JPEG is truncated before any image data"),
    "cut": ("fixed", "JPEG is truncated (no end-of-image marker): used as decoded"),
    "zero": ("skipped", "empty file (0 bytes)"),
    "text": ("skipped", "is a text file"),
    "pngjpg": ("fixed", "PNG data in a .jpg file"),
    "gray16": ("fixed", "converted 16-bit PNG to 8-bit"),
    "malformed": ("skipped", "malformed XML"),
    "nosize": ("fixed", "no <size> in XML"),
    "wrongsize": ("fixed", "annotation says 500x375 but the image is 64x48"),
    "nonnumeric": ("fixed", "non-numeric xmin"),
    "outside": ("fixed", "entirely outside"),
    "clipped": ("fixed", "reaching outside the image (clipped)"),
    "zeroarea": ("fixed", "2 box(es) with zero or negative area"),
    "unknown": ("fixed", "not in the class list (not used): cat x1"),
    "doctype": ("skipped", "DOCTYPE/ENTITY declaration"),
    "noimage": ("skipped", "its image is missing"),
    "noxml": ("skipped", "image has no annotation"),
}


@pytest.fixture(scope="module")
def bad_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    _bad_dataset(root)
    return load_split(root, "all", classes=["thing"])


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_bad_input_line(bad_index, stem):
    kind, text = EXPECTED[stem]
    lines = [p for p in bad_index.problems if f"{os.sep}{stem}." in p]
    assert len(lines) == 1, (stem, bad_index.problems)
    assert lines[0].startswith(kind + ":") and text in lines[0], lines[0]


def test_bad_dataset_counts_and_records(bad_index, tmp_path):
    by_id = {r.image_id: r for r in bad_index.records}
    assert set(by_id) == {"good", "difficult", "cut", "pngjpg", "gray16", "nosize", "wrongsize", "nonnumeric",
                          "outside", "clipped", "zeroarea", "unknown", "empty"}
    assert bad_index.skipped == sum(kind == "skipped" for kind, _ in EXPECTED.values())
    assert bad_index.fixed == sum(kind == "fixed" for kind, _ in EXPECTED.values())
    assert bad_index.background == 1 and bad_index.unknown_objects == {"cat": 1}
    np.testing.assert_array_equal(by_id["clipped"].boxes, [[0, 5, W, 30]])
    assert (by_id["wrongsize"].width, by_id["wrongsize"].height) == (W, H)  # the real size wins
    assert len(by_id["zeroarea"].boxes) == len(by_id["outside"].boxes) == len(by_id["nonnumeric"].boxes) == 1
    assert by_id["difficult"].difficult.tolist() == [True, False]  # kept, flagged, for evaluation
    boxes, labels = bad_index.training_targets(list(by_id).index("difficult"))
    assert len(boxes) == 1 and labels.dtype == np.int64 and boxes.dtype == np.float32
    summary = bad_index.summary("x.txt")
    assert summary.startswith("13 images (1 background), 10 fixed, 7 skipped") and "(see x.txt)" in summary
    written = bad_index.write_problems(tmp_path).read_text()
    assert all(line in written for line in bad_index.problems)


def test_evaluation_index_keeps_unreadable_images_and_raw_objects(tmp_path):
    """keep_unreadable (evaluation): an image that cannot be read stays, its objects as annotated count as missed;
    an annotation that cannot be read has no objects to count and is still skipped. Truth is the XML as written."""
    _bad_dataset(tmp_path)
    index = load_split(tmp_path, "all", classes=["thing"], keep_unreadable=True)
    by_id = {r.image_id: r for r in index.records}
    unreadable = {"truncated", "zero", "text", "noimage"}
    assert {r.image_id for r in index.unreadable} == unreadable
    assert set(by_id) == unreadable | {"good", "difficult", "cut", "pngjpg", "gray16", "nosize", "wrongsize",
                                       "nonnumeric", "outside", "clipped", "zeroarea", "unknown", "empty"}
    for stem in unreadable:
        lines = [p for p in index.problems if f"{os.sep}{stem}." in p]
        assert len(lines) == 1 and lines[0].startswith("unreadable: ") and "(its 1 object counts as missed)" in lines[0]
        assert by_id[stem].image_error in lines[0] and len(by_id[stem].boxes) == 0  # no training targets
    assert by_id["noimage"].path.suffix == ".xml"  # no image file to name: the annotation is named
    assert index.skipped == 3  # malformed and doctype (no objects readable), noxml (an image without annotation)
    np.testing.assert_array_equal(by_id["clipped"].ground_truth().boxes, [[-10, 5, 80, 30]])  # not clipped
    np.testing.assert_array_equal(by_id["zeroarea"].ground_truth().boxes,
                                  [[10, 10, 10, 30], [20, 20, 5, 40], [1, 1, 20, 20]])  # not dropped
    assert by_id["zeroarea"].ground_truth().boxes.dtype == np.float64
    assert by_id["difficult"].ground_truth().difficult.tolist() == [True, False]
    assert index.ground_truth_summary() == ("all: 17 images, 4 unreadable (their 4 objects count as missed), "
                                            "19 objects (1 difficult, not scored)")
    assert "4 unreadable" in index.summary()


def test_keep_empty_false_drops_background(tmp_path):
    _bad_dataset(tmp_path)
    index = load_split(tmp_path, "all", classes=["thing"], keep_empty=False)
    assert "empty" not in {r.image_id for r in index.records}


def test_split_generation_is_deterministic_and_disjoint():
    ids = [f"{i:06d}" for i in range(200)]
    a, b = make_splits(ids, seed=0), make_splits(list(reversed(ids)), seed=0)
    assert a == b
    assert a != make_splits(ids, seed=1)
    assert len(a["test"]) == 20 and len(a["val"]) == 18 and len(a["train"]) == 162
    assert set(a["train"]) | set(a["val"]) == set(a["trainval"]) and not set(a["trainval"]) & set(a["test"])


def _voc_year(root: Path, n: int) -> Path:
    year = root / "VOC2007"
    (year / "JPEGImages").mkdir(parents=True)
    (year / "Annotations").mkdir()
    for i in range(n):
        _image(year / "JPEGImages" / f"{i:06d}.jpg")
        _xml(year / "Annotations" / f"{i:06d}.xml", objects=[("dog" if i % 2 else "cat", (5, 5, 30, 30), 0)])
    return year


def test_missing_voc_split_is_made_in_memory_and_recorded_in_the_run_folder(tmp_path):
    """One split policy: a VOC folder without ImageSets/Main gets its split made in memory (seed 0), nothing is written
    into the dataset, and write_split records the members in the run folder."""
    year = _voc_year(tmp_path / "data", 30)
    before = sorted(p.relative_to(year) for p in year.rglob("*"))
    train = load_split(tmp_path / "data", "train")
    assert sorted(p.relative_to(year) for p in year.rglob("*")) == before  # nothing written into the dataset
    assert [r.image_id for r in train.records] == make_splits([f"{i:06d}" for i in range(30)])["train"]
    assert train.classes == ["cat", "dog"] and train.source_format == "voc" and train.pixel_offset == 1.0
    written = train.write_split(tmp_path / "run")
    assert written == tmp_path / "run" / "splits" / "train.txt"
    assert read_split_file(written) == [f"VOC2007/JPEGImages/{r.image_id}.jpg" for r in train.records]
    test = load_split(tmp_path / "data", "test")
    assert not {r.image_id for r in train.records} & {r.image_id for r in test.records}
    assert load_split(tmp_path / "data", "trainval").records[0].path.parent == year / "JPEGImages"


def test_stated_splits_are_not_recorded(tmp_path):
    from tests.synthetic import make_voc

    index = load_split(make_voc(tmp_path / "voc", images=3), "train")
    assert index.made_split is None and index.write_split(tmp_path / "run") is None
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores read-only permissions")
def test_read_only_voc_behaves_as_a_writable_one(tmp_path):
    writable = load_split(_voc_year(tmp_path / "rw", 20).parent, "val")
    year = _voc_year(tmp_path / "ro", 20)
    year.chmod(0o555)
    try:
        index = load_split(tmp_path / "ro", "val")
    finally:
        year.chmod(0o755)
    assert len(index) == 2 and [r.image_id for r in index.records] == [r.image_id for r in writable.records]
    assert index.made_split == writable.made_split


def test_unsafe_xml_not_expanded(tmp_path):
    """A billion-laughs file is refused before parsing (no memory blow-up), with a message."""
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    _image(tmp_path / "images" / "a.jpg")
    laughs = '<!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">' + "".join(
        f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(8)) + "]>"
    _xml(tmp_path / "annotations" / "a.xml", body=laughs + "<annotation><filename>&i;</filename></annotation>")
    _image(tmp_path / "images" / "b.jpg")
    _xml(tmp_path / "annotations" / "b.xml")
    index = load_split(tmp_path, "all")
    assert len(index) == 1 and "DOCTYPE/ENTITY" in index.problems[0]


@needs_shared
def test_raccoon_loads_all_200():
    index = load_split(RACCOON, "all")
    assert len(index) == 200 and index.classes == ["raccoon"] and index.skipped == 0
    assert index.fixed == 3 and all("grayscale" in p for p in index.problems)  # the 3 grayscale images
    split = {s: {r.image_id for r in load_split(RACCOON, s).records} for s in ("train", "val", "test")}
    assert sum(map(len, split.values())) == 200 and not split["train"] & split["test"]


@needs_shared
@pytest.mark.parametrize("split", ["train", "val"])
def test_tiny_coco_keeps_every_annotation(split):
    content = json.loads((TINY_COCO / "annotations" / f"instances_{split}2017.json").read_text())
    index = load_split(TINY_COCO, split)
    assert len(index) == len(content["images"])
    assert sum(len(r.boxes) for r in index.records) == len(content["annotations"])
    assert sum(int(r.difficult.sum()) for r in index.records) == sum(a["iscrowd"] for a in content["annotations"])
    categories = sorted(content["categories"], key=lambda c: c["id"])
    assert index.classes == [c["name"] for c in categories]
    contiguous = {c["id"]: i for i, c in enumerate(categories)}
    by_coco_id = {r.coco_id: r for r in index.records}
    for ann in content["annotations"][:50]:
        assert contiguous[ann["category_id"]] in by_coco_id[ann["image_id"]].labels
    annotated = {a["image_id"] for a in content["annotations"]}
    assert index.background == len({i["id"] for i in content["images"]} - annotated)


def test_overlapping_split_files_are_reported(tmp_path, caplog):
    """Split files that put an image in train and val: validation would score training images; training warns."""
    from types import SimpleNamespace

    from tests.synthetic import make_voc
    from utils.data.index import shared_images
    from utils.train.trainer import Trainer

    data = make_voc(tmp_path, images=4, splits={"train": [0, 1, 2], "val": [2, 3]})
    train, val = load_split(data, "train"), load_split(data, "val")
    assert [p.name for p in shared_images(train, val)] == ["img002.jpg"]
    trainer = SimpleNamespace(config=SimpleNamespace(train_split="train", val_split="val"), train_index=train,
                              val_index=val, main=True)
    Trainer._check_split_leak(trainer)
    assert "1 image(s) of the 'val' split are also in the 'train' split" in caplog.text
    caplog.clear()
    trainer.config.val_split = "train"  # asked for explicitly: no warning
    Trainer._check_split_leak(trainer)
    assert "also in" not in caplog.text
