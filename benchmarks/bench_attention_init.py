"""What inserting attention blocks into a trained backbone does at step 0, for three initialisations of the blocks.

    python benchmarks/bench_attention_init.py --weights logs/plain/best.pth --data VOCdevkit --split val

--weights is a trained model without attention (or with neck attention). For every attention type its blocks are put
inside the backbone (--attention-at backbone) with the trained tensors loaded into everything else, and initialised
  default:   the papers' block (sigmoid gates) with PyTorch's default initialisation,
  zero-gate: sigmoid gates over zeroed gate layers (every gate exactly 0.5),
  identity:  2 x sigmoid gates over zeroed gate layers (every gate exactly 1; what --attention-at backbone does).
Prints one JSON line per (attention, init): the relative change of the raw head outputs against the trained model,
||out - out_trained|| / ||out_trained|| over the split's letterboxed images, and the split's mAP50 (eval.py's code).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if not __package__:  # run as `python benchmarks/bench_attention_init.py`: the repository root is not on sys.path yet
    sys.path.insert(0, str(ROOT))

from nets.attention import ATTENTION_NAMES, create_attention  # noqa: E402
from utils.common.image_io import to_model_input  # noqa: E402
from utils.data.index import load_split  # noqa: E402
from utils.data.loader import EvalDataset, build_loader, eval_collate  # noqa: E402
from utils.eval.evaluation import evaluate  # noqa: E402
from utils.model.checkpoint import load_model, load_weights  # noqa: E402
from utils.model.config import ModelConfig, build_model  # noqa: E402

INITS = ("default", "zero-gate", "identity")


def with_backbone_blocks(trained: torch.nn.Module, config: ModelConfig, attention: str, init: str):
    """The trained model with `attention` blocks inside its backbone, initialised as `init`."""
    config = ModelConfig.from_dict(config.to_dict() | {"attention": attention, "attention_at": "backbone"})
    model = build_model(config)
    load_weights(model, trained.state_dict(), partial=True)
    for stage in (model.backbone.resblock_body1, model.backbone.resblock_body2, model.backbone.resblock_body3):
        if init == "default":
            stage.feat_att = create_attention(attention, stage.out_channels)
        elif init == "zero-gate":
            stage.feat_att.gain = 1.0  # the zeroed gate layers stay: every gate is sigmoid(0) = 0.5
    return model.eval(), config


@torch.no_grad()
def relative_change(model: torch.nn.Module, reference: torch.nn.Module, loader) -> float:
    """||model(x) - reference(x)|| / ||reference(x)|| over both heads and every batch of the loader."""
    diff = norm = 0.0
    for images, _, _ in loader:
        x = to_model_input(images, memory_format=torch.contiguous_format)
        for out, ref in zip(model(x), reference(x), strict=True):
            diff += float((out - ref).square().sum())
            norm += float(ref.square().sum())
    return (diff / norm) ** 0.5


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="a trained checkpoint of ours without backbone attention")
    parser.add_argument("--data", default=str(ROOT / "VOCdevkit"))
    parser.add_argument("--split", default="val")
    parser.add_argument("--attention", default=",".join(ATTENTION_NAMES[1:]), help="comma-separated")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    torch.manual_seed(0)
    trained, config = load_model(args.weights)
    index = load_split(args.data, args.split, classes=config.classes, keep_empty=True)
    loader = build_loader(EvalDataset(index, config.input_shape), 8, 0, shuffle=False, seed=0, collate_fn=eval_collate)
    device = torch.device("cpu")
    base = evaluate(trained, loader, config, device, precision="fp32", coco=False)["mAP50"]
    print(json.dumps({"attention": "none (trained model)", "weights": args.weights, "split": args.split,
                      "images": len(index.records), "mAP50": round(base, 4)}), flush=True)
    for attention in args.attention.split(","):
        for init in INITS:
            model, model_config = with_backbone_blocks(trained, config, attention, init)
            change = relative_change(model, trained, loader)
            map50 = evaluate(model, loader, model_config, device, precision="fp32", coco=False)["mAP50"]
            print(json.dumps({"attention": attention, "placement": "backbone", "init": init,
                              "relative_head_change": round(change, 4), "mAP50": round(map50, 4)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
