"""Hostile data files against the data layer: what each one costs (seconds, peak memory) and what comes out of it.

Each case runs in its own child process (memory capped with RLIMIT_AS, time with a timeout) on a small dataset
written here; the child's own peak resident memory comes from benchmarks.peak_memory (wait4 through a small
launcher, so this script's size does not count). Prints one JSON line per case: exit code, seconds (child start
to end, imports included), peak RSS in MiB (the imports alone take ~600 MiB: torch),
whether a Python traceback was printed, the case's own figures (problem lines, images indexed, mAP of perfect
detections, `refused` when the data layer refused it with a UserError (the tools' one `error:` line),
`case_seconds` without the imports) and the last output line.

Cases: yaml_bomb (a 1 KB data.yaml whose aliases expand to 10^9 names), deep_json (100000 nested arrays as an
instances json), nan_coco (a NaN box among the good ones of each image; mAP50 / mAP50-95 of detections equal to the
good boxes), inf_xml_size, category_without_id, million_rows (a 14 MB YOLO label file of 1,000,000 repeated rows),
odd_names (12 images named with spaces, tabs, newlines, dashes, no split files: images over train+val+test),
glob_loop (predict.py's --source 'dir/**' over 8 images with a link loop), killed_convert (utils.convert SIGKILLed
after 5 of 20 images: images the destination then offers to training).

Usage: python benchmarks/bench_hostile_data.py [--root REPO] [--cases ...] [--memory-gib 4] [--timeout 120]
(--root runs the code of another checkout, e.g. `git worktree add /tmp/before <commit>`, to measure before/after.)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if not __package__:  # run as `python benchmarks/bench_hostile_data.py`: the repository root is not on sys.path yet
    sys.path.insert(0, str(ROOT))

from benchmarks.peak_memory import run_with_peak_rss  # noqa: E402

CHILD = r'''
import json, logging, sys, time
from pathlib import Path
logging.disable(logging.CRITICAL)
case, data = sys.argv[1], Path(sys.argv[2])
from utils.common.errors import UserError
from utils.data.index import load_split


def run():
    if case in ("yaml_bomb", "deep_json", "inf_xml_size", "category_without_id", "million_rows"):
        target = {"yaml_bomb": data / "data.yaml", "deep_json": data / "instances_x.json",
                  "category_without_id": data / "annotations" / "instances_x.json"}.get(case, data)
        index = load_split(target, "all")
        return {"images": len(index.records), "problem_lines": len(index.problems)}
    if case == "nan_coco":
        import numpy as np
        from utils.eval.evaluation import compute_metrics
        clean = load_split(data / "clean" / "annotations" / "instances_x.json", "all", keep_unreadable=True)
        hostile = load_split(data / "hostile" / "annotations" / "instances_x.json", "all", keep_unreadable=True)
        detections = [np.column_stack([r.ground_truth().boxes, np.full(len(r.ground_truth().boxes), 0.9),
                                       r.ground_truth().labels]) for r in clean.records]
        result = {}
        for name, index in (("clean", clean), ("hostile", hostile)):
            metrics, _ = compute_metrics(detections, index, index.classes)
            result[name] = {k: metrics[k] for k in ("mAP50", "mAP50_95", "objects")}
        return result
    if case == "odd_names":
        names = [r.path.stem for split in ("train", "val", "test") for r in load_split(data, split).records]
        return {"images_over_splits": len(names), "distinct": len(set(names))}
    if case == "glob_loop":
        from utils.deploy.sources import open_source
        return {"inputs": len(open_source(str(data / "images" / "**")).paths)}
    index = load_split(data / "out", "train")  # killed_convert
    return {"images_offered_to_training": len(index.records)}


start = time.perf_counter()  # the case itself: imports (torch, cv2) excluded
try:
    result = run()
except UserError as err:  # what the command-line tools print as their one `error:` line
    print(f"error: {err}")
    result = {"refused": str(err)[-160:]}
result["case_seconds"] = round(time.perf_counter() - start, 3)
print("RESULT " + json.dumps(result))
'''

KILLED_CONVERT = r'''
import os, shutil, signal, sys
real, copied = shutil.copyfile, []
def copyfile(src, dst, *args, **kwargs):
    if len(copied) == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    copied.append(dst)
    return real(src, dst, *args, **kwargs)
shutil.copyfile = copyfile
sys.argv = ["utils.convert", *sys.argv[1:]]
from utils.data.convert import main
main()
'''


def _image(path: Path, size: tuple[int, int] = (48, 64)) -> None:
    import cv2
    import numpy as np
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((*size, 3), 200, np.uint8))


def _xml(stem: str, box: tuple, width: str = "64") -> str:
    return (f"<annotation><filename>{stem}.jpg</filename><size><width>{width}</width><height>48</height></size>"
            f"<object><name>thing</name><bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax>"
            f"<ymax>{box[3]}</ymax></bndbox></object></annotation>")


def _coco(root: Path, annotations: list[str], categories: str = '[{"id": 1, "name": "thing"}]') -> None:
    images = []
    for i in range(1, 5):
        _image(root / "images" / f"{i}.jpg")
        images.append(f'{{"id": {i}, "file_name": "{i}.jpg", "width": 64, "height": 48}}')
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "instances_x.json").write_text(
        f'{{"images": [{", ".join(images)}], "annotations": [{", ".join(annotations)}], "categories": {categories}}}')


def _good(i: int) -> str:
    return f'{{"id": {i}, "image_id": {i}, "category_id": 1, "bbox": [{4 + i}, 5, 20, 18], "area": 360, "iscrowd": 0}}'


def _yolo(root: Path, rows: str) -> None:
    _image(root / "images" / "a.jpg")
    (root / "labels").mkdir(parents=True)
    (root / "labels" / "a.txt").write_text(rows)


def build(case: str, data: Path, root: Path) -> list[str] | None:
    """Write the case's dataset under `data`; returns a command to run first (killed_convert), else None."""
    if case == "yaml_bomb":
        _yolo(data, "0 0.5 0.5 0.2 0.2\n")
        lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
        lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
        (data / "data.yaml").write_text("\n".join(lines) + "\ntrain: images\nval: images\nnames: *a8\n")
    elif case == "deep_json":
        _image(data / "images" / "a.jpg")
        (data / "instances_x.json").write_text("[" * 100_000 + "]" * 100_000)
    elif case == "nan_coco":
        _coco(data / "clean", [_good(i) for i in range(1, 5)])
        nan = [f'{{"id": {10 + i}, "image_id": {i}, "category_id": 1, "bbox": [NaN, 5, 9, 9], "area": 81, '
               '"iscrowd": 0}' for i in range(1, 5)]
        _coco(data / "hostile", [_good(i) for i in range(1, 5)] + nan)
    elif case in ("inf_xml_size", "odd_names"):
        names = (["a", "b"] if case == "inf_xml_size" else
                 ["with space", "tab\there", "new\nline", "-leading-dash", "--rf", " padded ", "quote\"d",
                  "back\\slash", "percent%20", "ünï cödé", "semi;colon", "plain"])
        year = data / "VOC2007" if case == "odd_names" else data
        for i, name in enumerate(names):
            _image(year / ("JPEGImages" if case == "odd_names" else "images") / f"{name}.jpg")
            xml = year / ("Annotations" if case == "odd_names" else "annotations") / f"{name}.xml"
            xml.parent.mkdir(parents=True, exist_ok=True)
            xml.write_text(_xml(name, (2 + i, 3, 30, 30), "inf" if (case, i) == ("inf_xml_size", 0) else "64"))
    elif case == "category_without_id":
        _coco(data, [_good(i) for i in range(1, 5)], '[{"name": "thing"}]')
    elif case == "million_rows":
        _yolo(data, "0 .5 .5 .1 .1\n" * 1_000_000)
        _image(data / "images" / "b.jpg")  # a good image beside it: the split stays usable
        (data / "labels" / "b.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    elif case == "glob_loop":
        for i, name in enumerate("abcdefgh"):
            _image(data / "images" / ("sub" if i >= 4 else "") / f"{name}.jpg")
        (data / "images" / "sub" / "loop").symlink_to("..")
    elif case == "killed_convert":
        src = data / "src"
        for i in range(20):
            _image(src / "JPEGImages" / f"{i:03d}.jpg")
            (src / "Annotations").mkdir(parents=True, exist_ok=True)
            (src / "Annotations" / f"{i:03d}.xml").write_text(_xml(f"{i:03d}", (2, 3, 30, 30)))
        return [sys.executable, "-c", KILLED_CONVERT, "--to", "yolo", str(src), str(data / "out")]
    return None


CASES = ("yaml_bomb", "deep_json", "nan_coco", "inf_xml_size", "category_without_id", "million_rows", "odd_names",
         "glob_loop", "killed_convert")


def run_case(case: str, root: Path, memory_gib: float, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"hostile_{case}_") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        first = build(case, data, root)
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root), PYTHONIOENCODING="utf-8")
        if first is not None:
            subprocess.run(first, cwd=root, env=env, capture_output=True, timeout=timeout)
        limit = int(memory_gib * 2 ** 30)

        def cap() -> None:  # in the child, before exec: a case that explodes hits the cap, not the machine
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        log = Path(tmp) / "out.txt"
        with open(log, "wb") as sink:
            measured = run_with_peak_rss([sys.executable, "-c", CHILD, case, str(data)], cwd=root, env=env,
                                         stdout=sink, timeout=timeout, preexec_fn=cap)
        output = log.read_text(encoding="utf-8", errors="replace")
    result = next((json.loads(line[7:]) for line in output.splitlines() if line.startswith("RESULT ")), None)
    lines = [line for line in output.splitlines() if line.strip()]
    code = "timeout" if measured.exit_code is None else measured.exit_code
    return {"bench": "hostile_data", "case": case, "root": str(root), "exit": code,
            "seconds": round(measured.seconds, 2), "peak_rss_mib": round(measured.peak_rss_bytes / 2**20),
            "traceback": "Traceback" in output, "result": result, "last_line": lines[-1][:300] if lines else ""}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose code runs (default: this one)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--memory-gib", type=float, default=4.0, help="address-space cap of each child")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a child is killed")
    args = parser.parse_args(argv)
    for case in args.cases:
        print(json.dumps(run_case(case, args.root.resolve(), args.memory_gib, args.timeout)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
