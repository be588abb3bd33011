"""Training recipes: named sets of the options that decide how a model learns (`train.py --recipe NAME`).

A recipe fills every TrainConfig field of RECIPE_FIELDS that the command leaves unset (None: the model's box-centre
scale, the optimiser's settings) and lies under the loss and augmentation options given (LossConfig and AugmentConfig
values; a flag overrides one value, the others stay the recipe's). What a run used is written out in full (args.yaml,
the checkpoint's train_config), so a run folder reproduces without this table, and a later change of a recipe cannot
change an old run.

- `default`: what `python train.py` does: the reference implementation's loss (utils/train/loss_config.py
  LossConfig's defaults) and augmentation (AugmentConfig's defaults), trained with AdamW at LR 2e-3 whatever the
  batch (Ultralytics' choice for short schedules; measured against SGD in docs/results.md).
- `reference`: the reference implementation's recipe (bubbliiiing/yolov4-tiny-pytorch's loss and augmentation, SGD
  from LR 0.05 per batch 64), kept fixed whatever `default` becomes. It differs from `default` in the optimiser only.
  Checkpoints and args.yaml files written before recipes existed are read as this recipe (they trained with it).
- `yolov5-assign`: YOLOv5's label assignment and IoU objectness target with YOLOv5's loss gains, centres decoded with
  scale_x_y 2; augmentation and optimiser as `default`. NOT YET SHOWN TO HELP: measure it on your data
  (benchmarks/bench_learning.py, or python -m utils.ablate --vary recipe=default,yolov5-assign).

A new recipe is one more entry in RECIPES; tests/test_recipes.py checks that each sets every field of
RECIPE_FIELDS.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from utils.common.errors import ConfigError


@dataclass(frozen=True)
class Recipe:
    """train: a value for each of RECIPE_FIELDS (TrainConfig fields); loss: LossConfig values (utils/train/
    loss_config.py; its defaults are the reference's); augment: AugmentConfig values (its defaults are the
    reference's)."""

    description: str
    train: dict[str, Any]
    loss: dict[str, Any] = field(default_factory=dict)
    augment: dict[str, Any] = field(default_factory=dict)


# TrainConfig fields whose None means "the recipe's value".
RECIPE_FIELDS = ("scale_x_y", "optimizer", "warmup_epochs", "ema_tau")
# The values of main's training before recipes existed (scale_x_y 1: sigmoid + cell; utils.train.optim.ema_model's
# ramp of 2000 updates); --lr stays None (utils.train.optim.DEFAULT_LR by optimiser) under every recipe, so a
# recipe's optimiser brings its own default rate and batch-size rule (utils.train.optim.scaled_lr).
_REFERENCE_TRAIN = {"scale_x_y": 1.0, "optimizer": "sgd", "warmup_epochs": 3.0, "ema_tau": 2000.0}
_DEFAULT_TRAIN = {**_REFERENCE_TRAIN, "optimizer": "adamw"}  # measured: docs/results.md, "AdamW against SGD"

RECIPES: dict[str, Recipe] = {
    "default": Recipe(
        description="what python train.py does: the reference implementation's loss (best anchor, one cell, "
                    "objectness target 1) and augmentation (mosaic and mixup 0.5 until 70%), AdamW at LR 2e-3",
        train=dict(_DEFAULT_TRAIN),
    ),
    "reference": Recipe(
        description="the reference implementation's recipe, kept fixed: default's loss and augmentation with SGD "
                    "at LR 0.05 per batch 64; configs written before recipes existed are read as this one",
        train=dict(_REFERENCE_TRAIN),
    ),
    "yolov5-assign": Recipe(
        description="YOLOv5's assignment (anchors within 4x, 3 cells per box, centres reaching the neighbours: "
                    "scale_x_y 2) with IoU objectness targets and YOLOv5's loss gains; augmentation and optimiser "
                    "as default. Not yet shown to help: measure with benchmarks/bench_learning.py or python -m "
                    "utils.ablate --vary recipe=default,yolov5-assign",
        train={**_DEFAULT_TRAIN, "scale_x_y": 2.0},
        loss={"assign": "ratio", "anchor_ratio": 4.0, "neighbour_cells": True, "obj_target": "iou",
              "ignore_threshold": 1.0, "box_gain": 0.05, "obj_gain": 1.0, "cls_gain": 0.5},
    ),
}
DEFAULT_RECIPE = "default"
LEGACY_RECIPE = "reference"  # what a configuration written before recipes existed trained with


def get_recipe(name: str) -> Recipe:
    """The recipe called `name`; an unknown name is a ConfigError listing the known ones."""
    try:
        return RECIPES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"--recipe {name!r}: choose one of {', '.join(RECIPES)}") from None


def recipe_help() -> str:
    """One line per recipe for --help (argparse help strings are %-formatted, hence %%)."""
    return "; ".join(f"{name}: {recipe.description}" for name, recipe in RECIPES.items()).replace("%", "%%")
