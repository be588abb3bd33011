"""Training callbacks: the events `Trainer.fit` fires, and what a run writes, as callbacks of its own.

A callback is any object with some of these methods (as detectron2's HookBase, Ultralytics' callbacks and YOLOX's
before_*/after_* hooks); `Callback` only documents them. Every method gets the Trainer first:

    on_fit_start(trainer)                  before the first epoch of this fit (trainer.state.epoch epochs are done)
    on_epoch_start(trainer, epoch)         epoch: 1-based, as in results.csv
    on_batch_start(trainer, batch)         batch: BatchInfo (epoch, index, lr, images)
    on_batch_end(trainer, batch)           batch.losses {box, obj, cls, total} and batch.skipped now set
    on_validation_start(trainer, epoch)
    on_validation_end(trainer, metrics)    metrics: utils.eval.evaluation.evaluate's dict (as eval.py's metrics.json);
                                           trainer.val_detections: the detections of each val image
    on_image(trainer, tag, path, step)     a picture was written into the run folder (loggers forward it)
    on_checkpoint_save(trainer, path)      a checkpoint was written (atomically) to path
    on_epoch_end(trainer, metrics)         metrics: the epoch's results.csv row {column: value}
    on_fit_end(trainer)                    always, last: trainer.ended_by is None after a normal end (trained to the
                                           end or stopped by --patience), else the exception ending training
                                           (KeyboardInterrupt for Ctrl-C and SIGTERM)

Callbacks run on the main process only (rank 0 under torchrun), in this order: the built-in outputs below (in the
order they have always been written), the loggers of `--logger` (utils/train/loggers.py), the user's
(`train(config, callbacks=[...])`), and last FinalSummary, whose line ends the log.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from utils.common.boxes import letterbox
from utils.common.cli import Terminated
from utils.common.image_io import read_image, write_image
from utils.common.run_dir import atomic_output
from utils.common.visualize import draw_detections, image_grid
from utils.data.loader import save_preview
from utils.eval.plots import plot_confidence_curves, plot_confusion_matrix, plot_labels
from utils.model.checkpoint import save_checkpoint, weights_checkpoint
from utils.train.results import plot_results, write_results

if TYPE_CHECKING:
    from utils.train.trainer import Trainer

LOGGER = logging.getLogger(__name__)
EVENTS = ("on_fit_start", "on_epoch_start", "on_batch_start", "on_batch_end", "on_validation_start",
          "on_validation_end", "on_image", "on_checkpoint_save", "on_epoch_end", "on_fit_end")


@dataclass
class BatchInfo:
    """One training iteration, as on_batch_start and on_batch_end see it."""

    epoch: int  # 1-based, as in results.csv
    index: int  # 0-based, within the epoch
    lr: float
    images: int  # in this batch, on this process
    losses: dict[str, float] = field(default_factory=dict)  # weighted losses (box, obj, cls, total); set at the end
    skipped: bool = False  # the loss was not finite, so no optimiser step was taken


class Callback:
    """Base class documenting the events; subclassing it is optional (any object with some of them will do)."""

    def on_fit_start(self, trainer: Trainer) -> None: ...

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...

    def on_batch_start(self, trainer: Trainer, batch: BatchInfo) -> None: ...

    def on_batch_end(self, trainer: Trainer, batch: BatchInfo) -> None: ...

    def on_validation_start(self, trainer: Trainer, epoch: int) -> None: ...

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None: ...

    def on_image(self, trainer: Trainer, tag: str, path: Path, step: int) -> None: ...

    def on_checkpoint_save(self, trainer: Trainer, path: Path) -> None: ...

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None: ...

    def on_fit_end(self, trainer: Trainer) -> None: ...


class CallbackList:
    """The callbacks of one trainer, called in list order at each event."""

    def __init__(self, trainer: Trainer, callbacks: Iterable):
        self.trainer = trainer
        self.callbacks = list(callbacks)
        for callback in self.callbacks:
            _warn_unknown_events(callback)

    def fire(self, event: str, *args) -> None:
        """Call `event` on every callback that has it; an exception stops the others (a bug is a bug)."""
        for callback in self.callbacks:
            method = getattr(callback, event, None)
            if method is not None:
                method(self.trainer, *args)

    def fire_all(self, event: str, *args) -> None:
        """As fire, but every callback runs even when one raises (clean-up events: files closed, last.pth saved);
        the first exception is raised after them."""
        first: BaseException | None = None
        for callback in self.callbacks:
            method = getattr(callback, event, None)
            try:
                if method is not None:
                    method(self.trainer, *args)
            except BaseException as err:  # re-raised below, after the other callbacks' clean-up
                first = first or err
        if first is not None:
            raise first


def _warn_unknown_events(callback: object) -> None:
    """A misspelt event method would never run: say so once, when the callback is added."""
    unknown = [name for name in dir(callback) if name.startswith("on_") and name not in EVENTS
               and callable(getattr(callback, name, None))]
    if unknown:
        LOGGER.warning("callback %s has %s, which no event calls; the events are: %s", type(callback).__name__,
                       ", ".join(unknown), ", ".join(EVENTS))


def default_callbacks() -> list[Callback]:
    """What every run writes, in the order it is written (FinalSummary comes after the user's callbacks)."""
    return [TrainingPictures(), ValidationPictures(), EarlyStopping(), Checkpoints(), ResultsFiles(),
            TensorBoardLogger()]


# ------------------------------------------------------------------------------------------------- the built-in ones
class TrainingPictures(Callback):
    """When a fresh run starts (unless --no-preview): train_batch_preview.png (augmented samples with their boxes:
    what the model sees) and labels.png (instances per class, box sizes and centres of the training boxes)."""

    def on_fit_start(self, trainer: Trainer) -> None:
        if not trainer.config.preview or trainer.state.epoch > 0:
            return
        preview, pictures = trainer.run_dir / "train_batch_preview.png", trainer.run_dir / "labels.png"
        with atomic_output(preview) as partial:
            save_preview(trainer.train_dataset, partial)
        boxes, labels = trainer.training_boxes()
        with atomic_output(pictures) as partial:
            plot_labels(boxes, labels, trainer.classes, trainer.model_config.input_shape, partial)
        for tag, path in (("train/batch_preview", preview), ("train/labels", pictures)):
            trainer.image_saved(tag, path, 0)
        LOGGER.info("augmented training samples: %s; labels (instances per class, box sizes and centres): %s",
                    preview, pictures)


class ValidationPictures(Callback):
    """After each validation: confusion_matrix.png and f1_curve.png (as eval.py draws them, replacing the previous
    ones), the best-F1 threshold in the log, and val_predictions.png (the first `count` readable val images with
    this validation's detections scoring at least `min_score`)."""

    def __init__(self, count: int = 4, min_score: float = 0.25):
        self.count, self.min_score = count, min_score

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        run_dir, step = trainer.run_dir, trainer.epoch
        with atomic_output(run_dir / "confusion_matrix.png") as partial:
            plot_confusion_matrix(metrics["confusion_matrix"], partial)
        with atomic_output(run_dir / "f1_curve.png") as partial:
            plot_confidence_curves(metrics["confidence_curves"], metrics["best_f1"], partial)
        for name in ("confusion_matrix", "f1_curve"):
            trainer.image_saved(f"val/{name}", run_dir / f"{name}.png", step)
        best = metrics["best_f1"]
        if best is not None:  # progress on the val split; which --conf to detect with is said at the end
            LOGGER.info("best val F1 %.3f at score >= %s", best["f1"], best["conf"])
        self._predictions(trainer, trainer.val_detections, step)

    def _predictions(self, trainer: Trainer, detections: list, step: int) -> None:
        records = trainer.val_index.records
        shown = [i for i, r in enumerate(records) if r.image_error is None][:self.count]
        if not shown:
            return
        tiles = []
        for i in shown:
            dets = detections[i][detections[i][:, 4] >= self.min_score]
            drawn = draw_detections(read_image(records[i].path), dets[:, :4], dets[:, 5], trainer.classes,
                                    dets[:, 4])
            tiles.append(letterbox(drawn, (320, 320))[0])  # keeps the aspect ratio
        path = trainer.run_dir / "val_predictions.png"
        with atomic_output(path) as partial:
            write_image(partial, image_grid(tiles, columns=min(self.count, 4)))
        trainer.image_saved("val/predictions", path, step)


class EarlyStopping(Callback):
    """Tracks the best validation fitness (what best.pth keeps: trainer.state.best_*) and stops training after
    --patience validations in a row without improvement (trainer.state.stop_reason; 0: never)."""

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        fitness, state, patience = metrics.get("fitness"), trainer.state, trainer.config.patience
        if fitness is None:
            return
        if fitness > state.best_fitness:
            state.best_fitness, state.best_epoch, state.stale_validations = fitness, metrics["epoch"], 0
            state.best_metrics = {**metrics, "best_f1": trainer.val_metrics.get("best_f1")}
            return
        state.stale_validations += 1
        # only --patience makes this count matter; without it the last line says which epoch best.pth holds
        log = LOGGER.info if patience > 0 else LOGGER.debug
        log("val %s %.4f: no improvement on %.4f (epoch %d) for %d validation(s)%s", trainer.config.fitness, fitness,
            state.best_fitness, state.best_epoch, state.stale_validations,
            f" of --patience {patience}" if patience > 0 else "")
        if 0 < patience <= state.stale_validations:
            state.stop_reason = (f"val {trainer.config.fitness} has not improved for {state.stale_validations} "
                                 f"validation{'s' * (state.stale_validations != 1)} (--patience {patience})")


class Checkpoints(Callback):
    """best.pth when the fitness improved (or while there is none: the latest weights), a weights checkpoint (the
    EMA weights, both configs, the epoch's metrics; no optimizer: a third of the size); last.pth every epoch and
    epoch_XXX.pth every --save-period epochs, training checkpoints that --resume continues; and last.pth again when
    Ctrl-C or SIGTERM ends training. Each write is atomic and fires on_checkpoint_save."""

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        state, training = trainer.state, trainer.training_checkpoint()
        if state.best_epoch == metrics["epoch"] or state.best_fitness < 0:
            self._save(trainer, weights_checkpoint(training, state.best_metrics or metrics), "best.pth")
        self._save(trainer, training, "last.pth")
        period = trainer.config.save_period
        if period > 0 and state.epoch % period == 0:
            self._save(trainer, training, f"epoch_{state.epoch:03d}.pth")

    def on_fit_end(self, trainer: Trainer) -> None:
        stop = trainer.ended_by
        if not isinstance(stop, KeyboardInterrupt):
            return
        last = trainer.run_dir / "last.pth"
        why = "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"
        LOGGER.warning("%s: saving %s (resume with --resume %s)", why, last, trainer.run_dir)
        self._save(trainer, trainer.training_checkpoint(), last.name)
        LOGGER.warning("saved %s after %d finished epoch(s)", last, trainer.state.epoch)

    @staticmethod
    def _save(trainer: Trainer, checkpoint: dict[str, Any], name: str) -> None:
        path = trainer.run_dir / name
        save_checkpoint(checkpoint, path)
        trainer.callbacks.fire("on_checkpoint_save", path)


class ResultsFiles(Callback):
    """results.csv (one row per epoch, rewritten whole from the history, so it always matches last.pth) and
    results.png (losses, LR, precision/recall and mAP per epoch). With --deterministic the wall-clock columns go to
    timing.csv instead, so that the same command twice writes the same results.csv."""

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        write_results(trainer.state.history, trainer.run_dir, separate_timing=trainer.config.deterministic)
        with atomic_output(trainer.run_dir / "results.png") as partial:
            plot_results(trainer.state.history, partial)


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The numbers of a results.csv row, without the epoch (the step) and undefined values (None)."""
    return {k: float(v) for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))}


class TensorBoardLogger(Callback):
    """TensorBoard events in the run folder (`tensorboard --logdir logs`): every number of results.csv per epoch and
    every picture the run writes. The writer opens on first use."""

    def __init__(self):
        self.writer = None

    def _writer(self, trainer: Trainer):
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(trainer.run_dir))
        return self.writer

    def on_image(self, trainer: Trainer, tag: str, path: Path, step: int) -> None:
        self._writer(trainer).add_image(tag, read_image(path), step, dataformats="HWC")

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        writer = self._writer(trainer)
        for key, value in scalars(metrics).items():
            writer.add_scalar(key, value, metrics["epoch"])
        writer.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class FinalSummary(Callback):
    """After a normal end: which --conf to detect with, then the last line: why training ended, which epochs
    best.pth and last.pth hold, where the results are."""

    def on_fit_end(self, trainer: Trainer) -> None:
        if trainer.ended_by is not None:
            return
        best_f1 = trainer.state.best_metrics.get("best_f1")
        if best_f1 is not None:
            LOGGER.info("best.pth's F1 on the val split peaks at score >= %s (F1 %.3f): detect with predict.py "
                        "--conf %s (eval.py --weights %s --split test gives the held-out value)", best_f1["conf"],
                        best_f1["f1"], best_f1["conf"], trainer.run_dir / "best.pth")
        LOGGER.info("%s", final_line(trainer))


def final_line(trainer: Trainer) -> str:
    state, name, run_dir = trainer.state, trainer.config.fitness, trainer.run_dir
    best = (f"best.pth = epoch {state.best_epoch} (val {name} {state.best_fitness:.4f})" if state.best_epoch
            else "no validation (--val-split none): best.pth = last.pth, the last epoch's weights"
            if not trainer.val_index.records else "no validation fitness (best.pth = the last epoch)")
    if state.stop_reason is not None:
        return (f"stopped early after epoch {state.epoch} of {trainer.config.epochs}: {state.stop_reason}; {best}, "
                f"last.pth = epoch {state.epoch}; results in {run_dir}")
    return f"done: {state.epoch} of {trainer.config.epochs} epochs; {best}; results in {run_dir}"
