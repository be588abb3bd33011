"""Training recipes (--recipe), the --loss flag and --deterministic: the same command twice, the same results.csv."""
from __future__ import annotations

import csv
import dataclasses
import inspect

import pytest
import yaml

from tests.synthetic import make_voc
from utils.common.errors import ConfigError
from utils.data.augment import AugmentConfig
from utils.model.config import SCALE_X_Y_RANGE, ModelConfig
from utils.train import cli
from utils.train.config import FIELD_RANGES, TrainConfig
from utils.train.loss import YoloLoss
from utils.train.loss_config import LossConfig, parse_loss
from utils.train.optim import DEFAULT_LR, ema_model, scaled_lr
from utils.train.recipes import RECIPE_FIELDS, RECIPES
from utils.train.results import write_results
from utils.train.trainer import train


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_sets_every_field(name):
    recipe = RECIPES[name]
    assert set(recipe.train) == set(RECIPE_FIELDS)
    LossConfig.from_dict(recipe.loss)  # known keys, valid values
    AugmentConfig(**recipe.augment)
    config = TrainConfig(recipe=name)
    assert all(getattr(config, field) == recipe.train[field] for field in RECIPE_FIELDS)
    assert config.loss == dataclasses.asdict(LossConfig(**recipe.loss))


def test_reference_recipe_is_the_reference_loss_and_augmentation():
    config = TrainConfig(recipe="reference")
    assert LossConfig(**config.loss) == LossConfig()  # LossConfig's defaults: the reference's loss
    assert config.augment == {}  # AugmentConfig's defaults: the reference's augmentation
    assert (config.scale_x_y, config.optimizer, config.warmup_epochs) == (1.0, "sgd", 3.0)


def test_default_recipe_is_the_reference_with_adamw():
    """python train.py without --recipe: the reference loss and augmentation, sigmoid + cell centres and the EMA ramp
    ema_model had before it took tau, trained with AdamW at its unscaled default rate instead of SGD."""
    config = TrainConfig()
    assert config.recipe == "default"
    assert LossConfig(**config.loss) == LossConfig() and config.augment == {}
    tau = inspect.signature(ema_model).parameters["tau"].default
    assert (config.scale_x_y, config.optimizer, config.warmup_epochs, config.ema_tau, config.lr) == (
        ModelConfig(classes=["a"]).scale_x_y, "adamw", 3.0, tau, None)
    assert {**TrainConfig(recipe="reference").to_dict(), "recipe": "default", "optimizer": "adamw"} == config.to_dict()


def test_yolov5_assign_recipe_builds_its_loss():
    config = TrainConfig(recipe="yolov5-assign")
    assert config.scale_x_y == 2.0 and config.augment == {}  # augmentation as default: only the loss differs
    options = LossConfig.from_dict(config.loss)
    assert (options.assign, options.neighbour_cells, options.obj_target) == ("ratio", True, "iou")
    YoloLoss(ModelConfig(classes=["a"], scale_x_y=config.scale_x_y), options=options)  # its scale suits its cells


def test_scale_x_y_range_is_the_model_configs():
    allowed = FIELD_RANGES["scale_x_y"]
    assert (allowed.low, allowed.high) == SCALE_X_Y_RANGE


@pytest.mark.parametrize("values,match", [
    ({"recipe": "fast"}, "--recipe 'fast'"), ({"loss": {"gain": 1}}, "unknown --loss option"),
    ({"loss": {"anchor_ratio": 0.5}}, "--loss anchor_ratio"), ({"loss": "ratio"}, "loss: expected a mapping"),
    ({"scale_x_y": 3}, "--scale-x-y"), ({"ema_tau": 0}, "--ema-tau"), ({"optimizer": "lion"}, "--optimizer"),
    ({"loss": {"neighbour_cells": True}}, "neighbour_cells"), ({"deterministic": "yes"}, "deterministic"),
])
def test_bad_values_from_a_checkpoint_name_the_field_and_the_file(values, match):
    with pytest.raises(ConfigError, match=match) as err:
        TrainConfig.from_dict({**TrainConfig().to_dict(), **values}, source="logs/exp/last.pth")
    assert str(err.value).startswith("logs/exp/last.pth: ")


def test_bad_values_in_a_config_file_name_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("recipe: yolov5-assign\nloss: {obj_target: half}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="obj_target"):
        cli.apply_config_file(cli.get_args_parser(), str(path))


def test_a_config_from_before_recipes_is_the_reference():
    old = {k: v for k, v in TrainConfig(recipe="reference").to_dict().items()
           if k not in ("recipe", "loss", "scale_x_y", "ema_tau", "deterministic")}
    assert TrainConfig.from_dict(old) == TrainConfig(recipe="reference")


def test_resolution_is_exact_and_idempotent():
    config = TrainConfig(recipe="yolov5-assign", augment={"mosaic": 0.25}, loss={"obj_gain": 2.0},
                         optimizer="sgd")
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert config.augment["mosaic"] == 0.25 and config.loss["obj_gain"] == 2.0 and config.optimizer == "sgd"
    assert config.loss["assign"] == RECIPES["yolov5-assign"].loss["assign"]  # the recipe's other loss values stay
    assert config.scale_x_y == RECIPES["yolov5-assign"].train["scale_x_y"]


def parse(argv: list[str]) -> TrainConfig:
    return cli.config_from_args(cli.get_args_parser().parse_args(argv))


def test_flags_override_one_value_of_the_recipe():
    config = parse(["--recipe", "yolov5-assign", "--loss", "obj_target=one,anchor_ratio=3", "--loss", "box_gain=0.1",
                    "--mosaic", "0.3"])
    assert config.loss["obj_target"] == "one" and config.loss["anchor_ratio"] == 3.0 and config.loss["box_gain"] == 0.1
    assert config.loss["assign"] == RECIPES["yolov5-assign"].loss["assign"]
    assert config.augment == {"mosaic": 0.3}
    reference = parse(["--recipe", "reference", "--optimizer", "adam"])
    assert reference.optimizer == "adam" and LossConfig(**reference.loss) == LossConfig()


@pytest.mark.parametrize("text", ["gain=1", "assign", "anchor_ratio=big", "assign=nearest", "neighbour_cells=1",
                                  "neighbour_cells=maybe", "obj_gain=nan"])
def test_bad_loss_flag_is_one_error_line(text, capsys):
    with pytest.raises(ConfigError, match="--loss"):
        parse_loss(text)
    with pytest.raises(SystemExit):
        parse(["--recipe", "reference", "--loss", text])
    assert "error: argument --loss: --loss" in capsys.readouterr().err


def test_args_yaml_round_trip_and_files_without_a_recipe(tmp_path):
    config = parse(["--loss", "obj_gain=2"])
    path = tmp_path / "args.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()), encoding="utf-8")
    parser = cli.get_args_parser()
    extra = cli.apply_config_file(parser, str(path))
    assert cli.config_from_args(parser.parse_args([]), extra) == config
    old = {k: v for k, v in config.to_dict().items() if k not in ("recipe", "loss", "scale_x_y")}
    path.write_text(yaml.safe_dump(old), encoding="utf-8")  # an args.yaml written before recipes existed
    parser = cli.get_args_parser()
    extra = cli.apply_config_file(parser, str(path))
    assert cli.config_from_args(parser.parse_args([]), extra).recipe == "reference"


@pytest.fixture(scope="module")
def tiny_voc(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("data"), images=6)


def test_deterministic_runs_write_the_same_results(tiny_voc, tmp_path):
    """Two data-loading workers, mosaic and mixup on: with --deterministic the same command twice gives the same
    results.csv; the wall-clock columns, which differ, are in timing.csv."""
    argv = ["--data", str(tiny_voc), "--input-shape", "64", "--epochs", "2", "--batch-size", "2", "--workers", "2",
            "--mixup", "0.5", "--warmup-epochs", "1", "--no-preview", "--deterministic", "--save-dir",
            str(tmp_path)]
    runs = [train(parse([*argv, "--name", name])) for name in ("a", "b")]
    first, second = ((run / "results.csv").read_text() for run in runs)
    assert first == second
    assert "train_s" not in first and "val/mAP50" in first
    assert "train_s" in (runs[0] / "timing.csv").read_text()


@pytest.mark.parametrize("recipe,batch", [("default", 2), ("default", 4), ("reference", 2), ("reference", 4)])
def test_the_rate_a_run_trains_at(tiny_voc, tmp_path, recipe, batch):
    """The default recipe's AdamW trains at DEFAULT_LR["adamw"] whatever the batch; the reference's SGD rate scales
    with the batch (a constant schedule, so results.csv's lr column is the peak rate)."""
    run = train(parse(["--data", str(tiny_voc), "--recipe", recipe, "--input-shape", "64", "--epochs", "1",
                       "--batch-size", str(batch), "--warmup-epochs", "0", "--min-lr-ratio", "1", "--workers", "0",
                       "--no-preview", "--save-dir", str(tmp_path)]))
    rows = list(csv.DictReader((run / "results.csv").read_text().splitlines()))
    optimizer = RECIPES[recipe].train["optimizer"]
    assert float(rows[0]["lr"]) == pytest.approx(scaled_lr(DEFAULT_LR[optimizer], batch, optimizer))
    assert (float(rows[0]["lr"]) == 2e-3) == (recipe == "default")


def test_timing_columns_stay_in_results_csv_without_deterministic(tmp_path):
    history = [{"epoch": 1, "train/total": 0.5, "train_s": 3.25, "val_s": 0.5, "images_per_s": 9.0}]
    write_results(history, tmp_path)
    assert "train_s" in (tmp_path / "results.csv").read_text() and not (tmp_path / "timing.csv").exists()
    (tmp_path / "det").mkdir()
    write_results(history, tmp_path / "det", separate_timing=True)
    assert (tmp_path / "det" / "results.csv").read_text().splitlines()[0] == "epoch,train/total"
    assert (tmp_path / "det" / "timing.csv").read_text().splitlines()[0] == "epoch,train_s,val_s,images_per_s"
