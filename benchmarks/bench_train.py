"""Images/s of the full training step (data loading and augmentation included) at 416, batch 8.

    python benchmarks/bench_train.py [--data ../shared/data/raccoon_dataset] [--iters 30] [--modes fp32,bf16]
    python benchmarks/bench_train.py --modes fp32 --breakdown    # + where a step's time goes, conv speed per dtype

Prints one JSON line per configuration. The reference implementation's loop runs at about 6.4 images/s on a
2-core CPU (fp32, phi 2, 2 workers); the target is at least twice that.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import profile

ROOT = Path(__file__).resolve().parent.parent
if not __package__:  # run as `python benchmarks/bench_train.py`: the repository root is not on sys.path yet
    sys.path.insert(0, str(ROOT))

from utils.common.device import autocast, resolve_precision, select_device  # noqa: E402
from utils.common.image_io import to_model_input  # noqa: E402
from utils.data.augment import AugmentConfig  # noqa: E402
from utils.data.index import load_split  # noqa: E402
from utils.data.loader import TrainDataset, build_loader, train_collate  # noqa: E402
from utils.model.config import ModelConfig, build_model  # noqa: E402
from utils.train.config import TrainConfig  # noqa: E402
from utils.train.loss import YoloLoss  # noqa: E402
from utils.train.optim import build_optimizer  # noqa: E402
from utils.train.trainer import make_scaler, optimizer_step  # noqa: E402


def measure(loader, config: ModelConfig, device: torch.device, precision: str, iters: int, warmup: int) -> float:
    """Images/s over `iters` training steps after `warmup` steps, data loading included."""
    model = build_model(config).to(device, memory_format=torch.channels_last).train()
    loss_fn = YoloLoss(config)
    optimizer = build_optimizer(model, "sgd", 1e-3, 0.937, 5e-4)
    scaler = make_scaler(device, precision)
    batches = itertools.cycle(loader)
    seen, start = 0, None
    for step in range(warmup + iters):
        if step == warmup:
            start, seen = time.perf_counter(), 0
        images, targets = next(batches)
        images = to_model_input(images, device)
        with autocast(device, precision):
            outputs = model(images)
        optimizer_step(model, loss_fn(outputs, targets.to(device))["total"], optimizer, scaler, 0.0)
        seen += images.shape[0]
    return seen / (time.perf_counter() - start)


# fp16 backward is left out: CPU autocast trains in bf16, and oneDNN's fp16 backward ran at under 1 GFLOP/s here.
CONV_CASES = (("fp32_fwd", torch.float32, False), ("fp32_fwd_bwd", torch.float32, True),
              ("bf16_fwd", torch.bfloat16, False), ("bf16_fwd_bwd", torch.bfloat16, True),
              ("fp16_fwd", torch.float16, False))


def conv_gflops(dtype: torch.dtype, backward: bool, repeats: int = 5) -> float:
    """GFLOP/s of one YOLO-sized 3x3 convolution (batch 8, 128 -> 128 channels, 52x52, channels_last) in `dtype`,
    forward only or forward + backward (backward = 2 forward-sized convolutions)."""
    conv = torch.nn.Conv2d(128, 128, 3, padding=1, bias=False).to(dtype, memory_format=torch.channels_last)
    x = torch.randn(8, 128, 52, 52, dtype=dtype).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(backward)

    def run() -> None:
        with torch.set_grad_enabled(backward):
            y = conv(x)
            if backward:
                y.sum().backward()
    run()  # kernel selection, weight reorder
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    flops = 2 * 8 * 128 * 128 * 9 * 52 * 52 * (3 if backward else 1) * repeats
    return flops / (time.perf_counter() - start) / 1e9


def breakdown(config: ModelConfig, device: torch.device, batch: int, steps: int = 4) -> dict:
    """Where a training step's time goes (model only, no data loading): the profiler's share of convolutions,
    forward and backward, gives the rate the step could reach if everything else were free."""

    model = build_model(config).to(device, memory_format=torch.channels_last).train()
    loss_fn, optimizer = YoloLoss(config), build_optimizer(model, "sgd", 1e-3, 0.937, 5e-4)
    images = torch.rand(batch, 3, *config.input_shape, device=device).contiguous(memory_format=torch.channels_last)
    targets = torch.tensor([[i, 0, 0.5, 0.5, 0.3, 0.4] for i in range(batch)], device=device)

    def step() -> None:
        optimizer_step(model, loss_fn(model(images), targets)["total"], optimizer, make_scaler(device, False), 0.0)
    step()
    start = time.perf_counter()
    with profile() as prof:
        for _ in range(steps):
            step()
    seconds = time.perf_counter() - start
    events = prof.key_averages()
    conv = sum(e.self_cpu_time_total for e in events if "convolution" in e.key) / 1e6
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    rate = batch * steps / seconds
    return {"benchmark": "train_breakdown", "model_only_images_per_s": round(rate, 2),
            "convolution_share": round(conv / total, 3),
            "convolutions_only_ceiling_images_per_s": round(rate * total / conv, 2),
            **{f"conv3x3_{name}_gflops": round(conv_gflops(dtype, backward), 1)
               for name, dtype, backward in CONV_CASES}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "raccoon_dataset"))
    parser.add_argument("--phi", default="cbam")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default=None)
    parser.add_argument("--modes", default="fp32,auto", help="comma list of precisions (--precision values): fp32, "
                        "bf16, fp16, auto (the device's default)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also profile a model-only step (convolution share and the rate it bounds) and time a "
                             "3x3 convolution in fp32, bf16 and fp16 (forward)")
    args = parser.parse_args(argv)
    if not Path(args.data).exists():
        print(json.dumps({"skipped": f"dataset {args.data} not found"}))
        return 0
    device = select_device(args.device)
    index = load_split(args.data, "all")
    config = ModelConfig(classes=index.classes, attention=args.phi, input_shape=[416, 416])
    dataset = TrainDataset(index, config.input_shape, AugmentConfig(), epochs=TrainConfig().epochs)
    loader = build_loader(dataset, args.batch_size, args.workers, shuffle=True, seed=0, drop_last=True,
                          collate_fn=train_collate)
    if args.breakdown:
        print(json.dumps({**breakdown(config, device, args.batch_size), "threads": torch.get_num_threads()}),
              flush=True)
    for mode in args.modes.split(","):
        precision = resolve_precision(device, mode)
        rate = measure(loader, config, device, precision, args.iters, args.warmup)
        print(json.dumps({"benchmark": "train_step", "device": str(device), "precision": precision,
                          "channels_last": True, "phi": config.attention, "input": 416, "batch": args.batch_size,
                          "workers": args.workers, "threads": torch.get_num_threads(),
                          "images_per_s": round(rate, 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
