"""Bytes of the two checkpoint kinds a run writes, per attention: last.pth (a training checkpoint: weights, EMA,
optimizer, scaler) and best.pth (a weights checkpoint: the EMA weights, the configs and the epoch's metrics).

    python benchmarks/bench_checkpoints.py [--num-classes 80] [--optimizer sgd|adam|adamw]

Each model takes one real optimiser step (so SGD's momentum, or Adam's two moments, exist as in a run) and one EMA
update; both checkpoints are serialised with torch.save, as train.py writes them. Prints one JSON line per attention.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if not __package__:  # run as `python benchmarks/bench_checkpoints.py`: the repository root is not on sys.path yet
    sys.path.insert(0, str(ROOT))

from nets.summary import count_parameters  # noqa: E402
from utils.model.checkpoint import training_checkpoint, weights_checkpoint  # noqa: E402
from utils.model.config import ModelConfig, build_model  # noqa: E402
from utils.train.config import TrainConfig  # noqa: E402
from utils.train.optim import build_optimizer, ema_model  # noqa: E402

PROGRESS = {"epoch": 1, "best_fitness": 0.5, "best_epoch": 1, "stale_validations": 0, "stop_reason": None,
            "history": [{"epoch": 1, "val/mAP50": 0.5}], "best_metrics": {"epoch": 1, "val/mAP50": 0.5}}


def serialized_bytes(payload: dict) -> int:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getbuffer().nbytes


def sizes(attention: str, num_classes: int, optimizer_name: str) -> dict:
    config = ModelConfig(classes=[f"c{i}" for i in range(num_classes)], attention=attention)
    model = build_model(config).train()
    optimizer = build_optimizer(model, optimizer_name, 1e-3, 0.937, 5e-4)
    ema = ema_model(model)
    sum(output.float().mean() for output in model(torch.rand(2, 3, 64, 64))).backward()
    optimizer.step()
    ema.update_parameters(model)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    training = training_checkpoint(model, ema, optimizer, scaler, PROGRESS, config,
                                   TrainConfig(phi=attention, optimizer=optimizer_name).to_dict())
    last, best = serialized_bytes(training), serialized_bytes(weights_checkpoint(training, PROGRESS["history"][0]))
    return {"attention": attention, "classes": num_classes, "optimizer": optimizer_name,
            "parameters": count_parameters(model), "last_pth_bytes": last, "best_pth_bytes": best,
            "best_over_last": round(best / last, 3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default="sgd")
    parser.add_argument("--attentions", default="none,se,cbam,eca,ca")
    args = parser.parse_args(argv)
    for attention in args.attentions.split(","):
        print(json.dumps(sizes(attention, args.num_classes, args.optimizer)), flush=True)


if __name__ == "__main__":
    main()
