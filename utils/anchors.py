"""Anchor boxes from a dataset: IoU-distance k-means, fitness (mean best IoU, best-possible recall), and a check.

    python -m utils.anchors --data VOCdevkit -n 6 --input-shape 416 --out model_data/my_anchors.txt

All sizes are (w, h) in input pixels after letterboxing, the unit of ModelConfig.anchors.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from utils.config import DEFAULT_ANCHORS, DEFAULT_ANCHORS_MASK, MODEL_DATA, ModelConfig, parse_input_shape, read_anchors
from utils.datasets import DATA_HELP, load_split
from utils.errors import ConfigError
from utils.image_io import image_size, probe_image
from utils.run_logging import DefaultsHelpFormatter, run_command, setup_logging

LOGGER = logging.getLogger(__name__)
# A box counts as recallable when its best anchor is within this factor in both width and height (the peers'
# auto-anchor rule, anchor_t = 4): the head predicts w = anchor * exp(tw), and |tw| <= ln 4 keeps it trainable.
# IoU is no use here: our loss gives every box its best-IoU anchor, so an IoU-based recall would always be 1.
MAX_RATIO = 4.0
MIN_BOX_SIZE = 2.0  # input pixels; smaller boxes are label noise at this resolution (the peers drop them too)


def wh_iou(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """IoU [N, K] of boxes [N, 2] and anchors [K, 2] (w, h) placed at a common corner (torchvision box_iou)."""
    def corner_boxes(sizes: np.ndarray) -> torch.Tensor:
        sizes = torch.as_tensor(np.asarray(sizes, dtype=np.float64).reshape(-1, 2))
        return torch.cat((torch.zeros_like(sizes), sizes), dim=1)
    return box_iou(corner_boxes(wh), corner_boxes(anchors)).numpy()


def _check_wh(wh: np.ndarray, n: int) -> np.ndarray:
    wh = np.asarray(wh, dtype=np.float64)
    if wh.ndim != 2 or wh.shape[1] != 2:
        raise ValueError(f"box sizes must be an array [N, 2] of (w, h), got shape {wh.shape}")
    if (wh <= 0).any():
        raise ValueError("box sizes must be positive; drop empty boxes first")
    if len(wh) < n:
        raise ConfigError(f"{len(wh)} boxes cannot make {n} anchors; use a bigger split or fewer anchors")
    return wh


def _initial_anchors(wh: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding with distance 1 - IoU: spread-out starting anchors, so clusters are rarely merged."""
    anchors = [wh[rng.integers(len(wh))]]
    for _ in range(1, n):
        distance = 1 - wh_iou(wh, np.array(anchors)).max(axis=1)
        weights = distance ** 2
        total = weights.sum()
        index = rng.choice(len(wh), p=weights / total) if total > 0 else rng.integers(len(wh))
        anchors.append(wh[index])
    return np.array(anchors)


def kmeans_anchors(wh: np.ndarray, n: int = 6, seed: int = 0, iters: int = 300) -> np.ndarray:
    """Anchors [n, 2] (w, h) sorted by area: k-means on box sizes [N, 2] with distance 1 - IoU (corner-aligned).

    Each anchor moves to its cluster's median (w, h), which resists outliers better than the mean; an empty cluster
    takes the box that the other anchors fit worst. Deterministic for a given seed.
    """
    wh = _check_wh(wh, n)
    rng = np.random.default_rng(seed)
    anchors = _initial_anchors(wh, n, rng)
    assignment = None
    for _ in range(iters):
        iou = wh_iou(wh, anchors)
        new_assignment = iou.argmax(axis=1)
        if assignment is not None and np.array_equal(new_assignment, assignment):
            break
        assignment = new_assignment
        for k in range(n):
            members = wh[assignment == k]
            anchors[k] = np.median(members, axis=0) if len(members) else wh[iou.max(axis=1).argmin()]
    return anchors[np.argsort(anchors.prod(axis=1))]


def anchor_fitness(wh: np.ndarray, anchors: np.ndarray) -> tuple[float, float]:
    """(mean best IoU, best-possible recall) of box sizes [N, 2] against anchors [K, 2].

    Best IoU: the corner-aligned IoU with the box's best anchor. BPR: the fraction of boxes for which some anchor is
    within MAX_RATIO (4x) of the box in both width and height.
    """
    wh = _check_wh(wh, 1)
    anchors = np.asarray(anchors, dtype=np.float64).reshape(-1, 2)
    ratio = wh[:, None, :] / anchors[None, :, :]  # [N, K, 2]
    worst_side = np.maximum(ratio, 1 / ratio).max(axis=2)  # [N, K]
    bpr = float((worst_side.min(axis=1) < MAX_RATIO).mean())
    return float(wh_iou(wh, anchors).max(axis=1).mean()), bpr


def check_anchors(wh: np.ndarray, anchors: np.ndarray, threshold: float = 0.98) -> float:
    """Log the anchors' best-possible recall on box sizes [N, 2]; warn below `threshold`. Returns the BPR.

    Pass the anchors the heads use (used_anchors(config)): the stock masks leave anchor 0 out.
    """
    mean_iou, bpr = anchor_fitness(wh, anchors)
    LOGGER.info("anchors: best-possible recall %.4f, mean best IoU %.4f over %d boxes", bpr, mean_iou, len(wh))
    if bpr < threshold:
        LOGGER.warning(
            "anchors fit the training boxes poorly: best-possible recall %.4f < %.2f (%.1f%% of boxes have no anchor "
            "within %gx in width and height). Compute anchors for this data with: python -m utils.anchors --data "
            "<dataset> -n 6 --input-shape <size> --out model_data/my_anchors.txt, then train with --anchors that "
            "file", bpr, threshold, 100 * (1 - bpr), MAX_RATIO)
    return bpr


def used_anchors(config: ModelConfig) -> np.ndarray:
    """The anchors [K, 2] some head uses, in index order."""
    used = sorted({i for mask in config.anchors_mask for i in mask})
    return np.asarray(config.anchors, dtype=np.float64)[used]


# --------------------------------------------------------------------------------------------------------- data
def _image_hw(record) -> tuple[int, int]:
    """(height, width) of a record's image: its stored size, else the file header, else a full decode."""
    if getattr(record, "width", 0) and getattr(record, "height", 0):
        return int(record.height), int(record.width)
    size = image_size(record.path)
    return size if size else probe_image(record.path)[:2]


def boxes_wh(records, input_shape: list[int] | tuple[int, int]) -> np.ndarray:
    """Box sizes [N, 2] (w, h) of all records, scaled as the letterbox scales them onto an (h, w) input.

    `records` have .boxes [N, 4] (x1, y1, x2, y2) original pixels and .path (plus .width/.height when known).
    Boxes under MIN_BOX_SIZE input pixels on a side are dropped.
    """
    sizes = []
    for record in records:
        boxes = np.asarray(record.boxes, dtype=np.float64).reshape(-1, 4)
        if not len(boxes):
            continue
        height, width = _image_hw(record)
        scale = min(input_shape[1] / width, input_shape[0] / height)
        sizes.append((boxes[:, 2:4] - boxes[:, 0:2]) * scale)
    wh = np.concatenate(sizes) if sizes else np.zeros((0, 2))
    keep = (wh >= MIN_BOX_SIZE).all(axis=1)
    if (~keep).any():
        LOGGER.info("ignoring %d of %d boxes smaller than %g px at the input size", int((~keep).sum()), len(wh),
                    MIN_BOX_SIZE)
    return wh[keep]


def format_anchors(anchors: np.ndarray) -> str:
    """'10,14, 23,27, ...' rounded to whole pixels, the model_data/*.txt and Darknet cfg format."""
    return ", ".join(f"{round(w)},{round(h)}" for w, h in np.asarray(anchors))


# ---------------------------------------------------------------------------------------------------------- CLI
def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="k-means anchors (1 - IoU distance) for a dataset",
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--data", required=True, help=DATA_HELP)
    parser.add_argument("--split", default="train", help="split whose boxes are clustered (default train)")
    parser.add_argument("-n", "--num-anchors", type=int, default=6, help="number of anchors (yolov4-tiny: 6)")
    parser.add_argument("--input-shape", default="416", help="network input: 416 or height,width")
    parser.add_argument("--out", default=None, help="anchors file to write (default: the project's "
                        "model_data/kmeans_anchors.txt)")
    parser.add_argument("--default-anchors", default=None,
                        help="anchors file to compare against (default: yolov4-tiny's, utils.config.DEFAULT_ANCHORS)")
    parser.add_argument("--seed", type=int, default=0, help="k-means seed")
    parser.add_argument("--iters", type=int, default=300, help="maximum k-means iterations")
    parser.add_argument("--verbose", action="store_true", help="debug logging and full tracebacks")
    return parser


def _report(name: str, wh: np.ndarray, anchors: np.ndarray) -> str:
    mean_iou, bpr = anchor_fitness(wh, anchors)
    line = f"{name}: mean best IoU {mean_iou:.4f}, best-possible recall {bpr:.4f}"
    if len(anchors) == 6:  # how training uses 6 anchors with the stock masks (anchor 0 unused)
        used = sorted({i for mask in DEFAULT_ANCHORS_MASK for i in mask})
        mean_iou, bpr = anchor_fitness(wh, np.asarray(anchors)[used])
        line += f" (anchors {used} used by the default masks: {mean_iou:.4f}, {bpr:.4f})"
    return line


def fit_and_write(args: argparse.Namespace) -> np.ndarray:
    """k-means anchors for the boxes of --data/--split, written to --out and compared with the defaults."""
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
        print(_report("default (yolov4-tiny)", wh, np.asarray(DEFAULT_ANCHORS)))
    return rounded


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run_command(lambda: fit_and_write(args), args.verbose, LOGGER)


if __name__ == "__main__":
    sys.exit(main())
