"""`python -m utils.anchors`: k-means anchors for a dataset, written to a file for `train.py --anchors`.

    python -m utils.anchors --data VOCdevkit -n 6 --input-shape 416 --out model_data/my_anchors.txt
    python -m utils.anchors --data VOCdevkit -n 9 --input-shape 416 --out model_data/my_anchors_3l.txt   # --heads 3

The algorithms live in utils/data/anchors.py; this module is the command.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

# torch (through utils.data.anchors and utils.model.config) is imported where the work starts: --help and a value
# outside its range answer at once
from utils.common.cli import CommandParser, positive_int, random_seed, run_command, setup_logging
from utils.common.errors import ConfigError
from utils.data.index import DATA_HELP, load_split

if TYPE_CHECKING:
    from nets.yolo import HeadLayout

LOGGER = logging.getLogger("utils.anchors")


def get_args_parser() -> argparse.ArgumentParser:
    parser = CommandParser(description="k-means anchors (1 - IoU distance) for a dataset")
    parser.add_argument("--data", required=True, help=DATA_HELP)
    parser.add_argument("--split", default="train", help="split whose boxes are clustered (default train)")
    parser.add_argument("-n", "--num-anchors", type=positive_int, default=6,
                        help="number of anchors (yolov4-tiny: 6; --heads 3, yolov4-tiny-3l: 9; at most "
                        "utils.model.config.MAX_ANCHORS, 64)")
    parser.add_argument("--input-shape", default="416", help="network input: 416 or height,width")
    parser.add_argument("--out", default=None, help="anchors file to write (default: the project's "
                        "model_data/kmeans_anchors.txt)")
    parser.add_argument("--default-anchors", default=None,
                        help="anchors file to compare against (default: the model's default anchors of that "
                        "count, nets.yolo.HEAD_LAYOUTS: yolov4-tiny's 6 or yolov4-tiny-3l's 9)")
    parser.add_argument("--seed", type=random_seed, default=0, help="k-means seed")
    parser.add_argument("--iters", type=positive_int, default=300, help="maximum k-means iterations")
    parser.add_argument("--verbose", action="store_true", help="debug logging and full tracebacks")
    return parser


def layout_for(count: int) -> HeadLayout:
    """The head layout whose default anchors number `count` (6: two heads, 9: three), else the two-head one."""
    from nets.yolo import HEAD_LAYOUTS

    return next((layout for layout in HEAD_LAYOUTS.values() if len(layout.anchors) == count), HEAD_LAYOUTS[2])


def _report(name: str, wh: np.ndarray, anchors: np.ndarray) -> str:
    from utils.data.anchors import anchor_fitness

    mean_iou, bpr = anchor_fitness(wh, anchors)
    line = f"{name}: mean best IoU {mean_iou:.4f}, best-possible recall {bpr:.4f}"
    layout = layout_for(len(anchors))
    used = sorted({i for mask in layout.anchors_mask for i in mask})
    if len(anchors) == len(layout.anchors) and len(used) < len(anchors):  # the stock 2-head masks leave anchor 0 out
        mean_iou, bpr = anchor_fitness(wh, np.asarray(anchors)[used])
        line += f" (anchors {used} used by the default masks: {mean_iou:.4f}, {bpr:.4f})"
    return line


def fit_and_write(args: argparse.Namespace) -> np.ndarray:
    """k-means anchors for the boxes of --data/--split, written to --out and compared with the defaults."""
    from utils.data.anchors import boxes_wh, format_anchors, kmeans_anchors
    from utils.model.config import MAX_ANCHORS, MODEL_DATA, parse_input_shape, read_anchors

    if args.num_anchors > MAX_ANCHORS:
        raise ConfigError(f"--num-anchors {args.num_anchors}: at most {MAX_ANCHORS} (a model config holds no more)")
    input_shape = parse_input_shape(args.input_shape)
    index = load_split(args.data, args.split)
    wh = boxes_wh(index.records, input_shape)
    LOGGER.info("clustering %d boxes from %d images of %s/%s", len(wh), len(index.records), args.data, args.split)
    anchors = kmeans_anchors(wh, args.num_anchors, seed=args.seed, iters=args.iters)
    out = Path(args.out) if args.out else MODEL_DATA / "kmeans_anchors.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(format_anchors(anchors) + "\n", encoding="utf-8")
    rounded = np.asarray(read_anchors(out))
    print(f"anchors ({input_shape[0]}x{input_shape[1]} input, {len(wh)} boxes) -> {out}: {format_anchors(rounded)}")
    print(_report("k-means", wh, rounded))
    if args.default_anchors:
        print(_report(f"default ({args.default_anchors})", wh, np.asarray(read_anchors(args.default_anchors))))
    else:
        layout = layout_for(len(rounded))
        print(_report(f"default ({len(layout.strides)} heads)", wh, np.asarray(layout.anchors)))
    return rounded


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run_command(lambda: fit_and_write(args), args.verbose, LOGGER)


if __name__ == "__main__":
    sys.exit(main())
