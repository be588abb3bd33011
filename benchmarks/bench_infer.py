"""End-to-end CPU inference throughput (read, letterbox, forward, decode, NMS) on a folder of real images, and the
mAP50 cost of the optimisations.

Variants, each at every --batch-sizes:
- baseline: the plain fp32 model (BatchNorm unfused, NCHW), images read one after another (like the reference
  implementation, which does about 18 images/s here at phi 2, 416 px);
- fused_fp32: Detector with Conv+BN fused, channels_last, image reading/letterboxing on a prefetch thread;
- fused_bf16: the same with bf16 autocast (`--precision bf16`), when the CPU has native bf16 (its mAP50 against
  fused_fp32 is the accuracy cost of asking for bf16);
- compiled_fp32 (opt-in via --variants): fused_fp32 through torch.compile (inductor, frozen weights), compiled
  before timing; each partial last batch recompiles, so use it at batch 1;
- onnxruntime: the model exported with utils.deploy.export (decoding inside) run by onnxruntime, same prefetching;
- onnxruntime_int8: that export quantized by utils.deploy.quantize (static int8, calibrated on 100 images of --data's
  --calib-split, or of --images without --data), as `predict.py --export onnx --int8` makes it.

The (variant, batch) runs are interleaved in --rounds rounds over slices of the images, so a shared machine's
changing load weighs on all of them alike. Prints one JSON line per (variant, batch), then speed-up lines over the
baseline at batch 1 and at equal batch. images_per_s is wall clock; images_per_cpu_s divides by this process's CPU
time, which is less sensitive to other
processes on a shared machine (wall-clock figures on a busy machine are pessimistic).

Speed:  python benchmarks/bench_infer.py                      # random weights, phi 2 (cbam), 416 px, raccoon images
mAP:    python benchmarks/bench_infer.py --weights logs/<run>/best.pth --data VOCdevkit --split test
        (trained weights; prints mAP50 of each variant and its difference to the fp32 baseline, target within 0.5)
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if not __package__:  # run as `python benchmarks/bench_infer.py`: the repository root is not on sys.path yet
    sys.path.insert(0, str(ROOT))

from utils.common.device import cpu_supports_bf16  # noqa: E402
from utils.common.image_io import IMAGE_SUFFIXES, read_image  # noqa: E402
from utils.data.index import load_split  # noqa: E402
from utils.deploy.export import export_onnx  # noqa: E402
from utils.deploy.quantize import DEFAULT_CALIBRATION_IMAGES, letterboxed, quantize_onnx  # noqa: E402
from utils.eval.evaluation import compute_metrics  # noqa: E402
from utils.model.checkpoint import load_model  # noqa: E402
from utils.model.config import ModelConfig, build_model  # noqa: E402
from utils.runtime.detector import BaseDetector, DetectOptions, Detector  # noqa: E402
from utils.runtime.onnx import OnnxDetector  # noqa: E402

LOGGER = logging.getLogger("bench_infer")
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "raccoon_dataset" / "images"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of images for the speed test")
    parser.add_argument("--limit", type=int, default=200, help="images used per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (each runs 1/rounds of the images)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--phi", default="cbam", help="attention for random weights (default phi 2 = cbam)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--variants", nargs="+",
                        default=["baseline", "fused_fp32", "fused_bf16", "onnxruntime", "onnxruntime_int8"])
    parser.add_argument("--conf", type=float, default=0.5, help="speed test score threshold (predict's default)")
    parser.add_argument("--weights", help="trained checkpoint: speed uses it, and with --data mAP50 is compared")
    parser.add_argument("--data", help="dataset for the mAP50 comparison (VOCdevkit, images/+annotations/, COCO json)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--calib-split", default="train", help="--data split that calibrates the int8 model")
    return parser


def make_detector(variant: str, model: torch.nn.Module, config: ModelConfig, options: DetectOptions,
                  workdir: Path, batch_sizes: tuple[int, ...] = (1,),
                  calibration: list[Path] = ()) -> BaseDetector | None:
    """The detector of one variant, or None when this machine cannot run it (no bf16, no onnxruntime)."""
    if variant == "baseline":
        return Detector(model, config, "cpu", options, optimize=False, precision="fp32")
    if variant == "fused_fp32":
        return Detector(model, config, "cpu", options, optimize=True, precision="fp32")
    if variant == "compiled_fp32":
        detector = Detector(model, config, "cpu", options, optimize=True, precision="fp32", compile=True)
        detector.warmup(batch_sizes)  # compile outside the timed runs
        return detector
    if variant == "fused_bf16":
        if not cpu_supports_bf16():
            LOGGER.warning("fused_bf16 skipped: this CPU has no native bf16 (emulated bf16 is far slower than fp32)")
            return None
        return Detector(model, config, "cpu", options, optimize=True, precision="bf16")
    if variant in ("onnxruntime", "onnxruntime_int8"):
        try:
            return OnnxDetector(onnx_file(variant, model, config, workdir, calibration), options)
        except ImportError:  # onnx and onnxruntime are optional (requirements-dev.txt)
            LOGGER.warning("%s variant skipped: onnx/onnxruntime not installed", variant)
            return None
    raise ValueError(f"unknown variant {variant!r}")


def onnx_file(variant: str, model: torch.nn.Module, config: ModelConfig, workdir: Path,
              calibration: list[Path]) -> Path:
    """The fp32 export (made once), or its int8 version calibrated on `calibration` (made once)."""

    fp32, int8 = workdir / "model.onnx", workdir / "model_int8.onnx"
    if not fp32.exists():
        export_onnx(model, config, fp32)
    if variant == "onnxruntime_int8" and not int8.exists():
        images = (read_image(path) for path in calibration)
        quantize_onnx(fp32, int8, letterboxed(images, config.input_shape, DEFAULT_CALIBRATION_IMAGES))
    return int8 if variant == "onnxruntime_int8" else fp32


def calibration_images(args: argparse.Namespace) -> list[Path]:
    """Images for int8 calibration: with --data its --calib-split (never the split whose mAP is measured),
    else the speed-test images."""
    if args.data:
        if args.calib_split == args.split:
            raise ValueError(f"--calib-split {args.calib_split} is the measured split; calibrate on another one")
        paths = [record.path for record in load_split(args.data, args.calib_split).records]
    else:
        paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return paths[:DEFAULT_CALIBRATION_IMAGES]


def run_once(detector: BaseDetector, paths: list[Path], batch_size: int, prefetch: bool) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, detections) for one pass over `paths`."""
    wall, cpu, detections = time.perf_counter(), time.process_time(), 0
    for _, results, _ in detector.stream(paths, batch_size, image_of=read_image, prefetch=prefetch):
        detections += sum(len(r) for r in results)
    return time.perf_counter() - wall, time.process_time() - cpu, detections


def speed(args: argparse.Namespace, model: torch.nn.Module, config: ModelConfig, workdir: Path) -> None:
    """Every (variant, batch) runs one slice of the images per round, interleaved, so that the load of a shared
    machine, which changes by the minute, weighs on all variants alike."""
    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:args.limit]
    options = DetectOptions(conf_thres=args.conf, iou_thres=0.3)
    calibration = calibration_images(args)
    runs = {}
    for variant in args.variants:
        for batch_size in args.batch_sizes:
            detector = make_detector(variant, model, config, options, workdir, tuple(args.batch_sizes),
                                     calibration)
            if detector is not None:
                run_once(detector, paths[:batch_size], batch_size, prefetch=True)  # warm-up (oneDNN primitives)
                detector.times = type(detector.times)()
                runs[variant, batch_size] = (detector, [0.0, 0.0, 0])
    slices = [paths[i::args.rounds] for i in range(args.rounds)]
    for chunk in slices:
        for (variant, batch_size), (detector, total) in runs.items():
            for i, value in enumerate(run_once(detector, chunk, batch_size, prefetch=variant != "baseline")):
                total[i] += value
    rates = {}
    for (variant, batch_size), (detector, (wall, cpu, detections)) in runs.items():
        stages = detector.times.summary()
        rates[variant, batch_size] = len(paths) / wall
        print(json.dumps({"bench": "infer", "variant": variant, "batch": batch_size, "size": args.size,
                          "attention": config.attention, "threads": torch.get_num_threads(), "images": len(paths),
                          "images_per_s": round(len(paths) / wall, 2), "images_per_cpu_s": round(len(paths) / cpu, 2),
                          **{k: round(stages[k], 2) for k in ("pre_ms", "infer_ms", "nms_ms")},
                          "detections": detections, "load_avg_1min": round(os.getloadavg()[0], 2)}), flush=True)
    print_speedups(rates)


def print_speedups(rates: dict[tuple[str, int], float]) -> None:
    """Speed-up over the baseline at batch 1 (the reference's way of running) and over the baseline at equal batch."""
    for reference in sorted({("baseline", b) for _, b in rates}):
        if reference in rates:
            same = {f"{v}_b{b}": round(r / rates[reference], 2) for (v, b), r in rates.items()
                    if b == reference[1] or reference[1] == 1}
            print(json.dumps({"bench": f"infer_speedup_vs_baseline_b{reference[1]}", **same}), flush=True)


def map50(args: argparse.Namespace, model: torch.nn.Module, config: ModelConfig, workdir: Path) -> None:
    """mAP50 of every variant on --data/--split with evaluation thresholds (conf 0.001, NMS IoU 0.5)."""
    index = load_split(args.data, args.split, classes=config.classes, keep_unreadable=True)  # every image counts
    records = index.records
    readable = [i for i, r in enumerate(records) if r.image_error is None]
    options = DetectOptions(conf_thres=0.001, iou_thres=0.5, max_det=300)
    calibration = calibration_images(args)
    reference = None
    for variant in args.variants:
        detector = make_detector(variant, model, config, options, workdir, (8,), calibration)
        if detector is None:
            continue
        detections = [np.zeros((0, 6), np.float32)] * len(records)  # an unreadable image: its objects are missed
        found = [d for _, results, _ in detector.stream([records[i] for i in readable], 8,
                                                        image_of=lambda r: read_image(r.path)) for d in results]
        for i, dets in zip(readable, found, strict=True):
            detections[i] = dets
        metrics, _ = compute_metrics(detections, index, config.classes, coco=False)
        value = 100 * metrics["mAP50"]
        if variant == "baseline":
            reference = value
        delta = None if reference is None else round(value - reference, 3) + 0.0
        print(json.dumps({"bench": "infer_map", "variant": variant, "data": str(args.data), "split": args.split,
                          "images": len(records), "mAP50": round(value, 3), "delta_vs_baseline_points": delta}),
              flush=True)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.weights:
        model, config = load_model(args.weights)
        config = ModelConfig.from_dict(config.to_dict() | {"input_shape": [args.size, args.size]})
    else:
        config = ModelConfig(classes=["raccoon"], attention=args.phi, input_shape=[args.size, args.size])
        model = build_model(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        if args.images.is_dir():
            speed(args, model, config, Path(tmp))
        else:
            print(json.dumps({"bench": "infer", "skipped": f"{args.images} is absent"}))
        if args.weights and args.data:
            map50(args, model, config, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
