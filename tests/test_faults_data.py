"""Fault suite, hostile data files (reliability issue, data classes): parsers bounded against YAML alias bombs and
deep JSON, non-finite and non-numeric values in every format, volume (a million-row label file), names that break
line-based split files, link loops under image folders and in predict.py globs, and a utils.convert killed halfway.

Each class is tried in-process on its variants (cheap), then through the command-line tools in one slow test that
prints its fault counts as JSON (`python -m pytest -q tests/test_faults_data.py -s`).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.fault_helpers import ROOT, TRAIN_FAST, child_env, cli_many
from tests.synthetic import make_voc, make_yolo, voc_xml
from utils.common.errors import ConfigError, DatasetError
from utils.common.paths import glob_files, walk_files
from utils.common.safe_load import JsonFileError, load_json, load_yaml
from utils.data.annotations import MAX_CLASSES, MAX_NOTES_SHOWN, MAX_OBJECTS, AnnotationError
from utils.data.convert import convert, stated_splits
from utils.data.formats import coco
from utils.data.index import UNFINISHED_MARKER, load_split, read_split_file
from utils.eval.evaluation import compute_metrics
from utils.train.run_config import read_config_file

NON_FINITE = ["nan", "inf", "-inf", "1e999", "NaN"]  # as text; JSON gets NaN / Infinity / -Infinity / 1e999 / "NaN"
JSON_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity", "1e999": "1e999", "NaN": '"NaN"'}
ODD_NAMES = ["with space", "tab\there", "new\nline", "-leading-dash", "--rf", " padded ", "quote\"d", "back\\slash",
             "percent%20", "ünï cödé", "semi;colon", "plain"]


def _image(path: Path, size: tuple[int, int] = (48, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((*size, 3), 200, np.uint8))
    return path


def alias_bomb(levels: int = 9) -> str:
    """A YAML of about 1 KB whose aliases expand to 10^levels values (the YAML billion laughs)."""
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\ntrain: images/train\nval: images/train\nnames: *a{levels - 1}\n"


# ---------------------------------------------------------------------------------------------------- parsers
@pytest.mark.parametrize("text, expected", [
    (alias_bomb(), "aliases expand to more than"),
    ("names: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than"),
    ("a: &a [1, *a]\n", "refers to its own anchor"),
    ("x: &x {k: [1, 2]}\n" + "".join(f"y{i}: {{<<: *x, j{i}: {i}}}\n" for i in range(3)), None),  # merge keys: fine
], ids=["alias bomb", "deep", "recursive alias", "merge keys"])
def test_yaml_is_read_with_bounds(tmp_path, text, expected):
    path = tmp_path / "data.yaml"
    path.write_text(text)
    if expected is None:
        assert load_yaml(path)["y2"] == {"k": [1, 2], "j2": 2}
        return
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=expected) as info:
        load_yaml(path)
    # refused while composing: a bomb of 10^9 values costs what its first million do (well under a second alone)
    assert str(path) in str(info.value) and time.perf_counter() - start < 10


def test_every_yaml_reader_goes_through_the_bounded_loader(tmp_path):
    """data.yaml (load_split), args.yaml / --config recipes (read_config_file): one loader, one kind of refusal."""
    root = tmp_path / "ds"
    make_yolo(root, images=1)
    (root / "data.yaml").write_text(alias_bomb())
    with pytest.raises(ConfigError, match="aliases expand"):
        load_split(root / "data.yaml", "train")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(alias_bomb().replace("names:", "epochs:"))
    with pytest.raises(ConfigError, match=r"--config .*recipe.yaml: refused: its aliases expand"):
        read_config_file(recipe, {"epochs", "train", "val"})
    (root / "data.yaml").write_text("train: images/train\nval: images/train\nnames: {.inf: a, 0: b}\n")
    with pytest.raises(ConfigError, match="'names' keys must be class ids"):  # int(inf) was an OverflowError
        load_split(root / "data.yaml", "train")


@pytest.mark.parametrize("body", ["[" * 100_000 + "]" * 100_000, '{"images": ' * 50_000 + "1" + "}" * 50_000],
                         ids=["arrays", "objects"])
def test_deep_json_is_one_line(tmp_path, body):
    path = tmp_path / "instances_x.json"
    path.write_text(body)
    with pytest.raises(JsonFileError, match="nested too deeply"):
        load_json(path)
    _image(tmp_path / "images" / "a.jpg")
    with pytest.raises(AnnotationError, match="nested too deeply") as info:
        load_split(path, "all")
    assert str(path) in str(info.value) and len(str(info.value).splitlines()) == 1


def coco_json(root: Path, annotations: list[str], images: str | None = None, categories: str | None = None) -> Path:
    """<root>/annotations/instances_x.json written as raw JSON text (so NaN, Infinity, 1e999 stay as written),
    images/a.jpg and images/b.jpg (64x48)."""
    for name in ("a.jpg", "b.jpg"):
        _image(root / "images" / name)
    images = images or ('[{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}, '
                        '{"id": 2, "file_name": "b.jpg", "width": 64, "height": 48}]')
    categories = categories or '[{"id": 1, "name": "thing"}]'
    path = root / "annotations" / "instances_x.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'{{"images": {images}, "annotations": [{", ".join(annotations)}], "categories": {categories}}}')
    return path


GOOD = ['{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20], "area": 400, "iscrowd": 0}',
        '{"id": 2, "image_id": 2, "category_id": 1, "bbox": [30, 10, 20, 30], "area": 600, "iscrowd": 0}']


def _assert_finite(index) -> None:
    for record in index.records:
        assert np.isfinite(record.ground_truth().boxes).all() and np.isfinite(record.boxes).all()


@pytest.mark.parametrize("value", NON_FINITE)
def test_non_finite_coco_values_are_broken_annotations(tmp_path, value):
    literal = JSON_NON_FINITE[value]
    broken = [f'{{"id": 3, "image_id": 1, "category_id": 1, "bbox": [{literal}, 5, 10, 10]}}',
              f'{{"id": 4, "image_id": 2, "category_id": 1, "bbox": [1, 1, 10, 10], "area": {literal}}}',
              f'{{"id": 5, "image_id": 2, "category_id": {literal}, "bbox": [1, 1, 10, 10]}}']
    path = coco_json(tmp_path, GOOD + broken,
                     images='[{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}, '
                            f'{{"id": 2, "file_name": "b.jpg", "width": {literal}, "height": 48}}]')
    index = load_split(path, "all", keep_unreadable=True)
    problems = "\n".join(index.problems)
    assert "annotation 3 has an invalid bbox (not 4 finite numbers; dropped)" in problems
    assert "annotation 4 has a non-finite or non-numeric area" in problems
    assert "annotation 5 has no whole-number category_id" in problems
    assert "width/height in the json are not positive whole numbers" in problems
    assert "clipped" not in problems
    _assert_finite(index)
    assert sorted(len(r.ground_truth().boxes) for r in index.records) == [1, 1]
    truth = coco.ground_truth(path, [1, 2])  # what pycocotools scores: the same entries the index kept
    assert [a["bbox"] for a in truth["annotations"]] == [[5, 5, 20, 20], [30, 10, 20, 30]]
    _same_metrics_as_clean(tmp_path, index)


def _same_metrics_as_clean(tmp_path, index) -> None:
    """Detections equal to the good boxes score as on the json without the broken annotations: a NaN box neither
    hides nor adds an object (it took mAP50 from 0.06 to 0, and mAP50-95 up, before)."""
    clean = load_split(coco_json(tmp_path / "clean", GOOD), "all", keep_unreadable=True)
    detections = [np.column_stack([r.ground_truth().boxes, np.full(len(r.ground_truth().boxes), 0.9),
                                   r.ground_truth().labels]) for r in clean.records]
    expected, _ = compute_metrics(detections, clean, clean.classes)
    metrics, _ = compute_metrics(detections, index, index.classes)
    assert metrics["mAP50"] == expected["mAP50"] == pytest.approx(1.0)
    assert metrics["mAP50_95"] == expected["mAP50_95"] and metrics["objects"] == expected["objects"] == 2


@pytest.mark.parametrize("value", NON_FINITE)
def test_non_finite_voc_values_are_broken_objects(tmp_path, value):
    _image(tmp_path / "images" / "a.jpg")
    _image(tmp_path / "images" / "b.jpg")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "a.xml").write_text(voc_xml("a", 64, 48, [("thing", (value, 5, 30, 30)),
                                                                         ("thing", (1, 1, 20, 20))]))
    (tmp_path / "annotations" / "b.xml").write_text(voc_xml("b", 64, 48, [("thing", (1, 1, 20, 20))]).replace(
        "<width>64</width>", f"<width>{value}</width>"))
    index = load_split(tmp_path, "all")  # an inf <width> was an OverflowError traceback
    lines = {Path(line.split(":")[1].strip()).stem: line for line in index.problems}
    assert "non-finite xmin (dropped)" in lines["a"] and "clipped" not in lines["a"]
    assert "unreadable <size> in XML (used the real image size)" in lines["b"]
    assert len(index) == 2 and sum(len(r.boxes) for r in index.records) == 2
    _assert_finite(index)


@pytest.mark.parametrize("value", NON_FINITE + ["1e300x", "0x10"])
def test_non_finite_yolo_values_are_broken_rows(tmp_path, value):
    yaml_path = make_yolo(tmp_path, images=1, splits=("train",))
    label = tmp_path / "labels" / "train" / "img000.txt"
    good = label.read_text()
    label.write_text(good + f"0 {value} 0.5 0.2 0.2\n1 0.5 0.5 {value} 0.1\n{value} 0.5 0.5 0.1 0.1\n")
    index = load_split(yaml_path, "train")
    lines = [p for p in index.problems if str(label) in p]
    assert len(lines) == 3 and all("line skipped" in line for line in lines), lines
    assert len(index.records[0].ground_truth().boxes) == len(good.splitlines())
    _assert_finite(index)


@pytest.mark.parametrize("category, expected", [
    ('[{"name": "thing"}, {"id": 1, "name": "thing"}]', "categories[0] has no whole-number 'id'"),
    ('[{"id": "one", "name": "thing"}, {"id": 1, "name": "thing"}]', "categories[0] has no whole-number 'id'"),
    ('[{"id": 1, "name": "thing"}, {"id": 1.0, "name": "again"}]', "categories[1] repeats category id 1"),
    ('[{"id": 1, "name": ["x"]}, {"id": 1, "name": "thing"}]', "categories[0] has no whole-number 'id' and text"),
])
def test_coco_entries_without_ids_are_lines(tmp_path, category, expected):
    """A category without an id (was a KeyError traceback), ids that are text, lists or NaN: one line each."""
    odd = ['{"id": [1], "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9]}',  # unhashable id
           '{"id": 9, "image_id": "1", "category_id": 1, "bbox": [1, 1, 9, 9]}', '"not an object"']
    images = ('[{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}, {"file_name": "b.jpg"}, '
              '{"id": NaN, "file_name": "b.jpg"}, {"id": 2, "file_name": 7}]')
    index = load_split(coco_json(tmp_path, GOOD[:1] + odd, images, category), "all")
    problems = "\n".join(index.problems)
    assert expected in problems and problems.count("has no whole-number 'id' and text 'file_name'") == 3
    assert problems.count("has no whole-number 'image_id'") == 2
    assert [r.coco_id for r in index.records] == [1] and index.classes == ["thing"]


# ---------------------------------------------------------------------------------------------------- volume
def test_million_row_label_file_is_one_line_and_bounded(tmp_path):
    yaml_path = make_yolo(tmp_path, images=2, splits=("train",))
    label = tmp_path / "labels" / "train" / "img000.txt"
    label.write_text("0 .5 .5 .1 .1\n" * 1_000_000)  # 14 MB: under the byte limit
    tracemalloc.start()
    index = load_split(yaml_path, "train", keep_unreadable=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    lines = [p for p in index.problems if str(label) in p]
    assert len(lines) == 1 and f"more than {MAX_OBJECTS} objects" in lines[0], lines
    assert peak < 150 << 20, f"{peak / 2**20:.0f} MiB"  # the text itself is 14 MB; no per-row growth past the limit


def test_repeated_rows_are_summarised_per_file(tmp_path):
    yaml_path = make_yolo(tmp_path, images=1, splits=("train",))
    label = tmp_path / "labels" / "train" / "img000.txt"
    label.write_text("0 .5 .5 .1 .1\n" * (MAX_OBJECTS - 1) + "x .5 .5 .1 .1\n")
    index = load_split(yaml_path, "train")
    lines = [p for p in index.problems if str(label) in p]
    assert len(lines) == MAX_NOTES_SHOWN + 1
    assert lines[-1].endswith(f"and {MAX_OBJECTS - 2 - MAX_NOTES_SHOWN + 1} more like these (repeated row "
                              f"x{MAX_OBJECTS - 2 - MAX_NOTES_SHOWN}, non-numeric value x1)"), lines[-1]
    assert len(index.records[0].boxes) == 1  # the repeats train once


def test_object_limit_in_xml_and_coco(tmp_path):
    _image(tmp_path / "voc" / "images" / "a.jpg")
    (tmp_path / "voc" / "annotations").mkdir()
    (tmp_path / "voc" / "annotations" / "a.xml").write_text(voc_xml("a", 64, 48, [("t", ("x", 1, 9, 9))] * 20)
                                                           .replace("<object>", "<object>", 1))
    index = load_split(tmp_path / "voc", "all", keep_unreadable=True)
    assert len([p for p in index.problems if "non-numeric xmin" in p]) == 1  # 20 notes, one line
    assert f"and {20 - MAX_NOTES_SHOWN} more like these (non-numeric coordinate x{20 - MAX_NOTES_SHOWN})" in (
        index.problems[0])
    many = voc_xml("a", 64, 48, [("t", (1, 1, 9, 9))] * (MAX_OBJECTS + 1))
    (tmp_path / "voc" / "annotations" / "a.xml").write_text(many)
    _image(tmp_path / "voc" / "images" / "b.jpg")
    (tmp_path / "voc" / "annotations" / "b.xml").write_text(voc_xml("b", 64, 48, [("t", (1, 1, 9, 9))]))
    index = load_split(tmp_path / "voc", "all")
    assert any(f"more than {MAX_OBJECTS} objects" in p and "a.xml" in p for p in index.problems)
    crowd = [f'{{"id": {i}, "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9]}}' for i in range(MAX_OBJECTS + 1)]
    index = load_split(coco_json(tmp_path / "coco", crowd + GOOD[1:]), "all")
    assert [r.coco_id for r in index.records] == [2]
    assert any(f"image id 1 has {MAX_OBJECTS + 1} annotations" in p for p in index.problems)


def test_class_lists_are_bounded_before_a_model_is_built(tmp_path):
    """A data.yaml of 20000 names, a COCO json of 20000 categories, a row with class id 10^12: each class widens the
    heads (10^5 classes: ~1 GB of weights), so the list is refused (or the row skipped) before a model is built."""
    yaml_path = make_yolo(tmp_path / "yolo", images=1)
    yaml_path.write_text("train: images/train\nval: images/val\nnames: [" + ", ".join(f"c{i}" for i in range(20_000))
                         + "]\n")
    with pytest.raises(DatasetError, match=f"20000 class names, more than the {MAX_CLASSES}"):
        load_split(yaml_path, "train")
    categories = "[" + ", ".join(f'{{"id": {i}, "name": "c{i}"}}' for i in range(1, 20_001)) + "]"
    with pytest.raises(DatasetError, match="20000 class names"):
        load_split(coco_json(tmp_path / "coco", GOOD, categories=categories), "all")
    yaml_path.write_text("train: images/train\nval: images/val\n")  # no names: class ids become the names
    label = tmp_path / "yolo" / "labels" / "train" / "img000.txt"
    label.write_text(label.read_text() + "1000000000000 0.5 0.5 0.1 0.1\n")
    index = load_split(yaml_path, "train")
    assert index.classes == ["0"] and any("larger than any dataset's" in p for p in index.problems)


# ---------------------------------------------------------------------------------------------------- names
def odd_voc(root: Path) -> Path:
    """A VOC2007 folder without ImageSets whose 12 file names hold spaces, tabs, newlines, leading dashes, ..."""
    year = root / "VOC2007"
    for i, name in enumerate(ODD_NAMES):
        _image(year / "JPEGImages" / f"{name}.jpg", (64, 64))
        (year / "Annotations").mkdir(parents=True, exist_ok=True)
        (year / "Annotations" / f"{name}.xml").write_text(
            voc_xml("x", 64, 64, [("red" if i % 2 else "blue", (4 + i, 4, 40, 40 + i))]), encoding="utf-8")
    return root


def test_odd_names_survive_the_in_memory_split(tmp_path):
    data = odd_voc(tmp_path / "voc")
    splits = {s: load_split(data, s) for s in ("train", "val", "test")}
    names = [r.path.stem for index in splits.values() for r in index.records]
    assert sorted(names) == sorted(ODD_NAMES)  # 12 of 12 (a line-based split file kept 9)
    for split, index in splits.items():
        written = index.write_split(tmp_path / "run")
        assert [Path(p).stem for p in read_split_file(written)] == [r.path.stem for r in index.records], split
    assert not (data / "VOC2007" / "ImageSets").exists()
    report = convert(data, tmp_path / "yolo", "yolo")
    assert report.images == 12 and len(load_split(tmp_path / "yolo", "all")) == 12


# ---------------------------------------------------------------------------------------------------- links
def looped_images(root: Path) -> Path:
    """root/images/{a..d}.jpg and images/sub/{e..h}.jpg, with images/sub/loop -> .. and images/again -> sub."""
    for i, name in enumerate("abcdefgh"):
        _image(root / "images" / ("sub" if i >= 4 else "") / f"{name}.jpg")
    (root / "images" / "sub" / "loop").symlink_to("..")
    (root / "images" / "again").symlink_to("sub")
    return root


@pytest.mark.skipif(os.name != "posix", reason="symbolic links")
def test_globs_and_walks_visit_each_folder_once(tmp_path):
    root = looped_images(tmp_path / "d")
    (tmp_path / "outside").mkdir()
    _image(tmp_path / "outside" / "z.jpg")
    (root / "images" / "out").symlink_to(tmp_path / "outside")
    files = [p.relative_to(root).as_posix() for p in glob_files(str(root / "images" / "**" / "*.jpg"))]
    assert files == sorted([f"images/{n}.jpg" for n in "abcd"] + [f"images/sub/{n}.jpg" for n in "efgh"] + [
        "images/out/z.jpg"])  # predict.py reads any folder the user points at; the loop and the alias are not followed
    refused: list[Path] = []
    inside = list(walk_files(root / "images", within=root, refused=refused))
    assert len(inside) == 8 and refused == [root / "images" / "out"]


@pytest.mark.skipif(os.name != "posix", reason="symbolic links")
def test_yolo_folder_with_a_link_loop_lists_each_image_once(tmp_path):
    root = looped_images(tmp_path / "ds")
    (root / "labels").mkdir()
    for image in (root / "images").rglob("*.jpg"):
        label = root / "labels" / image.relative_to(root / "images").with_suffix(".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "outside").mkdir()
    _image(tmp_path / "outside" / "z.jpg")
    (root / "images" / "out").symlink_to(tmp_path / "outside")
    index = load_split(root, "all")
    assert sorted(r.path.name for r in index.records) == [f"{n}.jpg" for n in "abcdefgh"]
    assert [p for p in index.problems if "outside the dataset" in p] == [
        f"skipped (unsafe path): {root / 'images' / 'out'}: a link to a folder outside the dataset folder "
        f"{root.resolve()}; not followed (keep every image inside the dataset)"]


# ---------------------------------------------------------------------------------------------------- convert
KILL_AFTER = r"""
import os, shutil, signal, sys
real, copied, limit = shutil.copyfile, [], int(sys.argv[1])
def copyfile(src, dst, *args, **kwargs):
    if len(copied) == limit:
        os.kill(os.getpid(), signal.SIGKILL)  # a real kill, halfway through the destination
    copied.append(dst)
    return real(src, dst, *args, **kwargs)
shutil.copyfile = copyfile
sys.argv = ["utils.convert", *sys.argv[2:]]
from utils.data.convert import main
sys.exit(main())
"""


def killed_convert(src: Path, dst: Path, after: int, to: str = "yolo") -> int:
    """Run `python -m utils.convert --to TO SRC DST`, SIGKILLed when it has copied `after` images."""
    process = subprocess.run([sys.executable, "-c", KILL_AFTER, str(after), "--to", to, str(src), str(dst)],
                             cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120)
    return process.returncode


def test_killed_convert_is_finished_by_the_same_command_and_never_trained_on(tmp_path):
    src = make_voc(tmp_path / "voc", images=20, splits={"train": list(range(16)), "val": [16, 17],
                                                        "test": [18, 19]})
    dst = tmp_path / "out"
    assert killed_convert(src, dst, after=5) == -signal.SIGKILL
    work = tmp_path / ".out.converting"
    assert not dst.exists() and (work / UNFINISHED_MARKER).is_file()  # nothing half-written under the name
    with pytest.raises(DatasetError, match="did not finish; re-run the same command"):
        load_split(work, "train")
    with pytest.raises(ConfigError, match=r"holds an unfinished conversion of .*voc to yolo; re-run that command"):
        convert(src, dst, "coco")  # another command: refused, the work folder kept
    report = convert(src, dst, "yolo")  # the same command: starts over and finishes
    assert report.images == 20 and not work.exists() and not (dst / UNFINISHED_MARKER).exists()
    manifest = json.loads((dst / "convert.json").read_text())
    assert manifest["complete"] and manifest["images"] == 20 and manifest["splits"] == {"train": 16, "val": 2,
                                                                                       "test": 2}
    assert sum(len(load_split(dst, s)) for s in stated_splits(dst)) == 20


# ---------------------------------------------------------------------------------------------------- CLI
@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="symbolic links and SIGKILL")
def test_command_line_tools_survive_hostile_data(tmp_path):
    """Through train.py, eval.py, predict.py and utils.convert: every class of hostile data file finishes or is
    refused with one `error:` line, within its timeout, without a traceback."""
    logs = tmp_path / "logs"
    names = odd_voc(tmp_path / "names")
    bomb = tmp_path / "bomb"
    make_yolo(bomb, images=1)
    (bomb / "data.yaml").write_text(alias_bomb())
    deep = coco_json(tmp_path / "deep", GOOD)
    deep.write_text("[" * 100_000 + "]" * 100_000)
    nan_coco = coco_json(tmp_path / "nan", GOOD + ['{"id": 3, "image_id": 1, "category_id": 1, "bbox": [NaN, 1, 9, '
                                                   '9]}', '{"id": 4, "image_id": 2, "category_id": 1, "bbox": [1, 1, '
                                                   '9, 1e999]}'], categories='[{"name": "x"}, {"id": 1, "name": '
                                                   '"red"}]')  # a class of the model trained below
    killed = make_voc(tmp_path / "src", images=20)
    assert killed_convert(killed, tmp_path / "conv", after=7) == -signal.SIGKILL
    pictures = looped_images(tmp_path / "pictures")
    train = ("train.py", ["--data", names, "--epochs", "1", "--save-dir", logs, "--name", "names", *TRAIN_FAST])
    refusals = {"yaml alias bomb": ("train.py", ["--data", bomb, "--save-dir", logs, *TRAIN_FAST]),
                "deep json": ("train.py", ["--data", deep, "--save-dir", logs, *TRAIN_FAST]),
                "half-written convert": ("train.py", ["--data", tmp_path / ".conv.converting", "--save-dir", logs,
                                                      *TRAIN_FAST])}
    results = dict(zip(["names", *refusals], cli_many([train, *refusals.values()]), strict=True))
    weights = logs / "names" / "last.pth"
    later = {"nan coco": ("eval.py", ["--weights", weights, "--data", nan_coco, "--split", "all", "--device", "cpu",
                                      "--workers", "0", "--save-dir", tmp_path, "--name", "eval_nan"]),
             "names eval": ("eval.py", ["--weights", weights, "--data", names, "--split", "test", "--device", "cpu",
                                        "--workers", "0", "--save-dir", tmp_path, "--name", "eval_names"]),
             "predict loop": ("predict.py", ["--weights", weights, "--source", str(pictures / "images" / "**"),
                                             "--device", "cpu", "--save-dir", tmp_path, "--name", "predict"])}
    results.update(zip(later, cli_many(list(later.values())), strict=True))
    start = time.perf_counter()
    rerun = subprocess.run([sys.executable, "-m", "utils.convert", "--to", "yolo", killed, tmp_path / "conv"],
                           cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=240)
    rerun_seconds = time.perf_counter() - start
    results["convert rerun"] = subprocess.CompletedProcess(rerun.args, rerun.returncode, rerun.stdout + rerun.stderr)
    failures = []
    for name, result in results.items():
        refused = name in refusals
        ok = (result.returncode == 1 and result.stdout.count("error: ") == 1) if refused else result.returncode == 0
        if not ok or "Traceback" in result.stdout:
            failures.append(f"{name}: exit {result.returncode}\n{result.stdout[-3000:]}")
    assert not failures, "\n\n".join(failures)
    bomb_output = results["yaml alias bomb"].stdout
    assert "aliases expand" in bomb_output and "batch-size" not in bomb_output  # not blamed on memory
    assert "nested too deeply" in results["deep json"].stdout
    assert "did not finish" in results["half-written convert"].stdout
    split_members = [read_split_file(logs / "names" / "splits" / f"{s}.txt") for s in ("train", "val")]
    split_members.append(read_split_file(tmp_path / "eval_names" / "splits" / "test.txt"))
    assert sorted(Path(m).stem for members in split_members for m in members) == sorted(ODD_NAMES)
    nan_metrics = json.loads((tmp_path / "eval_nan" / "metrics.json").read_text())
    assert nan_metrics["objects"] == 2  # the NaN and 1e999 boxes are reported, not scored
    predicted = int(re.search(r"(\d+) image\(s\)", results["predict loop"].stdout)[1])
    assert predicted == 8  # 8 images under a loop and an alias; glob.glob listed 1968
    assert len(load_split(tmp_path / "conv", "train")) == 20 and not (tmp_path / ".conv.converting").exists()
    counts = {"injected": len(results), "survived": len(results) - len(failures), "refused": len(refusals),
              "odd_names_kept": sum(map(len, split_members)), "of_odd_names": len(ODD_NAMES),
              "predict_inputs": predicted, "convert_rerun_s": round(rerun_seconds, 1)}
    print("hostile data:", json.dumps(counts))


@pytest.mark.slow  # two child processes that import torch
def test_bench_hostile_data_runs(capsys):
    """Smoke run of benchmarks/bench_hostile_data.py on two cheap cases (its figures are in the report, not here)."""
    from benchmarks import bench_hostile_data

    assert bench_hostile_data.main(["--cases", "inf_xml_size", "category_without_id", "--timeout", "120"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [line["case"] for line in lines] == ["inf_xml_size", "category_without_id"]
    assert all(line["exit"] == 0 and not line["traceback"] for line in lines), lines
    assert (lines[0]["result"]["images"], lines[0]["result"]["problem_lines"]) == (2, 1)  # the inf <width>: a line
    assert lines[1]["result"]["images"] == 4
