"""Train YOLOv4-tiny with an attention block: `python train.py --phi 2` (see README for a real VOC run).

Multi-GPU / multi-process: `torchrun --nproc_per_node N train.py ...` (CPU uses the gloo backend).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os

from nets.attention import attention_name
from nets.yolo import ATTENTION_PLACES
from utils.common.cli import DefaultsHelpFormatter, run_command, setup_logging
from utils.common.errors import ConfigError
from utils.common.image_io import DEFAULT_MAX_PIXELS, set_max_pixels
from utils.data.augment import AugmentConfig
from utils.data.index import DATA_HELP
from utils.model.config import parse_input_shape
from utils.train.config import TrainConfig
from utils.train.loss import LossConfig
from utils.train.recipes import DEFAULT_RECIPE, LEGACY_RECIPE, RECIPES, recipe_help
from utils.train.run_config import config_field_names, read_config_file
from utils.train.trainer import train

LOGGER = logging.getLogger("train")
AUGMENT_FLAGS = ("mosaic", "mixup", "hsv_h", "hsv_s", "hsv_v", "flip", "jitter", "mosaic_epochs_fraction")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelpFormatter)
    p.add_argument("--phi", default="0", help="attention: 0/none, 1/se, 2/cbam, 3/eca, 4/ca (coordinate attention)")
    p.add_argument("--attention-at", choices=ATTENTION_PLACES, default="neck",
                   help="where attention goes: neck (the reference's 3 places), backbone (inside each CSP stage, "
                        "starting as the identity), both")
    p.add_argument("--attention-reduction", type=int, default=None,
                   help="channel reduction ratio of SE, CBAM and CA (default: the reference's, SE 16, CBAM 8, CA 16)")
    p.add_argument("--cbam-kernel", type=int, choices=(3, 7), default=7, help="CBAM's spatial attention kernel")
    p.add_argument("--recipe", choices=tuple(RECIPES), default=DEFAULT_RECIPE,
                   help="training recipe: the defaults of the loss, augmentation and optimiser options below (flags "
                        "given override them): " + recipe_help())
    p.add_argument("--data", default="VOCdevkit", help=DATA_HELP)
    p.add_argument("--train-split", default="train", help="split to train on (VOC07+12: trainval)")
    p.add_argument("--val-split", default="val", help="split for validation mAP during training (VOC07+12: test); "
                   "none: no validation (best.pth is then the last epoch's weights, as last.pth)")
    p.add_argument("--names", default=None, help="class names file (one per line); default: the dataset's (sorted VOC "
                   "names, COCO categories, data.yaml names)")
    p.add_argument("--classes", default=None, help=argparse.SUPPRESS)  # before --names; still read, with a note
    p.add_argument("--anchors", default=None, help="anchors file (w,h, w,h, ... in input pixels; python -m "
                   "utils.data.anchors writes one for your data); default: yolov4-tiny's 10,14, 23,27, 37,58, 81,82, "
                   "135,169, 344,319")
    p.add_argument("--epochs", type=int, default=50, help="total epochs (a real VOC run: 300)")
    p.add_argument("--batch-size", type=int, default=8, help="total batch size over all processes")
    p.add_argument("--freeze-epochs", type=int, default=0,
                   help="epochs with the backbone frozen (VOC with pretrained: 50)")
    p.add_argument("--freeze-batch-size", type=int, default=16, help="batch size while the backbone is frozen")
    p.add_argument("--input-shape", default="320", help="input size, a multiple of 32: 320, 416 or height,width "
                   "(320 suits the bundled sample on a CPU; VOC: 416)")
    p.add_argument("--weights", default=None, help="initial weights: our .pth, a reference state_dict or a Darknet "
                   ".conv.29/.weights file (every matching tensor is loaded), local or an http(s) URL (downloaded "
                   "once into $YOLO_CACHE_DIR, default ~/.cache/yolov4-tiny-attention)")
    p.add_argument("--weights-sha256", default=None, help="expected sha256 of --weights given as an http(s) URL "
                   "(default: the hash prefix in the file name, torch.hub style, if any)")
    p.add_argument("--resume", nargs="?", const=True, default=None,
                   help="continue a run: its folder or last.pth (no value: the newest logs/*/last.pth)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: best available)")
    p.add_argument("--workers", type=int, default=2, help="data loading processes per training process")
    p.add_argument("--seed", type=int, default=0, help="base random seed (augmentation is seeded per worker)")
    p.add_argument("--save-dir", default="logs", help="project folder holding the run folders (as in eval.py and "
                   "predict.py): the run goes to SAVE_DIR/NAME")
    p.add_argument("--name", default="exp", help="run folder name inside --save-dir (exp, exp2, ... never "
                   "overwritten)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="mixed precision: bf16/fp16 on CUDA, bf16 on CPUs with native support")
    p.add_argument("--eval-period", type=int, default=1,
                   help="validate every N epochs (and after the last); raise it when a validation costs more than "
                        "about a fifth of an epoch (see val_s in results.csv)")
    p.add_argument("--patience", type=int, default=None,
                   help="stop when the fitness has not improved for N validations in a row (default 0: never)")
    p.add_argument("--fitness", choices=("map50", "map50_95", "mix"), default="map50",
                   help="what best.pth keeps and --patience follows: val mAP50, mAP50-95, or mix = 0.1 mAP50 + "
                        "0.9 mAP50-95")
    p.add_argument("--save-period", type=int, default=0, help="also keep epoch_XXX.pth every N epochs (0: off)")
    p.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default=None, help="optimiser (default: the "
                   "recipe's, sgd)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak LR at batch 64, scaled linearly with the batch size within sane bounds (default: 0.05 "
                        "for SGD, which trains the bundled sample from scratch in minutes; 0.01 is the reference's "
                        "value for VOC with pretrained weights; 1e-3 for Adam/AdamW)")
    p.add_argument("--min-lr-ratio", type=float, default=0.01, help="final LR as a fraction of the peak")
    p.add_argument("--lr-schedule", choices=("cos", "step"), default="cos", help="decay after warm-up")
    p.add_argument("--warmup-epochs", type=float, default=None, help="linear LR warm-up length (default: the "
                   "recipe's, 3)")
    p.add_argument("--momentum", type=float, default=0.937, help="SGD momentum / Adam beta1")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="on conv and linear weights only")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True, help="exponential moving average")
    p.add_argument("--ema-tau", type=float, default=None, help="EMA decay ramp: decay x (1 - exp(-updates / tau)) "
                   "(default: the recipe's, 2000)")
    p.add_argument("--grad-clip", type=float, default=0.0, help="max gradient norm (0: off)")
    p.add_argument("--max-bad-steps", type=int, default=20,
                   help="consecutive non-finite losses (each skipped) before training stops")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="class target smoothing epsilon")
    p.add_argument("--loss", default=None, metavar="KEY=VALUE,...",
                   help="loss options over the recipe's, e.g. assign=best_anchor,obj_target=one (keys: "
                        f"{', '.join(LOSS_KEYS)}; see utils/train/loss.py LossConfig)")
    p.add_argument("--scale-x-y", type=float, default=None,
                   help="box-centre scale of a new model, Darknet's scale_x_y (default: the recipe's; 2 lets centres "
                        "reach the neighbouring cells that the default recipe trains)")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms only (torch.use_deterministic_algorithms): the same command on the "
                        "same machine gives the same results.csv (wall-clock columns go to timing.csv)")
    p.add_argument("--multi-scale", action="store_true",
                   help="resize each training batch to a size drawn from --multi-scale-range x --input-shape, in "
                        "steps of the model's largest stride (validation stays at --input-shape)")
    p.add_argument("--multi-scale-range", default="0.5,1.5", help="low,high factors of --input-shape")
    p.add_argument("--cache", choices=("ram",), default=None, help="keep decoded images in memory")
    p.add_argument("--keep-difficult", action="store_true", help="train on VOC difficult objects too")
    p.add_argument("--sync-bn", action="store_true", help="synchronised BatchNorm across DDP processes")
    p.add_argument("--preview", action=argparse.BooleanOptionalAction, default=True,
                   help="write the training-start pictures (augmented samples, labels); --no-preview skips them")
    # default None (so that --resume can tell a given value from the default); help shows AugmentConfig's value
    for flag, text in (("mosaic", "mosaic probability"), ("mixup", "mixup probability (after mosaic)"),
                       ("hsv_h", "hue jitter"), ("hsv_s", "saturation jitter"), ("hsv_v", "value jitter"),
                       ("flip", "horizontal flip probability"), ("jitter", "aspect-ratio jitter"),
                       ("mosaic_epochs_fraction", "mosaic and mixup stop after this fraction of the epochs")):
        p.add_argument("--" + flag.replace("_", "-"), type=float, default=None,
                       help=f"{text} (default: {getattr(AugmentConfig, flag)})")
    p.add_argument("--config", default=None, help="a run's args.yaml or a recipe (model_data/voc_recipe.yaml): its "
                   "options become the defaults; flags given here override them")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="refuse images declaring more pixels than this, before decoding (decompression bombs); default "
                        f"{DEFAULT_MAX_PIXELS} (about 268 MP), or the YOLO_MAX_PIXELS environment variable")
    p.add_argument("--verbose", action="store_true", help="debug logging and full tracebacks")
    return p


# TrainConfig fields whose flag has another name or type
FIELD_FLAGS = {"classes_file": "names", "anchors_file": "anchors"}
LOSS_KEYS = tuple(f.name for f in dataclasses.fields(LossConfig))


def apply_config_file(parser: argparse.ArgumentParser, path: str) -> dict:
    """Make the options of a --config file the parser's defaults (so flags override them); returns the augment
    settings of the file that have no flag of their own (kept as they are)."""
    values = read_config_file(path, config_field_names(TrainConfig))
    values.setdefault("recipe", LEGACY_RECIPE)  # a file naming no recipe was written before recipes existed
    augment = dict(values.pop("augment", None) or {})
    if isinstance(values.get("loss"), dict):
        values["loss"] = ",".join(f"{k}={v}" for k, v in values["loss"].items())
    defaults = {FIELD_FLAGS.get(k, k): v for k, v in values.items()}
    if "input_shape" in defaults:
        defaults["input_shape"] = ",".join(map(str, parse_input_shape(defaults["input_shape"])))
    defaults.update({k: augment.pop(k) for k in AUGMENT_FLAGS if k in augment})
    parser.set_defaults(**defaults)
    return augment


def config_from_args(args: argparse.Namespace, extra_augment: dict | None = None) -> TrainConfig:
    """TrainConfig from the parsed arguments: same-named options map one to one (extra_augment: AugmentConfig
    settings without a flag, from --config)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    values.update(classes_file=args.names or args.classes, anchors_file=args.anchors,
                  input_shape=parse_input_shape(args.input_shape),
                  augment={**(extra_augment or {}),
                           **{k: getattr(args, k) for k in AUGMENT_FLAGS if getattr(args, k) is not None}},
                  patience=args.patience or 0,  # None by default, so that an explicit 0 overrides it on --resume
                  multi_scale_range=parse_range(args.multi_scale_range), loss=parse_loss(args.loss))
    return TrainConfig(**values)


def parse_loss(text: str | None) -> dict:
    """'assign=ratio,obj_gain=1' -> {'assign': 'ratio', 'obj_gain': 1.0}, typed as LossConfig's fields."""
    types = {f.name: type(f.default) for f in dataclasses.fields(LossConfig)}
    values = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, _, value = (part.strip() for part in item.partition("="))
        if key not in types or not value:
            raise ConfigError(f"--loss {item!r}: give KEY=VALUE with KEY one of {', '.join(types)}")
        try:
            values[key] = (value.lower() in ("1", "true", "yes") if types[key] is bool
                           else types[key](value))
        except ValueError:
            raise ConfigError(f"--loss {key}={value}: not a {types[key].__name__}") from None
    return values


def parse_range(value: str | list) -> list[float]:
    """'0.5,1.5' (or a list from --config) -> [0.5, 1.5]."""
    parts = value if isinstance(value, list) else str(value).split(",")
    try:
        low, high = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"--multi-scale-range {value!r}: give two factors, low,high (e.g. 0.5,1.5)") from None
    return [low, high]


def explicit_overrides(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    """Options given on the command line that differ from the defaults (applied on --resume where allowed)."""
    return {k: v for k, v in vars(args).items() if v != parser.get_default(k)}


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, main_process=os.environ.get("RANK", "0") == "0")

    def train_from_args() -> None:
        nonlocal args
        extra_augment = apply_config_file(parser, args.config) if args.config else {}
        if args.config:
            args = parser.parse_args(argv)  # the file's options are now the defaults; the flags given win
        if args.classes is not None:
            LOGGER.warning("--classes FILE is now --names FILE (the same in train.py, eval.py and predict.py); %s",
                           "--names wins" if args.names else "reading it as --names")
        set_max_pixels(args.max_pixels)
        args.phi = attention_name(args.phi)
        train(config_from_args(args, extra_augment), resume=args.resume, overrides=explicit_overrides(args, parser))
    return run_command(train_from_args, args.verbose, LOGGER)

