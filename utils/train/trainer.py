"""The training engine: setup, `train_one_epoch`, periodic evaluation, resume; what it writes are callbacks.

train.py only parses arguments into a TrainConfig and calls `train(config)`; in Python, `train(config,
callbacks=[...])` adds callbacks (utils/train/callbacks.py: the events, and the built-in outputs in the order they run).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from nets.summary import model_summary
from utils.common import distributed as dist_utils
from utils.common.cli import add_log_file, remove_log_file
from utils.common.determinism import make_deterministic
from utils.common.device import autocast, precision_note, resolve_precision, select_device
from utils.common.errors import ConfigError, DatasetError, MissingFileError, UserError
from utils.common.image_io import to_model_input
from utils.common.paths import check_user_path
from utils.common.run_dir import RunLock, atomic_output, claim_run_dir, remove_if_empty, remove_partial_outputs
from utils.data.anchors import MIN_BOX_SIZE, check_anchors
from utils.data.augment import AugmentConfig
from utils.data.index import DatasetIndex, EmptySplitError, load_split, shared_images
from utils.data.loader import EvalDataset, MultiScale, TrainDataset, build_loader, eval_collate, train_collate
from utils.eval.evaluation import evaluate
from utils.eval.plots import letterboxed_boxes
from utils.model.checkpoint import (
    latest_weights,
    load_pretrained,
    read_training_checkpoint,
    remove_stale_temporaries,
    restore_training,
    training_checkpoint,
)
from utils.model.config import ModelConfig, build_model, read_anchors, read_classes
from utils.model.download import local_weights
from utils.train.callbacks import BatchInfo, CallbackList, FinalSummary, default_callbacks
from utils.train.config import FITNESS, TrainConfig
from utils.train.loggers import create_logger
from utils.train.loss import YoloLoss
from utils.train.loss_config import LossConfig
from utils.train.optim import DEFAULT_LR, LRSchedule, build_optimizer, ema_model, scaled_lr, set_lr
from utils.train.run_config import write_args_yaml

LOGGER = logging.getLogger(__name__)
SPLIT_SEED = 0  # the seed of splits made on the fly (no split files); eval.py uses the same default


@dataclass
class TrainState:
    """Progress that a checkpoint restores: completed epochs, best fitness and its epoch, validations since the
    fitness last improved, why training stopped early (None while it has not), per-epoch history."""

    epoch: int = 0
    best_fitness: float = -1.0
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    stale_validations: int = 0
    stop_reason: str | None = None
    best_metrics: dict = field(default_factory=dict)  # the best epoch's results row and its val best-F1 threshold


class NonFiniteLossError(UserError, RuntimeError):
    """Too many consecutive non-finite losses: the run diverged."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DDP wrapper."""
    return model.module if hasattr(model, "module") else model


def memory_text(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.memory_reserved(device) / 2**30:.1f}G"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f}G"  # peak RSS (KiB on Linux)


@dataclass
class StepResult:
    """Mean weighted losses of one epoch and how many steps were skipped for non-finite loss."""

    losses: dict[str, float]
    skipped: int
    images_per_second: float
    bad_streak: int  # consecutive non-finite losses at the end of the epoch (carried into the next)
    seconds: float = 0.0  # wall time of the epoch's training pass (data loading included)


def train_one_epoch(trainer: Trainer, loader, epoch: int) -> StepResult:
    """One pass over `loader` (epoch: 0-based) with the trainer's model, loss, optimiser, scaler, EMA, LR schedule
    (followed every iteration), multi-scale and precision. Non-finite losses skip the step; --max-bad-steps of them
    in a row (counted across epochs from trainer.bad_streak) stop training. Fires on_batch_start / on_batch_end."""
    model, loss_fn, optimizer, scaler, ema = (trainer.ddp_model, trainer.loss_fn, trainer.optimizer, trainer.scaler,
                                              trainer.ema)
    config, device, schedule, peak_lr = trainer.config, trainer.device, trainer.schedule, trainer.peak_lr()
    model.train()
    sums: dict[str, float] = {}
    steps = skipped = seen = 0
    consecutive_bad = trainer.bad_streak
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not dist_utils.is_main_process(),
               dynamic_ncols=True, leave=True)
    for i, (images, targets) in enumerate(bar):
        lr = peak_lr * schedule.factor(epoch + i / max(len(loader), 1))
        set_lr(optimizer, lr)
        batch = BatchInfo(epoch + 1, i, lr, len(images))
        trainer.callbacks.fire("on_batch_start", batch)
        images = to_model_input(images, device)
        targets = targets.to(device, non_blocking=True)
        if trainer.multi_scale is not None:
            images, targets = trainer.multi_scale(images, targets)
        buffers = float_buffers(model)
        saved = [b.clone() for b in buffers]  # BatchNorm statistics, restored if this batch turns out non-finite
        with autocast(device, trainer.precision):
            outputs = model(images)
        losses = loss_fn(outputs, targets)
        finite = dist_utils.all_ranks_true(bool(torch.isfinite(losses["total"])), device)
        batch.losses = {k: float(v.detach()) for k, v in losses.items()}
        if not finite:
            skipped, consecutive_bad = skipped + 1, consecutive_bad + 1
            optimizer.zero_grad(set_to_none=True)
            if buffers:
                torch._foreach_copy_(buffers, saved)  # a NaN forward already reached the running statistics
            LOGGER.warning("non-finite loss at epoch %d iteration %d (%s); step skipped", epoch + 1, i, batch.losses)
            batch.skipped = True
            trainer.callbacks.fire("on_batch_end", batch)
            if consecutive_bad >= config.max_bad_steps:
                raise NonFiniteLossError(
                    f"{consecutive_bad} consecutive non-finite losses: training diverged. Lower the learning rate "
                    f"(--lr), enable --grad-clip 10, or check the data for broken boxes")
            continue
        consecutive_bad = 0
        optimizer_step(model, losses["total"], optimizer, scaler, config.grad_clip)
        if ema is not None:
            ema.update_parameters(unwrap(model))
        steps, seen = steps + 1, seen + images.shape[0]
        for key, value in batch.losses.items():
            sums[key] = sums.get(key, 0.0) + value
        trainer.callbacks.fire("on_batch_end", batch)
        bar.set_postfix(box=f"{sums['box'] / steps:.3f}", obj=f"{sums['obj'] / steps:.3f}",
                        cls=f"{sums['cls'] / steps:.3f}", lr=f"{lr:.2e}", mem=memory_text(device),
                        img_s=f"{seen / (time.perf_counter() - start):.1f}")
    bar.close()
    elapsed = time.perf_counter() - start
    return StepResult({k: v / max(steps, 1) for k, v in sums.items()}, skipped, seen / max(elapsed, 1e-9),
                      consecutive_bad, elapsed)


def float_buffers(model: nn.Module) -> list[torch.Tensor]:
    """The floating-point buffers (BatchNorm running mean/var) that a forward pass in train mode updates."""
    return [b for b in model.buffers() if b.is_floating_point()]


def optimizer_step(model: nn.Module, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler, grad_clip: float) -> None:
    """Backward, optional gradient clipping, step; the scaler is a no-op unless fp16 needs loss scaling."""
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def make_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling only for fp16 (bf16 has fp32's range and needs none)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


class Trainer:
    """Owns one run: data, model, EMA, optimiser, run folder. `fit()` trains to `config.epochs`, firing the events of
    utils/train/callbacks.py. What a run writes are callbacks: the built-in ones (pictures, checkpoints, results,
    TensorBoard), the loggers of --logger, then `callbacks` (any objects with some of the event methods), then the
    final summary. Callbacks run on the main process only (rank 0 under torchrun).

    The run folder is claimed here (run_dir None) or given (a resumed run: `train` locks it first)."""

    def __init__(self, config: TrainConfig, resume: dict | None = None, run_dir: Path | None = None,
                 callbacks: Iterable = ()):
        self.config = config
        device = select_device(config.device)
        if config.deterministic:
            make_deterministic(device)
        self.device = dist_utils.init_distributed(device)
        self.main = dist_utils.is_main_process()
        self.precision = resolve_precision(self.device, config.precision if config.amp else "fp32")
        # before any file is written: a logger whose package is missing is one line, and no run folder
        outputs = [*default_callbacks(), *map(create_logger, config.loggers), *callbacks, FinalSummary()]
        self.callbacks = CallbackList(self, outputs if self.main else [])
        torch.manual_seed(config.seed + dist_utils.rank())
        # claimed before the data loads: two runs started together never share a folder, and an unwritable
        # --save-dir is found before any work; a dataset error removes the still-empty folder again
        self.run_dir = run_dir or self._claim_run_dir()
        self.log_file = self._start_log_file()
        try:
            self._setup(resume)
        except BaseException:
            self._abandon(fresh=run_dir is None)
            raise
        self.epoch = self.state.epoch  # 1-based number of the epoch in progress (or the last one finished)
        self.val_metrics: dict[str, Any] = {}  # the last validation's (utils.eval.evaluation.evaluate)
        self.val_detections: list = []  # and its detections per val image ([K, 6] x1, y1, x2, y2, score, class)
        self.ended_by: BaseException | None = None  # what ended fit(): None when it trained to the end

    # ----- setup -------------------------------------------------------------------------------------------------
    def _setup(self, resume: dict | None) -> None:
        self._setup_data(resume)
        self._setup_files()
        if self.main:
            self._log_data_summary()
        self._setup_model(resume)
        self._setup_optimisation(resume)

    def _abandon(self, fresh: bool) -> None:
        """Setup failed: stop writing train.log, and remove a fresh run folder that holds nothing else (a dataset
        error leaves no run folder behind)."""
        self.close()
        if fresh and self.main and [p.name for p in self.run_dir.iterdir()] == ["train.log"]:
            (self.run_dir / "train.log").unlink()
            remove_if_empty(self.run_dir)

    def _claim_run_dir(self) -> Path:
        holder = [claim_run_dir(self.config.save_dir, self.config.name) if self.main else None]
        if dist_utils.world_size() > 1:  # every rank must agree on the folder rank 0 claimed
            torch.distributed.broadcast_object_list(holder, src=0)
        return Path(holder[0])

    def _start_log_file(self):
        """train.log from the start, so the data lines are in it too (said once, on the console and in the file)."""
        if not self.main:
            return None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        handler = add_log_file(self.run_dir / "train.log")
        LOGGER.info("run folder: %s", self.run_dir)
        return handler

    def close(self) -> None:
        """Stop writing train.log (a later run in this process gets its own). fit() calls it when it ends."""
        remove_log_file(self.log_file)
        self.log_file = None

    def _setup_files(self) -> None:
        if self.main:
            LOGGER.info("%s", precision_note(self.device, self.config.precision if self.config.amp else "fp32",
                                             self.precision))
            with atomic_output(self.run_dir / "args.yaml") as partial:  # train.py --config re-runs it
                write_args_yaml(partial, self.config, self.classes, self.precision, str(self.device))

    def _setup_data(self, resume: dict | None) -> None:
        cfg = self.config
        if cfg.fitness not in FITNESS:
            raise ConfigError(f"unknown fitness {cfg.fitness!r}; use one of {', '.join(FITNESS)}")
        classes = (resume["config"]["classes"] if resume
                   else read_classes(cfg.classes_file) if cfg.classes_file else None)
        # Splits made on the fly (no split files) use SPLIT_SEED, not --seed, as eval.py does: another training seed
        # must not move images between train and test (an ablation over seeds evaluates every run on one test split).
        self.train_index = load_split(cfg.data, cfg.train_split, classes=classes, keep_difficult=cfg.keep_difficult,
                                      seed=SPLIT_SEED)
        self.classes = self.train_index.classes
        if not self.classes:  # here, before any file is written: the still-empty run folder is removed again
            raise DatasetError(f"{cfg.data}: no class names (the {cfg.train_split!r} split has no objects); give "
                               "--names FILE or annotations with objects")
        self._check_objects(resumed=resume is not None)
        self.val_index = self._load_val_index()
        self._check_split_leak()
        if not self.train_index.records:
            raise DatasetError(f"the {cfg.train_split!r} split of {cfg.data} holds no images; check the dataset folder")
        self.augment = AugmentConfig(**cfg.augment)
        self.train_dataset = TrainDataset(self.train_index, cfg.input_shape, self.augment, cfg.epochs, cache=cfg.cache)
        self.train_loader, self.loader_batch, self.frozen = None, None, None  # built per phase by _prepare_phase
        self.val_loader = None  # built on the first validation

    def _load_val_index(self) -> DatasetIndex:
        """The validation split; every val image counts, readable or not (its objects are missed when it cannot be
        read, as in eval.py). --val-split none: no validation. A split made on the fly that came out empty (a
        1-image dataset): validate on the training images, with a warning."""
        cfg = self.config
        if cfg.val_split.lower() == "none":
            LOGGER.info("--val-split none: no validation; best.pth is then the last epoch's weights (= last.pth)")
            return DatasetIndex([], list(self.classes), split="none")
        try:
            return load_split(cfg.data, cfg.val_split, classes=self.classes, seed=SPLIT_SEED, keep_unreadable=True)
        except EmptySplitError as err:
            LOGGER.warning("%s; validating on the training images instead (the figures then measure fit, not "
                           "generalisation; add images or give --val-split none)", err)
            return load_split(cfg.data, cfg.train_split, classes=self.classes, seed=SPLIT_SEED, keep_unreadable=True)

    def _check_objects(self, resumed: bool) -> None:
        """Refuse a train split without one object of the classes: it would train on background alone. A fresh run
        with the dataset's own names never gets here (no names); --names of other classes, and a resumed run whose
        dataset changed since, do."""
        cfg, index = self.config, self.train_index
        if any(len(index.training_targets(i)[1]) for i in range(len(index))):
            return
        others = ", ".join(sorted(index.unknown_objects)) or "none"
        difficult = sum(int(r.difficult.sum()) for r in index.records)
        why = (f"; its {difficult} difficult objects are left out of training (--keep-difficult trains on them)"
               if difficult else "")
        fix = ("the dataset changed since the run started: restore it, or start a new run on it" if resumed else
               f"check --names {cfg.classes_file} against the dataset's class names")
        raise DatasetError(f"{cfg.data}: the {cfg.train_split!r} split has no object of the run's classes "
                           f"({', '.join(self.classes[:10])}{' ...' if len(self.classes) > 10 else ''}; objects of "
                           f"other classes: {others}){why}; {fix}")

    def _check_split_leak(self) -> None:
        """Warn when validation would score training images (overlapping split files), unless asked for."""
        cfg = self.config
        shared = shared_images(self.train_index, self.val_index)
        asked = cfg.val_split == cfg.train_split or self.val_index.split == self.train_index.split  # or fallen back to
        if shared and not asked and self.main:
            LOGGER.warning("%d image(s) of the '%s' split are also in the '%s' split (e.g. %s): validation mAP and "
                           "best.pth would score training images; fix the split files (ImageSets/Main), or pass "
                           "--val-split %s to validate on the training split knowingly", len(shared), cfg.val_split,
                           cfg.train_split, shared[0].name, cfg.train_split)

    def _log_data_summary(self) -> None:
        """What load_split has not said already (its summary line per split): the file listing a split's problems,
        what validation scores, the classes."""
        for index in (self.train_index, self.val_index):  # a split made in memory is recorded: splits/<split>.txt
            index.write_split(self.run_dir)
        validating = bool(self.val_index.records)
        for split, index in (("train", self.train_index), ("val", self.val_index))[:1 + validating]:
            if index.problems:  # the summary again, now naming the file that lists the problems
                LOGGER.info("%s data: %s", split, index.summary(index.write_problems(self.run_dir)))
        if validating:
            LOGGER.info("validation scores %s", self.val_index.ground_truth_summary())
        LOGGER.info("classes (%d): %s", len(self.classes), ", ".join(self.classes))

    def _setup_model(self, resume: dict | None) -> None:
        cfg = self.config
        if resume:
            self.model_config = ModelConfig.from_dict(resume["config"])
        else:
            anchors = read_anchors(cfg.anchors_file) if cfg.anchors_file else None
            extra = {"anchors": anchors} if anchors else {}
            self.model_config = ModelConfig(classes=self.classes, attention=cfg.phi, input_shape=cfg.input_shape,
                                            attention_at=cfg.attention_at, attention_options=cfg.attention_options,
                                            heads=cfg.heads, scale_x_y=cfg.scale_x_y, **extra)
        model = build_model(self.model_config)
        model.initialize_biases(self.model_config.input_shape)
        if cfg.weights and not resume:
            load_pretrained(model, local_weights(cfg.weights, cfg.weights_sha256))
        if self.main:
            LOGGER.info(model_summary(model, tuple(self.model_config.input_shape)))
            self._check_anchors()
        if cfg.sync_bn and dist_utils.world_size() > 1:
            if self.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            elif self.main:  # PyTorch implements SyncBatchNorm for CUDA only
                LOGGER.warning("--sync-bn needs CUDA devices; ignored on %s (each process keeps its own BN statistics)",
                               self.device)
        self.model = model.to(self.device, memory_format=torch.channels_last)
        self.ddp_model = self.model
        self.multi_scale = None
        if cfg.multi_scale:  # validation stays at the input shape
            self.multi_scale = MultiScale(self.model_config.input_shape, max(model.strides), *cfg.multi_scale_range,
                                          seed=cfg.seed)
            LOGGER.info("multi-scale training: batch sizes drawn from %s", ", ".join(
                f"{h}x{w}" for h, w in self.multi_scale.shapes))

    def training_boxes(self) -> tuple[np.ndarray, np.ndarray]:
        """The boxes training uses (difficult objects left out unless --keep-difficult), as the letterbox puts them
        on the input canvas: (boxes float32 [N, 4] x1, y1, x2, y2 input pixels, labels int64 [N]). labels.png and the
        anchor check both count these."""
        return letterboxed_boxes(self.train_index.records, self.train_index.training_targets,
                                 self.model_config.input_shape)

    def _check_anchors(self) -> None:
        boxes, _ = self.training_boxes()
        annotated = sum(len(r.boxes) for r in self.train_index.records)
        if len(boxes) < annotated:  # say why labels.png and the anchor check count fewer boxes than the annotations
            LOGGER.info("training boxes: %d of the %d annotated (%d difficult, left out of training and its "
                        "statistics; --keep-difficult keeps them)", len(boxes), annotated, annotated - len(boxes))
        wh = boxes[:, 2:] - boxes[:, :2]
        small = ~(wh >= MIN_BOX_SIZE).all(axis=1)
        if small.any():
            LOGGER.info("anchor check: ignoring %d of the %d training boxes smaller than %g px at the input size",
                        int(small.sum()), len(wh), MIN_BOX_SIZE)
        if len(wh) > small.sum():
            check_anchors(wh[~small], self.model_config.used_anchors(), total=len(self.model_config.anchors))

    def _setup_optimisation(self, resume: dict | None) -> None:
        cfg = self.config
        self.base_lr = cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.optimizer]
        self.optimizer = build_optimizer(self.model, cfg.optimizer, self.base_lr, cfg.momentum, cfg.weight_decay)
        self.schedule = LRSchedule(cfg.epochs, cfg.warmup_epochs, min_ratio=cfg.min_lr_ratio, kind=cfg.lr_schedule)
        self.scaler = make_scaler(self.device, self.precision)
        self.ema = ema_model(self.model, cfg.ema_decay, cfg.ema_tau) if cfg.ema else None
        if self.ema is not None:
            self.ema.requires_grad_(False)
        self.loss_fn = YoloLoss(self.model_config, label_smoothing=cfg.label_smoothing,
                                options=LossConfig.from_dict(cfg.loss))
        self.state = TrainState()
        self.bad_streak = 0
        if resume:
            progress = restore_training(resume, self.model, self.ema, self.optimizer, self.scaler)
            self.state = TrainState(**progress)
            LOGGER.info("resumed after epoch %d of %d", self.state.epoch, cfg.epochs)

    def training_checkpoint(self) -> dict[str, Any]:
        """This moment as a resumable checkpoint (utils.model.checkpoint.training_checkpoint)."""
        return training_checkpoint(unwrap(self.model), self.ema, self.optimizer, self.scaler,
                                   dataclasses.asdict(self.state), self.model_config, self.config.to_dict(),
                                   self.precision)

    def image_saved(self, tag: str, path: Path, step: int) -> None:
        """Announce a picture written into the run folder (on_image: the loggers forward it)."""
        self.callbacks.fire("on_image", tag, path, step)

    # ----- the loop --------------------------------------------------------------------------------------------
    def fit(self) -> TrainState:
        """Train from the current state to config.epochs, or until --patience stops it. on_fit_end always runs: on
        Ctrl-C or SIGTERM the checkpoint callback saves last.pth, after a normal end the last line logged says why
        training ended."""
        try:
            self.callbacks.fire("on_fit_start")
            for epoch in range(self.state.epoch, self.config.epochs):
                self._train_epoch(epoch)
                if self._stopped_early():
                    break
        except BaseException as err:  # Ctrl-C and SIGTERM (utils.common.cli.Terminated) included
            self.ended_by = err
            raise
        finally:
            try:
                self.callbacks.fire_all("on_fit_end")
            finally:
                self.close()
        return self.state

    def _stopped_early(self) -> bool:
        """Whether --patience ended the run; rank 0 decides (only it validates) and every rank follows."""
        return not dist_utils.all_ranks_true(self.state.stop_reason is None, self.device)

    def _train_epoch(self, epoch: int) -> None:
        loader = self._prepare_phase(epoch)
        if self.multi_scale is not None:
            self.multi_scale.set_epoch(epoch)
        self.epoch = epoch + 1
        self.callbacks.fire("on_epoch_start", self.epoch)
        result = train_one_epoch(self, loader, epoch)
        self.bad_streak = result.bad_streak
        row = {"epoch": epoch + 1, **{f"train/{k}": v for k, v in result.losses.items()},
               "lr": self.optimizer.param_groups[0]["lr"], "skipped_steps": result.skipped,
               "images_per_s": result.images_per_second, "train_s": result.seconds}
        if self._should_evaluate(epoch) and self.main:
            row.update(self._evaluate(epoch))
        dist_utils.barrier()
        self.state.epoch = epoch + 1
        self.state.history.append(row)
        self.callbacks.fire("on_epoch_end", row)  # the results.csv row; callbacks run on the main process only

    def _phase_batch_size(self, epoch: int) -> int:
        return self.config.freeze_batch_size if epoch < self.config.freeze_epochs else self.config.batch_size

    def peak_lr(self) -> float:
        """This phase's peak LR: --lr scaled to the total batch size (utils.train.optim.scaled_lr)."""
        return scaled_lr(self.base_lr, self.loader_batch * dist_utils.world_size(), self.config.optimizer)

    def _prepare_phase(self, epoch: int):
        """Freeze or unfreeze the backbone and (re)build the loader when the phase's batch size changes."""
        frozen = epoch < self.config.freeze_epochs
        self.model.freeze_backbone(frozen)  # attention blocks inside the backbone keep training
        batch = self._phase_batch_size(epoch)
        if self.train_loader is None or batch != self.loader_batch or frozen != self.frozen:
            self._build_train_loader(batch)
            self._wrap_ddp()
            self.frozen = frozen
            if frozen:
                LOGGER.info("backbone frozen for epochs 1-%d (batch %d)", self.config.freeze_epochs, batch)
        self.train_dataset.set_epoch(epoch)
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        return self.train_loader

    def _build_train_loader(self, batch: int) -> None:
        world = dist_utils.world_size()
        per_rank = max(batch // world, 1)
        self.train_loader = build_loader(self.train_dataset, per_rank, self.config.workers, shuffle=True,
                                         seed=self.config.seed, rank=dist_utils.rank(), world_size=world,
                                         drop_last=len(self.train_dataset) > per_rank * world,
                                         collate_fn=train_collate)
        self.loader_batch = per_rank

    def _wrap_ddp(self) -> None:
        """DDP must be rebuilt when the set of trainable parameters changes (freeze/unfreeze)."""
        if dist_utils.world_size() > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)

    def _should_evaluate(self, epoch: int) -> bool:
        period = self.config.eval_period
        last = epoch + 1 == self.config.epochs
        return bool(self.val_index.records) and (last or (period > 0 and (epoch + 1) % period == 0))

    # ----- evaluation and outputs ------------------------------------------------------------------------------
    def eval_model(self) -> nn.Module:
        """The weights evaluated and shipped: the EMA when enabled."""
        return self.ema.module if self.ema is not None else self.model

    def _val_loader(self):
        if self.val_loader is None:
            dataset = EvalDataset(self.val_index, self.model_config.input_shape)
            self.val_loader = build_loader(dataset, max(self.config.batch_size, 1), min(self.config.workers, 2),
                                           shuffle=False, seed=self.config.seed, collate_fn=eval_collate)
        return self.val_loader

    def _evaluate(self, epoch: int) -> dict[str, float | None]:
        """Validation with exactly eval.py's code path, thresholds and letterbox, plus the loss of the same forward
        passes; on_validation_end gets eval's metrics (trainer.val_detections: the detections per val image).
        Returns the results.csv columns (and the fitness)."""
        self.callbacks.fire("on_validation_start", epoch + 1)
        start, detections = time.perf_counter(), []
        metrics = evaluate(self.eval_model(), self._val_loader(), self.model_config, self.device,
                           precision=self.precision, loss_fn=self.loss_fn, detections_out=detections)
        columns = {f"val/{k}": v for k, v in metrics.get("val_loss", {}).items() if k != "total"}
        columns.update({"val/precision": metrics["precision"], "val/recall": metrics["recall"],
                        "val/mAP50": metrics["mAP50"], "val/mAP50_95": metrics["mAP50_95"],
                        "fitness": FITNESS[self.config.fitness](metrics)})
        self.val_metrics, self.val_detections = metrics, detections
        self.callbacks.fire("on_validation_end", metrics)  # the diagnostics pictures
        columns["val_s"] = time.perf_counter() - start
        LOGGER.info("epoch %d val: %s (%.1f s)", epoch + 1, ", ".join(
            f"{k[4:] if k.startswith('val/') else k} {'-' if v is None else f'{v:.4f}'}"
            for k, v in columns.items() if k != "val_s"), columns["val_s"])
        return columns


RESUMABLE_OVERRIDES = ("epochs", "workers", "device", "precision", "amp", "eval_period", "save_period", "patience",
                       "loggers")


def resume_checkpoint_path(resume: str | bool, save_dir: str = "logs") -> Path:
    """--resume with no value: the newest logs/*/last.pth; a folder: its last.pth; a file: itself."""
    if resume is True or resume in ("", None):
        return latest_weights(save_dir, "last.pth")
    path = check_user_path(resume, "--resume", folder_ok=True)
    if path.is_dir() and not (path / "last.pth").is_file():
        raise MissingFileError(f"{path} holds no last.pth (the run stopped before its first epoch ended, or this is "
                               "not a run folder); start the run again without --resume")
    if not path.exists():
        raise MissingFileError(f"--resume {path}: not found; give a run folder (logs/exp) or its last.pth")
    return path / "last.pth" if path.is_dir() else path


def train(config: TrainConfig, resume: str | bool | None = None, overrides: dict | None = None,
          callbacks: Iterable = ()) -> Path:
    """Run training (fresh, or resumed from a run folder / last.pth); returns the run folder.

    callbacks: objects with some of the event methods of utils/train/callbacks.py (e.g. `on_epoch_end(trainer,
    metrics)`), run after the built-in outputs: `train(config, callbacks=[MyLogger()])`. The run folder is locked
    while this process trains in it (utils.common.run_dir.RunLock)."""
    lock, trainer = None, None
    try:
        checkpoint, run_dir = None, None
        if resume:
            path = resume_checkpoint_path(resume, config.save_dir)
            run_dir = path.parent
            lock = lock_run_dir(run_dir)  # before anything there is read or written: one process trains in a folder
            checkpoint = read_training_checkpoint(path)
            config = resumed_config(checkpoint, overrides or {}, source=str(path))
            remove_stale_temporaries(run_dir)  # half-written files of a killed predecessor
            remove_partial_outputs(run_dir)
        trainer = Trainer(config, resume=checkpoint, run_dir=run_dir, callbacks=callbacks)  # joins torchrun's group
        lock = lock or lock_run_dir(trainer.run_dir)  # a fresh folder: nobody can --resume it before its last.pth
        run_or_report(trainer, resumed=checkpoint is not None)
    finally:
        if trainer is not None:
            trainer.close()
        if lock is not None:
            lock.release()
        dist_utils.cleanup()  # the one place that leaves the process group, also when setup or training fails
    return trainer.run_dir


def lock_run_dir(folder: Path) -> RunLock | None:
    """Lock a run folder on the main process (the others write nothing); None elsewhere. Before torchrun's process
    group exists, RANK tells the main process."""
    return RunLock(folder).acquire() if int(os.environ.get("RANK", "0")) == 0 else None


def resumed_config(checkpoint: dict, overrides: dict, source: str) -> TrainConfig:
    """The run's saved TrainConfig with the options a resume may change (RESUMABLE_OVERRIDES) applied before its
    ranges are checked (a run saved with --workers 16 resumes here with --workers 2); a stored value out of range is a
    ConfigError naming `source`, the checkpoint."""
    resumable = {key: value for key, value in overrides.items() if key in RESUMABLE_OVERRIDES}
    config = TrainConfig.from_dict({**checkpoint["train_config"], **resumable}, source=source)
    warn_unapplied_overrides(overrides)
    return config


def run_or_report(trainer: Trainer, resumed: bool) -> None:
    """fit(), unless a resumed run has nothing left to do (all epochs done, or stopped early and still stopped)."""
    state, config, run_dir = trainer.state, trainer.config, trainer.run_dir
    if resumed and state.epoch >= config.epochs:
        LOGGER.info("%s already finished %d of %d epochs; pass --epochs N to train longer", run_dir, state.epoch,
                    config.epochs)
    elif resumed and still_stopped(state, config):
        LOGGER.info("%s already stopped early after epoch %d: %s; pass a larger --patience (or --patience 0) to "
                    "train on", run_dir, state.epoch, state.stop_reason)
    else:
        if resumed and state.stop_reason is not None:
            LOGGER.info("continuing a run that had stopped early (%s): --patience is now %d", state.stop_reason,
                        config.patience)
            state.stop_reason = None
        trainer.fit()


RESUME_NEUTRAL = ("resume", "verbose", "config")  # options about this command, not about the run


def warn_unapplied_overrides(overrides: dict) -> list[str]:
    """One warning naming the options given with --resume that a resumed run cannot apply (it keeps the options
    saved in its checkpoint); returns their flags."""
    flags = sorted(flag_of(k) for k in overrides if k not in RESUMABLE_OVERRIDES + RESUME_NEUTRAL)
    if flags:
        allowed = ", ".join(map(flag_of, RESUMABLE_OVERRIDES))
        LOGGER.warning("--resume keeps the run's saved options: ignoring %s (only %s can change when resuming; "
                       "start a new run to change the others)", ", ".join(flags), allowed)
    return flags


def flag_of(option: str) -> str:
    """The command-line flag of a TrainConfig option (loggers: --logger, given once per logger)."""
    return "--logger" if option == "loggers" else "--" + option.replace("_", "-")


def still_stopped(state: TrainState, config: TrainConfig) -> bool:
    """A run that stopped early stays stopped unless --patience now allows more validations without improvement."""
    return state.stop_reason is not None and 0 < config.patience <= state.stale_validations
