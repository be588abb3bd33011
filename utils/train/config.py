"""TrainConfig: every training option, saved in each checkpoint and in args.yaml; FITNESS: what best.pth keeps;
FIELD_RANGES / AUGMENT_RANGES: the range of every number, for the flags and for values read from files."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from utils.common.cli import (
    NumberRange,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
    random_seed,
    workers,
)
from utils.common.errors import ConfigError
from utils.model.legacy import upgrade_legacy_options
from utils.train.loss_config import LossConfig
from utils.train.recipes import DEFAULT_RECIPE, LEGACY_RECIPE, RECIPE_FIELDS, get_recipe

below_one = NumberRange(float, 0, 1, high_open=True)  # momentum, EMA decay, label smoothing: 1 would freeze or erase
# The range of each numeric TrainConfig field: train.py's flags take these as their argparse types, and TrainConfig
# checks every value against them whatever its source (the flags, a --config file, a resumed checkpoint).
FIELD_RANGES: dict[str, NumberRange] = {
    "epochs": positive_int, "batch_size": positive_int, "freeze_epochs": non_negative_int,
    "freeze_batch_size": positive_int, "workers": workers, "seed": random_seed, "eval_period": non_negative_int,
    "patience": non_negative_int, "save_period": non_negative_int, "lr": positive_float, "min_lr_ratio": probability,
    "momentum": below_one, "weight_decay": non_negative_float, "warmup_epochs": non_negative_float,
    "ema_decay": below_one, "grad_clip": non_negative_float, "label_smoothing": below_one,
    "max_bad_steps": positive_int, "ema_tau": positive_float,
    # utils.model.config.SCALE_X_Y_RANGE (not imported: that module imports torch; tests/test_recipes.py compares)
    "scale_x_y": NumberRange(float, 1, 2),
}
# AugmentConfig fields that train.py has flags for (utils.data.augment: hue as a fraction of the colour circle, at
# most half of it; aspect jitter U(1 - j, 1 + j), so j < 1)
AUGMENT_RANGES: dict[str, NumberRange] = {
    "mosaic": probability, "mixup": probability, "hsv_h": NumberRange(float, 0, 0.5), "hsv_s": probability,
    "hsv_v": probability, "flip": probability, "jitter": below_one, "mosaic_epochs_fraction": probability,
}
OPTIMIZERS = ("sgd", "adam", "adamw")  # utils.train.optim.build_optimizer
NONE_MEANS_DEFAULT = ("lr",)  # None: utils.train.optim.DEFAULT_LR
MULTI_SCALE_FACTOR = NumberRange(float, 0, 4, low_open=True)  # --multi-scale-range low,high


@dataclass
class TrainConfig:
    """Every training option; saved in each checkpoint next to the ModelConfig. Defaults suit the bundled sample."""

    data: str = "VOCdevkit"
    recipe: str = DEFAULT_RECIPE  # utils.train.recipes.RECIPES: fills the None fields of RECIPE_FIELDS, loss, augment
    classes_file: str | None = None
    phi: str = "none"
    attention_at: str = "neck"  # ModelConfig.attention_at
    attention_options: dict[str, Any] = field(default_factory=dict)  # ModelConfig.attention_options (given ones)
    input_shape: list[int] = field(default_factory=lambda: [320, 320])
    anchors_file: str | None = None
    epochs: int = 50
    batch_size: int = 8
    freeze_epochs: int = 0
    freeze_batch_size: int = 16
    weights: str | None = None  # a path or an http(s) URL (utils/download.py)
    weights_sha256: str | None = None
    device: str | None = None
    workers: int = 2
    seed: int = 0
    save_dir: str = "logs"
    name: str = "exp"
    amp: bool = True  # False: fp32 whatever `precision` says (--no-amp, kept from before --precision)
    precision: str = "auto"  # utils.common.device.PRECISIONS; auto: bf16/fp16 on CUDA, fp32 elsewhere
    eval_period: int = 1
    patience: int = 0  # validations without fitness improvement before training stops; 0: never stop early
    fitness: str = "mix"  # what best.pth and --patience follow: map50, map50_95 or mix (see FITNESS)
    save_period: int = 0
    optimizer: str | None = None  # sgd, adam or adamw; None: the recipe's
    lr: float | None = None  # peak LR (utils.train.optim.scaled_lr); None: utils.train.optim.DEFAULT_LR by optimiser
    min_lr_ratio: float = 0.01
    momentum: float = 0.937
    weight_decay: float = 5e-4
    lr_schedule: str = "cos"
    warmup_epochs: float | None = None  # None: the recipe's
    ema: bool = True
    ema_decay: float = 0.9999
    ema_tau: float | None = None  # EMA decay ramp, in updates (utils.train.optim.ema_model); None: the recipe's
    grad_clip: float = 0.0  # max gradient norm; 0 disables
    label_smoothing: float = 0.0
    max_bad_steps: int = 20  # consecutive non-finite losses before training stops
    augment: dict[str, Any] = field(default_factory=dict)  # AugmentConfig fields that differ from its defaults
    loss: dict[str, Any] = field(default_factory=dict)  # LossConfig fields given; resolved: all of them
    scale_x_y: float | None = None  # ModelConfig.scale_x_y of a new model; None: the recipe's
    deterministic: bool = False  # torch's deterministic algorithms: the same command gives the same results.csv
    cache: str | None = None
    keep_difficult: bool = False
    sync_bn: bool = False
    preview: bool = True
    val_split: str = "val"
    train_split: str = "train"
    multi_scale: bool = False  # each batch resized to a size drawn from multi_scale_range x input_shape
    multi_scale_range: list[float] = field(default_factory=lambda: [0.5, 1.5])
    heads: int = 2  # ModelConfig.heads
    loggers: list[str] = field(default_factory=list)  # --logger: utils.train.loggers.LOGGERS (TensorBoard: always)

    def __post_init__(self) -> None:
        self._resolve_recipe()
        self._check_ranges()

    def _resolve_recipe(self) -> None:
        """The recipe's values where a field of RECIPE_FIELDS is None, its loss and augmentation under the ones
        given. Resolving a resolved config changes nothing, so from_dict(to_dict()) is exact."""
        recipe = get_recipe(self.recipe)
        for name in RECIPE_FIELDS:
            if getattr(self, name) is None:
                setattr(self, name, recipe.train[name])
        if not isinstance(self.augment, dict):
            raise ConfigError(f"augment: expected a mapping of AugmentConfig fields, got {self.augment!r}")
        if not isinstance(self.loss, dict):
            raise ConfigError(f"loss: expected a mapping of LossConfig fields (--loss KEY=VALUE), got {self.loss!r}")
        self.augment = {**recipe.augment, **self.augment}
        self.loss = dataclasses.asdict(LossConfig.from_dict({**recipe.loss, **self.loss}))
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"--optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if not isinstance(self.deterministic, bool):
            raise ConfigError(f"deterministic: expected true or false, got {self.deterministic!r}")

    def _check_ranges(self) -> None:
        """Every number inside its range (FIELD_RANGES, AUGMENT_RANGES), or a ConfigError naming the flag: the one
        check of values from the command line, a --config file and a resumed checkpoint alike."""
        for name, allowed in FIELD_RANGES.items():
            value = getattr(self, name)
            if not (value is None and name in NONE_MEANS_DEFAULT):
                setattr(self, name, allowed.check(value, flag(name)))
        if not isinstance(self.attention_options, dict):
            raise ConfigError(f"attention_options: expected a mapping of option: value, got {self.attention_options!r}")
        if not isinstance(self.augment, dict):
            raise ConfigError(f"augment: expected a mapping of AugmentConfig fields, got {self.augment!r}")
        for name, allowed in AUGMENT_RANGES.items():
            if name in self.augment:
                self.augment[name] = allowed.check(self.augment[name], flag(name))
        try:
            self.multi_scale_range = multi_scale_range(self.multi_scale_range)
        except ConfigError as err:
            raise ConfigError(f"--multi-scale-range: {err}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str | None = None) -> "TrainConfig":
        """The TrainConfig stored in a checkpoint (or any dict of its fields); a value outside its range is a
        ConfigError that names `source` (the checkpoint)."""
        data = upgrade_legacy_options(data)  # a run saved before attention_options
        known = {f.name for f in dataclasses.fields(cls)}
        try:  # one written before recipes existed names none: it trained with the reference recipe
            return cls(**{"recipe": LEGACY_RECIPE, **{k: v for k, v in data.items() if k in known}})
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}" if source else str(err)) from None


def flag(field_name: str) -> str:
    """The train.py flag of a TrainConfig or AugmentConfig field: batch_size -> --batch-size."""
    return "--" + field_name.replace("_", "-")


def multi_scale_range(value: str | list | tuple) -> list[float]:
    """'0.5,1.5' (or a list from --config) -> [0.5, 1.5]: two factors in (0, 4], low <= high; else a ConfigError."""
    parts = value if isinstance(value, (list, tuple)) else str(value).split(",")
    if len(parts) != 2:
        raise ConfigError(f"{value!r}: give two factors low,high (e.g. 0.5,1.5)")
    try:
        low, high = (MULTI_SCALE_FACTOR.convert(part) for part in parts)
    except ValueError as err:
        raise ConfigError(f"{err}; give two factors low,high (e.g. 0.5,1.5)") from None
    if low > high:
        raise ConfigError(f"{value!r}: low {low} is above high {high}; give low,high (e.g. 0.5,1.5)")
    return [low, high]


# Fitness of a validation, from its metrics: what best.pth keeps and --patience waits for. mix = 0.1 mAP50 +
# 0.9 mAP50-95, the weighting the Ultralytics tools use. None when undefined (no ground truth in the val split).
FITNESS = {
    "map50": lambda m: m["mAP50"],
    "map50_95": lambda m: m["mAP50_95"],
    "mix": lambda m: None if None in (m["mAP50"], m["mAP50_95"]) else 0.1 * m["mAP50"] + 0.9 * m["mAP50_95"],
}
