"""Garbage in: a generated images/ + annotations/ dataset in which about one file pair in five is broken, each in a
different way. train.py and eval.py must run to the end on it; their summary counts must match what was injected and
each problem must get exactly one line naming its file (data_problems_*.txt in the run folder, and the log).

Training skips an image it cannot read; evaluation keeps it and counts its objects as missed ("unreadable"), because a
metric must not change what it scores. A JPEG cut inside its image data is used as decoded by both.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks.peak_memory import run_with_peak_rss
from tests.fault_helpers import ROOT, TRAIN_FAST, child_env
from utils.data.index import make_splits

pytestmark = pytest.mark.slow
COLOURS = {"red": (0, 0, 230), "blue": (230, 0, 0)}  # BGR
H, W = 96, 128
PAIRS = 80  # annotated stems; broken ones take the first train stems
# kind -> (problem line kind or None when the file is handled without a problem line, words the line must contain)
BROKEN = {
    "truncated": ("skipped", ["JPEG is truncated before any image data"]),  # cut inside its headers
    "truncated_partial": ("fixed", ["JPEG is truncated", "used as decoded"]),  # cut inside its image data
    "zero_byte": ("skipped", ["empty file (0 bytes)"]),
    "text": ("skipped", ["is a text file"]),
    "png_named_jpg": ("fixed", ["PNG data in a .jpg file"]),
    "png16": ("fixed", ["converted 16-bit PNG to 8-bit"]),
    "cmyk": ("fixed", ["converted CMYK JPEG to RGB"]),
    "huge": (None, []),  # 12000 x 12000 JPEG: read at reduced resolution, no problem to report
    "not_xml": ("skipped", ["malformed XML"]),
    "empty_xml": ("skipped", ["empty XML file"]),
    "missing_fields": ("fixed", ["no <size> in XML", "has no <bndbox>"]),
    "non_numeric": ("fixed", ["non-numeric xmin"]),
    "outside": ("fixed", ["1 box(es) entirely outside", "1 box(es) reaching outside the image (clipped)"]),
    "degenerate": ("fixed", ["2 box(es) with zero or negative area"]),
    "unknown_class": ("fixed", ["not in the class list (not used): dog x1"]),
    "duplicate": ("fixed", ["1 duplicated object"]),
    "wrong_size": ("fixed", ["annotation says 640x480 but the image is 128x96"]),
    "no_objects": (None, []),  # kept as a background image
    "entity_bomb": ("skipped", ["DOCTYPE/ENTITY declaration"]),
    "no_image": ("skipped", ["its image is missing"]),
}
# eval.py keeps the images it cannot read: their objects count as missed
EVAL_BROKEN = {**BROKEN, **{kind: ("unreadable", BROKEN[kind][1] + ["(its 1 object counts as missed)"])
                            for kind in ("truncated", "zero_byte", "text", "no_image")}}
ORPHAN = "orphan_image"  # an image without annotation: reported in every split, as 'image has no annotation'


def _obj(name: str, box, with_box: bool = True) -> str:
    coords = "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True))
    box = f"<bndbox>{coords}</bndbox>" if with_box else ""
    return f"<object><name>{name}</name><difficult>0</difficult>{box}</object>"


def _xml(stem: str, objects: list[str], size=(W, H)) -> str:
    size_xml = ("" if size is None
                else f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    return f"<annotation><filename>{stem}.jpg</filename>{size_xml}{''.join(objects)}</annotation>"


def _scene(rng: np.random.Generator) -> tuple[np.ndarray, str, tuple[int, int, int, int]]:
    image = np.full((H, W, 3), rng.integers(150, 220), np.uint8)
    name = str(rng.choice(list(COLOURS)))
    x1, y1 = int(rng.integers(2, W - 50)), int(rng.integers(2, H - 50))
    box = (x1, y1, x1 + int(rng.integers(24, 46)), y1 + int(rng.integers(24, 46)))
    cv2.rectangle(image, box[:2], box[2:], COLOURS[name], -1)
    return image, name, box


def _write_broken(kind: str, stem: str, images: Path, anns: Path, rng: np.random.Generator) -> None:
    """Write the pair `stem` broken in the way `kind` names (everything else about it valid)."""
    image, name, box = _scene(rng)
    good = _obj(name, box)
    jpg, xml = images / f"{stem}.jpg", anns / f"{stem}.xml"
    cv2.imwrite(str(jpg), image)
    xml.write_text(_xml(stem, [good]), encoding="utf-8")
    if kind == "truncated":
        jpg.write_bytes(jpg.read_bytes()[:400])
    elif kind == "truncated_partial":
        jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size * 2 // 3])
    elif kind == "zero_byte":
        jpg.write_bytes(b"")
    elif kind == "text":
        jpg.write_text("<html><body>404 Not Found</body></html>\n", encoding="ascii")
    elif kind == "png_named_jpg":
        jpg.write_bytes(cv2.imencode(".png", image)[1].tobytes())
    elif kind == "png16":
        jpg.unlink()
        cv2.imwrite(str(images / f"{stem}.png"), image.astype(np.uint16) * 257)
    elif kind == "cmyk":  # OpenCV cannot write CMYK JPEGs; Pillow (a matplotlib dependency) can
        from PIL import Image
        Image.fromarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)).convert("CMYK").save(jpg, "JPEG", quality=90)
    elif kind == "huge":
        big = np.full((12000, 12000, 3), 180, np.uint8)
        cv2.rectangle(big, (3000, 3000), (7000, 6000), COLOURS["red"], -1)
        cv2.imwrite(str(jpg), big, [cv2.IMWRITE_JPEG_QUALITY, 50])
        del big
        xml.write_text(_xml(stem, [_obj("red", (3000, 3000, 7000, 6000))], size=(12000, 12000)), encoding="utf-8")
    elif kind == "not_xml":
        xml.write_text("this is not XML at all {\"boxes\": []}", encoding="utf-8")
    elif kind == "empty_xml":
        xml.write_bytes(b"")
    elif kind == "missing_fields":
        xml.write_text(_xml(stem, [good, _obj(name, box, with_box=False)], size=None), encoding="utf-8")
    elif kind == "non_numeric":
        xml.write_text(_xml(stem, [good, _obj(name, ("12px", 5, 40, 40))]), encoding="utf-8")
    elif kind == "outside":
        xml.write_text(_xml(stem, [good, _obj(name, (300, 300, 340, 340)), _obj(name, (-20, 10, 60, 50))]), "utf-8")
    elif kind == "degenerate":
        xml.write_text(_xml(stem, [good, _obj(name, (30, 30, 30, 60)), _obj(name, (50, 50, 20, 70))]), "utf-8")
    elif kind == "unknown_class":
        xml.write_text(_xml(stem, [good, _obj("dog", (5, 5, 40, 40))]), encoding="utf-8")
    elif kind == "duplicate":
        xml.write_text(_xml(stem, [good, good]), encoding="utf-8")
    elif kind == "wrong_size":
        xml.write_text(_xml(stem, [good], size=(640, 480)), encoding="utf-8")
    elif kind == "no_objects":
        xml.write_text(_xml(stem, []), encoding="utf-8")
    elif kind == "entity_bomb":
        bomb = '<!DOCTYPE a [<!ENTITY b "bbbbbbbbbb">' + "".join(
            f'<!ENTITY {chr(99 + i)} "{("&" + chr(98 + i) + ";") * 10}">' for i in range(8)) + "]>"
        xml.write_text(bomb + "<annotation><filename>&j;</filename></annotation>", encoding="utf-8")
    elif kind == "no_image":
        jpg.unlink()


@pytest.fixture(scope="module")
def garbage(tmp_path_factory):
    """(dataset root, {stem: kind}, splits): images/ + annotations/ with len(BROKEN) broken pairs among PAIRS + an
    orphan image."""
    root = tmp_path_factory.mktemp("garbage") / "data"
    images, anns = root / "images", root / "annotations"
    images.mkdir(parents=True)
    anns.mkdir()
    rng = np.random.default_rng(0)
    stems = [f"img{i:03d}" for i in range(PAIRS)]
    splits = make_splits(stems, seed=0)  # the split the loader makes in memory for this folder layout
    # the first len(BROKEN) train images are broken, one kind each; strict: the split must have room for them all
    kinds = dict(zip(splits["train"][:len(BROKEN)], BROKEN, strict=True))
    for stem in stems:
        _write_broken(kinds.get(stem, "good"), stem, images, anns, rng)
    cv2.imwrite(str(images / f"{ORPHAN}.jpg"), _scene(rng)[0])
    (root.parent / "classes.txt").write_text("blue\nred\n", encoding="utf-8")
    assert len(kinds) == len(BROKEN) and (len(BROKEN) + 1) / (PAIRS + 1) > 0.2
    return root, kinds, splits


def _run(script: str, *args, cwd: Path) -> tuple[int, str, float]:
    """(exit status, merged output, the command's own peak resident memory in GiB) of `python script args`."""
    log = cwd / f"{script}.out"
    with open(log, "wb") as sink:
        measured = run_with_peak_rss([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT,
                                     env=child_env(), stdout=sink)
    return measured.exit_code, log.read_text(encoding="utf-8", errors="replace"), measured.peak_rss_bytes / 2**30


def _problem_lines(lines: list[str], stem: str) -> list[str]:
    return [line for line in lines if re.search(rf"[/\\]{stem}\.\w+:", line)]


def _check_lines(lines: list[str], stems_kinds: dict[str, str], expectations: dict = BROKEN) -> dict[str, int]:
    """Exactly one line per broken stem with the expected kind and words; none for the rest. -> count per kind."""
    counts = {"fixed": 0, "skipped": 0, "unreadable": 0}
    for stem, kind in stems_kinds.items():
        expected, words = expectations.get(kind, (None, []))
        found = _problem_lines(lines, stem)
        if expected is None:
            assert not found, (stem, kind, found)
            continue
        assert len(found) == 1, (stem, kind, found)
        assert found[0].startswith(f"{expected}: ") and all(w in found[0] for w in words), (kind, found[0])
        counts[expected] += 1
    return counts


def test_train_and_eval_survive_garbage(garbage, tmp_path):
    root, kinds, splits = garbage
    classes = root.parent / "classes.txt"
    status, output, train_gib = _run("train.py", "--data", root, "--classes", classes, "--epochs", "1",
                                     "--save-dir", tmp_path / "logs", "--name", "run", *TRAIN_FAST, cwd=tmp_path)
    assert status == 0 and "Traceback" not in output, output[-4000:]
    run = tmp_path / "logs" / "run"
    lines = (run / "data_problems_train.txt").read_text(encoding="utf-8").splitlines()
    header, lines = lines[0], lines[1:]
    train_kinds = {stem: kinds.get(stem, "good") for stem in splits["train"]}
    counts = _check_lines(lines, train_kinds)
    fixed, skipped = counts["fixed"], counts["skipped"]
    orphan = _problem_lines(lines, ORPHAN)
    assert len(orphan) == 1 and orphan[0].startswith("skipped: ") and "image has no annotation" in orphan[0]
    assert len(lines) == fixed + skipped + 1, "a problem line names no injected fault"
    records = len(splits["train"]) - skipped
    summary = f"{records} images (1 background), {fixed} fixed, {skipped + 1} skipped"
    assert header.startswith(f"# {summary}"), header
    assert f"train data: {summary}" in output and "data_problems_train.txt" in output
    assert all(line in output for line in lines), "every problem line is also in the log"
    # eval.py over every annotated image of the folder
    status, output, eval_gib = _run("eval.py", "--weights", run / "last.pth", "--data", root, "--split", "all",
                                    "--device", "cpu", "--workers", "0", "--save-dir", str(tmp_path), "--name",
                                        "eval", cwd=tmp_path)
    assert status == 0 and "Traceback" not in output, output[-4000:]
    problem_lines = [line.strip() for line in output.splitlines()
                     if line.startswith(("fixed: ", "skipped: ", "unreadable: "))]
    every_stem = sorted(set().union(*splits.values()))
    found = _check_lines(problem_lines, {stem: kinds.get(stem, "good") for stem in every_stem}, EVAL_BROKEN)
    assert len(problem_lines) == sum(found.values()) + 1
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["images"] == PAIRS - found["skipped"]  # only annotations that cannot be read are left out
    assert metrics["unreadable_images"] == found["unreadable"] == 4 and metrics["unreadable_objects"] == 4
    assert f"all: {PAIRS - found['skipped']} images, 4 unreadable (their 4 objects count as missed)" in output
    assert metrics["unknown_objects"] == {"dog": 1}
    counts = {"injected": len(BROKEN) + 1, "survived": len(BROKEN) + 1,
              "reported": sum(found.values()) + 1, "handled_without_report": sum(BROKEN[k][0] is None for k in BROKEN),
              "train_peak_rss_gib": round(train_gib, 2), "eval_peak_rss_gib": round(eval_gib, 2)}
    print("garbage in:", json.dumps(counts))
    assert train_gib < 2 and eval_gib < 3, counts  # the 12000 x 12000 image must not blow memory up
