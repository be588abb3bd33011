"""A run's configuration as a file: every run folder gets args.yaml, and `train.py --config FILE` reads one back.

args.yaml holds every TrainConfig field with its resolved value (defaults filled in), then a `run_info` section
(dataset, class names, torch/torchvision/Python versions, this project's git commit when it is a git checkout) that
--config ignores. A hand-written recipe (model_data/voc_recipe.yaml) may hold any subset of the fields; flags given
on the command line override the file.
"""
from __future__ import annotations

import dataclasses
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch
import torchvision
import yaml

from utils.common.errors import ConfigError, MissingFileError
from utils.common.safe_load import load_yaml

ROOT = Path(__file__).resolve().parents[2]
MAX_CONFIG_BYTES = 1 << 20
RUN_INFO = "run_info"


def git_commit(root: Path = ROOT) -> str | None:
    """This project's commit (with '-dirty' when the tree has changes), or None outside a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit.stdout.strip() + ("-dirty" if dirty else "")


def run_info(data: str, classes: list[str], precision: str | None = None, device: str | None = None
             ) -> dict[str, Any]:
    """What the options alone do not say: the data and classes used, the precision the run computed in and on what
    device, and the versions of the code."""
    info = {"dataset": data, "classes": [str(c) for c in classes]}
    if precision is not None:
        info.update(precision=precision, device=device)
    return {**info, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "python": platform.python_version(), "git_commit": git_commit()}


def write_args_yaml(path: Path, config: Any, classes: list[str], precision: str | None = None,
                    device: str | None = None) -> Path:
    """Write `config` (a TrainConfig) with every field resolved, plus run_info, to `path`."""
    content = _plain({**config.to_dict(), RUN_INFO: run_info(config.data, classes, precision, device)})
    text = "# train.py --config this file [flags] re-runs this training; flags override the file\n"
    path.write_text(text + yaml.safe_dump(content, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def _plain(value: Any) -> Any:
    """Tuples as lists (safe_dump writes plain YAML types only)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def read_config_file(path: str | Path, fields: set[str]) -> dict[str, Any]:
    """The TrainConfig fields of a --config yaml (run_info ignored); field names may be written as flags
    (input-shape or input_shape). Unknown keys are a ConfigError naming them."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"--config {path} not found; give an args.yaml of a run or a recipe such as "
                               "model_data/voc_recipe.yaml")
    content = load_yaml(path, f"--config {path}", MAX_CONFIG_BYTES) or {}  # bounded: size, aliases, depth
    if not isinstance(content, dict):
        raise ConfigError(f"--config {path}: expected a mapping of option: value")
    content.pop(RUN_INFO, None)
    values = {str(k).replace("-", "_"): v for k, v in content.items()}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"--config {path}: unknown option(s) {', '.join(unknown)}; see train.py --help")
    return values


def config_field_names(config_class: type) -> set[str]:
    return {f.name for f in dataclasses.fields(config_class)}
