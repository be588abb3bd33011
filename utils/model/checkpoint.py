"""Safe, self-describing checkpoints: their layout, atomic writes, weights_only loads, and the one path from a file
to a model.

Two kinds of checkpoint, both written by the trainer through this module and read back here:
- a training checkpoint (`training_checkpoint`: last.pth, epoch_XXX.pth): model, EMA, optimizer, scaler, progress
  and both configs, everything `--resume` needs (`restore_training`);
- a weights checkpoint (`weights_checkpoint`: best.pth): the weights to ship (the EMA's when enabled), the configs,
  the epoch with its metrics; no optimizer, about a third of the size. Using and fine-tuning need nothing more.

Every file becomes a model here: `load_model` (strict; predict.py, eval.py and exports through
utils.runtime.loader.load_runnable) and `load_pretrained` (partial; train.py --weights) read our checkpoints, bare
state_dicts and Darknet files alike.
"""
from __future__ import annotations

import errno
import logging
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nets.yolo import attention_prefixes, heads_in_state_dict
from utils.common.errors import UserError
from utils.common.paths import check_user_path
from utils.model.config import ModelConfig, build_model
from utils.model.darknet import is_darknet_weights, load_darknet, load_darknet_backbone
from utils.model.load_budget import check_load_budget

LOGGER = logging.getLogger(__name__)
# The layout of our checkpoint dicts (training_checkpoint, weights_checkpoint). Raise it when that layout changes in a
# way older code cannot read; load_checkpoint refuses files from a newer version with a clear message.
FORMAT_VERSION = 1


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used, with a message that says why and what to do."""


# ----------------------------------------------------------------------------------------------------------- layout
# What a training checkpoint keeps of the run's progress (utils.train.trainer.TrainState), besides the tensors.
PROGRESS_KEYS = ("epoch", "best_fitness", "best_epoch", "stale_validations", "stop_reason", "history", "best_metrics")


def training_checkpoint(model: nn.Module, ema, optimizer: torch.optim.Optimizer, scaler, progress: dict[str, Any],
                        config: ModelConfig, train_config: dict[str, Any], precision: str = "fp32") -> dict[str, Any]:
    """last.pth: everything needed to resume exactly (`restore_training`) or to rebuild the model for inference, as
    plain types and tensors. `model` is the plain model (not a DDP wrapper); `ema` an AveragedModel or None;
    `progress` holds PROGRESS_KEYS. The LR schedule is not saved: it is a pure function of train_config and the epoch
    (utils.train.optim.LRSchedule)."""
    return {
        "format_version": FORMAT_VERSION,
        "model": model.state_dict(),
        "ema": ema.module.state_dict() if ema is not None else None,
        "ema_updates": int(ema.n_averaged) if ema is not None else 0,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        **{key: progress[key] for key in PROGRESS_KEYS},
        "config": config.to_dict(),
        "train_config": train_config,
        "precision": precision,  # what the run computed in (resolved --precision); a resume re-resolves it
    }


def weights_checkpoint(training: dict[str, Any], metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """best.pth from a training checkpoint: what using and fine-tuning need, as Ultralytics strips its final weights.

    Keeps the shipped weights (the EMA's when the run has one) as "model", the ModelConfig (classes, anchors,
    attention, input size), the TrainConfig, the precision, the epoch with its fitness, and `metrics` (that epoch's
    results.csv row). Drops the optimizer and scaler state and the second copy of the weights: a third of the size.
    """
    keep = ("format_version", "epoch", "best_fitness", "best_epoch", "config", "train_config", "precision")
    return {**{key: training[key] for key in keep if key in training},
            "model": state_dict_of(training), "metrics": dict(metrics or {})}


def is_training_checkpoint(checkpoint: dict[str, Any]) -> bool:
    """Whether `--resume` can continue from it (a weights checkpoint such as best.pth cannot)."""
    return "train_config" in checkpoint and isinstance(checkpoint.get("optimizer"), dict)


def read_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """The training checkpoint at `path` for --resume; a clear error for best.pth and for other weights."""
    checkpoint = load_checkpoint(path)
    if "train_config" in checkpoint and not is_training_checkpoint(checkpoint):
        raise CheckpointError(f"{path} holds the weights only (no optimizer state: best.pth is kept small for use "
                              f"and fine-tuning); resume from the run's last.pth (--resume {Path(path).parent}), or "
                              f"start a new run from these weights with --weights {path}")
    if not is_training_checkpoint(checkpoint):
        raise CheckpointError(f"{path} is not a training checkpoint of this project; use --weights to start from it")
    return checkpoint


def restore_training(checkpoint: dict[str, Any], model: nn.Module, ema, optimizer: torch.optim.Optimizer,
                     scaler) -> dict[str, Any]:
    """Load model, EMA, optimizer and scaler state from a `training_checkpoint`; returns its progress (PROGRESS_KEYS),
    with the defaults of checkpoints written before a key existed."""
    load_weights(model, checkpoint["model"], source="resume checkpoint")
    if ema is not None and checkpoint.get("ema"):
        ema.module.load_state_dict(checkpoint["ema"])
        ema.n_averaged.fill_(int(checkpoint.get("ema_updates", 1)))
    optimizer.load_state_dict(checkpoint["optimizer"])
    if checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    best, history = float(checkpoint.get("best_fitness", -1.0)), list(checkpoint.get("history", []))
    # checkpoints from before early stopping: their fitness was val mAP50
    old_best = max((row["epoch"] for row in history if row.get("val/mAP50") == best), default=0)
    return {"epoch": int(checkpoint["epoch"]), "best_fitness": best, "history": history,
            "best_epoch": int(checkpoint.get("best_epoch", old_best)),
            "stale_validations": int(checkpoint.get("stale_validations", 0)),
            "stop_reason": checkpoint.get("stop_reason"), "best_metrics": dict(checkpoint.get("best_metrics") or {})}


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write `payload` to `path` atomically: a temporary file in the same folder, fsync, then rename.

    A crash or kill mid-write leaves the previous file untouched (rename is atomic on POSIX and Windows).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a checkpoint gets what the run's other files get
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if _out_of_space(err, path.parent):
            raise CheckpointError(f"no space left on {path.parent} while writing {path.name}; the previous "
                                  f"{path.name} (if any) is kept: free some space, then --resume") from None
        raise


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it: set, then restore at once
    os.umask(mask)
    return mask


def _out_of_space(err: BaseException, folder: Path) -> bool:
    """ENOSPC anywhere in the exception chain (torch.save turns the OSError into a RuntimeError such as "unexpected
    pos" or "PytorchStreamWriter failed writing file", the OSError kept as its context), or a RuntimeError on a
    device with (almost) no free space left."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        seen = seen.__cause__ or seen.__context__
    if isinstance(err, RuntimeError):
        try:
            return shutil.disk_usage(folder).free < 64 * 2 ** 20
        except OSError:
            return False
    return False
    return False


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete `.<name>.pth.*.tmp` files that a killed `save_checkpoint` left in `folder` (never valid checkpoints).

    Call only when no other process is writing checkpoints into `folder` (e.g. when resuming its run).
    """
    stale = sorted(Path(folder).glob(".*.pth.*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
        LOGGER.info("removed %s, a checkpoint write interrupted by an earlier crash", path)
    return stale


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """torch.load with weights_only=True: tensors and plain containers only, never code; and never more memory than
    a few times the file's size (utils.model.load_budget)."""
    path = check_user_path(path, "weights file")  # a FIFO or device would block torch.load forever
    if not path.is_file():
        raise CheckpointError(f"weights file {path} not found; check the path (train.py writes logs/<run>/best.pth)")
    check_load_budget(path)  # what torch.load would allocate, against the file's size (decompression bombs)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} holds Python objects other than tensors and was refused, because unpickling it could run "
            f"code. If you trust its source, re-save just its state_dict: torch.save(model.state_dict(), ...). "
            f"Detail: {str(err).splitlines()[0]}") from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable PyTorch file (truncated or corrupt?): {err}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a checkpoint or state_dict")
    check_format_version(data, path)
    return data


def check_format_version(checkpoint: dict[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint written in a format this code does not know. No `format_version` means version 1: our
    files from before the field, and bare (reference) state_dicts."""
    version = checkpoint.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format_version {version!r}, but this code reads versions 1 to {FORMAT_VERSION}; "
            f"it was written by a newer version of this project: update the code (git pull), or load it with the "
            f"version that wrote it and save just its state_dict")


def state_dict_of(checkpoint: dict[str, Any], prefer_ema: bool = True) -> dict[str, torch.Tensor]:
    """The model weights inside a checkpoint of ours, a {'state_dict'/'model': ...} wrapper or a bare state_dict."""
    for key in (("ema", "model") if prefer_ema else ("model",)) + ("state_dict",):
        value = checkpoint.get(key)
        if isinstance(value, dict) and value:
            return value
    if all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint
    raise CheckpointError(f"no model weights found among keys {sorted(checkpoint)[:10]}")


def classes_in_state_dict(state_dict: dict[str, torch.Tensor], anchors_per_head: int = 3) -> int | None:
    """The class count implied by the 13x13 head's output channels, or None when that key is absent."""
    weight = state_dict.get("yolo_headP5.1.weight")
    return None if weight is None else weight.shape[0] // anchors_per_head - 5


@dataclass
class LoadReport:
    """What a partial load did: tensors loaded and those skipped, with the reason for each."""

    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        text = f"loaded {len(self.loaded)} tensors, skipped {len(self.skipped)}"
        if self.skipped:
            shown = list(self.skipped.items())[:8]
            text += ": " + "; ".join(f"{k} ({v})" for k, v in shown) + (" ..." if len(self.skipped) > 8 else "")
        return text


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], partial: bool = False,
                 source: str = "weights") -> LoadReport:
    """Load `state_dict` into `model`.

    strict (default): every key and shape must match; a different class count is reported with both counts.
    partial: load each tensor whose name and shape match and report the rest (fine-tuning on other classes).
    """
    own = model.state_dict()
    report = LoadReport()
    for name, tensor in state_dict.items():
        if name not in own:
            report.skipped[name] = "not in this model"
        elif own[name].shape != tensor.shape:
            report.skipped[name] = f"shape {tuple(tensor.shape)} vs {tuple(own[name].shape)}"
        else:
            report.loaded.append(name)
    missing = [k for k in own if k not in state_dict]
    if not partial and (report.skipped or missing):
        raise CheckpointError(_mismatch_message(model, state_dict, report, missing, source))
    model.load_state_dict({k: state_dict[k] for k in report.loaded}, strict=False)
    for name in missing:
        report.skipped[name] = "missing from the file (kept at initial value)"
    return report


def _mismatch_message(model: nn.Module, state_dict: dict, report: LoadReport, missing: list[str], source: str) -> str:
    theirs = classes_in_state_dict(state_dict)
    ours = getattr(model, "num_classes", None)
    if theirs is not None and ours is not None and theirs != ours:
        return (f"{source} was trained for {theirs} classes but {ours} were requested. Use the classes file the "
                f"weights were trained with, or load them partially (train.py --weights loads every matching "
                f"tensor and reports the rest) to fine-tune on your {ours} classes.")
    hint = model.heads_mismatch(state_dict) if hasattr(model, "heads_mismatch") else None
    hint = hint or (model.attention_mismatch(state_dict) if hasattr(model, "attention_mismatch") else None)
    if hint:  # wrong --heads, --phi, --attention-at or block option: say which
        return f"{source} does not match this model: {hint}"
    detail = list(report.skipped.items())[:5]
    return (f"{source} does not match this model ({len(report.skipped)} unexpected or mis-shaped tensors, "
            f"{len(missing)} missing; e.g. {detail or missing[:5]}). Check the attention type (--phi) it was "
            f"trained with, or load it partially.")


def stored_config(checkpoint: dict[str, Any], path: str | Path) -> ModelConfig:
    """The ModelConfig inside one of our checkpoints; a CheckpointError naming the file when it is not valid."""
    try:
        return ModelConfig.from_dict(checkpoint["config"])
    except (TypeError, ValueError, KeyError, AttributeError) as err:  # ValueError covers ConfigError
        raise CheckpointError(f"{path}: its stored model config is not valid ({err}); use a checkpoint written by "
                              "train.py, or a bare state_dict with --names and --phi") from None


# ------------------------------------------------------------------------------------------- from a file to a model
def load_model(weights: str | Path, classes: list[str] | None = None, phi: int | str | None = None,
               cfg: str | Path | None = None, prefer_ema: bool = True) -> tuple[nn.Module, ModelConfig]:
    """Any PyTorch-side weights -> (model in eval mode on CPU, its config); every tensor must fit (strict).

    - our checkpoints (last.pth, best.pth): the stored config rebuilds the exact model; `classes`/`phi` are not needed;
    - a bare reference-layout state_dict: `classes` (and `phi`, default none) describe the model;
    - Darknet `.weights` with its `.cfg` (utils.model.darknet).
    utils.runtime.loader.load_runnable wraps this for predict.py and eval.py (and adds exported .onnx files).
    """
    path = Path(weights)
    if is_darknet_weights(path) or cfg is not None:
        return _load_darknet_model(path, cfg, classes)
    checkpoint = load_checkpoint(path)
    if "config" in checkpoint:
        config = stored_config(checkpoint, path)
    elif classes is None:
        found = classes_in_state_dict(state_dict_of(checkpoint))
        raise CheckpointError(
            f"{path} is a bare state_dict without a model config (trained for {found} classes); pass --names FILE "
            f"with the class names it was trained on and --phi with its attention type")
    else:
        config = ModelConfig(classes=classes, attention=phi if phi is not None else "none",
                             heads=heads_in_state_dict(state_dict_of(checkpoint)))
    model = build_model(config)
    load_weights(model, state_dict_of(checkpoint, prefer_ema), source=str(path))
    return model.eval(), config


def _load_darknet_model(path: Path, cfg: str | Path | None, classes: list[str] | None) -> tuple[nn.Module, ModelConfig]:
    if cfg is not None:
        return load_darknet(cfg, path, classes)
    if path.suffix != ".weights":  # yolov4-tiny.conv.29: the backbone alone
        raise CheckpointError(f"{path} is a Darknet backbone file (.conv.N) for transfer learning: pass it to "
                              "train.py --weights; to detect, give a complete .weights file with its --cfg")
    raise CheckpointError(f"{path} is a Darknet weights file; also pass its --cfg (e.g. yolov4-tiny.cfg)")


def load_pretrained(model: nn.Module, weights: str | Path) -> None:
    """train.py --weights: load every tensor of `weights` that fits `model` (a YoloBody) and log what was left out.

    Takes our checkpoints (the EMA weights when present), bare reference-layout state_dicts and Darknet files
    (.conv.29, or the first convs of a complete .weights file). Attention blocks that got no tensor are named: they
    keep their initialisation (identity-start inside the backbone, see nets/yolo.py).
    """
    path = Path(weights)
    if is_darknet_weights(path):
        load_darknet_backbone(model, path)  # logs how many conv layers it loaded
        _log_new_attention_blocks(model, set())
        return
    state_dict = state_dict_of(load_checkpoint(path))
    report = load_weights(model, state_dict, partial=True, source=str(path))
    LOGGER.info("initial weights %s: %s", path, report.summary())
    if not report.loaded:
        raise CheckpointError(f"{path}: no tensor matched this model; is it a YOLOv4-tiny checkpoint?")
    _log_new_attention_blocks(model, set(report.loaded))
    dropped = [k for k in attention_prefixes(state_dict) if any(s.startswith(k + ".") for s in report.skipped)]
    if dropped:  # attention tensors of the file that did not fit: say which option differs
        LOGGER.warning("initial weights %s: attention tensors of %s not loaded: %s", path, ", ".join(dropped),
                       model.attention_mismatch(state_dict) or "their shapes differ")


def _log_new_attention_blocks(model: nn.Module, loaded: set[str]) -> list[str]:
    """Log (and return) the attention blocks that got no tensor from the initial weights."""
    new = [name for name, block in model.attention_blocks().items()
           if not any(f"{name}.{key}" in loaded for key in block.state_dict())]
    if new:
        LOGGER.info("newly initialised attention blocks (%d): %s", len(new), ", ".join(new))
    return new


def latest_weights(logs_dir: str | Path = "logs", name: str = "best.pth") -> Path:
    """The most recently written logs/*/best.pth (predict.py and eval.py default), or a clear error."""
    candidates = sorted(Path(logs_dir).glob(f"*/{name}"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise CheckpointError(f"no {logs_dir}/*/{name} found; train first (python train.py) or pass --weights FILE")
    return candidates[-1]
