"""Training callbacks: a user adds one without editing the engine (`train(config, callbacks=[...])`), it sees the
events in order and the results.csv rows as dicts, after the built-in outputs; Ctrl-C still saves last.pth through
the checkpoint callback; --logger mlflow writes a real MLflow store (skipped without mlflow) or says what to install.
"""
from __future__ import annotations

import csv
import logging
import math
import sys

import pytest

from tests.synthetic import make_voc
from utils.model.checkpoint import load_checkpoint
from utils.train import TrainConfig, train
from utils.train.callbacks import EVENTS, CallbackList

NO_AUGMENT = {"mosaic": 0.0, "mixup": 0.0, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0, "flip": 0.0, "jitter": 0.0,
              "scale": (1.0, 1.0), "translate": False}
RUN_FILES = {"args.yaml", "best.pth", "confusion_matrix.png", "f1_curve.png", "last.pth", "results.csv", "results.png",
             "train.log", "val_predictions.png"}  # and TensorBoard's events file


@pytest.fixture(scope="module")
def tiny_voc(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("data"), images=4)


def tiny_config(data, save_dir, **overrides) -> TrainConfig:
    values = dict(data=str(data), phi="none", input_shape=[64, 64], epochs=2, batch_size=2, workers=0,
                  save_dir=str(save_dir), eval_period=1, preview=False, augment=dict(NO_AUGMENT), warmup_epochs=1)
    return TrainConfig(**{**values, **overrides})


class Recorder:
    """A user's callback: a plain class (no base class) with some of the event methods."""

    def __init__(self):
        self.events, self.rows, self.batches, self.saved = [], [], [], []

    def on_fit_start(self, trainer):
        self.events.append("fit_start")

    def on_epoch_start(self, trainer, epoch):
        self.events.append(f"epoch_start {epoch}")

    def on_batch_end(self, trainer, batch):
        self.batches.append((batch.epoch, batch.index, batch.losses["total"], batch.skipped))

    def on_validation_end(self, trainer, metrics):
        self.events.append(f"validation_end {trainer.epoch} {metrics['mAP50']:.6g}")

    def on_checkpoint_save(self, trainer, path):
        self.saved.append(path.name)

    def on_epoch_end(self, trainer, metrics):
        self.events.append(f"epoch_end {metrics['epoch']}")
        # the built-in outputs ran first: the row is in results.csv and in last.pth already
        self.rows.append((dict(metrics), (trainer.run_dir / "results.csv").read_text(encoding="utf-8"),
                          load_checkpoint(trainer.run_dir / "last.pth")["epoch"]))

    def on_fit_end(self, trainer):
        self.events.append(f"fit_end {trainer.ended_by!r}")


def _csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(text.splitlines()))


def test_a_callback_added_without_editing_the_engine(tiny_voc, tmp_path):
    recorder = Recorder()
    run_dir = train(tiny_config(tiny_voc, tmp_path), callbacks=[recorder])
    assert recorder.events == ["fit_start", "epoch_start 1", recorder.events[2], "epoch_end 1", "epoch_start 2",
                               recorder.events[5], "epoch_end 2", "fit_end None"], recorder.events
    assert recorder.events[2].startswith("validation_end 1") and recorder.events[5].startswith("validation_end 2")
    # 4 images, batch 2: two steps per epoch, each with its losses
    assert [(e, i) for e, i, _, _ in recorder.batches] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert all(math.isfinite(total) and not skipped for _, _, total, skipped in recorder.batches)
    assert recorder.saved == ["best.pth", "last.pth"] * 2 or recorder.saved == ["best.pth", "last.pth", "last.pth"]
    # on_epoch_end receives the results.csv row as a dict, after results.csv and last.pth were written
    final = _csv_rows((run_dir / "results.csv").read_text(encoding="utf-8"))
    for number, (row, csv_then, last_epoch) in enumerate(recorder.rows, start=1):
        assert row["epoch"] == number == last_epoch and len(_csv_rows(csv_then)) == number
        written = final[number - 1]
        assert list(row) == list(written)  # the same columns, in the same order
        for key, value in row.items():
            assert written[key] == (f"{value:.6g}" if isinstance(value, float) else str(value)), key
        assert f"{row['val/mAP50']:.6g}" in recorder.events[3 * number - 1]
    files = {p.name for p in run_dir.iterdir()}
    assert {f for f in files if not f.startswith("events.out.tfevents")} == RUN_FILES, files


def test_ctrl_c_from_a_callback_still_saves_last_pth(tiny_voc, tmp_path):
    class StopInEpoch2:
        def on_batch_start(self, trainer, batch):
            if batch.epoch == 2:
                raise KeyboardInterrupt

        def on_fit_end(self, trainer):
            self.ended_by = trainer.ended_by

    stop = StopInEpoch2()
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tiny_voc, tmp_path, epochs=3), callbacks=[stop])
    assert isinstance(stop.ended_by, KeyboardInterrupt)
    last = load_checkpoint(tmp_path / "exp" / "last.pth")
    assert last["epoch"] == 1 and "optimizer" in last  # resumable: epoch 2 is redone on --resume
    assert not (tmp_path / "exp" / ".train.lock").exists()  # the run folder's lock went with the run


def test_misspelt_event_is_said_and_clean_up_runs_every_callback(caplog):
    class Typo:
        def on_epoch_ended(self, trainer, metrics):
            pass

    with caplog.at_level(logging.WARNING):
        CallbackList(None, [Typo()])
    assert "on_epoch_ended" in caplog.text and "on_epoch_end" in caplog.text

    calls = []

    class Fails:
        def on_fit_end(self, trainer):
            calls.append("fails")
            raise RuntimeError("first")

    class Closes:
        def on_fit_end(self, trainer):
            calls.append("closes")

    with pytest.raises(RuntimeError, match="first"):
        CallbackList(None, [Fails(), Closes()]).fire_all("on_fit_end")
    assert calls == ["fails", "closes"]
    assert len(EVENTS) == len(set(EVENTS)) == 10


# ------------------------------------------------------------------------------------------------ --logger mlflow
def _train_cli(*args: str) -> int:
    from utils.train.cli import main
    return main([*map(str, args)])


def test_logger_mlflow_without_the_package_is_one_line_before_any_work(tiny_voc, tmp_path, monkeypatch, capfd):
    for name in ("mlflow", "mlflow.entities", "mlflow.tracking"):
        monkeypatch.setitem(sys.modules, name, None)  # import mlflow raises ImportError
    status = _train_cli("--data", tiny_voc, "--logger", "mlflow", "--save-dir", tmp_path / "logs", "--device", "cpu")
    output = capfd.readouterr().err
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert status == 1 and len(errors) == 1 and "pip install mlflow" in errors[0], output
    assert "Traceback" not in output
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").iterdir())  # no run folder


def test_logger_mlflow_writes_a_real_tracking_store_and_resume_continues_it(tiny_voc, tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="mlflow is not installed (pip install mlflow-skinny)")
    from mlflow.tracking import MlflowClient
    monkeypatch.chdir(tmp_path)  # the default store is ./mlruns
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    common = ("--data", tiny_voc, "--input-shape", "64", "--batch-size", "2", "--workers", "0", "--device", "cpu",
              "--no-preview", "--mosaic", "0", "--mixup", "0")
    assert _train_cli(*common, "--epochs", "1", "--save-dir", "logs", "--name", "m", "--logger", "mlflow") == 0
    assert _train_cli("--resume", "logs/m", "--epochs", "2", "--logger", "mlflow") == 0
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("logs")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_name == "m" and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    history = client.get_metric_history(run_id, "val/mAP50")
    csv_rows = _csv_rows((tmp_path / "logs" / "m" / "results.csv").read_text(encoding="utf-8"))
    assert [m.step for m in history] == [1, 2]
    assert [f"{m.value:.6g}" for m in history] == [row["val/mAP50"] for row in csv_rows]
    assert runs[0].data.params["epochs"] == "1" and runs[0].data.params["phi"] == "none"
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"best.pth", "results.csv", "args.yaml", "results.png"} <= artifacts, artifacts
