"""Fault suite, untrusted input (issue 12): paths inside datasets that leave them, FIFOs and device files, decompression
bombs in every image format, COCO splits that leak, duplicated or dangling COCO entries. Each class is tried through
the loaders in-process (cheap) and through the command-line tools; the CLI test prints its fault counts as JSON.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.fault_helpers import TRAIN_FAST, cli_many
from tests.synthetic import make_voc
from utils.common.errors import UserError
from utils.common.image_io import ImageBudgetError, ImageReadError, declared_size, probe_image, read_image
from utils.common.paths import UnsafePathError, check_user_path, is_regular_file, resolve_inside
from utils.data.index import load_split

SECRET = "TOP-SECRET-CONTENT-42"


def png_bomb(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit PNG of width x height zero pixels: a few KB to a few hundred KB on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def header_bombs(folder: Path) -> dict[str, Path]:
    """Small files whose headers declare 100000 x 100000 pixels, in each format OpenCV decodes by content."""
    big = 100_000
    bmp = b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, big, big, 1, 24, 0, 0, 0, 0,
                                                                      0, 0)
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 2) + struct.pack("<HHII", 256, 4, 1, big) \
        + struct.pack("<HHII", 257, 4, 1, big) + b"\x00\x00\x00\x00"
    webp = b"RIFF" + struct.pack("<I", 22) + b"WEBPVP8X" + struct.pack("<I", 10) + b"\x00" * 4 \
        + (16_000_000).to_bytes(3, "little") + (16_000_000).to_bytes(3, "little")
    files = {"bmp": bmp + b"\x00" * 64, "tif": tiff + b"\x00" * 64, "webp": webp, "ppm": b"P6\n100000 100000\n255\n",
             "gif": b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00" * 16}
    paths = {}
    for kind, data in files.items():
        paths[kind] = folder / f"bomb.{kind}"
        paths[kind].write_bytes(data)
    paths["png"] = png_bomb(folder / "bomb.png", 20000, 20000)
    return paths


def test_every_format_is_refused_before_decoding(tmp_path):
    bombs = header_bombs(tmp_path)
    for kind, path in bombs.items():
        assert declared_size(path.read_bytes()) is not None, kind
        for reader in (read_image, probe_image):
            with pytest.raises(ImageBudgetError) as info:
                reader(path)
            message = str(info.value)
            assert str(path) in message and "--max-pixels" in message and "pixel budget" in message, message
    fine = tmp_path / "fine.png"
    cv2.imwrite(str(fine), np.zeros((20, 30, 3), np.uint8))
    assert read_image(fine).shape == (20, 30, 3)


def test_budget_is_raised_by_the_environment(tmp_path, monkeypatch):
    bomb = png_bomb(tmp_path / "b.png", 2000, 2000)
    monkeypatch.setenv("YOLO_MAX_PIXELS", "1000000")
    with pytest.raises(ImageBudgetError):
        probe_image(bomb)
    monkeypatch.setenv("YOLO_MAX_PIXELS", str(2000 * 2000))
    assert probe_image(bomb)[:2] == (2000, 2000)


def test_text_files_are_never_quoted(tmp_path):
    fake = tmp_path / "x.jpg"
    fake.write_text(f"{SECRET}\nroot:x:0:0\n")
    with pytest.raises(ImageReadError) as info:
        read_image(fake)
    assert SECRET not in str(info.value) and "text file" in str(info.value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo (POSIX)")
def test_fifo_and_device_files_are_never_opened(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    assert not is_regular_file(fifo) and not is_regular_file("/dev/zero")
    for reader in (read_image, probe_image):  # opening a FIFO would block this test forever
        with pytest.raises(ImageReadError, match="not a regular file"):
            reader(fifo)
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(UnsafePathError, match="--weights"):
            check_user_path(path, "--weights")
    with pytest.raises(UnsafePathError, match="FIFO"):
        resolve_inside(tmp_path, "pipe.jpg", "test")


def test_resolve_inside_refuses_every_way_out(tmp_path):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "ok.jpg").write_bytes(b"x")
    (tmp_path / "secret.jpg").write_text(SECRET)
    (root / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    (root / "dirlink").symlink_to(tmp_path)
    assert resolve_inside(root, "sub/ok.jpg", "t") == (root / "sub" / "ok.jpg").resolve()
    assert resolve_inside(root, "sub/../sub/ok.jpg", "t") == (root / "sub" / "ok.jpg").resolve()
    for bad in ("../secret.jpg", "sub/../../secret.jpg", str(tmp_path / "secret.jpg"), "/etc/passwd", "link.jpg",
                "dirlink/secret.jpg", "", "a\x00b", "\\\\server\\share\\x.jpg" if os.name == "nt" else "/"):
        with pytest.raises(UnsafePathError) as info:
            resolve_inside(root, bad, "instances.json: image id 1 file_name")
        assert "instances.json: image id 1 file_name" in str(info.value) and SECRET not in str(info.value)


def coco_dataset(root: Path, images: list[tuple[int, str]], annotations: list[dict] | None = None,
                 name: str = "instances_all.json") -> Path:
    """<root>/annotations/<name> listing `images` (id, file_name); <root>/images/ holds 64x48 images for plain
    names; one box per image unless `annotations` is given."""
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    for _, file_name in images:
        if "/" not in file_name and not (folder / file_name).exists():
            cv2.imwrite(str(folder / file_name), np.full((48, 64, 3), 200, np.uint8))
    if annotations is None:
        annotations = [{"id": i + 1, "image_id": coco_id, "category_id": 1, "bbox": [5, 5, 20, 20], "area": 400,
                        "iscrowd": 0} for i, (coco_id, _) in enumerate(images)]
    content = {"images": [{"id": i, "file_name": f, "width": 64, "height": 48} for i, f in images],
               "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}
    path = root / "annotations" / name
    path.write_text(json.dumps(content))
    return path


def test_coco_paths_outside_the_dataset_are_refused_and_never_echoed(tmp_path):
    (tmp_path / "secret.jpg").write_text(SECRET)
    images = [(1, "a.jpg"), (2, "../../secret.jpg"), (3, str(tmp_path / "secret.jpg")), (4, "/dev/zero"), (5, "b.jpg")]
    json_path = coco_dataset(tmp_path / "coco", images)
    for keep_unreadable in (False, True):  # training and evaluation both skip them
        index = load_split(json_path, "all", keep_unreadable=keep_unreadable)
        assert sorted(r.coco_id for r in index.records) == [1, 5]
        refused = [line for line in index.problems if "unsafe path" in line]
        assert len(refused) == 3 and index.refused == 3
        assert not any(SECRET in line for line in index.problems)
    assert "3 refused" in index.ground_truth_summary()


def test_voc_split_ids_cannot_leave_the_annotations_folder(tmp_path):
    data = make_voc(tmp_path / "voc", images=3)
    outside = tmp_path / "voc" / "VOC2007" / ".." / ".." / "evil.xml"
    outside.write_text("<annotation><object><name>" + SECRET + "</name></object></annotation>")
    split = data / "VOC2007" / "ImageSets" / "Main" / "train.txt"
    split.write_text("img000\n../../../evil\n/etc/passwd\nimg001\n")
    index = load_split(data, "train")
    assert [r.image_id for r in index.records] == ["img000", "img001"]
    refused = [line for line in index.problems if "unsafe path" in line]
    assert len(refused) == 2 and all(str(split) in line for line in refused)
    assert not any(SECRET in line for line in index.problems)


def test_coco_json_pairs_with_its_siblings_and_never_leaks(tmp_path):
    root = tmp_path / "coco"
    train = coco_dataset(root, [(i, f"t{i}.jpg") for i in range(1, 7)], name="instances_train2017.json")
    coco_dataset(root, [(i, f"v{i}.jpg") for i in range(10, 13)], name="instances_val2017.json")
    assert {r.path.name for r in load_split(train, "val").records} == {"v10.jpg", "v11.jpg", "v12.jpg"}
    assert len(load_split(train, "train").records) == 6
    with pytest.raises(UserError, match="instances_test"):
        load_split(train, "test")
    single = coco_dataset(tmp_path / "one", [(i, f"i{i}.jpg") for i in range(1, 41)], name="instances_x.json")
    splits = {name: {r.coco_id for r in load_split(single, name, keep_unreadable=name != "train").records}
              for name in ("train", "val", "test")}
    assert splits["train"] and splits["val"] and splits["test"]
    assert not (splits["train"] & splits["val"]) and not (splits["train"] & splits["test"])
    assert not (splits["val"] & splits["test"]) and len(set.union(*splits.values())) == 40


def test_coco_dangling_and_duplicated_entries_get_a_line_each(tmp_path):
    images = [(1, "a.jpg"), (2, "b.jpg"), (2, "c.jpg"), (3, "a.jpg")]
    annotations = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20]},
                   {"id": 1, "image_id": 2, "category_id": 1, "bbox": [1, 1, 9, 9]},
                   {"id": 2, "image_id": 99, "category_id": 1, "bbox": [1, 1, 9, 9]},
                   {"id": 3, "image_id": 77, "category_id": 1, "bbox": [1, 1, 9, 9]}]
    index = load_split(coco_dataset(tmp_path, images, annotations), "all")
    assert sorted(r.coco_id for r in index.records) == [1, 2]
    problems = "\n".join(index.problems)
    assert problems.count("repeats image id 2") == 1 and problems.count("lists the file of image id 1") == 1
    assert problems.count("repeats annotation id 1") == 1
    assert "image id 99" in problems and "image id 77" in problems


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo (POSIX)")
def test_command_line_tools_survive_untrusted_input(tmp_path):
    """Bombs in train/eval/predict, hostile COCO paths in train, FIFOs given as --weights/--names/--source/--data:
    every tool finishes (or refuses with one line) within its timeout, without traceback or leaked content."""
    data = make_voc(tmp_path / "voc", images=4, size=(48, 64))
    jpeg = data / "VOC2007" / "JPEGImages"
    (jpeg / "img000.jpg").unlink()
    png_bomb(jpeg / "img000.png", 20000, 20000)
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    shutil.copy(jpeg / "img001.jpg", pictures / "ok.jpg")
    png_bomb(pictures / "bomb.png", 20000, 20000)
    (tmp_path / "secret.jpg").write_text(SECRET)
    coco = coco_dataset(tmp_path / "coco", [(1, "a.jpg"), (2, "../../secret.jpg"), (3, "b.jpg"), (4, "/dev/zero")])
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    logs = tmp_path / "logs"
    weights = logs / "train" / "last.pth"
    first = cli_many([("train.py", ["--data", data, "--epochs", "1", "--save-dir", logs, "--name", "train",
                                    *TRAIN_FAST]),
                      ("train.py", ["--data", coco, "--train-split", "all", "--val-split", "all", "--epochs", "1",
                                    "--save-dir", logs, "--name", "coco", *TRAIN_FAST])])
    cases = {"eval bomb": ("eval.py", ["--weights", weights, "--data", data, "--split", "val", "--device", "cpu",
                                       "--workers", "0", "--save-dir", logs, "--name", "eval"]),
             "predict bomb": ("predict.py", ["--weights", weights, "--source", pictures, "--device", "cpu",
                                             "--save-dir", logs, "--name", "predict"]),
             "fifo weights": ("predict.py", ["--weights", fifo, "--source", pictures, "--device", "cpu"]),
             "fifo names": ("eval.py", ["--weights", weights, "--names", fifo, "--data", data, "--device", "cpu"]),
             "fifo source": ("predict.py", ["--weights", weights, "--source", fifo, "--device", "cpu"]),
             "fifo data": ("train.py", ["--data", fifo, "--save-dir", logs, *TRAIN_FAST])}
    results = dict(zip(["train bomb", "train coco"], first, strict=True))
    results.update(zip(cases, cli_many(list(cases.values())), strict=True))
    failures = []
    for name, result in results.items():
        refused = name.startswith("fifo")
        ok = (result.returncode == 1 and "FIFO" in result.stdout) if refused else result.returncode == 0
        if not ok or "Traceback" in result.stdout or SECRET in result.stdout:
            failures.append(f"{name}: exit {result.returncode}\n{result.stdout[-2000:]}")
    assert not failures, "\n\n".join(failures)
    problems = (logs / "train" / "data_problems_train.txt").read_text()
    assert "pixel budget" in problems and "--max-pixels" in problems
    coco_problems = (logs / "coco" / "data_problems_all.txt").read_text()
    assert coco_problems.count("unsafe path") == 2 and SECRET not in coco_problems
    metrics = json.loads((logs / "eval" / "metrics.json").read_text())
    assert "1 unreadable" in metrics["summary"]
    assert "skipped" in results["predict bomb"].stdout and "1 image(s)" in results["predict bomb"].stdout
    print("untrusted input:", json.dumps({"injected": len(results), "survived": len(results) - len(failures),
                                          "lost": 0, "leaked_content": 0}))


def test_every_predict_input_gets_its_own_outputs(tmp_path):
    """predict.py --source 'dir/**/*.*' over a/img.jpg, b/img.jpg, a/img.png: three images, three label files, and
    crops of hostile class names inside crops/ (in-process: a random model, --conf 0 so every image has boxes)."""
    import predict
    from tests.synthetic import write_weights
    from utils.model.config import ModelConfig, build_model

    for relative, suffix in (("a/img", ".jpg"), ("b/img", ".jpg"), ("a/img", ".png")):
        (tmp_path / "dir" / relative).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "dir" / f"{relative}{suffix}"),
                    np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    classes = ["../../../evil", "Évent", "évent", "2"]
    config = ModelConfig(classes=classes, input_shape=(64, 64))
    weights = write_weights(tmp_path / "w.pth", build_model(config).state_dict(), config)
    out = tmp_path / "out"
    assert predict.main(["--weights", str(weights), "--source", str(tmp_path / "dir" / "**" / "*.*"), "--device",
                         "cpu", "--conf", "0.0", "--max-det", "4", "--save-txt", "--save-crop",
                         "--save-dir", str(tmp_path), "--name", "out"]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert [w for w in written if not w.startswith(("labels/", "crops/"))] == ["a/img.jpg", "a/img.png", "b/img.jpg"]
    assert [w for w in written if w.startswith("labels/")] == ["labels/a/img_jpg.txt", "labels/a/img_png.txt",
                                                               "labels/b/img.txt"]
    crops = [p for p in out.rglob("*") if p.is_file() and "crops" in p.parts]
    assert crops and all(p.resolve().is_relative_to((out / "crops").resolve()) for p in crops)
    assert not (tmp_path / "evil").exists() and not any(tmp_path.glob("*evil*"))


def test_class_names_first_then_indices_and_commas(caplog):
    import predict

    names = ["a,b", "x", "0", "dog"]
    assert predict.class_filter(["a,b"], names) == [0]  # a whole name with a comma
    assert predict.class_filter(["x,dog"], names) == [1, 3]
    assert predict.class_filter(["0"], names) == [2]  # the class named "0", not index 0
    assert "names come first" in caplog.text
    assert predict.class_filter(["1"], names) == [1]  # no class named "1": an index


@pytest.mark.parametrize("old, new", [
    ("classes=1\n", "classes=1000000000000\n"), ("width=64\n", "width=1000000\n"), ("height=64\n", "height=100\n"),
    ("classes=1\n", "classes=-3\n"), ("mask=3,4,5\n", "mask=3,4,99\n"), ("classes=1\n", "classes=1e400\n"),
])
def test_absurd_darknet_cfg_values_are_refused_before_allocating(tmp_path, old, new):
    from utils.model.config import ModelConfig
    from utils.model.darknet import DarknetFormatError, read_darknet_cfg, write_cfg

    cfg = write_cfg(ModelConfig(classes=["a"], input_shape=(64, 64)), tmp_path / "x.cfg")
    text = cfg.read_text()
    assert old in text
    cfg.write_text(text.replace(old, new))
    with pytest.raises(DarknetFormatError) as info:
        read_darknet_cfg(cfg)
    assert str(cfg) in str(info.value) and len(str(info.value)) < 300


def test_huge_darknet_cfg_file_is_refused_unread(tmp_path):
    from utils.model.darknet import DarknetFormatError, read_darknet_cfg

    cfg = tmp_path / "big.cfg"
    with open(cfg, "wb") as handle:
        handle.truncate(50 * 2 ** 20)  # sparse: 50 MB declared, nothing written
    with pytest.raises(DarknetFormatError, match="too large"):
        read_darknet_cfg(cfg)
