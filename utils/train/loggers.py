"""Experiment loggers: callbacks that send a run's numbers and pictures somewhere else.

TensorBoard is always on (utils.train.callbacks.TensorBoardLogger: events in the run folder). `--logger NAME` adds
one of LOGGERS; a new logger is a callback class (utils/train/callbacks.py) registered here with
`@LOGGERS.register(name)`, and --logger offers it. Optional packages are imported when the logger is created, before
any work, so a missing one is a single `error:` line saying what to install.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from utils.common.errors import MissingDependencyError
from utils.common.registry import Registry
from utils.train.callbacks import Callback, scalars

if TYPE_CHECKING:
    from utils.train.trainer import Trainer

LOGGER = logging.getLogger(__name__)
LOGGERS: Registry[type[Callback]] = Registry("logger")  # --logger NAME -> the callback class


DEFAULT_MLFLOW_STORE = "mlruns"  # a folder in the current directory, as MLflow's own default
RUN_DIR_TAG = "run_dir"  # the run folder, so that a resumed run continues its MLflow run
ARTIFACTS = ("args.yaml", "results.csv", "*.png", "best.pth")


@LOGGERS.register("mlflow")
class MLflowLogger(Callback):
    """--logger mlflow: one MLflow run per run folder in a real tracking store: $MLFLOW_TRACKING_URI when set (a
    server, sqlite:///mlflow.db, ...), else ./mlruns. Experiment: $MLFLOW_EXPERIMENT_NAME, else the --save-dir
    folder's name; run name: the run folder's. Logs every training option as a parameter, every results.csv number
    per epoch (step = epoch), and at the end args.yaml, results.csv, the pictures and best.pth as artifacts. A
    resumed run continues its MLflow run (found by the run folder tag)."""

    def __init__(self):
        try:
            from mlflow.entities import Metric, Param, RunStatus
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise MissingDependencyError("--logger mlflow needs the mlflow package: pip install mlflow-skinny (or "
                                         "mlflow, which adds its web UI)") from None
        self._client_type, self._metric, self._param, self._status = MlflowClient, Metric, Param, RunStatus
        self.client, self.run_id = None, None

    def on_fit_start(self, trainer: Trainer) -> None:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or Path(DEFAULT_MLFLOW_STORE).resolve().as_uri()
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            # MLflow 3 keeps its file store in maintenance mode and refuses it unless asked for: ./mlruns is asked for
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = self._client_type(tracking_uri=uri)
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or Path(trainer.config.save_dir).resolve().name
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.run_id = self._existing_run(experiment_id, trainer.run_dir)
        if self.run_id is None:
            run = self.client.create_run(experiment_id, run_name=trainer.run_dir.name,
                                         tags={RUN_DIR_TAG: str(trainer.run_dir.resolve())})
            self.run_id = run.info.run_id
        self._log_params(trainer)
        LOGGER.info("MLflow: run %s (%s) in experiment %r of %s", trainer.run_dir.name, self.run_id, experiment, uri)

    def _existing_run(self, experiment_id: str, run_dir: Path) -> str | None:
        """The MLflow run of this run folder, when a resumed run logged before (the newest 1000 runs searched)."""
        runs = self.client.search_runs([experiment_id], max_results=1000, order_by=["attributes.start_time DESC"])
        wanted = str(run_dir.resolve())
        return next((r.info.run_id for r in runs if r.data.tags.get(RUN_DIR_TAG) == wanted), None)

    def _log_params(self, trainer: Trainer) -> None:
        """Every TrainConfig option (augment.* flattened); a resumed run adds only what its MLflow run lacks (MLflow
        refuses to change a logged parameter, e.g. --epochs raised on resume: the results show it)."""
        values = dataclasses.asdict(trainer.config)
        values.update({f"augment.{k}": v for k, v in values.pop("augment").items()}, precision=trainer.precision)
        logged = self.client.get_run(self.run_id).data.params
        params = [self._param(k, str(v)[:6000]) for k, v in values.items() if k not in logged]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per call
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        now = int(time.time() * 1000)
        batch = [self._metric(k, v, now, int(metrics["epoch"])) for k, v in scalars(metrics).items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.run_id is None:
            return
        if trainer.ended_by is None:
            for pattern in ARTIFACTS:
                for path in sorted(trainer.run_dir.glob(pattern)):
                    self.client.log_artifact(self.run_id, str(path))
        status = ("FINISHED" if trainer.ended_by is None else
                  "KILLED" if isinstance(trainer.ended_by, KeyboardInterrupt) else "FAILED")
        self.client.set_terminated(self.run_id, status=status)


def create_logger(name: str) -> Callback:
    """The logger registered as `name` (a ConfigError listing the others when there is none)."""
    return LOGGERS.get(name)()
