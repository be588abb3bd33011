"""The bundled synthetic VOC sample: determinism, valid VOC annotations, tight boxes, committed copy in sync."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.paths import ROOT
from utils.data import sample_data
from utils.data.sample_data import CLASSES, README_TITLE, add_object, generate, main

COMMITTED = ROOT / "VOCdevkit"


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def read_objects(xml_path: Path) -> tuple[tuple[int, int], list[dict]]:
    root = ET.parse(xml_path).getroot()
    size = (int(root.findtext("size/height")), int(root.findtext("size/width")))
    objects = [{"name": o.findtext("name"), "difficult": int(o.findtext("difficult")),
                "truncated": int(o.findtext("truncated")),
                "box": [int(o.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")]}
               for o in root.iter("object")]
    return size, objects


def test_same_seed_gives_identical_bytes(tmp_path):
    generate(tmp_path / "a", seed=3, images=6)
    generate(tmp_path / "b", seed=3, images=6)
    generate(tmp_path / "c", seed=4, images=6)
    first, second, other = (files_of(tmp_path / n) for n in "abc")
    assert len(first) == 6 * 2 + 4 + 1  # jpg + xml per image, four split files, README
    assert first == second
    assert first["VOC2007/JPEGImages/000001.jpg"] != other["VOC2007/JPEGImages/000001.jpg"]


def test_annotations_are_valid_voc_and_splits_partition(tmp_path):
    splits = generate(tmp_path, seed=0, images=12)
    voc = tmp_path / "VOC2007"
    ids = sorted(p.stem for p in (voc / "JPEGImages").glob("*.jpg"))
    assert sorted(p.stem for p in (voc / "Annotations").glob("*.xml")) == ids
    for name, split in splits.items():
        assert (voc / "ImageSets" / "Main" / f"{name}.txt").read_text().split() == split
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == ids
    assert splits["trainval"] == sorted(splits["train"] + splits["val"])
    assert not set(splits["test"]) & set(splits["trainval"])
    for image_id in ids:
        (height, width), objects = read_objects(voc / "Annotations" / f"{image_id}.xml")
        assert cv2.imread(str(voc / "JPEGImages" / f"{image_id}.jpg")).shape == (height, width, 3)
        assert 320 <= min(height, width) and max(height, width) <= 512
        for obj in objects:
            xmin, ymin, xmax, ymax = obj["box"]
            assert obj["name"] in CLASSES
            assert 1 <= xmin < xmax <= width and 1 <= ymin < ymax <= height  # VOC 1-based, inclusive
            assert obj["truncated"] or not obj["difficult"]  # only border-cut objects are difficult here


def painted_extent(canvas: np.ndarray, grey: int) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) continuous pixel edges of every pixel that differs from the flat `grey` canvas."""
    ys, xs = np.nonzero((canvas != grey).any(axis=2))
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


@pytest.mark.parametrize("seed", range(6))
def test_box_is_tight_around_the_painted_shape(seed):
    """Reference: the extent of the pixels that painting changed, on a flat canvas."""
    rng = np.random.default_rng(seed)
    for _ in range(4):
        canvas = np.full((360, 420, 3), 128, np.uint8)
        obj = add_object(rng, canvas, [])
        assert obj is not None
        painted = painted_extent(canvas, 128)
        box = (obj.box[0] - 1, obj.box[1] - 1, obj.box[2], obj.box[3])  # VOC 1-based -> continuous
        # Inside the painted area, missing at most the faint anti-aliased rim (up to 2 px at sharp triangle tips).
        assert all(painted[i] <= box[i] <= painted[i] + 2 for i in (0, 1))
        assert all(painted[i] - 2 <= box[i] <= painted[i] for i in (2, 3))


def test_box_uses_voc_one_based_inclusive_indices(monkeypatch):
    """A hard-edged (not anti-aliased) shape gives an exact reference for the VOC convention."""
    mask = np.zeros((40, 40), np.uint8)
    mask[5:30, 8:36] = 255
    monkeypatch.setattr(sample_data, "shape_mask", lambda rng, name, size: mask)
    rng = np.random.default_rng(0)
    for _ in range(10):
        canvas = np.full((330, 350, 3), 128, np.uint8)
        obj = add_object(rng, canvas, [])
        x1, y1, x2, y2 = painted_extent(canvas, 128)
        assert obj.box == (x1 + 1, y1 + 1, x2, y2)  # first pixel index + 1 ... last pixel index + 1


def test_sample_has_backgrounds_difficult_and_every_class(tmp_path):
    generate(tmp_path, seed=0, images=40)
    per_image = [read_objects(p)[1] for p in sorted((tmp_path / "VOC2007" / "Annotations").glob("*.xml"))]
    objects = [o for image in per_image for o in image]
    assert sum(not image for image in per_image) >= 1
    assert all(len(image) <= 5 for image in per_image)
    assert {o["name"] for o in objects} == set(CLASSES)
    assert any(o["difficult"] for o in objects)
    sides = [min(o["box"][2] - o["box"][0], o["box"][3] - o["box"][1]) + 1 for o in objects if not o["truncated"]]
    assert 20 <= min(sides) and max(sides) <= 200


def test_regenerating_replaces_own_sample_but_refuses_foreign_data(tmp_path):
    generate(tmp_path / "ours", images=8)
    generate(tmp_path / "ours", images=4)
    assert len(list((tmp_path / "ours" / "VOC2007" / "JPEGImages").glob("*.jpg"))) == 4  # no stale files
    foreign = tmp_path / "real" / "VOC2007" / "Annotations"
    foreign.mkdir(parents=True)
    (foreign / "000005.xml").write_text("<annotation/>")
    with pytest.raises(FileExistsError, match="did not write"):
        generate(tmp_path / "real", images=4)
    assert (foreign / "000005.xml").exists()


def test_cli(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--images", "3", "--seed", "1"]) == 0
    assert "wrote 3 images" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--images", "2"])


@pytest.mark.skipif(not (COMMITTED / "README.md").is_file()
                    or not (COMMITTED / "README.md").read_text().startswith(README_TITLE),
                    reason="VOCdevkit/ holds user data, not the bundled sample")
def test_committed_sample_matches_generator(tmp_path):
    command = re.search(r"--seed (\d+) --images (\d+) --quality (\d+)", (COMMITTED / "README.md").read_text())
    seed, images, quality = map(int, command.groups())
    generate(tmp_path, seed=seed, images=images, quality=quality)
    fresh, committed = files_of(tmp_path), files_of(COMMITTED)
    assert fresh.keys() == committed.keys(), "regenerate with the command in VOCdevkit/README.md"
    for name, data in fresh.items():
        if name.endswith(".jpg"):  # another JPEG encoder build may differ in bits, never visibly
            diff = np.abs(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).astype(np.int16)
                          - cv2.imdecode(np.frombuffer(committed[name], np.uint8), cv2.IMREAD_COLOR))
            assert diff.mean() < 1.0, name
        else:
            assert data == committed[name], f"{name} differs: regenerate with the command in VOCdevkit/README.md"
    assert sum(len(d) for d in committed.values()) < 3_000_000


def test_small_objects_profile_draws_many_small_shapes_on_large_canvases(tmp_path):
    sample_data.generate(tmp_path, seed=0, images=3, profile=sample_data.SMALL_OBJECTS)
    assert "--small-objects" in (tmp_path / "README.md").read_text()
    for xml in sorted((tmp_path / "VOC2007" / "Annotations").glob("*.xml")):
        (height, width), objects = read_objects(xml)
        assert 1280 <= min(height, width) and max(height, width) <= 1920
        if not objects:  # the one background image
            continue
        assert 15 <= len(objects) <= 50
        sides = [max(o["box"][2] - o["box"][0], o["box"][3] - o["box"][1]) + 1 for o in objects if not o["truncated"]]
        assert 14 <= min(sides) and max(sides) <= 50


def test_video_truth_is_the_painted_extent_and_deterministic(tmp_path):
    video, truth = sample_data.generate_video(tmp_path / "a", seed=2, frames=30, shapes=4)
    _, again = sample_data.generate_video(tmp_path / "b", seed=2, frames=30, shapes=4)
    assert truth.read_bytes() == again.read_bytes()
    capture = cv2.VideoCapture(str(video))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 30
    capture.release()
    rows = [line.split(",") for line in truth.read_text().splitlines()]
    assert rows and all(len(r) == 9 and 1 <= int(r[0]) <= 30 and 1 <= int(r[1]) <= 4 for r in rows)
    assert all(float(r[8]) >= 0.4995 if r[6] == "1" else float(r[8]) <= 0.5 for r in rows)  # 3 decimals written
    # Reference: on a flat background, the pixels a lone fully visible shape changes span its truth box.
    rng = np.random.default_rng(7)
    shapes = sample_data.moving_shapes(rng, 60, 1)
    frame = next(f for f in range(60) if sample_data.video_truth(shapes, f)
                 and sample_data.video_truth(shapes, f)[0].visibility == 1.0)
    flat = np.full((*sample_data.VIDEO_SIZE, 3), 128, np.uint8)
    for shape in shapes:
        sample_data.blend(flat, shape.mask, shape.colour, *shape.corner(frame))
    x1, y1, x2, y2 = painted_extent(flat, 128)
    box = sample_data.video_truth(shapes, frame)[0].box
    assert x1 <= box[0] <= x1 + 2 and y1 <= box[1] <= y1 + 2 and x2 - 2 <= box[2] <= x2 and y2 - 2 <= box[3] <= y2


def test_video_truth_lowers_visibility_of_a_covered_shape():
    mask = np.zeros((20, 20), np.uint8)
    mask[2:18, 2:18] = 255
    colour = np.zeros((20, 20, 3), np.float32)
    first = sample_data.MovingShape(1, "square", mask, colour, 0, (100.0, 100.0), (0.0, 0.0))
    second = sample_data.MovingShape(2, "square", mask, colour, 0, (108.0, 100.0), (0.0, 0.0))  # covers half of it
    rows = {row.track_id: row for row in sample_data.video_truth([first, second], 0)}
    assert rows[1].visibility == 0.5 and rows[2].visibility == 1.0 and rows[1].scored and rows[2].scored
    edge = sample_data.MovingShape(3, "square", mask, colour, 0, (-12.0, 50.0), (0.0, 0.0))  # 6 of 16 columns in
    assert sample_data.video_truth([edge], 0)[0].visibility == pytest.approx(6 / 16)


def test_video_cli(tmp_path, capsys):
    assert main(["--video", "--out", str(tmp_path), "--frames", "3", "--shapes", "2"]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "shapes_gt.txt").is_file()


def test_video_frames_as_voc_carry_the_video_truth(tmp_path):
    """--video --as-voc: every n-th frame of the same video with its truth rows as VOC objects (1-based boxes,
    difficult where the tracking scores ignore the row), byte-identical for the same seed."""
    _, truth = sample_data.generate_video(tmp_path / "video", seed=3, frames=20, shapes=6)
    assert main(["--video", "--as-voc", "--out", str(tmp_path / "a"), "--seed", "3", "--frames", "20",
                 "--shapes", "6", "--every", "5"]) == 0
    sample_data.generate_video_dataset(tmp_path / "b", seed=3, frames=20, shapes=6, every=5)
    voc, again = tmp_path / "a" / "VOC2007", tmp_path / "b" / "VOC2007"
    assert sorted(p.name for p in (voc / "JPEGImages").iterdir()) == [f"{f:06d}.jpg" for f in (1, 6, 11, 16)]
    assert all(p.read_bytes() == (again / p.relative_to(voc)).read_bytes() for p in voc.rglob("*") if p.is_file())
    rows = [line.split(",") for line in truth.read_text().splitlines()]
    for frame in (1, 6, 11, 16):
        objects = ET.parse(voc / "Annotations" / f"{frame:06d}.xml").findall("object")
        expected = sorted((CLASSES[int(r[7])], int(r[2]) + 1, int(r[3]) + 1, int(r[2]) + int(r[4]),
                           int(r[3]) + int(r[5]), r[6] == "0") for r in rows if int(r[0]) == frame)
        found = sorted((o.findtext("name"), *(int(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")),
                        o.findtext("difficult") == "1") for o in objects)
        assert found == expected
    splits = {name: (voc / "ImageSets" / "Main" / f"{name}.txt").read_text().split() for name in ("trainval", "test")}
    assert sorted(splits["trainval"] + splits["test"]) == ["000001", "000006", "000011", "000016"]
    assert (tmp_path / "a" / "README.md").read_text().startswith(README_TITLE)
