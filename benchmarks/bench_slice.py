"""The cost of sliced inference (--slice): images/s of one detector on whole images letterboxed (eval.py) against the
same detector on overlapping tiles plus the whole image, merged (eval.py --slice), and how many canvases that is.

    python -m utils.sample_data --small-objects --out small_objects --images 16
    python benchmarks/bench_slice.py --weights logs/exp/best.pth --data small_objects --slice 320

The images are decoded once before timing (reading is the same for both); the model runs as eval.py runs it
(unfused, fp32). The modes are interleaved in --rounds rounds, so a shared machine's load weighs on both
alike; the best round of each is compared. Prints JSON lines.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if not __package__:  # run as `python benchmarks/bench_slice.py`: the repository root is not on sys.path yet
    sys.path.insert(0, str(ROOT))

from utils.common.image_io import read_image  # noqa: E402
from utils.data.index import load_split  # noqa: E402
from utils.runtime.detector import DetectOptions  # noqa: E402
from utils.runtime.loader import load_runnable  # noqa: E402
from utils.runtime.slicing import SlicedDetector, SliceOptions, tile_windows  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--data", required=True, help="a dataset (e.g. python -m utils.sample_data --small-objects)")
    parser.add_argument("--split", default="all")
    parser.add_argument("--limit", type=int, default=8, help="images timed per round")
    parser.add_argument("--slice", type=int, default=320)
    parser.add_argument("--slice-overlap", type=float, default=0.2)
    parser.add_argument("--batch-size", type=int, default=8, help="canvases per forward pass (both modes)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--conf", type=float, default=0.001, help="as eval.py")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    loaded = load_runnable(args.weights, device=args.device)
    detector = loaded.detector(optimize=False, precision="fp32")
    detector.options = DetectOptions(args.conf, 0.5, 300)
    sliced = SlicedDetector(detector, SliceOptions(args.slice, args.slice_overlap, batch=args.batch_size))
    records = load_split(args.data, args.split, classes=loaded.config.classes).records[:args.limit]
    images = [read_image(record.path) for record in records]
    canvases = sum(len(tile_windows(*image.shape[:2], args.slice, args.slice_overlap)) + 1 for image in images)
    rates: dict[str, list[float]] = {"whole_image": [], "sliced": []}
    for _ in range(args.rounds):
        for mode in rates:
            start = time.perf_counter()
            if mode == "sliced":
                for image in images:
                    sliced([image])
            else:
                for first in range(0, len(images), args.batch_size):
                    detector(images[first:first + args.batch_size])
            rates[mode].append(len(images) / (time.perf_counter() - start))
            print(json.dumps({"bench": "slice", "mode": mode, "images": len(images),
                              "images_per_s": round(rates[mode][-1], 3)}))
    best = {mode: max(values) for mode, values in rates.items()}
    print(json.dumps({"bench": "slice_cost", "slice": args.slice, "overlap": args.slice_overlap,
                      "canvases_per_image": round(canvases / len(images), 1),
                      **{f"{mode}_images_per_s": round(value, 3) for mode, value in best.items()},
                      "sliced_vs_whole": round(best["sliced"] / best["whole_image"], 4)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
