"""The training engine: setup, `train_one_epoch`, periodic evaluation, checkpoints and resume.

train.py only parses arguments into a TrainConfig and calls `train(config)`.
"""
from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from nets.summary import model_summary
from nets.yolo import attention_prefixes
from utils.common import distributed as dist_utils
from utils.common.boxes import letterbox
from utils.common.cli import Terminated, add_log_file
from utils.common.determinism import make_deterministic
from utils.common.device import autocast, autocast_dtype, select_device
from utils.common.errors import ConfigError, DatasetError, MissingFileError, UserError
from utils.common.image_io import read_image, to_model_input, write_image
from utils.common.run_dir import claim_run_dir, remove_if_empty
from utils.common.visualize import draw_detections, image_grid
from utils.data.anchors import boxes_wh, check_anchors
from utils.data.augment import AugmentConfig
from utils.data.index import DatasetIndex, EmptySplitError, load_split, shared_images
from utils.data.loader import (
    EvalDataset,
    MultiScale,
    TrainDataset,
    build_loader,
    eval_collate,
    save_preview,
    train_collate,
)
from utils.eval.evaluation import evaluate
from utils.eval.plots import letterboxed_boxes, plot_confidence_curves, plot_confusion_matrix, plot_labels
from utils.model.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    latest_weights,
    load_checkpoint,
    load_weights,
    remove_stale_temporaries,
    save_checkpoint,
    state_dict_of,
)
from utils.model.config import ModelConfig, build_model, read_anchors, read_classes
from utils.model.darknet import is_darknet_weights, load_darknet_backbone
from utils.model.download import local_weights
from utils.train.config import FITNESS, TrainConfig
from utils.train.loss import LossConfig, YoloLoss
from utils.train.optim import DEFAULT_LR, LRSchedule, build_optimizer, ema_model, scaled_lr, set_lr
from utils.train.results import plot_results, write_results
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


def train_one_epoch(model: nn.Module, loader, loss_fn, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                    ema, schedule: LRSchedule, peak_lr: float, epoch: int, device: torch.device,
                    config: TrainConfig, bad_streak: int = 0, multi_scale: MultiScale | None = None) -> StepResult:
    """One pass over `loader`; the LR follows `schedule` every iteration. Non-finite losses skip the step;
    `config.max_bad_steps` of them in a row (counted across epochs from `bad_streak`) stop training.
    multi_scale: resizes each batch (and its targets) on the device to a drawn size."""
    model.train()
    sums: dict[str, float] = {}
    steps = skipped = seen = 0
    consecutive_bad = bad_streak
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not dist_utils.is_main_process(),
               dynamic_ncols=True, leave=True)
    for i, (images, targets) in enumerate(bar):
        lr = peak_lr * schedule.factor(epoch + i / max(len(loader), 1))
        set_lr(optimizer, lr)
        images = to_model_input(images, device)
        targets = targets.to(device, non_blocking=True)
        if multi_scale is not None:
            images, targets = multi_scale(images, targets)
        buffers = float_buffers(model)
        saved = [b.clone() for b in buffers]  # BatchNorm statistics, restored if this batch turns out non-finite
        with autocast(device, config.amp):
            outputs = model(images)
        losses = loss_fn(outputs, targets)
        finite = dist_utils.all_ranks_true(bool(torch.isfinite(losses["total"])), device)
        if not finite:
            skipped, consecutive_bad = skipped + 1, consecutive_bad + 1
            optimizer.zero_grad(set_to_none=True)
            if buffers:
                torch._foreach_copy_(buffers, saved)  # a NaN forward already reached the running statistics
            LOGGER.warning("non-finite loss at epoch %d iteration %d (%s); step skipped", epoch + 1, i,
                           {k: float(v.detach()) for k, v in losses.items()})
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
        for key, value in losses.items():
            sums[key] = sums.get(key, 0.0) + float(value.detach())
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


def make_scaler(device: torch.device, amp: bool) -> torch.amp.GradScaler:
    """Loss scaling only for fp16 (bf16 has fp32's range and needs none)."""
    enabled = amp and autocast_dtype(device) == torch.float16
    return torch.amp.GradScaler(device.type, enabled=enabled)


def checkpoint_payload(model: nn.Module, ema, optimizer, scaler, state: TrainState, model_config,
                       train_config: TrainConfig) -> dict[str, Any]:
    """Everything needed to resume exactly or to rebuild the model for inference (plain types and tensors). The LR
    schedule is not saved: it is a pure function of train_config and the epoch (utils.train.optim.LRSchedule)."""
    return {
        "format_version": FORMAT_VERSION,
        "model": unwrap(model).state_dict(),
        "ema": ema.module.state_dict() if ema is not None else None,
        "ema_updates": int(ema.n_averaged) if ema is not None else 0,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": state.epoch,
        "best_fitness": state.best_fitness,
        "best_epoch": state.best_epoch,
        "stale_validations": state.stale_validations,
        "stop_reason": state.stop_reason,
        "history": state.history,
        "config": model_config.to_dict(),
        "train_config": train_config.to_dict(),
    }


def restore_training_state(checkpoint: dict, model: nn.Module, ema, optimizer, scaler) -> TrainState:
    """Load model, EMA, optimizer and scaler state from a checkpoint written by `checkpoint_payload`."""
    load_weights(unwrap(model), checkpoint["model"], source="resume checkpoint")
    if ema is not None and checkpoint.get("ema"):
        ema.module.load_state_dict(checkpoint["ema"])
        ema.n_averaged.fill_(int(checkpoint.get("ema_updates", 1)))
    optimizer.load_state_dict(checkpoint["optimizer"])
    if checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    best, history = float(checkpoint.get("best_fitness", -1.0)), list(checkpoint.get("history", []))
    # checkpoints from before early stopping: their fitness was val mAP50
    old_best = max((row["epoch"] for row in history if row.get("val/mAP50") == best), default=0)
    best_epoch = checkpoint.get("best_epoch", old_best)
    return TrainState(int(checkpoint["epoch"]), best, history, int(best_epoch),
                      int(checkpoint.get("stale_validations", 0)), checkpoint.get("stop_reason"))


def load_initial_weights(model: nn.Module, path: str) -> None:
    """--weights: our checkpoints, reference-layout state_dicts or Darknet files; loads every matching tensor."""
    if is_darknet_weights(path):
        layers = load_darknet_backbone(model, path)
        LOGGER.info("loaded %d Darknet conv layers from %s into the backbone", layers, path)
        log_new_attention_blocks(model, set())
        return
    state_dict = state_dict_of(load_checkpoint(path))
    report = load_weights(model, state_dict, partial=True, source=path)
    LOGGER.info("initial weights %s: %s", path, report.summary())
    if not report.loaded:
        raise CheckpointError(f"{path}: no tensor matched this model; is it a YOLOv4-tiny checkpoint?")
    log_new_attention_blocks(model, set(report.loaded))
    dropped = [k for k in attention_prefixes(state_dict) if any(s.startswith(k + ".") for s in report.skipped)]
    if dropped:  # attention tensors of the file that did not fit: say which option differs
        LOGGER.warning("initial weights %s: attention tensors of %s not loaded: %s", path, ", ".join(dropped),
                       model.attention_mismatch(state_dict) or "their shapes differ")


def log_new_attention_blocks(model: nn.Module, loaded: set[str]) -> list[str]:
    """Log (and return) the attention blocks that got no tensor from the initial weights: they keep their
    initialisation (identity-start inside the backbone, see nets/yolo.py)."""
    new = [name for name, block in model.attention_blocks().items()
           if not any(f"{name}.{key}" in loaded for key in block.state_dict())]
    if new:
        LOGGER.info("newly initialised attention blocks (%d): %s", len(new), ", ".join(new))
    return new


class Trainer:
    """Owns one run: data, model, EMA, optimiser, run folder. `fit()` trains to `config.epochs`."""

    def __init__(self, config: TrainConfig, resume: dict | None = None, run_dir: Path | None = None):
        self.config = config
        device = select_device(config.device)
        if config.deterministic:
            make_deterministic(device)
        self.device = dist_utils.init_distributed(device)
        self.main = dist_utils.is_main_process()
        torch.manual_seed(config.seed + dist_utils.rank())
        # claimed before the data loads: two runs started together never share a folder, and an unwritable
        # --save-dir is found before any work; a dataset error removes the still-empty folder again
        self.run_dir = run_dir or self._claim_run_dir()
        try:
            self._setup_data(resume)
        except BaseException:
            if run_dir is None and self.main:
                remove_if_empty(self.run_dir)
            raise
        self._setup_files()
        if self.main:
            self._log_data_summary()
        self._setup_model(resume)
        self._setup_optimisation(resume)
        self.writer = self._tensorboard()

    # ----- setup -------------------------------------------------------------------------------------------------
    def _claim_run_dir(self) -> Path:
        holder = [claim_run_dir(self.config.save_dir, self.config.name) if self.main else None]
        if dist_utils.world_size() > 1:  # every rank must agree on the folder rank 0 claimed
            torch.distributed.broadcast_object_list(holder, src=0)
        return Path(holder[0])

    def _setup_files(self) -> None:
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            add_log_file(self.run_dir / "train.log")
            LOGGER.info("run folder: %s", self.run_dir)
            write_args_yaml(self.run_dir / "args.yaml", self.config, self.classes)  # train.py --config re-runs it

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
        if not self.val_index.records:
            index = self.train_index
            problems = index.write_problems(self.run_dir) if index.problems else None
            LOGGER.info("train data: %s", index.summary(problems))
            LOGGER.info("classes (%d): %s", len(self.classes), ", ".join(self.classes))
            return
        for split, index in (("train", self.train_index), ("val", self.val_index)):
            problems = index.write_problems(self.run_dir) if index.problems else None
            LOGGER.info("%s data: %s", split, index.summary(problems))
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
                                            attention_at=cfg.attention_at, attention_reduction=cfg.attention_reduction,
                                            cbam_kernel=cfg.cbam_kernel, scale_x_y=cfg.scale_x_y, **extra)
        model = build_model(self.model_config)
        model.initialize_biases(self.model_config.input_shape)
        if cfg.weights and not resume:
            load_initial_weights(model, str(local_weights(cfg.weights, cfg.weights_sha256)))
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

    def _check_anchors(self) -> None:
        wh = boxes_wh(self.train_index.records, self.model_config.input_shape)
        if len(wh):
            check_anchors(wh, self.model_config.used_anchors())

    def _setup_optimisation(self, resume: dict | None) -> None:
        cfg = self.config
        self.base_lr = cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.optimizer]
        self.optimizer = build_optimizer(self.model, cfg.optimizer, self.base_lr, cfg.momentum, cfg.weight_decay)
        self.schedule = LRSchedule(cfg.epochs, cfg.warmup_epochs, min_ratio=cfg.min_lr_ratio, kind=cfg.lr_schedule)
        self.scaler = make_scaler(self.device, cfg.amp)
        self.ema = ema_model(self.model, cfg.ema_decay, cfg.ema_tau) if cfg.ema else None
        if self.ema is not None:
            self.ema.requires_grad_(False)
        self.loss_fn = YoloLoss(self.model_config, label_smoothing=cfg.label_smoothing,
                                options=LossConfig.from_dict(cfg.loss))
        self.state = TrainState()
        self.bad_streak = 0
        if resume:
            self.state = restore_training_state(resume, self.model, self.ema, self.optimizer, self.scaler)
            LOGGER.info("resumed after epoch %d of %d", self.state.epoch, cfg.epochs)

    def _tensorboard(self):
        if not self.main:
            return None
        return SummaryWriter(str(self.run_dir))

    # ----- the loop --------------------------------------------------------------------------------------------
    def fit(self) -> TrainState:
        """Train from the current state to config.epochs, or until --patience stops it; Ctrl-C saves last.pth
        before leaving. The last line logged says why training ended."""
        if self.main and self.config.preview and self.state.epoch == 0:
            self._save_preview()
        try:
            for epoch in range(self.state.epoch, self.config.epochs):
                self._train_epoch(epoch)
                if self._stopped_early():
                    break
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (utils.common.cli.Terminated): same clean-up
            if self.main:
                why = "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"
                LOGGER.warning("%s: saving %s (resume with --resume %s)", why, self.run_dir / "last.pth",
                               self.run_dir)
                self._save("last.pth")
                LOGGER.warning("saved %s after %d finished epoch(s)", self.run_dir / "last.pth", self.state.epoch)
            raise
        finally:
            if self.writer is not None:
                self.writer.close()
        if self.main:
            LOGGER.info("%s", self._final_line())
        return self.state

    def _stopped_early(self) -> bool:
        """Whether --patience ended the run; rank 0 decides (only it validates) and every rank follows."""
        return not dist_utils.all_ranks_true(self.state.stop_reason is None, self.device)

    def _final_line(self) -> str:
        state, name = self.state, self.config.fitness
        best = (f"best.pth = epoch {state.best_epoch} (val {name} {state.best_fitness:.4f})" if state.best_epoch
                else "no validation (--val-split none): best.pth = last.pth, the last epoch's weights"
                if not self.val_index.records else "no validation fitness (best.pth = the last epoch)")
        if state.stop_reason is not None:
            return (f"stopped early after epoch {state.epoch} of {self.config.epochs}: {state.stop_reason}; {best}, "
                    f"last.pth = epoch {state.epoch}; results in {self.run_dir}")
        return f"done: {state.epoch} of {self.config.epochs} epochs; {best}; results in {self.run_dir}"

    def _train_epoch(self, epoch: int) -> None:
        loader = self._prepare_phase(epoch)
        if self.multi_scale is not None:
            self.multi_scale.set_epoch(epoch)
        result = train_one_epoch(self.ddp_model, loader, self.loss_fn, self.optimizer, self.scaler, self.ema,
                                 self.schedule, self._peak_lr(), epoch, self.device, self.config, self.bad_streak,
                                 self.multi_scale)
        self.bad_streak = result.bad_streak
        row = {"epoch": epoch + 1, **{f"train/{k}": v for k, v in result.losses.items()},
               "lr": self.optimizer.param_groups[0]["lr"], "skipped_steps": result.skipped,
               "images_per_s": result.images_per_second, "train_s": result.seconds}
        if self._should_evaluate(epoch) and self.main:
            row.update(self._evaluate(epoch))
        dist_utils.barrier()
        self.state.epoch = epoch + 1
        self.state.history.append(row)
        if self.main:
            self._end_of_epoch_outputs(row)

    def _phase_batch_size(self, epoch: int) -> int:
        return self.config.freeze_batch_size if epoch < self.config.freeze_epochs else self.config.batch_size

    def _peak_lr(self) -> float:
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
        passes; writes the diagnostics pictures. Returns the results.csv columns (and the fitness)."""
        start, detections = time.perf_counter(), []
        metrics = evaluate(self.eval_model(), self._val_loader(), self.model_config, self.device, amp=self.config.amp,
                           loss_fn=self.loss_fn, detections_out=detections)
        columns = {f"val/{k}": v for k, v in metrics.get("val_loss", {}).items() if k != "total"}
        columns.update({"val/precision": metrics["precision"], "val/recall": metrics["recall"],
                        "val/mAP50": metrics["mAP50"], "val/mAP50_95": metrics["mAP50_95"],
                        "fitness": FITNESS[self.config.fitness](metrics)})
        self._write_diagnostics(metrics, epoch)
        self._log_val_images(epoch, detections)
        columns["val_s"] = time.perf_counter() - start
        LOGGER.info("epoch %d val: %s (%.1f s)", epoch + 1, ", ".join(
            f"{k[4:] if k.startswith('val/') else k} {'-' if v is None else f'{v:.4f}'}"
            for k, v in columns.items() if k != "val_s"), columns["val_s"])
        return columns

    def _write_diagnostics(self, metrics: dict, epoch: int) -> None:
        """confusion_matrix.png and f1_curve.png of this validation (replacing the previous ones), also to
        TensorBoard, and the suggested confidence threshold in the log."""
        paths = [plot_confusion_matrix(metrics["confusion_matrix"], self.run_dir / "confusion_matrix.png"),
                 plot_confidence_curves(metrics["confidence_curves"], metrics["best_f1"],
                                        self.run_dir / "f1_curve.png")]
        for path in paths:
            self._image_to_tensorboard(f"val/{path.stem}", path, epoch + 1)
        best = metrics["best_f1"]
        if best is not None:
            LOGGER.info("best val F1 %.3f at score >= %s (predict.py --conf %s)", best["f1"], best["conf"],
                        best["conf"])

    def _image_to_tensorboard(self, tag: str, path: Path, step: int) -> None:
        self.writer.add_image(tag, read_image(path), step, dataformats="HWC")

    def _log_val_images(self, epoch: int, detections: list, count: int = 4, min_score: float = 0.25) -> None:
        """The first few readable validation images with this validation's detections (score >= min_score), to
        TensorBoard and val_predictions.png."""
        shown = [i for i, r in enumerate(self.val_index.records) if r.image_error is None][:count]
        if not shown:
            return
        tiles = []
        for i in shown:
            dets = detections[i][detections[i][:, 4] >= min_score]
            drawn = draw_detections(read_image(self.val_index.records[i].path), dets[:, :4], dets[:, 5], self.classes,
                                    dets[:, 4])
            tiles.append(letterbox(drawn, (320, 320))[0])  # keeps the aspect ratio
        grid = image_grid(tiles, columns=min(count, 4))
        write_image(self.run_dir / "val_predictions.png", grid)
        self.writer.add_image("val/predictions", grid, epoch + 1, dataformats="HWC")

    def _end_of_epoch_outputs(self, row: dict) -> None:
        if self._track_fitness(row):
            self._save("best.pth")
        elif self.state.best_fitness < 0:
            self._save("best.pth")  # no validation fitness yet (or none defined): the latest weights are the best known
        self._save("last.pth")
        period = self.config.save_period
        if period > 0 and self.state.epoch % period == 0:
            self._save(f"epoch_{self.state.epoch:03d}.pth")
        write_results(self.state.history, self.run_dir, separate_timing=self.config.deterministic)
        plot_results(self.state.history, self.run_dir / "results.png")
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, row["epoch"])
        self.writer.flush()

    def _track_fitness(self, row: dict) -> bool:
        """Update the best fitness and the patience count from this epoch's validation; True when it improved.
        Sets state.stop_reason once --patience validations in a row brought no improvement."""
        fitness, state, patience = row.get("fitness"), self.state, self.config.patience
        if fitness is None:
            return False
        if fitness > state.best_fitness:
            state.best_fitness, state.best_epoch, state.stale_validations = fitness, row["epoch"], 0
            return True
        state.stale_validations += 1
        LOGGER.info("val %s %.4f: no improvement on %.4f (epoch %d) for %d validation(s)%s", self.config.fitness,
                    fitness, state.best_fitness, state.best_epoch, state.stale_validations,
                    f" of --patience {patience}" if patience > 0 else "")
        if 0 < patience <= state.stale_validations:
            state.stop_reason = (f"val {self.config.fitness} has not improved for {state.stale_validations} "
                                 f"validation{'s' * (state.stale_validations != 1)} (--patience {patience})")
        return False

    def _save(self, name: str) -> None:
        payload = checkpoint_payload(self.model, self.ema, self.optimizer, self.scaler, self.state, self.model_config,
                                     self.config)
        save_checkpoint(payload, self.run_dir / name)

    def _save_preview(self) -> None:
        preview = save_preview(self.train_dataset, self.run_dir / "train_batch_preview.png")
        boxes, labels = letterboxed_boxes(self.train_index.records, self.train_index.training_targets,
                                          self.model_config.input_shape)
        pictures = plot_labels(boxes, labels, self.classes, self.model_config.input_shape, self.run_dir / "labels.png")
        for tag, path in (("train/batch_preview", preview), ("train/labels", pictures)):
            self._image_to_tensorboard(tag, path, 0)
        LOGGER.info("augmented training samples: %s; labels (instances per class, box sizes and centres): %s",
                    preview, pictures)


RESUMABLE_OVERRIDES = ("epochs", "workers", "device", "eval_period", "save_period", "patience")


def resume_checkpoint_path(resume: str | bool, save_dir: str = "logs") -> Path:
    """--resume with no value: the newest logs/*/last.pth; a folder: its last.pth; a file: itself."""
    if resume is True or resume in ("", None):
        return latest_weights(save_dir, "last.pth")
    path = Path(resume)
    if path.is_dir() and not (path / "last.pth").is_file():
        raise MissingFileError(f"{path} holds no last.pth (the run stopped before its first epoch ended, or this is "
                               "not a run folder); start the run again without --resume")
    return path / "last.pth" if path.is_dir() else path


def train(config: TrainConfig, resume: str | bool | None = None, overrides: dict | None = None) -> Path:
    """Run training (fresh, or resumed from a run folder / last.pth); returns the run folder."""
    checkpoint, run_dir = None, None
    if resume:
        path = resume_checkpoint_path(resume, config.save_dir)
        checkpoint = load_checkpoint(path)
        if "train_config" not in checkpoint:
            raise CheckpointError(f"{path} is not a training checkpoint of this project; use --weights to start "
                                  "from it")
        config = TrainConfig.from_dict(checkpoint["train_config"])
        for key, value in (overrides or {}).items():
            if key in RESUMABLE_OVERRIDES:
                setattr(config, key, value)
        warn_unapplied_overrides(overrides or {})
        run_dir = path.parent
        remove_stale_temporaries(run_dir)  # half-written checkpoints of a killed predecessor
    try:
        trainer = Trainer(config, resume=checkpoint, run_dir=run_dir)  # joins the process group under torchrun
        if checkpoint and trainer.state.epoch >= config.epochs:
            LOGGER.info("%s already finished %d of %d epochs; pass --epochs N to train longer",
                        run_dir, trainer.state.epoch, config.epochs)
        elif checkpoint and still_stopped(trainer.state, config):
            LOGGER.info("%s already stopped early after epoch %d: %s; pass a larger --patience (or --patience 0) to "
                        "train on", run_dir, trainer.state.epoch, trainer.state.stop_reason)
        else:
            if checkpoint and trainer.state.stop_reason is not None:
                LOGGER.info("continuing a run that had stopped early (%s): --patience is now %d",
                            trainer.state.stop_reason, config.patience)
                trainer.state.stop_reason = None
            trainer.fit()
    finally:
        dist_utils.cleanup()  # the one place that leaves the process group, also when setup or training fails
    return trainer.run_dir


RESUME_NEUTRAL = ("resume", "verbose", "config")  # options about this command, not about the run


def warn_unapplied_overrides(overrides: dict) -> list[str]:
    """One warning naming the options given with --resume that a resumed run cannot apply (it keeps the options
    saved in its checkpoint); returns their flags."""
    flags = sorted("--" + k.replace("_", "-") for k in overrides if k not in RESUMABLE_OVERRIDES + RESUME_NEUTRAL)
    if flags:
        allowed = ", ".join("--" + k.replace("_", "-") for k in RESUMABLE_OVERRIDES)
        LOGGER.warning("--resume keeps the run's saved options: ignoring %s (only %s can change when resuming; "
                       "start a new run to change the others)", ", ".join(flags), allowed)
    return flags


def still_stopped(state: TrainState, config: TrainConfig) -> bool:
    """A run that stopped early stays stopped unless --patience now allows more validations without improvement."""
    return state.stop_reason is not None and 0 < config.patience <= state.stale_validations
