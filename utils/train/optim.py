"""Optimiser, learning-rate schedule and EMA for training."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

NOMINAL_BATCH = 64  # SGD and Adam rates are quoted for this batch size and scaled linearly from it
# SGD's default is 5x the reference's 1e-2: that value assumes a pretrained backbone, while from scratch (the bundled
# sample, small custom sets) 0.05 converges several times faster and stays stable behind the warm-up.
# AdamW's 2e-3 is the rate Ultralytics' optimizer=auto picks for short schedules (one class); on raccoon from scratch
# it learned far faster than SGD 0.05 at 40 epochs (docs/results.md, "AdamW against SGD").
DEFAULT_LR = {"sgd": 5e-2, "adam": 1e-3, "adamw": 2e-3}
# Linear scaling is bounded: tiny batches would get a uselessly small LR, huge ones an unstable one.
# The reference's bounds for its default rates (SGD 1e-2, Adam 1e-3); scaled_lr moves them with the base rate.
REFERENCE_LR = {"sgd": 1e-2, "adam": 1e-3}
LR_BOUNDS = {"sgd": (5e-4, 5e-2), "adam": (3e-4, 1e-3)}
# AdamW (not in the reference) keeps its rate at every batch size: Adam's update is normalised per parameter, so a
# small batch's noisier gradient does not call for a proportionally smaller step the way SGD's does. (Ultralytics
# keeps the rate too, but accumulates small batches up to 64 before a step; measured here at batch 8 without that.)
UNSCALED = ("adamw",)


def scaled_lr(base_lr: float, batch_size: int, optimizer: str) -> float:
    """The peak LR of a run: `base_lr` x batch / 64, clamped to sane bounds; AdamW's `base_lr` as it is.

    The bounds are the reference implementation's for the default rate of each optimiser, moved proportionally
    when the user picks another base rate (so --lr 3e-3 with Adam is not silently cut back to 1e-3).
    """
    if optimizer in UNSCALED:
        return base_lr
    relative = base_lr / REFERENCE_LR[optimizer]
    low, high = (bound * relative for bound in LR_BOUNDS[optimizer])
    return min(max(base_lr * batch_size / NOMINAL_BATCH, low), high)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv and linear weights only; none on BatchNorm parameters or biases."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            is_weight = name == "weight" and isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear))
            (decay if is_weight else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, name: str, lr: float, momentum: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    """SGD (Nesterov), Adam or AdamW over all parameters (frozen ones included, so unfreezing needs no rebuild)."""
    for param in model.parameters():  # groups are built once, over every parameter
        param.requires_grad_(True)
    groups = parameter_groups(model, weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=(momentum, 0.999))
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999))
    raise ValueError(f"unknown optimizer {name!r}; choose sgd, adam or adamw")


@dataclass
class LRSchedule:
    """Learning-rate factor as a pure function of training progress (in epochs, fractional), so resuming at any
    epoch reproduces the exact rate: linear warm-up from `warmup_start`, then cosine (or steps) down to `min_ratio`.
    """

    epochs: int
    warmup_epochs: float = 3.0
    warmup_start: float = 0.1
    min_ratio: float = 0.01
    kind: str = "cos"
    steps: int = 10

    def __post_init__(self) -> None:
        if self.kind not in ("cos", "step"):
            raise ValueError(f"unknown LR schedule {self.kind!r}; choose cos or step")
        # Warm-up never takes more than a third of a short run.
        self.warmup_epochs = min(self.warmup_epochs, self.epochs / 3)

    def factor(self, progress: float) -> float:
        """Multiplier of the peak LR at `progress` epochs into training."""
        if progress < self.warmup_epochs:
            return self.warmup_start + (1 - self.warmup_start) * progress / self.warmup_epochs
        span = max(self.epochs - self.warmup_epochs, 1e-9)
        t = min((progress - self.warmup_epochs) / span, 1.0)
        if self.kind == "step":  # geometric steps from 1 to min_ratio
            step = min(int(t * self.steps), self.steps - 1)
            return self.min_ratio ** (step / max(self.steps - 1, 1))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def ema_model(model: nn.Module, decay: float = 0.9999, tau: float = 2000.0) -> AveragedModel:
    """Exponential moving average of the weights and BatchNorm buffers.

    The decay ramps up as decay * (1 - exp(-updates / tau)), so early, fast-changing weights are not
    averaged with the random initialisation.
    """
    def average(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        if not averaged[0].is_floating_point():  # integer buffers (BatchNorm's batch counter) are copied
            torch._foreach_copy_(averaged, current)
            return
        d = decay * (1 - math.exp(-float(num_averaged) / tau))
        torch._foreach_lerp_(averaged, current, 1 - d)

    return AveragedModel(model, multi_avg_fn=average, use_buffers=True)
