"""How well does `python train.py` learn from a small dataset, next to Ultralytics YOLOv8n / YOLO11n from scratch?

    python benchmarks/bench_learning.py --data ../raccoon_dataset --seeds 3 --epochs 40 --input-shape 320 \\
        --batch-size 8 --tools default,yolov5-assign,yolov8n,yolo11n --ultralytics-python ~/venvs/ultra/bin/python

1. The data: `python -m utils.convert --to yolo` makes a YOLO copy of --data inside the study folder, with the
   train/val/test lists of this project's split (seed 0, the split train.py and eval.py use), so every tool trains,
   validates and is tested on the same images.
2. Every tool x seed trains once at equal epochs, input size and batch, each otherwise with its own defaults:
   `default`, `reference` and `yolov5-assign` are this project's train.py with that --recipe (and
   --deterministic; utils/train/recipes.py); `yolov8n` and
   `yolo11n` are Ultralytics models built from their yaml without pretrained weights, trained in the environment of
   --ultralytics-python (a benchmark-only dependency: see docs/training.md). Runs are resumable: a finished run keeps
   its result.json, and the same command again only does what is missing.
3. One neutral scorer for all: each model's detections on the test images at conf 0.001 (each tool's own NMS
   defaults), boxes in original pixels, scored by pycocotools against the YOLO labels of those images (mAP50 = AP at
   IoU 0.5, mAP50-95 = COCO AP).

Prints JSON lines: one per run (mAP50, mAP50-95, training seconds, parameters, GFLOPs at the input size), one per
tool (mean and sample std over seeds), and for each tool against --baseline the mean difference paired by seed with
its 95% Student-t interval and verdict (utils/study/stats.py, as `python -m utils.ablate`). --markdown FILE also
writes the table. `--score RUN_DIR` (repeatable) trains nothing and scores finished train.py runs the same way, e.g.
the runs of a `python -m utils.ablate` study on the same data.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nets.summary import count_gflops, count_parameters  # noqa: E402
from utils.common.image_io import probe_image  # noqa: E402
from utils.data.formats.yolo import label_path  # noqa: E402
from utils.data.index import load_split  # noqa: E402
from utils.eval.metrics import coco_stats  # noqa: E402
from utils.runtime.loader import load_runnable  # noqa: E402
from utils.study.stats import mean_std, paired_difference  # noqa: E402

LOGGER = logging.getLogger("bench_learning")
SPLITS = ("train", "val", "test")
RESULT = "result.json"


@dataclass(frozen=True)
class Tool:
    """One contender: this project's train.py with a recipe, or an Ultralytics model yaml."""

    name: str
    recipe: str | None = None  # ours
    model_yaml: str | None = None  # Ultralytics


TOOLS = {tool.name: tool for tool in (
    Tool("default", recipe="default"), Tool("reference", recipe="reference"),
    Tool("yolov5-assign", recipe="yolov5-assign"),
    Tool("yolov8n", model_yaml="yolov8n.yaml"), Tool("yolo11n", model_yaml="yolo11n.yaml"),
)}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="VOCdevkit", help="dataset (anything train.py --data takes)")
    p.add_argument("--tools", default="default,yolov5-assign,yolov8n,yolo11n", help=f"of {', '.join(TOOLS)}")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per tool")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--input-shape", type=int, default=320, help="square input size of every tool")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--study", default="logs/learning", help="study folder; the same command again resumes it")
    p.add_argument("--baseline", default="yolov8n", help="tool the paired differences are taken against")
    p.add_argument("--ours-flags", default="", help="extra train.py flags for this project's runs, e.g. '--phi cbam'")
    p.add_argument("--ultralytics-python", default=os.environ.get("ULTRALYTICS_PYTHON"),
                   help="python of the environment with ultralytics (or $ULTRALYTICS_PYTHON); without it the "
                        "Ultralytics tools are skipped with a note")
    p.add_argument("--markdown", default=None, help="also write the summary table to this file")
    p.add_argument("--score", action="append", metavar="RUN_DIR", default=[],
                   help="train nothing: score this train.py run folder's best.pth (trained on --data, e.g. by "
                        "python -m utils.ablate) with the same scorer, one JSON line each; repeatable")
    return p


# ------------------------------------------------------------------------------------------------------ the data
def prepare_data(source: str, study: Path) -> Path:
    """YOLO copy of `source` (the project's converter) with this project's seed-0 splits as lists; -> data.yaml."""
    name = Path(source).resolve().name
    target = study / "data" / name
    yaml_path = target / "bench.yaml"
    if yaml_path.is_file():
        return yaml_path
    if not target.is_dir():
        run([sys.executable, "-m", "utils.convert", "--to", "yolo", str(source), str(target)], cwd=ROOT)
    by_stem = {p.stem: p for p in (target / "images").rglob("*") if p.is_file()}
    for split in SPLITS:
        index = load_split(source, split, seed=0)
        lines = [f"./{by_stem[r.path.stem].relative_to(target).as_posix()}" for r in index.records]
        (target / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(index.classes))
    yaml_path.write_text(f"path: {target}\ntrain: train.txt\nval: val.txt\ntest: test.txt\nnames:\n{names}\n",
                         encoding="utf-8")
    return yaml_path


def test_images(data_yaml: Path) -> list[Path]:
    folder = data_yaml.parent
    return [(folder / line.strip()).resolve() for line in (folder / "test.txt").read_text().splitlines()
            if line.strip()]


def ground_truth(images: list[Path], num_classes: int) -> dict:
    """COCO ground truth of `images` from their YOLO label files, boxes in original pixels (no +1 convention)."""
    coco = {"images": [], "annotations": [], "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)]}
    for image_id, path in enumerate(images, start=1):
        height, width, _ = probe_image(path)
        coco["images"].append({"id": image_id, "width": width, "height": height, "file_name": path.name})
        label = label_path(path)
        rows = np.loadtxt(label, ndmin=2) if label.is_file() and label.stat().st_size else np.zeros((0, 5))
        for cls, xc, yc, w, h in rows.tolist():
            box = [(xc - w / 2) * width, (yc - h / 2) * height, w * width, h * height]
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id, "iscrowd": 0,
                                        "category_id": int(cls) + 1, "bbox": box, "area": box[2] * box[3]})
    return coco


def score(truth: dict, images: list[Path], detections: dict[str, list]) -> dict:
    """pycocotools mAP50 and mAP50-95 of detections {image stem: [[x1, y1, x2, y2, score, class], ...]}."""
    results = []
    for image_id, path in enumerate(images, start=1):
        for x1, y1, x2, y2, conf, cls in detections.get(path.stem, []):
            results.append({"image_id": image_id, "category_id": int(cls) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": conf})
    stats = coco_stats(truth, results)
    return {"mAP50": stats["AP50"], "mAP50_95": stats["mAP50_95"]}


# ------------------------------------------------------------------------------------------------------- the runs
def run(command: list[str], cwd: Path, env: dict | None = None, log: Path | None = None) -> str:
    """Run a command; its output goes to `log` (appended) and the last line is returned. Fails loudly."""
    LOGGER.info("$ %s", shlex.join(command))
    with open(log or os.devnull, "a", encoding="utf-8") as sink:
        done = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=sink, text=True)
        sink.write(done.stdout)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed with status {done.returncode}; see {log}")
    lines = done.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def ours(tool: Tool, seed: int, run_dir: Path, data_yaml: Path, args) -> tuple[dict, dict]:
    """Train with train.py (resuming an unfinished run), then eval.py --save-json on the test split."""
    command = [sys.executable, "train.py", "--data", str(data_yaml), "--recipe", tool.recipe, "--seed", str(seed),
               "--epochs", str(args.epochs), "--input-shape", str(args.input_shape), "--batch-size",
               str(args.batch_size), "--deterministic", "--no-preview", "--save-dir", str(run_dir.parent), "--name",
               run_dir.name, *shlex.split(args.ours_flags)]
    if (run_dir / "last.pth").is_file():
        command += ["--resume", str(run_dir)]
    elif run_dir.exists():  # killed before its first epoch ended: nothing to keep
        for path in sorted(run_dir.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        run_dir.rmdir()
    start = time.perf_counter()
    run(command, ROOT, log=run_dir.parent / f"{run_dir.name}.log")
    wall = time.perf_counter() - start
    detections, facts = detections_on_test_split(run_dir, data_yaml, args.input_shape)
    return detections, {**facts, "train_wall_s": wall}


def detections_on_test_split(run_dir: Path, data_yaml: Path, input_size: int) -> tuple[dict, dict]:
    """eval.py --save-json of a train.py run's best.pth on the test split: detections by image stem, and the
    model's size and the run's training seconds."""
    run([sys.executable, "eval.py", "--weights", str(run_dir / "best.pth"), "--data", str(data_yaml), "--split",
         "test", "--save-json", "--save-dir", str(run_dir), "--name", "test"], ROOT,
        log=run_dir.parent / f"{run_dir.name}.log")
    found = sorted(run_dir.glob("test*/detections.json"), key=lambda p: p.stat().st_mtime)[-1]
    detections = {}
    for item in json.loads(found.read_text()):
        x, y, w, h = item["bbox"]
        detections.setdefault(str(item["image_id"]), []).append([x, y, x + w, y + h, item["score"],
                                                                 item["category_id"]])
    model = load_runnable(run_dir / "best.pth", device="cpu").model
    facts = {"parameters": count_parameters(model), "gflops": count_gflops(model, (input_size,) * 2),
             **train_seconds(run_dir)}
    return detections, facts


def train_seconds(run_dir: Path) -> dict:
    """Seconds of the training passes and validations (results.csv, or timing.csv under --deterministic)."""
    import csv

    path = run_dir / "timing.csv" if (run_dir / "timing.csv").is_file() else run_dir / "results.csv"
    with open(path, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    total = lambda key: sum(float(r[key]) for r in rows if r.get(key))  # noqa: E731
    return {"train_pass_s": total("train_s"), "val_s": total("val_s"), "epochs_run": len(rows)}


def ultralytics(tool: Tool, seed: int, run_dir: Path, data_yaml: Path, args) -> tuple[dict, dict]:
    """Train and predict through the Ultralytics environment (benchmarks/learning_ultralytics.py)."""
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(run_dir.parent.parent / "ultralytics_config"),
           "MPLBACKEND": "Agg"}
    log = run_dir.parent / f"{run_dir.name}.log"

    def call(spec: dict) -> dict:
        script = str(ROOT / "benchmarks" / "learning_ultralytics.py")
        return json.loads(run([args.ultralytics_python, script, json.dumps(spec)], run_dir.parent, env, log))

    start = time.perf_counter()
    weights = call({"mode": "train", "model": tool.model_yaml, "data": str(data_yaml), "epochs": args.epochs,
                    "imgsz": args.input_shape, "batch": args.batch_size, "seed": seed,
                    "project": str(run_dir.parent), "name": run_dir.name})["weights"]
    wall = time.perf_counter() - start
    images = [str(p) for p in test_images(data_yaml)]
    out = run_dir / "test_detections.json"
    call({"mode": "predict", "weights": weights, "images": images, "imgsz": args.input_shape, "out": str(out)})
    detections = {Path(k).stem: v for k, v in json.loads(out.read_text()).items()}
    facts = {**call({"mode": "info", "model": weights, "imgsz": args.input_shape}), "train_wall_s": wall}
    return detections, facts


def run_once(tool: Tool, seed: int, cell: Path, data_yaml: Path, truth: dict, args) -> dict:
    """One (tool, seed): trained and scored, or read back from its result.json."""
    run_dir = cell / f"{tool.name}-s{seed}"
    done = run_dir / RESULT
    if done.is_file():
        return json.loads(done.read_text())
    runner = ours if tool.recipe else ultralytics
    detections, facts = runner(tool, seed, run_dir, data_yaml, args)
    images = test_images(data_yaml)
    result = {"tool": tool.name, "seed": seed, **score(truth, images, detections), **facts}
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1), encoding="utf-8")
    tmp.replace(done)
    return result


# ---------------------------------------------------------------------------------------------------- summaries
def summarise(results: list[dict], tools: list[str], baseline: str) -> list[dict]:
    """Per tool: mean and std over seeds; against `baseline`: paired differences by seed."""
    rows = []
    for name in tools:
        own = sorted((r for r in results if r["tool"] == name), key=lambda r: r["seed"])
        if not own:
            continue
        row = {"tool": name, "seeds": len(own)}
        for key in ("mAP50", "mAP50_95", "train_wall_s", "parameters", "gflops"):
            row[key], row[f"{key}_std"] = mean_std([r[key] for r in own])
        base = {r["seed"]: r for r in results if r["tool"] == baseline}
        pairs = [(base[r["seed"]], r) for r in own if r["seed"] in base]
        if name != baseline and pairs:
            for key in ("mAP50", "mAP50_95"):
                diff = paired_difference([a[key] for a, _ in pairs], [b[key] for _, b in pairs])
                row[f"d_{key}_vs_{baseline}"] = {"mean": diff.mean, "low": diff.low, "high": diff.high,
                                                 "pairs": diff.pairs, "verdict": diff.verdict}
        rows.append(row)
    return rows


def markdown(rows: list[dict], baseline: str) -> str:
    def pm(row, key, digits=3):
        std = row[f"{key}_std"]
        return f"{row[key]:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")

    def diff(row, key):
        d = row.get(f"d_{key}_vs_{baseline}")
        if d is None:
            return "—"
        interval = f" [{d['low']:+.3f}, {d['high']:+.3f}]" if d["low"] is not None else ""
        return f"{d['mean']:+.3f}{interval} {d['verdict']}"

    lines = ["| tool | seeds | mAP50 | mAP50-95 | training s | parameters | GFLOPs | "
             f"Δ mAP50 vs {baseline} | Δ mAP50-95 vs {baseline} |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['tool']} | {row['seeds']} | {pm(row, 'mAP50')} | {pm(row, 'mAP50_95')} | "
                     f"{pm(row, 'train_wall_s', 0)} | {row['parameters']:,.0f} | {row['gflops']:.2f} | "
                     f"{diff(row, 'mAP50')} | {diff(row, 'mAP50_95')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in tools if t not in TOOLS]
    if unknown:
        raise SystemExit(f"error: unknown tool(s) {', '.join(unknown)}; choose from {', '.join(TOOLS)}")
    if not args.ultralytics_python:
        skipped = [t for t in tools if TOOLS[t].model_yaml]
        if skipped:
            LOGGER.warning("no --ultralytics-python: skipping %s", ", ".join(skipped))
        tools = [t for t in tools if not TOOLS[t].model_yaml]
    study = Path(args.study).resolve()
    data_yaml = prepare_data(args.data, study)
    images = test_images(data_yaml)
    num_classes = len(load_split(data_yaml, "test").classes)
    truth = ground_truth(images, num_classes)
    if args.score:
        for run_dir in map(Path, args.score):
            detections, facts = detections_on_test_split(run_dir.resolve(), data_yaml, args.input_shape)
            print(json.dumps({"run": str(run_dir), **score(truth, images, detections), **facts}), flush=True)
        return 0
    cell = study / f"{data_yaml.parent.name}-{args.input_shape}-e{args.epochs}-b{args.batch_size}"
    cell.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in range(args.seeds):  # seed-major: complete pairs appear early, and load changes hit every tool
        for name in tools:
            result = run_once(TOOLS[name], seed, cell, data_yaml, truth, args)
            print(json.dumps(result), flush=True)
            results.append(result)
    rows = summarise(results, tools, args.baseline)
    for row in rows:
        print(json.dumps({"summary": True, "data": str(args.data), "epochs": args.epochs,
                          "input_shape": args.input_shape, "batch_size": args.batch_size, **row}), flush=True)
    if args.markdown:
        Path(args.markdown).write_text(markdown(rows, args.baseline), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
