"""TrainConfig: every training option, saved in each checkpoint and in args.yaml; FITNESS: what best.pth keeps."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from utils.model.config import upgrade_legacy_options


@dataclass
class TrainConfig:
    """Every training option; saved in each checkpoint next to the ModelConfig. Defaults suit the bundled sample."""

    data: str = "VOCdevkit"
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
    fitness: str = "map50"  # what best.pth and --patience follow: map50, map50_95 or mix (see FITNESS)
    save_period: int = 0
    optimizer: str = "sgd"
    lr: float | None = None  # peak LR at batch 64; None: utils.train.optim.DEFAULT_LR (SGD 0.05, Adam/AdamW 1e-3)
    min_lr_ratio: float = 0.01
    momentum: float = 0.937
    weight_decay: float = 5e-4
    lr_schedule: str = "cos"
    warmup_epochs: float = 3.0
    ema: bool = True
    ema_decay: float = 0.9999
    grad_clip: float = 0.0  # max gradient norm; 0 disables
    label_smoothing: float = 0.0
    max_bad_steps: int = 20  # consecutive non-finite losses before training stops
    augment: dict[str, Any] = field(default_factory=dict)  # AugmentConfig fields that differ from its defaults
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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        data = upgrade_legacy_options(data)  # a run saved before attention_options
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# Fitness of a validation, from its metrics: what best.pth keeps and --patience waits for. mix = 0.1 mAP50 +
# 0.9 mAP50-95, the weighting the Ultralytics tools use. None when undefined (no ground truth in the val split).
FITNESS = {
    "map50": lambda m: m["mAP50"],
    "map50_95": lambda m: m["mAP50_95"],
    "mix": lambda m: None if None in (m["mAP50"], m["mAP50_95"]) else 0.1 * m["mAP50"] + 0.9 * m["mAP50_95"],
}
