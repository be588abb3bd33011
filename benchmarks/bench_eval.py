"""Seconds to compute VOC mAP@0.5 (utils.eval.metrics.voc_evaluate) on a synthetic VOC-sized result set.

    python benchmarks/bench_eval.py [--images 5000] [--dets 30] [--classes 20] [--repeat 5]

Ground truth: ~3 objects per image (Poisson, at least 1), 10% difficult. Detections: 2 jittered copies per gt on
average (gts drawn with replacement; class kept 90% of the time; scores U(0.2, 1)) plus random boxes (scores
U(0, 0.7)) up to --dets per image. Prints one JSON line with the median and best of --repeat timings (data
generation not timed). The issue's reference implementation takes about 9.5 s for 5000 images x 30 detections x
20 classes (its txt files already written); the target is < 0.5 s.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

if not __package__:  # run as `python benchmarks/bench_eval.py`: the repository root is not on sys.path yet
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from utils.common.boxes import GroundTruthBoxes
from utils.eval.metrics import voc_evaluate


def synthetic(images: int, dets: int, classes: int, seed: int = 0):
    """(detections per image [K,6], GroundTruthBoxes per image) on 500x375 VOC-like images."""
    rng = np.random.default_rng(seed)
    detections, truths = [], []
    for _ in range(images):
        n = max(1, rng.poisson(3))
        xy = rng.uniform(0, 400, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(10, 200, (n, 2))], axis=1)
        labels = rng.integers(0, classes, n)
        truths.append(GroundTruthBoxes(boxes, labels, rng.random(n) < 0.1))
        pick = rng.integers(0, n, min(dets, 2 * n))
        jitter = boxes[pick] + rng.normal(0, 8, (len(pick), 4))
        jitter_cls = np.where(rng.random(len(pick)) < 0.9, labels[pick], rng.integers(0, classes, len(pick)))
        extra = dets - len(pick)
        rxy = rng.uniform(0, 400, (extra, 2))
        noise = np.concatenate([rxy, rxy + rng.uniform(10, 200, (extra, 2))], axis=1)
        boxes_d = np.concatenate([jitter, noise])
        cls_d = np.concatenate([jitter_cls, rng.integers(0, classes, extra)])
        scores = np.concatenate([rng.uniform(0.2, 1.0, len(pick)), rng.uniform(0.0, 0.7, extra)])  # a fair detector
        detections.append(np.column_stack([boxes_d, scores, cls_d]))
    return detections, truths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=30, help="detections per image")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    detections, truths = synthetic(args.images, args.dets, args.classes)
    names = [f"class{i}" for i in range(args.classes)]
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        result = voc_evaluate(detections, truths, names)
        times.append(time.perf_counter() - start)
    print(json.dumps({"benchmark": "voc_map", "seconds": round(statistics.median(times), 4),
                      "best_seconds": round(min(times), 4), "repeat": args.repeat, "images": args.images,
                      "detections": int(sum(len(d) for d in detections)), "classes": args.classes,
                      "mAP": round(result.map, 4)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
