"""Train YOLOv4-tiny with an attention block: `python train.py --phi 2` (see README for a real VOC run).

Multi-GPU / multi-process: `torchrun --nproc_per_node N train.py ...` (CPU uses the gloo backend).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os

# Only light modules at the top: --help and a value outside its range answer at once; torch and the rest are imported
# when the work starts (train_from_args).
from utils.common.cli import (
    CommandParser,
    LazyHelp,
    add_precision_argument,
    argument_type,
    positive_int,
    requested_precision,
    run_command,
    setup_logging,
)
from utils.common.errors import ConfigError
from utils.common.image_io import DEFAULT_MAX_PIXELS
from utils.data.augment import AugmentConfig
from utils.data.index import DATA_HELP
from utils.model.legacy import LEGACY_OPTION_FIELDS, upgrade_legacy_options
from utils.train.config import AUGMENT_RANGES, FIELD_RANGES, FITNESS, OPTIMIZERS, TrainConfig, multi_scale_range
from utils.train.loss_config import LOSS_KEYS, parse_loss
from utils.train.recipes import DEFAULT_RECIPE, LEGACY_RECIPE, RECIPES, recipe_help

LOGGER = logging.getLogger("train")
AUGMENT_FLAGS = ("mosaic", "mixup", "hsv_h", "hsv_s", "hsv_v", "flip", "jitter", "mosaic_epochs_fraction")


def get_args_parser() -> argparse.ArgumentParser:
    p = CommandParser(description=__doc__)
    _model_arguments(p.add_argument_group("model"))
    _data_arguments(p.add_argument_group("data"))
    _schedule_arguments(p.add_argument_group("schedule"))
    _recipe_arguments(p.add_argument_group("recipe and loss (utils/train/recipes.py, utils/train/loss_config.py)"))
    _optimiser_arguments(p.add_argument_group("optimiser"))
    _augment_arguments(p.add_argument_group("augmentation (defaults: utils.data.augment.AugmentConfig)"))
    _run_arguments(p.add_argument_group("run: device, precision, output"))
    return p


def _model_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--phi", default="0", help=LazyHelp(_phi_help))
    group.add_argument("--attention-at", default="neck",
                       help="where attention goes: neck (the reference's 3 places), backbone (inside each CSP stage, "
                            "starting as the identity), both")
    add_attention_option_flags(group)
    # the choices are nets.yolo.HEAD_LAYOUTS' keys (tests/test_heads.py checks), written out so that --help and a bad
    # value need no torch
    group.add_argument("--heads", type=int, choices=(2, 3), default=2,
                       help="detection heads: 2 (strides 32, 16: yolov4-tiny) or 3 (+ stride 8 for small objects: "
                            "Darknet's yolov4-tiny-3l, 9 anchors)")
    group.add_argument("--scale-x-y", type=FIELD_RANGES["scale_x_y"], default=None,
                       help="box-centre scale of a new model, Darknet's scale_x_y (default: the recipe's, 1; "
                            "yolov5-assign: 2, so that centres reach the neighbouring cells it trains)")
    group.add_argument("--input-shape", default="320", help="input size, a multiple of 32: 320, 416 or height,width "
                       "(320 suits the bundled sample on a CPU; VOC: 416)")
    group.add_argument("--anchors", default=None, help="anchors file (w,h, w,h, ... in input pixels; python -m "
                       "utils.anchors writes one for your data); default: yolov4-tiny's 10,14, 23,27, 37,58, 81,82, "
                       "135,169, 344,319")
    group.add_argument("--weights", default=None, help="initial weights: our .pth, a reference state_dict or a "
                       "Darknet .conv.29/.weights file (every matching tensor is loaded), local or an http(s) URL "
                       "(downloaded once into $YOLO_CACHE_DIR, default ~/.cache/yolov4-tiny-attention)")
    group.add_argument("--weights-sha256", default=None, help="expected sha256 of --weights given as an http(s) URL "
                       "(default: the hash prefix in the file name, torch.hub style, if any)")


def _phi_help() -> str:
    from nets.attention import attention_choices  # the registry: blocks registered by any imported module count

    return f"attention: {attention_choices()}"


def _attention_option_help() -> str:
    from nets.attention import attention_names, block_options

    blocks = {name: block_options(name) for name in attention_names() if block_options(name)}
    listing = "; ".join(f"{name}: " + ", ".join(f"{k}={v}" for k, v in options.items())
                        for name, options in blocks.items())
    return (f"an attention block option, repeatable (the blocks' defaults: {listing}); an option the chosen block "
            "lacks is ignored with a warning")


# Older spellings of block options (before --attention-option), kept working; a new option needs no flag of its own.
# tests/test_attention_registry.py checks them against the blocks' option_flags.
OPTION_ALIASES = {"--attention-reduction": "reduction", "--cbam-kernel": "kernel_size"}


class OptionAlias(argparse.Action):
    """An older spelling of one block option: `--cbam-kernel 3` appends 'kernel_size=3' to --attention-option."""

    def __init__(self, option_strings: list[str], dest: str, option: str, **kwargs):
        self.option = option
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), f"{self.option}={values}"])


def add_attention_option_flags(group: argparse._ArgumentGroup) -> None:
    """--attention-option NAME=VALUE, with every registered block's options and defaults in its help (computed when
    --help prints), and the older spellings; all collect into args.attention_option."""
    group.add_argument("--attention-option", action="append", default=None, metavar="NAME=VALUE",
                       help=LazyHelp(_attention_option_help))
    for flag, option in OPTION_ALIASES.items():
        group.add_argument(flag, dest="attention_option", action=OptionAlias, option=option, metavar="N",
                           help=f"same as --attention-option {option}=N")


def parse_attention_options(pairs: list[str] | None) -> dict[str, str]:
    """['kernel_size=3', ...] -> {'kernel_size': '3'} (the last of a repeated option wins; ModelConfig converts the
    values to each option's type)."""
    options = {}
    for pair in pairs or []:
        name, sep, value = str(pair).partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ConfigError(f"--attention-option {pair!r}: write NAME=VALUE, e.g. --attention-option kernel_size=3")
        options[name.strip()] = value.strip()
    return options


def _logger_help() -> str:
    from utils.train.loggers import LOGGERS  # the registry (utils.train.callbacks and the rest)

    return (f"also log to this experiment tracker, one of: {', '.join(LOGGERS)} (repeatable; TensorBoard is always "
            "on): mlflow = the store in $MLFLOW_TRACKING_URI, else ./mlruns (needs pip install mlflow-skinny)")


def _data_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--data", default="VOCdevkit", help=DATA_HELP)
    group.add_argument("--train-split", default="train", help="split to train on (VOC07+12: trainval)")
    group.add_argument("--val-split", default="val", help="split for validation mAP during training (VOC07+12: "
                       "test); none: no validation (best.pth is then the last epoch's weights, as last.pth)")
    group.add_argument("--names", default=None, help="class names file (one per line); default: the dataset's "
                       "(sorted VOC names, COCO categories, data.yaml names)")
    group.add_argument("--classes", default=None, help=argparse.SUPPRESS)  # before --names; still read, with a note
    group.add_argument("--keep-difficult", action="store_true", help="train on VOC difficult objects too")
    group.add_argument("--cache", choices=("ram",), default=None, help="keep decoded images in memory")
    group.add_argument("--workers", type=FIELD_RANGES["workers"], default=2,
                       help="data loading processes per training process")
    group.add_argument("--max-pixels", type=positive_int, default=None,
                       help="refuse images declaring more pixels than this, before decoding (decompression bombs); "
                            f"default {DEFAULT_MAX_PIXELS} (about 268 MP), or the YOLO_MAX_PIXELS environment variable")


def _schedule_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--epochs", type=FIELD_RANGES["epochs"], default=50, help="total epochs (a real VOC run: 300)")
    group.add_argument("--batch-size", type=FIELD_RANGES["batch_size"], default=8,
                       help="total batch size over all processes")
    group.add_argument("--freeze-epochs", type=FIELD_RANGES["freeze_epochs"], default=0,
                       help="epochs with the backbone frozen (VOC with pretrained: 50)")
    group.add_argument("--freeze-batch-size", type=FIELD_RANGES["freeze_batch_size"], default=16,
                       help="batch size while the backbone is frozen")
    group.add_argument("--eval-period", type=FIELD_RANGES["eval_period"], default=1,
                       help="validate every N epochs (and after the last; 0: only after the last); raise it when a "
                            "validation costs more than about a fifth of an epoch (see val_s in results.csv)")
    group.add_argument("--patience", type=FIELD_RANGES["patience"], default=None,
                       help="stop when the fitness has not improved for N validations in a row (default 0: never)")
    group.add_argument("--fitness", choices=tuple(FITNESS), default=TrainConfig.fitness,
                       help="what best.pth keeps and --patience follows: val mAP50, mAP50-95, or (default) mix = 0.1 "
                            "mAP50 + 0.9 mAP50-95, which keeps rewarding tighter boxes after mAP50 saturates")
    group.add_argument("--multi-scale", action="store_true",
                       help="resize each training batch to a size drawn from --multi-scale-range x --input-shape, in "
                            "steps of the model's largest stride (validation stays at --input-shape)")
    group.add_argument("--multi-scale-range", type=argument_type(multi_scale_range), default=[0.5, 1.5],
                       help="low,high factors of --input-shape, each in (0, 4]")


def _recipe_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--recipe", choices=tuple(RECIPES), default=DEFAULT_RECIPE,
                       help="the defaults of the loss, augmentation and optimiser options (flags given override "
                            "one value each): " + recipe_help())
    group.add_argument("--loss", action="append", type=argument_type(parse_loss), default=None,
                       metavar="KEY=VALUE,...", help="loss options over the recipe's, repeatable, e.g. "
                       f"obj_target=iou,ignore_threshold=1 (keys: {', '.join(LOSS_KEYS)}; see LossConfig)")


def _optimiser_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                       help="optimiser (default: the recipe's: adamw; sgd for --recipe reference)")
    group.add_argument("--lr", type=FIELD_RANGES["lr"], default=None,
                       help="peak LR. AdamW: used as given at any batch size (default 2e-3). SGD and Adam: the rate "
                            "at batch 64, scaled linearly with the batch size within the reference's bounds (default "
                            "0.05 for SGD, which trains from scratch in minutes; 0.01 is the reference's value for "
                            "VOC with pretrained weights; 1e-3 for Adam)")
    group.add_argument("--min-lr-ratio", type=FIELD_RANGES["min_lr_ratio"], default=0.01,
                       help="final LR as a fraction of the peak")
    group.add_argument("--lr-schedule", choices=("cos", "step"), default="cos", help="decay after warm-up")
    group.add_argument("--warmup-epochs", type=FIELD_RANGES["warmup_epochs"], default=None,
                       help="linear LR warm-up length (default: the recipe's, 3)")
    group.add_argument("--momentum", type=FIELD_RANGES["momentum"], default=0.937, help="SGD momentum / Adam beta1")
    group.add_argument("--weight-decay", type=FIELD_RANGES["weight_decay"], default=5e-4,
                       help="on conv and linear weights only")
    group.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True,
                       help="exponential moving average")
    group.add_argument("--ema-tau", type=FIELD_RANGES["ema_tau"], default=None,
                       help="EMA decay ramp: decay x (1 - exp(-updates / tau)) (default: the recipe's, 2000)")
    group.add_argument("--grad-clip", type=FIELD_RANGES["grad_clip"], default=0.0, help="max gradient norm (0: off)")
    group.add_argument("--max-bad-steps", type=FIELD_RANGES["max_bad_steps"], default=20,
                       help="consecutive non-finite losses (each skipped) before training stops")
    group.add_argument("--label-smoothing", type=FIELD_RANGES["label_smoothing"], default=0.0,
                       help="class target smoothing epsilon")


def _augment_arguments(group: argparse._ArgumentGroup) -> None:
    # default None (so that --resume can tell a given value from the default); help shows AugmentConfig's value
    for flag, text in (("mosaic", "mosaic probability"), ("mixup", "mixup probability (after mosaic)"),
                       ("hsv_h", "hue jitter"), ("hsv_s", "saturation jitter"), ("hsv_v", "value jitter"),
                       ("flip", "horizontal flip probability"), ("jitter", "aspect-ratio jitter"),
                       ("mosaic_epochs_fraction", "mosaic and mixup stop after this fraction of the epochs")):
        group.add_argument("--" + flag.replace("_", "-"), type=AUGMENT_RANGES[flag], default=None,
                           help=f"{text} (default: {getattr(AugmentConfig, flag)})")


def _run_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--config", default=None, help="a run's args.yaml or a recipe (model_data/voc_recipe.yaml): "
                       "its options become the defaults; flags given here override them")
    group.add_argument("--resume", nargs="?", const=True, default=None,
                       help="continue a run: its folder or last.pth (no value: the newest logs/*/last.pth)")
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: best available)")
    add_precision_argument(group)
    group.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                       help="--no-amp is --precision fp32")
    group.add_argument("--sync-bn", action="store_true", help="synchronised BatchNorm across DDP processes")
    group.add_argument("--seed", type=FIELD_RANGES["seed"], default=0,
                       help="base random seed (augmentation is seeded per worker)")
    group.add_argument("--deterministic", action="store_true",
                       help="deterministic algorithms only (torch.use_deterministic_algorithms): the same command on "
                            "the same machine gives the same results.csv (wall-clock columns go to timing.csv)")
    group.add_argument("--save-dir", default="logs", help="project folder holding the run folders (as in eval.py "
                       "and predict.py): the run goes to SAVE_DIR/NAME")
    group.add_argument("--name", default="exp", help="run folder name inside --save-dir (exp, exp2, ... never "
                       "overwritten)")
    group.add_argument("--save-period", type=FIELD_RANGES["save_period"], default=0,
                       help="also keep epoch_XXX.pth every N epochs (0: off)")
    group.add_argument("--preview", action=argparse.BooleanOptionalAction, default=True,
                       help="write the training-start pictures (augmented samples, labels); --no-preview skips them")
    group.add_argument("--logger", dest="loggers", action="append", default=None, metavar="NAME",
                       help=LazyHelp(_logger_help))
    group.add_argument("--verbose", action="store_true", help="debug logging and full tracebacks")


# TrainConfig fields whose flag has another name or type
FIELD_FLAGS = {"classes_file": "names", "anchors_file": "anchors", "attention_options": "attention_option"}


def apply_config_file(parser: argparse.ArgumentParser, path: str) -> dict:
    """Make the options of a --config file the parser's defaults (so flags override them); returns the augment
    settings of the file that have no flag of their own (kept as they are). Every value is checked first, by the
    ranges TrainConfig checks (a ConfigError naming the file)."""
    from utils.model.config import parse_input_shape
    from utils.train.run_config import config_field_names, read_config_file

    values = upgrade_legacy_options(read_config_file(path, config_field_names(TrainConfig) | set(LEGACY_OPTION_FIELDS)))
    values.setdefault("recipe", LEGACY_RECIPE)  # a file naming no recipe was written before recipes existed
    TrainConfig.from_dict({k: v for k, v in values.items() if k != "input_shape"}, source=f"--config {path}")
    augment = dict(values.pop("augment", None) or {})
    if "attention_options" in values:  # as the flag writes them, so that --attention-option given here adds to them
        values["attention_options"] = [f"{k}={v}" for k, v in (values["attention_options"] or {}).items()]
    if "loss" in values:  # as the flag parses them, so that --loss given here adds to them
        values["loss"] = [dict(values["loss"] or {})]
    defaults = {FIELD_FLAGS.get(k, k): v for k, v in values.items()}
    if "input_shape" in defaults:
        defaults["input_shape"] = ",".join(map(str, parse_input_shape(defaults["input_shape"])))
    defaults.update({k: augment.pop(k) for k in AUGMENT_FLAGS if k in augment})
    parser.set_defaults(**defaults)
    return augment


def config_from_args(args: argparse.Namespace, extra_augment: dict | None = None) -> TrainConfig:
    """TrainConfig from the parsed arguments: same-named options map one to one (extra_augment: AugmentConfig
    settings without a flag, from --config)."""
    from utils.model.config import parse_input_shape

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    values.update(classes_file=args.names or args.classes, anchors_file=args.anchors,
                  attention_options=parse_attention_options(args.attention_option),
                  input_shape=parse_input_shape(args.input_shape),
                  augment={**(extra_augment or {}),
                           **{k: getattr(args, k) for k in AUGMENT_FLAGS if getattr(args, k) is not None}},
                  patience=args.patience or 0,  # None by default, so that an explicit 0 overrides it on --resume
                  loss={key: value for given in args.loss or [] for key, value in given.items()},  # the last wins
                  precision=requested_precision(args.precision, not args.amp, "--no-amp"),
                  loggers=list(dict.fromkeys(args.loggers or [])))
    return TrainConfig(**values)


def explicit_overrides(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    """Options given on the command line that differ from the defaults (applied on --resume where allowed)."""
    return {k: v for k, v in vars(args).items() if v != parser.get_default(k)}


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, main_process=os.environ.get("RANK", "0") == "0")

    def train_from_args() -> None:
        nonlocal args
        from nets.attention import attention_name  # the work's imports: torch and everything training needs
        from nets.yolo import attention_place
        from utils.common.image_io import set_max_pixels
        from utils.train.loggers import LOGGERS
        from utils.train.trainer import train

        extra_augment = apply_config_file(parser, args.config) if args.config else {}
        if args.config:
            args = parser.parse_args(argv)  # the file's options are now the defaults; the flags given win
        if args.classes is not None:
            LOGGER.warning("--classes FILE is now --names FILE (the same in train.py, eval.py and predict.py); %s",
                           "--names wins" if args.names else "reading it as --names")
        set_max_pixels(args.max_pixels)
        overrides = explicit_overrides(args, parser)  # before --phi's spelling is normalised ('0' is the default)
        args.phi, args.attention_at = attention_name(args.phi), attention_place(args.attention_at)
        for name in args.loggers or []:
            LOGGERS.get(name)  # an unknown --logger: one line listing the registered ones, before any work
        train(config_from_args(args, extra_augment), resume=args.resume, overrides=overrides)
    return run_command(train_from_args, args.verbose, LOGGER)

