"""Training-data throughput of ONE worker: augmented samples/s (mosaic + mixup, 416 px) on the raccoon dataset.

Prints one JSON line: wall-clock samples/s through a DataLoader with one worker, and samples per CPU-second measured
in-process (meaningful on a shared, busy machine, where wall-clock figures are pessimistic). The reference (a PIL
pipeline with the same augmentations) does about 80 samples/s on one core.
Usage: python benchmarks/bench_data.py [--data DIR] [--samples 400] [--size 416]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import cv2
import torch

ROOT = Path(__file__).resolve().parent.parent
if not __package__:  # run as `python benchmarks/bench_data.py`: the repository root is not on sys.path yet
    sys.path.insert(0, str(ROOT))

from utils.data.augment import AugmentConfig  # noqa: E402
from utils.data.index import load_split  # noqa: E402
from utils.data.loader import TrainDataset, build_loader  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "raccoon_dataset"


def cpu_rate(dataset: TrainDataset, samples: int) -> float:
    """Samples per CPU-second of this process (insensitive to other processes competing for the cores)."""
    for i in range(32):  # fill the mosaic buffer
        dataset[i % len(dataset)]
    start = time.process_time()
    for i in range(samples):
        dataset[i % len(dataset)]
    return samples / (time.process_time() - start)


def measure(data: Path, config: AugmentConfig, samples: int, size: int) -> tuple[float, float]:
    """(wall-clock samples/s through a DataLoader with one worker process (batch 16), samples per CPU-second)."""
    index = load_split(data, "all")
    dataset = TrainDataset(index, (size, size), config, epochs=100)
    cpu = cpu_rate(TrainDataset(index, (size, size), config, epochs=100), samples)
    loader = build_loader(dataset, batch_size=16, workers=1, shuffle=True, seed=0)
    iterator = iter(loader)
    next(iterator)  # start the worker and fill its mosaic buffer before timing
    for _ in range(4):
        next(iterator)
    start, count = time.perf_counter(), 0
    while count < samples:
        try:
            images, _ = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            continue
        count += len(images)
    return count / (time.perf_counter() - start), cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--samples", type=int, default=480)
    parser.add_argument("--size", type=int, default=416)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    if not args.data.is_dir():
        print(json.dumps({"benchmark": "data", "skipped": f"{args.data} is absent"}))
        return 0
    torch.set_num_threads(1)
    cv2.setNumThreads(0)
    configs = {"default (mosaic 0.5, mixup 0.5)": AugmentConfig(),
               "mosaic 1.0 + mixup 1.0": AugmentConfig(mosaic=1.0, mixup=1.0),
               "mosaic 1.0 + mixup 1.0, no mosaic buffer": AugmentConfig(mosaic=1.0, mixup=1.0, mosaic_buffer=0)}
    result = {}
    for name, config in configs.items():
        wall, cpu = measure(args.data, config, args.samples, args.size)
        result[name] = {"samples_per_s_1_worker": round(wall, 1), "samples_per_cpu_s": round(cpu, 1)}
    print(json.dumps({"benchmark": "data", "input": args.size, "data": str(args.data),
                      "samples_per_config": args.samples, "load_average_1min": round(os.getloadavg()[0], 2),
                      "cpu_count": os.cpu_count(), **result}))


if __name__ == "__main__":
    sys.exit(main())
