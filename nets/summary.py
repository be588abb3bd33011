"""Parameter count and GFLOPs of a YoloBody: `python -m nets.summary --phi 2 --input-shape 416 [--heads 3]`, or of
every (attention, placement) as a Markdown table: `python -m nets.summary --table --num-classes 80 [--heads 3]`."""
from __future__ import annotations

import argparse
import copy
import sys
from typing import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nets.attention import attention_choices, attention_names
from nets.errors import ModelConfigError
from nets.yolo import ATTENTION_PLACES, HEAD_LAYOUTS, MAX_CLASSES, YoloBody, check_input_size, head_layout


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_gflops(model: nn.Module, input_shape: tuple[int, int]) -> float:
    """GFLOPs of one forward pass on a single image, counted by torch.utils.flop_counter.

    FlopCounterMode counts a multiply-add as 2 FLOPs; detection papers (and Darknet) quote the same unit
    for YOLOv4-tiny's 6.9 "BFLOPs" at 416.

    Counted on a copy on the meta device: shapes only, nothing computed or allocated, so any input size the model
    accepts costs the same (a real 4096 x 4096 pass would need gigabytes) and `model` is left as it was.
    """
    shadow = copy.deepcopy(model).eval().to("meta")
    dtype = next(model.parameters()).dtype
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        shadow(torch.empty(1, 3, *input_shape, dtype=dtype, device="meta"))
    return counter.get_total_flops() / 1e9


def model_summary(model: nn.Module, input_shape: tuple[int, int]) -> str:
    """One line: attention, classes, parameters and GFLOPs at the given input size."""
    params = count_parameters(model)
    gflops = count_gflops(model, input_shape)
    attention = getattr(model, "attention", "?")
    placement = f", at={model.attention_at}" if attention not in ("none", "?") else ""
    classes = getattr(model, "num_classes", "?")
    heads = len(getattr(model, "strides", ())) or "?"
    return (f"YoloBody(attention={attention}{placement}, classes={classes}, heads={heads}): {params:,} parameters, "
            f"{gflops:.2f} GFLOPs at {input_shape[0]}x{input_shape[1]}")


def variants() -> list[tuple[str, str]]:
    """Every (attention, placement); none has no placement and appears once."""
    return [("none", "-")] + [(name, at) for name in attention_names()[1:] for at in ATTENTION_PLACES]


def summary_model(num_classes: int, attention: str, attention_at: str, input_shape: Sequence[int],
                  heads: int = 2) -> nn.Module:
    """A YoloBody with these settings and the default anchor masks of `heads` heads (random weights)."""
    check_input_size(*input_shape)
    if num_classes < 1:
        raise ModelConfigError(f"--num-classes must be a positive integer, got {num_classes}")
    return YoloBody(head_layout(heads).anchors_mask, num_classes, attention, attention_at)


def parse_size(value: str) -> tuple[int, int]:
    """'416' or 'height,width' -> (height, width), positive multiples of the model's stride."""
    try:
        sides = [int(part) for part in str(value).split(",")]
    except ValueError:
        raise ModelConfigError(f"--input-shape {value!r}: give 416 or height,width") from None
    if len(sides) not in (1, 2):
        raise ModelConfigError(f"--input-shape {value!r}: give 416 or height,width")
    height, width = sides if len(sides) == 2 else sides * 2
    check_input_size(height, width)
    return height, width


def summary_table(num_classes: int, input_shape: tuple[int, int], heads: int = 2) -> str:
    """Markdown table of parameters and GFLOPs for every (attention, placement), with the change against none."""
    rows = ["| attention | placement | parameters | vs none | GFLOPs | vs none |", "|---|---|---|---|---|---|"]
    base = None
    for name, at in variants():
        model = summary_model(num_classes, name, at if at != "-" else "neck", input_shape, heads)
        params, gflops = count_parameters(model), count_gflops(model, input_shape)
        base = base or (params, gflops)
        rows.append(f"| {name} | {at} | {params:,} | {params - base[0]:+,} | {gflops:.3f} | "
                    f"{gflops - base[1]:+.3f} |")
    return "\n".join(rows)


def class_count(text: str) -> int:
    """--num-classes as an argparse type: a whole number in [1, MAX_CLASSES] (nets/ has no utils.common.cli)."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_CLASSES:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer in [1, {MAX_CLASSES}]")
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--phi", default="0", help=f"attention: {attention_choices()}")
    parser.add_argument("--heads", type=int, choices=sorted(HEAD_LAYOUTS), default=2,
                        help="detection heads: 2 (yolov4-tiny) or 3 (+ stride 8, yolov4-tiny-3l)")
    parser.add_argument("--attention-at", choices=ATTENTION_PLACES, default="neck", help="attention placement")
    parser.add_argument("--num-classes", type=class_count, default=20,
                        help=f"number of classes (20 for VOC, 80 for COCO), 1 to {MAX_CLASSES}")
    parser.add_argument("--input-shape", default="416", help="416 or height,width; multiples of 32")
    parser.add_argument("--table", action="store_true", help="a Markdown table of every (attention, placement)")
    parser.add_argument("--verbose", action="store_true", help="full tracebacks")
    args = parser.parse_args(argv)
    try:
        input_shape = parse_size(args.input_shape)
        if args.table:
            print(summary_table(args.num_classes, input_shape, args.heads))
        else:
            model = summary_model(args.num_classes, args.phi, args.attention_at, input_shape, args.heads)
            print(model_summary(model, input_shape))
    except ModelConfigError as err:  # a bad option is one line; anything else is a bug and keeps its traceback
        if args.verbose:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
