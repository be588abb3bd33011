"""Parameter count and GFLOPs of a YoloBody: `python -m nets.summary --phi 2 --input-shape 416`."""
from __future__ import annotations

import argparse
import logging
import sys

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from utils.config import ModelConfig, build_model, parse_input_shape
from utils.run_logging import run_command, setup_logging

LOGGER = logging.getLogger(__name__)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_gflops(model: nn.Module, input_shape: tuple[int, int]) -> float:
    """GFLOPs of one forward pass on a single image, counted by torch.utils.flop_counter.

    FlopCounterMode counts a multiply-add as 2 FLOPs; detection papers (and Darknet) quote the same unit
    for YOLOv4-tiny's 6.9 "BFLOPs" at 416.
    """
    was_training = model.training
    model.eval()
    parameter = next(model.parameters())
    x = torch.zeros(1, 3, *input_shape, dtype=parameter.dtype, device=parameter.device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    model.train(was_training)
    return counter.get_total_flops() / 1e9


def model_summary(model: nn.Module, input_shape: tuple[int, int]) -> str:
    """One line: attention, classes, parameters and GFLOPs at the given input size."""
    params = count_parameters(model)
    gflops = count_gflops(model, input_shape)
    attention = getattr(model, "attention", "?")
    classes = getattr(model, "num_classes", "?")
    return (f"YoloBody(attention={attention}, classes={classes}): {params:,} parameters, "
            f"{gflops:.2f} GFLOPs at {input_shape[0]}x{input_shape[1]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--phi", default="0", help="attention: 0/none, 1/se, 2/cbam, 3/eca")
    parser.add_argument("--num-classes", type=int, default=20, help="number of classes (20 for VOC, 80 for COCO)")
    parser.add_argument("--input-shape", default="416", help="416 or height,width; multiples of 32")
    parser.add_argument("--verbose", action="store_true", help="full tracebacks")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    def summarise() -> None:
        config = ModelConfig(classes=[f"class{i}" for i in range(args.num_classes)], attention=args.phi,
                             input_shape=parse_input_shape(args.input_shape))
        print(model_summary(build_model(config), tuple(config.input_shape)))
    return run_command(summarise, args.verbose, LOGGER)


if __name__ == "__main__":
    sys.exit(main())
