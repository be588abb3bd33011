"""TrainConfig: every training option, saved in each checkpoint and in args.yaml; FITNESS: what best.pth keeps."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from utils.train.loss import LossConfig
from utils.train.recipes import DEFAULT_RECIPE, LEGACY_RECIPE, RECIPE_FIELDS, get_recipe


@dataclass
class TrainConfig:
    """Every training option; saved in each checkpoint next to the ModelConfig. Defaults suit the bundled sample.

    `recipe` (utils/train/recipes.py) fills the fields of RECIPE_FIELDS left at None and puts its loss and
    augmentation values under those given in `loss` and `augment`; after construction every field holds its resolved
    value (`loss` all LossConfig fields), so to_dict() describes the run completely.
    """

    data: str = "VOCdevkit"
    recipe: str = DEFAULT_RECIPE
    classes_file: str | None = None
    phi: str = "none"
    attention_at: str = "neck"  # ModelConfig.attention_at
    attention_reduction: int | None = None  # ModelConfig.attention_reduction
    cbam_kernel: int = 7  # ModelConfig.cbam_kernel
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
    amp: bool = True
    eval_period: int = 1
    patience: int = 0  # validations without fitness improvement before training stops; 0: never stop early
    fitness: str = "map50"  # what best.pth and --patience follow: map50, map50_95 or mix (see FITNESS)
    save_period: int = 0
    optimizer: str | None = None  # sgd, adam or adamw; None: the recipe's
    lr: float | None = None  # peak LR at batch 64; None: the recipe's, else utils.train.optim.DEFAULT_LR
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

    def __post_init__(self) -> None:
        """Resolve the recipe: its values where a field is None, its augmentation under the one given. Applying it
        to an already resolved config changes nothing, so from_dict(to_dict()) is exact."""
        recipe = get_recipe(self.recipe)
        for name in RECIPE_FIELDS:
            if getattr(self, name) is None:
                value = recipe.train[name]
                setattr(self, name, dict(value) if isinstance(value, dict) else value)
        self.augment = {**recipe.augment, **(self.augment or {})}
        self.loss = dataclasses.asdict(LossConfig.from_dict({**recipe.loss, **(self.loss or {})}))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """From a checkpoint's train_config or an args.yaml; one written before recipes existed names none and
        trained with the reference recipe."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{"recipe": LEGACY_RECIPE, **{k: v for k, v in data.items() if k in known}})


# Fitness of a validation, from its metrics: what best.pth keeps and --patience waits for. mix = 0.1 mAP50 +
# 0.9 mAP50-95, the weighting the Ultralytics tools use. None when undefined (no ground truth in the val split).
FITNESS = {
    "map50": lambda m: m["mAP50"],
    "map50_95": lambda m: m["mAP50_95"],
    "mix": lambda m: None if None in (m["mAP50"], m["mAP50_95"]) else 0.1 * m["mAP50"] + 0.9 * m["mAP50_95"],
}
