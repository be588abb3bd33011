"""Export benchmark: every export format, exported, loaded back, scored and timed in one run.

    python -m utils.benchmark --weights logs/exp/best.pth --data VOCdevkit --split test --formats all

For each format (PyTorch itself, then every export target of utils.deploy.targets, fp32 and, where the target has
one, int8): export it (timed), load it back through utils.runtime.loader.load_runnable, score it on --data/--split
through eval.py's own code (utils.eval.cli.evaluate_split: the same letterbox, decoding, NMS and metrics as `eval.py
--weights <file>`), and time it end to end as predict.py runs it (read, letterbox, forward, decode, NMS): ms per image
at batch 1 and images/s at batch 8, in interleaved rounds so a shared machine's changing load weighs on every format
alike. int8 models are calibrated on --calib-split (never the measured split).

Writes benchmark.md (the table and the machine), benchmark.csv, exports/ and one eval folder per format into a new run
folder (logs/benchmark, ...), and prints one JSON line per row. A format that cannot be exported or run here is a row
saying why (a missing package names what to install), never a crash of the whole run.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import os
import platform
import re
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from utils.common.cli import DefaultsHelpFormatter, run_command, setup_logging
from utils.common.errors import ConfigError, UserError
from utils.common.image_io import read_image
from utils.common.run_dir import claim_run_dir, remove_if_empty
from utils.data.index import load_split
from utils.deploy import cli as predict_cli
from utils.deploy.quantize import DEFAULT_CALIBRATION_IMAGES, letterboxed
from utils.deploy.targets import EXPORT_TARGETS, ExportRequest
from utils.eval import cli as eval_cli
from utils.runtime.detector import BaseDetector, DetectOptions
from utils.runtime.loader import Loaded, load_runnable

LOGGER = logging.getLogger(__name__)
REFERENCE = "pytorch"
SPEED_OPTIONS = DetectOptions(conf_thres=0.5, iou_thres=0.3)  # predict.py's defaults


@dataclass
class Row:
    """One format's figures; None where not measured (see `status`)."""

    format: str
    precision: str
    file: str = ""
    size_mb: float | None = None
    export_s: float | None = None
    mAP50: float | None = None
    mAP50_95: float | None = None
    d_mAP50: float | None = None
    d_mAP50_95: float | None = None
    ms_per_image_b1: float | None = None
    images_per_s_b8: float | None = None
    status: str = "ok"


@dataclass(frozen=True)
class Variant:
    """A row to measure: an export target (None: the PyTorch checkpoint itself) with or without its int8 file."""

    name: str
    target: str | None
    int8: bool = False

    @property
    def precision(self) -> str:
        if self.int8:
            return "int8"
        return "fp16" if self.target == "tensorrt" else "fp32"


def all_variants() -> list[Variant]:
    """PyTorch, then each registered target's fp32 file and, when it has one, its int8 file (Darknet is left out: its
    files are loaded into the PyTorch model itself, the first row, and need --cfg and --names)."""
    variants = [Variant(REFERENCE, None)]
    for name, target in EXPORT_TARGETS.items():
        if not target.benchmark:
            continue
        variants.append(Variant(name, name))
        if target.int8:
            variants.append(Variant(f"{name}_int8", name, int8=True))
    return variants


def choose_variants(formats: str) -> list[Variant]:
    """--formats: "all", or comma-separated row names (onnx, onnx_int8, openvino, ...); PyTorch is always measured
    (it is the reference of the differences)."""
    known = all_variants()
    if formats.strip() == "all":
        return known
    by_name = {v.name: v for v in known}
    wanted = [f.strip() for f in formats.split(",") if f.strip()]
    unknown = [f for f in wanted if f not in by_name]
    if unknown:
        raise ConfigError(f"--formats {','.join(unknown)}: unknown; valid: all, {', '.join(by_name)}")
    return [by_name[REFERENCE]] + [by_name[f] for f in wanted if f != REFERENCE]


# ------------------------------------------------------------------------------------------------------- export
def export_variant(variant: Variant, source: Loaded, folder: Path, calibration) -> tuple[Path, float]:
    """(the file to run, export seconds) of one variant, written into folder/<variant>/."""
    target = EXPORT_TARGETS.get(variant.target)
    request = ExportRequest(source.model, source.config, folder / variant.name / source.path.stem, int8=variant.int8,
                            calibration=calibration)
    start = time.perf_counter()
    paths = target.export(request)
    return (paths[-1] if variant.int8 else paths[0]), time.perf_counter() - start


def model_bytes(path: Path) -> int:
    """Bytes of a model as deployed: the file and its weights beside it (.xml + .bin, .ncnn.param + .ncnn.bin), or
    every file of a package folder (.mlpackage)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    companions = [path.with_suffix(".bin")] if path.suffix in (".xml", ".param") else []
    return sum(p.stat().st_size for p in [path, *companions] if p.is_file())


def calibration_canvases(data: str, split: str, config, limit: int) -> list[np.ndarray]:
    images = (read_image(record.path) for record in load_split(data, split).records)
    return list(letterboxed(images, config.input_shape, limit))


# --------------------------------------------------------------------------------------------------------- score
def score(path: Path, args, out: Path, name: str, input_shape: list[int]) -> dict:
    """metrics.json of `eval.py --weights path --input-shape H,W` on --data/--split (fp32, CPU), written into
    out/eval_<name>."""
    argv = ["--weights", str(path), "--data", str(args.data), "--split", args.split, "--device", "cpu", "--no-amp",
            "--input-shape", f"{input_shape[0]},{input_shape[1]}", "--save-dir", str(out), "--name", f"eval_{name}",
            "--workers", str(args.workers)]
    eval_args = eval_cli.get_args_parser().parse_args(argv)
    metrics, _ = eval_cli.evaluate_split(eval_args)
    return metrics


# --------------------------------------------------------------------------------------------------------- speed
def run_once(detector: BaseDetector, paths: list[Path], batch_size: int) -> float:
    """Wall seconds of one end-to-end pass over `paths` (prefetching reader, as predict.py)."""
    start = time.perf_counter()
    for _ in detector.stream(paths, batch_size, image_of=read_image):
        pass
    return time.perf_counter() - start


def measure_speed(detectors: dict[str, BaseDetector], paths: list[Path], rounds: int) -> dict[str, tuple]:
    """{name: (ms per image at batch 1, images/s at batch 8)}: each (format, batch) runs one slice of `paths` per
    round, interleaved, after one warm-up batch."""
    runs = [(name, batch) for name in detectors for batch in (1, 8)]
    for name, batch in runs:
        run_once(detectors[name], paths[:batch], batch)
    seconds = dict.fromkeys(runs, 0.0)
    slices = [paths[i::rounds] for i in range(rounds)]
    for chunk in slices:
        for name, batch in runs:
            seconds[name, batch] += run_once(detectors[name], chunk, batch)
    return {name: (1000 * seconds[name, 1] / len(paths), len(paths) / seconds[name, 8]) for name in detectors}


# ----------------------------------------------------------------------------------------------------------- run
def measure_row(variant: Variant, source: Loaded, args, out: Path, calibration) -> tuple[Row, BaseDetector | None]:
    """Export, load back and score one variant; (its row, its detector for the speed rounds or None)."""
    row = Row(variant.name, variant.precision)
    try:
        if variant.target is None:
            path = source.path
        else:
            path, row.export_s = export_variant(variant, source, out / "exports", calibration)
        row.file, row.size_mb = str(path), model_bytes(path) / 2 ** 20
        shape = source.config.input_shape  # exports are fixed to it; the checkpoint runs at it
        loaded = load_runnable(path, device="cpu", input_shape=shape)
        detector = loaded.detector(optimize=True, precision="fp32")
        detector.options = SPEED_OPTIONS
        metrics = score(path, args, out, variant.name, shape)
        row.mAP50, row.mAP50_95 = metrics["mAP50"], metrics["mAP50_95"]
        return row, detector
    except Exception as err:  # one format failing is a row saying why, not the end of the benchmark
        row.status = f"{'not run' if row.file else 'failed'}: {one_line(err)}"
        if not isinstance(err, (UserError, OSError)):  # not a known limitation: keep the traceback visible
            LOGGER.warning("%s: %s", variant.name, traceback.format_exc())
        return row, None


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def run_benchmark(args, out: Path) -> list[Row]:
    """Every row of the table, measured into run folder `out`."""
    source = load_runnable(args.weights, device="cpu", input_shape=args.input_shape)
    if source.model is None:
        raise ConfigError(f"--weights {source.path} is already an export ({source.kind}); give the PyTorch checkpoint")
    calibration_cache: list[np.ndarray] = []

    def calibration() -> list[np.ndarray]:
        if not calibration_cache:
            calibration_cache.extend(calibration_canvases(args.data, args.calib_split, source.config,
                                                          args.calib_images))
        return calibration_cache

    rows, detectors = [], {}
    for variant in choose_variants(args.formats):
        LOGGER.info("benchmark: %s", variant.name)
        row, detector = measure_row(variant, source, args, out, calibration)
        rows.append(row)
        if detector is not None:
            detectors[variant.name] = detector
    add_differences(rows)
    paths = speed_images(args)
    for name, (ms, rate) in measure_speed(detectors, paths, args.rounds).items():
        row = next(r for r in rows if r.format == name)
        row.ms_per_image_b1, row.images_per_s_b8 = ms, rate
    return rows


def speed_images(args) -> list[Path]:
    """The measured split's readable images, at most --speed-images of them."""
    records = load_split(args.data, args.split).records
    return [r.path for r in records][:args.speed_images]


def add_differences(rows: list[Row]) -> None:
    reference = next((r for r in rows if r.format == REFERENCE and r.mAP50 is not None), None)
    for row in rows:
        if reference is not None and row.mAP50 is not None:
            row.d_mAP50 = row.mAP50 - reference.mAP50
            if row.mAP50_95 is not None and reference.mAP50_95 is not None:
                row.d_mAP50_95 = row.mAP50_95 - reference.mAP50_95


# ---------------------------------------------------------------------------------------------------------- report
def machine_description() -> str:
    """CPU model, cores, torch threads and the runtime versions: what the speed figures depend on."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        cpu = names[0] if names else cpu
    versions = [f"torch {torch.__version__}"]
    for package in ("onnxruntime", "openvino", "ncnn", "coremltools", "tensorrt"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version
            versions.append(f"{package} {version(package)}")
    return (f"{cpu}, {os.cpu_count()} logical cores visible, torch threads {torch.get_num_threads()}, "
            f"load average {os.getloadavg()[0]:.1f} at the end; {', '.join(versions)}")


COLUMNS = ["format", "precision", "size_mb", "export_s", "mAP50", "mAP50_95", "d_mAP50", "d_mAP50_95",
           "ms_per_image_b1", "images_per_s_b8", "status"]


FORMATS = {"size_mb": ".1f", "export_s": ".1f", "mAP50": ".4f", "mAP50_95": ".4f", "d_mAP50": "+.4f",
           "d_mAP50_95": "+.4f", "ms_per_image_b1": ".1f", "images_per_s_b8": ".1f"}


def markdown_table(rows: list[Row]) -> str:
    """The rows as a markdown table ("-" where not measured)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        values = asdict(row)
        cells = ["-" if values[c] is None else format(values[c], FORMATS.get(c, "")) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(rows: list[Row], out: Path, args) -> None:
    machine = machine_description()
    header = (f"Export benchmark: {args.weights} on {args.data} split {args.split}; int8 calibrated on "
              f"at most {args.calib_images} images of split {args.calib_split}; speed end to end over "
              f"{len(speed_images(args))} images of the split, {args.rounds} interleaved rounds.\n\n"
              f"Machine: {machine}\n")
    (out / "benchmark.md").write_text(f"{header}\n{markdown_table(rows)}\n", encoding="utf-8")
    with (out / "benchmark.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    for row in rows:
        print(json.dumps({"bench": "export", **{k: (round(v, 5) if isinstance(v, float) else v)
                                                for k, v in asdict(row).items()}}), flush=True)
    print(f"machine: {machine}")
    print(markdown_table(rows))


def predict_fps(path: str, images: list[Path], out: Path, input_shape: str | None = None) -> float | None:
    """images/s that `predict.py --weights path --fps --nosave` prints for `images` (batch 1): the fastest row's
    speed as the command-line tool delivers it."""
    listing = out / "speed_images.txt"
    listing.write_text("".join(f"{p.resolve()}\n" for p in images), encoding="utf-8")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = predict_cli.main(["--weights", path, "--source", str(listing), "--nosave", "--fps",
                                   "--save-dir", str(out), "--name", "predict_fastest",
                                   *(["--input-shape", str(input_shape)] if input_shape else [])])
    found = re.search(r"([\d.]+) images/s end to end", printed.getvalue())
    return float(found.group(1)) if status == 0 and found else None


def check_predict_speed(rows: list[Row], args, out: Path) -> dict | None:
    """The fastest row at batch 1 run through predict.py itself: its images/s next to the table's."""
    timed = [r for r in rows if r.ms_per_image_b1]
    if not timed:
        return None
    fastest = min(timed, key=lambda r: r.ms_per_image_b1)
    rate = predict_fps(fastest.file, speed_images(args), out, args.input_shape)
    table_rate = 1000 / fastest.ms_per_image_b1
    result = {"bench": "export_predict_fastest", "format": fastest.format, "file": fastest.file,
              "table_images_per_s_b1": round(table_rate, 2),
              "predict_images_per_s_b1": None if rate is None else round(rate, 2),
              "ratio": None if rate is None else round(rate / table_rate, 3)}
    print(json.dumps(result), flush=True)
    return result


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m utils.benchmark", description=__doc__,
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--weights", required=True, help="the PyTorch checkpoint (.pth) to export and compare against")
    p.add_argument("--data", required=True, help="dataset scored as eval.py --data reads it")
    p.add_argument("--split", default="test", help="split scored and timed")
    p.add_argument("--formats", default="all", help="all, or comma-separated rows: "
                   + ", ".join(v.name for v in all_variants()[1:]))
    p.add_argument("--input-shape", default=None, help="export and score at this size (default: the checkpoint's)")
    p.add_argument("--calib-split", default="train", help="split whose images calibrate the int8 models")
    p.add_argument("--calib-images", type=int, default=DEFAULT_CALIBRATION_IMAGES, help="int8 calibration images")
    p.add_argument("--speed-images", type=int, default=100, help="images of --split timed per (format, batch)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--workers", type=int, default=0, help="image loading processes of the evaluation")
    p.add_argument("--no-predict-check", action="store_true",
                   help="skip timing the fastest format once more through predict.py itself")
    p.add_argument("--save-dir", default="logs", help="project folder: results go to SAVE_DIR/NAME")
    p.add_argument("--name", default="benchmark", help="run folder name (benchmark, benchmark2, ...)")
    p.add_argument("--verbose", action="store_true", help="debug logging and full tracebacks")
    return p


def run(args: argparse.Namespace) -> None:
    if args.calib_split == args.split:
        raise ConfigError(f"--calib-split {args.calib_split} is the measured split; calibrate on another one")
    if min(args.speed_images, args.rounds, args.calib_images) < 1:
        raise ConfigError("--speed-images, --rounds and --calib-images must be at least 1")
    choose_variants(args.formats)  # an unknown format fails before any work
    out = claim_run_dir(args.save_dir, args.name)
    try:
        rows = run_benchmark(args, out)
    except BaseException:
        remove_if_empty(out)
        raise
    write_report(rows, out, args)
    if not args.no_predict_check:
        check_predict_speed(rows, args, out)
    print(f"results in {out}")


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run_command(lambda: run(args), args.verbose, LOGGER)
