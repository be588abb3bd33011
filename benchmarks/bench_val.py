"""What one validation costs next to one training epoch of the same run, to choose --eval-period.

    python benchmarks/bench_val.py                                                  # bundled sample, 320 px
    python benchmarks/bench_val.py --data ../shared/data/raccoon_dataset --input-shape 416

Trains --epochs epochs (from scratch, default augmentation, validation every epoch, exactly train.py's engine) in a
temporary folder and prints one JSON line per epoch: the seconds of its training pass (data loading included), of its
validation (forward passes, val loss, VOC and COCO metrics, confusion matrix and F1 curve pictures, the predictions
picture) and the validation's share of the epoch. The first epoch includes start-up effects; read the later ones.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if not __package__:  # run as `python benchmarks/bench_val.py`: the repository root is not on sys.path yet
    sys.path.insert(0, str(ROOT))

from utils.data.index import load_split  # noqa: E402
from utils.model.checkpoint import load_checkpoint  # noqa: E402
from utils.model.config import parse_input_shape  # noqa: E402
from utils.train.config import TrainConfig  # noqa: E402
from utils.train.trainer import train  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT / "VOCdevkit"))
    p.add_argument("--input-shape", default="320")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--phi", default="cbam")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(data=args.data, phi=args.phi, input_shape=parse_input_shape(args.input_shape),
                             epochs=args.epochs, batch_size=args.batch_size, workers=args.workers, save_dir=tmp,
                             eval_period=1, preview=False)
        run_dir = train(config)
        history = load_checkpoint(run_dir / "last.pth")["history"]
    sizes = {split: len(load_split(args.data, split, keep_unreadable=True)) for split in ("train", "val")}
    for row in history:
        print(json.dumps({"bench": "validation_cost", "data": str(args.data), "input_shape": config.input_shape,
                          "train_images": sizes["train"], "val_images": sizes["val"], "epoch": row["epoch"],
                          "train_s": round(row["train_s"], 2), "val_s": round(row["val_s"], 2),
                          "val_share_of_epoch": round(row["val_s"] / (row["train_s"] + row["val_s"]), 3)}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
