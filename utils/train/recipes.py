"""Training recipes: named sets of the options that decide how well a model learns (`train.py --recipe NAME`).

A recipe fills every TrainConfig field of RECIPE_FIELDS that the command leaves unset (None: the model's box-centre
scale, the optimiser's settings) and lies under the loss and augmentation options given (LossConfig and AugmentConfig
values; a flag overrides one value, the others stay the recipe's). What a run used is written out in full (args.yaml,
the checkpoint's train_config), so a run folder reproduces without this table, and a later change of a recipe cannot
change an old run.

- `reference`: the reference implementation's recipe, exactly as this project trained before recipes existed
  (bubbliiiing/yolov4-tiny-pytorch's loss and augmentation; SGD from LR 0.05 per batch 64). Checkpoints and args.yaml
  files written before recipes existed are read as this recipe.
- `default`: what trains best from scratch on small data here (docs/training.md has the measurements): YOLOv5's
  label assignment and objectness target, YOLOv5's loss weights, mosaic on every sample until the last epochs.

A new recipe is one more entry in RECIPES; tests/test_recipes.py checks that each sets every field of
RECIPE_FIELDS.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from utils.common.errors import ConfigError


@dataclass(frozen=True)
class Recipe:
    """train: a value for each of RECIPE_FIELDS (TrainConfig fields); loss: LossConfig values (utils/train/loss.py;
    its defaults are the reference's); augment: AugmentConfig values (its defaults are the reference's)."""

    description: str
    train: dict[str, Any]
    loss: dict[str, Any] = field(default_factory=dict)
    augment: dict[str, Any] = field(default_factory=dict)


# TrainConfig fields whose None means "the recipe's value".
RECIPE_FIELDS = ("scale_x_y", "optimizer", "lr", "warmup_epochs", "ema_tau")

RECIPES: dict[str, Recipe] = {
    "reference": Recipe(
        description="the reference implementation's loss (best anchor, one cell, objectness target 1) and "
                    "augmentation (mosaic and mixup 0.5 until 70%), SGD; as trained before recipes existed",
        train={"scale_x_y": 1.0, "optimizer": "sgd", "lr": None, "warmup_epochs": 3.0, "ema_tau": 2000.0},
    ),
    "default": Recipe(
        description="YOLOv5's assignment (anchors within 4x, 3 cells per box, centres reaching the neighbours) "
                    "with IoU objectness targets and YOLOv5's loss weights; mosaic on every sample until the last "
                    "10%, no mixup",
        train={"scale_x_y": 2.0, "optimizer": "sgd", "lr": None, "warmup_epochs": 3.0, "ema_tau": 2000.0},
        loss={"assign": "ratio", "anchor_ratio": 4.0, "neighbour_cells": True, "obj_target": "iou",
              "ignore_threshold": 1.0, "box_gain": 0.05, "obj_gain": 1.0, "cls_gain": 0.5},
        augment={"mosaic": 1.0, "mixup": 0.0, "mosaic_epochs_fraction": 0.9},
    ),
}
DEFAULT_RECIPE = "default"
LEGACY_RECIPE = "reference"  # what a configuration written before recipes existed trained with


def get_recipe(name: str) -> Recipe:
    """The recipe called `name`; an unknown name is a ConfigError listing the known ones."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(f"unknown --recipe {name!r}; choose one of {', '.join(RECIPES)}") from None


def recipe_help() -> str:
    """One line per recipe for --help (argparse help strings are %-formatted, hence %%)."""
    return "; ".join(f"{name}: {recipe.description}" for name, recipe in RECIPES.items()).replace("%", "%%")
