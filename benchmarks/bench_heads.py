"""Two heads (yolov4-tiny) against three (--heads 3, yolov4-tiny-3l): parameters, GFLOPs, training-step and inference
speed, measured in one run so that the speeds compare as ratios.

    python benchmarks/bench_heads.py                      # 416 px, 80 classes, phi none
    python benchmarks/bench_heads.py --phi cbam --num-classes 20 --rounds 5

Prints one JSON line per head count (parameters and GFLOPs from nets.summary, the best round's training and inference
images/s, wall clock and per CPU-second of this process) and one line of ratios (3 heads over 2). The two models
alternate within every round, so a shared machine's changing load weighs on both alike, and the best round of each
counts; on a busy machine the per-CPU-second figures are the steadier ones (time spent waiting for a core is not
counted). A training step is the model's forward, YoloLoss and the optimizer step on a fixed random batch (no data
loading: what differs between the two is the network and the loss). Inference is a fused fp32 Detector on a fixed
batch of random images (letterbox, forward, decoding, NMS), as predict.py runs it on a CPU.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if not __package__:  # run as `python benchmarks/bench_heads.py`: the repository root is not on sys.path yet
    sys.path.insert(0, str(ROOT))

from nets.summary import count_gflops, count_parameters  # noqa: E402
from utils.model.config import ModelConfig, build_model  # noqa: E402
from utils.runtime.detector import DetectOptions, Detector  # noqa: E402
from utils.train.loss import YoloLoss  # noqa: E402
from utils.train.optim import build_optimizer  # noqa: E402

HEADS = (2, 3)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=416, help="input size (square)")
    parser.add_argument("--num-classes", type=int, default=80, help="classes (80: the COCO head, as Darknet's cfgs)")
    parser.add_argument("--phi", default="none", help="attention of both models")
    parser.add_argument("--train-batch", type=int, default=4, help="images per training step")
    parser.add_argument("--train-steps", type=int, default=3, help="timed training steps per round")
    parser.add_argument("--infer-batch", type=int, default=4, help="images per inference call")
    parser.add_argument("--infer-calls", type=int, default=3, help="timed inference calls per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each times both models")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    return parser


def random_targets(batch: int, size: int, num_classes: int, seed: int) -> torch.Tensor:
    """Rows (image, class, x1, y1, x2, y2) px: 6 boxes per image, from 8 px to half the image, so every head has
    positives."""
    rng = np.random.default_rng(seed)
    rows = []
    for image in range(batch):
        for _ in range(6):
            w, h = rng.uniform(8, size / 2, 2)
            x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
            rows.append([image, rng.integers(num_classes), x, y, x + w, y + h])
    return torch.tensor(rows, dtype=torch.float32)


class TrainStep:
    """One model's training step on a fixed batch: forward, loss, backward, SGD step."""

    def __init__(self, config: ModelConfig, batch: int, seed: int = 0):
        torch.manual_seed(seed)
        self.model = build_model(config).train().to(memory_format=torch.channels_last)
        self.model.initialize_biases(config.input_shape)
        self.loss = YoloLoss(config)
        self.optimizer = build_optimizer(self.model, "sgd", 1e-3, 0.937, 5e-4)
        size = config.input_shape
        self.images = torch.rand(batch, 3, *size).contiguous(memory_format=torch.channels_last)
        self.targets = random_targets(batch, size[0], config.num_classes, seed)

    def __call__(self, steps: int) -> tuple[float, float]:
        """(images/s, images per CPU-second) over `steps` steps."""
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self.optimizer.zero_grad(set_to_none=True)
            self.loss(self.model(self.images), self.targets)["total"].backward()
            self.optimizer.step()
        images = steps * self.images.shape[0]
        return images / (time.perf_counter() - start), images / (time.process_time() - cpu)


class Inference:
    """Detector.detect (fused fp32: forward, decode, NMS) on a fixed batch of images."""

    def __init__(self, config: ModelConfig, batch: int, seed: int = 0):
        torch.manual_seed(seed)
        model = build_model(config).eval()
        model.initialize_biases(config.input_shape)  # few boxes above the threshold, as with trained weights
        self.detector = Detector(model, config, device="cpu", precision="fp32", options=DetectOptions())
        rng = np.random.default_rng(seed)
        self.images = [rng.integers(0, 255, (*config.input_shape, 3), dtype=np.uint8) for _ in range(batch)]

    def __call__(self, calls: int) -> tuple[float, float]:
        """(images/s, images per CPU-second) over `calls` batches."""
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            self.detector(self.images)
        images = calls * len(self.images)
        return images / (time.perf_counter() - start), images / (time.process_time() - cpu)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = {h: ModelConfig(classes=[f"c{i}" for i in range(args.num_classes)], attention=args.phi, heads=h,
                              input_shape=[args.size, args.size]) for h in HEADS}
    sizes = {}
    for heads, config in configs.items():
        model = build_model(config)
        sizes[heads] = {"parameters": count_parameters(model),
                        "gflops": round(count_gflops(model, tuple(config.input_shape)), 3)}
    train = {h: TrainStep(c, args.train_batch) for h, c in configs.items()}
    infer = {h: Inference(c, args.infer_batch) for h, c in configs.items()}
    for heads in HEADS:  # warm-up: oneDNN kernel selection, allocator
        train[heads](1)
        infer[heads](1)
    keys = ("train_images_per_s", "train_images_per_cpu_s", "infer_images_per_s", "infer_images_per_cpu_s")
    best = {h: dict.fromkeys(keys, 0.0) for h in HEADS}
    for round_index in range(args.rounds):
        order = HEADS if round_index % 2 == 0 else HEADS[::-1]  # alternate who goes first
        for heads in order:
            measured = (*train[heads](args.train_steps), *infer[heads](args.infer_calls))
            best[heads] = {key: max(best[heads][key], value) for key, value in zip(keys, measured, strict=True)}
    for heads in HEADS:
        print(json.dumps({"bench": "heads", "heads": heads, "phi": args.phi, "size": args.size,
                          "num_classes": args.num_classes, **sizes[heads],
                          **{key: round(value, 3) for key, value in best[heads].items()},
                          "train_batch": args.train_batch, "infer_batch": args.infer_batch,
                          "rounds": args.rounds, "threads": torch.get_num_threads()}))
    print(json.dumps({"bench": "heads_ratio_3_over_2",
                      "parameters": round(sizes[3]["parameters"] / sizes[2]["parameters"], 4),
                      "gflops": round(sizes[3]["gflops"] / sizes[2]["gflops"], 4),
                      **{key.replace("images_per", "speed_per"): round(best[3][key] / best[2][key], 3)
                         for key in keys}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
