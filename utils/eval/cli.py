"""Evaluate a trained model: `python eval.py --weights logs/exp/best.pth --data VOCdevkit --split test`.

VOC mAP@0.5 (devkit matching; all-point, or 11-point with --voc07), COCO mAP@0.5:0.95 / AP50 / AP75 / APs/m/l from
pycocotools on the same detections, per-class AP, precision/recall/F1 at --score-thresh, the confusion matrix, PR
curves and precision/recall/F1 against confidence with the best-F1 threshold (the --conf to use with predict.py).
Every image of the split counts: the ground truth is what the annotation files say, and the objects of an image that
cannot be read count as missed. Everything goes into a new run folder (logs/eval, logs/eval2, ...): metrics.json,
pr_*.png, confusion_matrix.png, f1_curve.png and, with --save-json, detections.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

# Only light modules at the top: --help and a value outside its range answer at once; torch, pycocotools and the
# model code are imported where the work starts.
from utils.common.atomic import write_text_atomic
from utils.common.cli import (
    CommandParser,
    add_precision_argument,
    positive_int,
    probability,
    requested_precision,
    run_command,
    setup_logging,
    workers,
)
from utils.common.image_io import DEFAULT_MAX_PIXELS, set_max_pixels
from utils.common.run_dir import claim_run_dir, remove_if_empty
from utils.common.text import printable
from utils.data.index import DATA_HELP, DatasetIndex, load_split
from utils.runtime.slice_options import add_slice_arguments, slice_options

if TYPE_CHECKING:
    from utils.eval.metrics import VOCResult
    from utils.runtime.loader import Loaded

LOGGER = logging.getLogger("eval")


def get_args_parser() -> argparse.ArgumentParser:
    p = CommandParser(description=__doc__)
    p.add_argument("--weights", default=None, help="our .pth (default: the newest logs/*/best.pth), a bare "
                   "state_dict (with --names/--phi), Darknet .weights (with --cfg) or an exported .onnx (int8 too)")
    p.add_argument("--weights-sha256", default=None, help="expected sha256 of --weights given as a URL (default: the "
                   "hash prefix in the file name, torch.hub style, if any)")
    p.add_argument("--cfg", default=None, help="Darknet .cfg for --weights *.weights")
    p.add_argument("--names", "--classes", dest="classes", default=None,
                   help="class names file, for bare state_dicts and Darknet files only")
    p.add_argument("--phi", default=None,
                   help="attention of a bare state_dict: an index or name as train.py --phi takes")
    p.add_argument("--data", default="VOCdevkit", help=DATA_HELP)
    p.add_argument("--split", default="test", help="train, val, trainval, test or all")
    p.add_argument("--conf", type=probability, default=0.001, help="score threshold before NMS (low: full PR curve)")
    p.add_argument("--iou", type=probability, default=0.5, help="NMS IoU threshold")
    p.add_argument("--max-det", type=positive_int, default=300, help="detections kept per image")
    p.add_argument("--voc07", action="store_true", help="VOC2007 11-point AP instead of all-point interpolation")
    p.add_argument("--score-thresh", type=probability, default=0.5,
                   help="score for the precision/recall/F1 figures and the confusion matrix")
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass")
    p.add_argument("--workers", type=workers, default=2, help="image loading processes")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: best available)")
    p.add_argument("--input-shape", default=None, help="input size (multiple of 32); default: the checkpoint's")
    add_precision_argument(p)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="--no-amp is --precision fp32")
    p.add_argument("--save-json", action="store_true", help="also write detections.json in COCO results format")
    p.add_argument("--save-dir", default="logs", help="project folder (as in train.py and predict.py): results go to "
                   "SAVE_DIR/NAME")
    p.add_argument("--name", default="eval", help="run folder name inside --save-dir (eval, eval2, ... never "
                   "overwritten)")
    p.add_argument("--max-pixels", type=positive_int, default=None,
                   help="refuse images declaring more pixels than this, before decoding (decompression bombs); default "
                        f"{DEFAULT_MAX_PIXELS} (about 268 MP), or the YOLO_MAX_PIXELS environment variable")
    p.add_argument("--verbose", action="store_true", help="debug logging and full tracebacks")
    add_slice_arguments(p.add_argument_group("sliced inference (small objects in large images)"))
    return p


def load(args: argparse.Namespace) -> tuple[Loaded, DatasetIndex]:
    """(the weights, loaded to run, and the dataset index of --data/--split with the model's classes).

    The index keeps images that cannot be read (keep_unreadable): their objects count as missed."""
    from utils.runtime.loader import load_runnable

    loaded = load_runnable(args.weights, args.classes, args.phi, args.cfg, args.device, args.input_shape,
                           args.weights_sha256)
    index = load_split(args.data, args.split, classes=loaded.config.classes, keep_empty=True, keep_unreadable=True)
    return loaded, index


def evaluate_split(args: argparse.Namespace) -> tuple[dict, Path]:
    """Run the evaluation the arguments describe; returns (metrics, run folder).

    Every file is written under a temporary name and renamed, and metrics.json comes last of all: a run folder with a
    metrics.json is complete, whatever moment an earlier run was killed at."""
    from utils.eval.metrics import coco_results

    out = claim_run_dir(args.save_dir, args.name)  # first: an unwritable --save-dir fails before the work
    try:
        metrics, voc, detections, loaded, index = _evaluate(args)
    except BaseException:
        remove_if_empty(out)
        raise
    config = loaded.config
    metrics.update(weights=str(loaded.path), data=str(args.data), split=args.split, conf=args.conf,
                   nms_iou=args.iou, input_shape=config.input_shape, classes=config.classes,
                   unknown_objects=index.unknown_objects, summary=index.ground_truth_summary())
    write_plots(metrics, voc, out)
    if args.save_json:
        results = coco_results(detections, [r.image_id for r in index.records], list(range(config.num_classes)))
        write_text_atomic(out / "detections.json", json.dumps(results))
    index.write_split(out)  # a split made in memory (the same as train.py's): splits/<split>.txt
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
    return metrics, out


def _evaluate(args: argparse.Namespace) -> tuple[dict, VOCResult, list, Loaded, DatasetIndex]:
    """(metrics, VOC result, detections, the weights, the index) of the evaluation the arguments describe."""
    from utils.common.device import precision_note, resolve_precision
    from utils.data.loader import EvalDataset, build_loader, eval_collate
    from utils.eval.evaluation import compute_metrics, predict_split

    if args.slice is not None:
        slice_options(args)  # its cross-checks, before the model loads
    loaded, index = load(args)
    config = loaded.config
    precision = resolve_precision(loaded.device, requested_precision(args.precision, not args.amp, "--no-amp"))
    LOGGER.info("%s", precision_note(loaded.device, args.precision, precision))
    if args.slice is not None:
        detections = _sliced_detections(args, loaded, index, precision)
    else:
        loader = build_loader(EvalDataset(index, config.input_shape), args.batch_size, args.workers, shuffle=False,
                              seed=0, collate_fn=eval_collate)
        detections = predict_split(loaded.runnable, loader, config, loaded.device, args.conf, args.iou,
                                   args.max_det, precision, progress=True).detections
    metrics, voc = compute_metrics(detections, index, config.classes, args.voc07, args.score_thresh)
    # the compute precision ("precision" is the detection precision P): an exported .onnx runs as it was written
    metrics["compute_precision"] = precision if loaded.model is not None else "as exported"
    if args.slice is not None:
        metrics["slice"] = dataclasses.asdict(slice_options(args))
    return metrics, voc, detections, loaded, index


def _sliced_detections(args: argparse.Namespace, loaded: Loaded, index: DatasetIndex, precision: str) -> list:
    """Per-record detections by sliced inference, with the model run exactly as the plain evaluation runs it
    (unfused, in the same precision) so that the two differ only by the slicing."""
    from utils.eval.evaluation import predict_split_sliced
    from utils.runtime.detector import DetectOptions
    from utils.runtime.slicing import SlicedDetector

    detector = loaded.detector(optimize=False, precision=precision)
    detector.options = DetectOptions(args.conf, args.iou, args.max_det)
    sliced = SlicedDetector(detector, slice_options(args))
    predictions = predict_split_sliced(sliced, index, progress=True)
    LOGGER.info("sliced inference: %.2f images/s (%s)", sliced.times.summary()["images_per_s"],
                f"{args.slice} px tiles, overlap {args.slice_overlap}, merge {args.slice_merge}"
                + (", with the whole image" if args.slice_full else ""))
    return predictions.detections


def write_plots(metrics: dict, voc: VOCResult, out: Path) -> None:
    """pr_<class>.png, pr_curves.png, confusion_matrix.png and f1_curve.png in `out`."""
    from utils.eval.plots import plot_confidence_curves, plot_confusion_matrix, plot_pr_curves

    plot_pr_curves(voc, out)
    plot_confusion_matrix(metrics["confusion_matrix"], out / "confusion_matrix.png")
    plot_confidence_curves(metrics["confidence_curves"], metrics["best_f1"], out / "f1_curve.png")


def format_table(metrics: dict) -> str:
    """Per-class AP50 / P / R / F1 table and the summary lines ("-" where a figure is undefined)."""
    def num(value, width: int = 6, digits: int = 3) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:{width}.{digits}f}"
    names = {name: printable(name, 40) for name in metrics["per_class"]}  # escaped and cut: names come from data
    width = max([len(name) for name in names.values()] + [5])
    lines = [f"{'class':<{width}}  {'gt':>6} {'dets':>7}   AP50      P      R     F1"]
    for name, row in metrics["per_class"].items():
        lines.append(f"{names[name]:<{width}}  {row['num_gt']:>6} {row['num_det']:>7} {num(row['AP50'])} "
                     f"{num(row['precision'])} {num(row['recall'])} {num(row['f1'])}")
    coco = metrics["coco"] or {}
    total_gt = sum(row["num_gt"] for row in metrics["per_class"].values())
    lines.append(f"{'all':<{width}}  {total_gt:>6} {metrics['detections']:>7} {num(metrics['mAP50'])} "
                 f"{num(metrics['precision'])} {num(metrics['recall'])} {num(metrics['f1'])}   "
                 f"({metrics['images']} images; P/R/F1 at score >= {metrics['score_thresh']})")
    coco_text = "  ".join(f"{label} {num(coco.get(key), 0, 4).strip()}" for label, key in (
        ("COCO mAP50-95", "mAP50_95"), ("AP50", "AP50"), ("AP75", "AP75"), ("APs", "APs"), ("APm", "APm"),
        ("APl", "APl")))
    lines.append(f"VOC mAP50 {'(11-point) ' if metrics['voc07'] else ''}{num(metrics['mAP50'], 0, 4).strip()}  |  "
                 f"{coco_text}")
    best = metrics.get("best_f1")
    if best is not None:
        lines.append(f"best F1 {best['f1']:.3f} (P {best['precision']:.3f}, R {best['recall']:.3f}, mean over classes) "
                     f"at score >= {best['conf']}: suggested predict.py --conf {best['conf']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging(args.verbose)

    def evaluate_and_print() -> None:
        set_max_pixels(args.max_pixels)
        metrics, out = evaluate_split(args)
        print(metrics["summary"])
        print(format_table(metrics))
        print(f"results in {out}")
    return run_command(evaluate_and_print, args.verbose, LOGGER)

