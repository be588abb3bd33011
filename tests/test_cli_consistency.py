"""One command line across train.py, eval.py and predict.py: --names, --save-dir + --name, --help defaults, tiny
datasets without split files, --val-split none, --resume warnings."""
from __future__ import annotations

import shutil

import pytest
import torch
import yaml

import eval as eval_script
import predict as predict_script
import train as train_script
from nets.attention import attention_name
from tests.paths import ROOT
from tests.synthetic import make_voc
from utils import anchors
from utils.data.index import make_splits
from utils.model.checkpoint import load_checkpoint
from utils.train.config import TrainConfig

FAST = ["--epochs", "1", "--batch-size", "2", "--input-shape", "64", "--workers", "0", "--device", "cpu",
        "--no-preview", "--no-amp"]


def _folder_pair(tmp_path, images: int):
    """images/ + annotations/ (no split files) from a synthetic VOC folder."""
    year = make_voc(tmp_path / "voc", images=images) / "VOC2007"
    root = tmp_path / "pair"
    shutil.copytree(year / "JPEGImages", root / "images")
    shutil.copytree(year / "Annotations", root / "annotations")
    return root


@pytest.mark.parametrize("count", range(2, 7))
def test_tiny_splits_are_never_empty(count):
    splits = make_splits([f"i{k}" for k in range(count)])
    assert splits["train"] and splits["val"] and (splits["test"] or count < 3)
    assert not set(splits["train"]) & (set(splits["val"]) | set(splits["test"]))


def test_three_images_without_split_files_train_and_evaluate(tmp_path, capsys):
    data = _folder_pair(tmp_path, 3)
    assert train_script.main(["--data", str(data), "--save-dir", str(tmp_path / "runs"), *FAST]) == 0
    weights = tmp_path / "runs" / "exp" / "best.pth"
    assert weights.is_file()
    assert eval_script.main(["--weights", str(weights), "--data", str(data), "--workers", "0", "--device", "cpu",
                             "--save-dir", str(tmp_path / "runs"), "--no-amp"]) == 0
    assert (tmp_path / "runs" / "eval" / "metrics.json").is_file()  # --save-dir is the project folder, + --name


def test_one_image_validates_on_train_with_a_warning(tmp_path, capfd):
    data = _folder_pair(tmp_path, 1)
    assert train_script.main(["--data", str(data), "--save-dir", str(tmp_path / "runs"), *FAST]) == 0
    assert "validating on the training images" in capfd.readouterr().err


def test_val_split_none_says_best_equals_last(tmp_path, capfd):
    data = make_voc(tmp_path / "voc", images=2)
    assert train_script.main(["--data", str(data), "--val-split", "none", "--save-dir", str(tmp_path / "r"),
                              *FAST]) == 0
    assert "best.pth = last.pth" in capfd.readouterr().err
    assert (tmp_path / "r" / "exp" / "best.pth").is_file() and (tmp_path / "r" / "exp" / "last.pth").is_file()


def test_old_classes_flag_still_reads_the_names_file(tmp_path, capfd):
    data = make_voc(tmp_path / "voc", images=2)
    names = tmp_path / "names.txt"
    names.write_text("blue\nred\n")
    assert train_script.main(["--data", str(data), "--classes", str(names), "--val-split", "none",
                              "--save-dir", str(tmp_path / "r"), *FAST]) == 0
    assert "--classes FILE is now --names FILE" in capfd.readouterr().err


def test_resume_names_the_options_it_cannot_apply(tmp_path, capfd):
    data = make_voc(tmp_path / "voc", images=2)
    assert train_script.main(["--data", str(data), "--val-split", "none", "--save-dir", str(tmp_path / "r"),
                              *FAST]) == 0
    assert train_script.main(["--resume", str(tmp_path / "r" / "exp"), "--lr", "0.5", "--epochs", "1",
                              "--mosaic", "0"]) == 0
    line = next(line for line in capfd.readouterr().err.splitlines() if "--resume keeps" in line)
    assert "--lr" in line and "--mosaic" in line and "--epochs" not in line.split("only")[0]
    assert "--phi" not in line.split("only")[0]  # not given: the default's normalised spelling is no override


@pytest.mark.parametrize("parser", [train_script.get_args_parser, eval_script.get_args_parser,
                                    predict_script.get_args_parser, anchors.get_args_parser])
def test_help_shows_defaults_and_no_machine_paths(parser):
    text = parser().format_help()
    assert "(default: None)" not in text and "/work" not in text and str(train_script.__file__)[:5] != text[:5]
    for flag in ("--save-dir", "--name"):
        assert flag in text or parser is anchors.get_args_parser
    if parser is train_script.get_args_parser:
        assert "mosaic probability (default: 0.5)" in " ".join(text.split())
        assert "--preview, --no-preview" in text
    if parser is predict_script.get_args_parser:
        assert "default: 0.5)" in " ".join(text.split())  # --conf


def test_args_yaml_recreates_the_same_train_config(tmp_path):
    data = make_voc(tmp_path / "voc", images=2)
    argv = ["--data", str(data), "--val-split", "none", "--save-dir", str(tmp_path / "r"), "--mosaic", "0.25",
            "--lr", "0.02", "--phi", "se", *FAST]
    assert train_script.main(argv) == 0
    saved = TrainConfig.from_dict(load_checkpoint(tmp_path / "r" / "exp" / "last.pth")["train_config"])
    args_yaml = tmp_path / "r" / "exp" / "args.yaml"
    info = yaml.safe_load(args_yaml.read_text())["run_info"]
    assert info["classes"] == ["blue", "red"] and info["torch"] == torch.__version__
    # the precision the run computed in, in its files (FAST trains with --no-amp: fp32)
    assert info["precision"] == "fp32" and info["device"] == "cpu"
    assert load_checkpoint(tmp_path / "r" / "exp" / "last.pth")["precision"] == "fp32"
    assert "precision: fp32 (--precision fp32)" in (tmp_path / "r" / "exp" / "train.log").read_text()
    parser = train_script.get_args_parser()
    extra = train_script.apply_config_file(parser, str(args_yaml))
    args = parser.parse_args([])
    args.phi = attention_name(args.phi)
    assert train_script.config_from_args(args, extra) == saved
    args = parser.parse_args(["--epochs", "7"])  # flags override the file
    assert train_script.config_from_args(args, extra).epochs == 7


def test_voc_recipe_is_a_valid_config():
    parser = train_script.get_args_parser()
    train_script.apply_config_file(parser, str(ROOT / "model_data" / "voc_recipe.yaml"))
    config = train_script.config_from_args(parser.parse_args(["--phi", "2"]))
    assert (config.epochs, config.input_shape, config.train_split, config.augment["mosaic"]) == (300, [416, 416],
                                                                                               "trainval", 0.5)


def test_config_with_an_unknown_option_is_one_error_line(tmp_path, capfd):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 3\nlearning_rate: 0.1\n")
    assert train_script.main(["--config", str(bad)]) == 1
    assert "unknown option(s) learning_rate" in capfd.readouterr().err
