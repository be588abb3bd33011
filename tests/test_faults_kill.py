"""Kill and resume: train.py is SIGKILLed at chosen and random moments (mid-epoch, inside validation, halfway through a
checkpoint write, during start-up) and resumed with --resume <run folder> each time. Every checkpoint on disk must load,
the run must end at the planned epoch with each epoch in results.csv exactly once, and a kill may cost at most the
epoch in progress. Ctrl-C (SIGINT) must leave a loadable last.pth.

The child runs under tests/fault_helpers.py's hook runner, which only leaves marker files (and short pauses) at the
moments named above; the kills are real SIGKILLs of the real process. POSIX only (signals, /proc).
"""
from __future__ import annotations

import csv
import json
import random
import shutil
import signal
import sys

import pytest

from tests.fault_helpers import TRAIN_FAST, kill_hard, marker_epochs, start_hooked, tiny_voc, wait_for
from utils.model.checkpoint import CheckpointError, load_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals and /proc")]
EPOCHS = 4
STARTUP_S = 180  # generous: the CI machine has 2 shared cores and each start imports torch and builds the model


def _checkpoints_load(run_dir):
    """Every *.pth in the run folder loads; returns {name: epoch}. Temporary files must not load."""
    epochs = {}
    for path in sorted(run_dir.glob("*.pth")):
        epochs[path.name] = int(load_checkpoint(path)["epoch"])
    return epochs


def _last_epoch(run_dir) -> int:
    path = run_dir / "last.pth"
    return int(load_checkpoint(path)["epoch"]) if path.exists() else 0


def _csv_epochs(run_dir) -> list[int]:
    with open(run_dir / "results.csv", encoding="utf-8") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


# (name, marker to wait for as a function of the epoch last.pth holds, extra random delay in s, save pause, eval pause)
FAULTS = [
    ("mid-epoch (epoch 2 of the fresh run)", lambda done: f"step_{done + 2}_1", (0.0, 0.0), 0.0, 0.0),
    ("inside validation", lambda done: f"eval_{done + 1}", (0.0, 0.8), 0.0, 1.0),
    ("halfway through writing last.pth", lambda done: f"save_last_{done + 1}", (0.0, 0.0), 3.0, 0.0),
    ("random moment in an epoch", lambda done: f"step_{done + 1}_0", (0.0, 1.5), 0.0, 0.0),
    ("during start-up (data and model setup)", None, (0.5, 4.0), 0.0, 0.0),
]


def test_sigkill_and_resume_loses_at_most_the_current_epoch(tmp_path):
    rng = random.Random(7)
    data = tiny_voc(tmp_path / "data", train=8, val=4)
    logs = tmp_path / "logs"
    args = ("--data", data, "--epochs", EPOCHS, "--save-dir", logs, "--name", "run", *TRAIN_FAST)
    run_dir = logs / "run"
    record = {"injected": 0, "survived": 0, "epochs_lost_beyond_current": 0, "stale_temps_seen": 0}
    for number, (what, marker, delay, save_pause, eval_pause) in enumerate(FAULTS):
        done_before = _last_epoch(run_dir)
        markers = tmp_path / f"markers{number}"
        resume = ("--resume", run_dir) if run_dir.exists() else ()
        process = start_hooked(markers, tmp_path / "child.log", *args, *resume, save_pause=save_pause,
                               eval_pause=eval_pause)
        if marker is None:
            wait_for(lambda: False, rng.uniform(*delay), process)
        else:
            name = marker(done_before)
            assert wait_for(lambda markers=markers, name=name: (markers / name).exists(), STARTUP_S, process), (
                f"{what}: marker {name} never appeared\n"
                + (tmp_path / "child.log").read_text(errors="replace")[-3000:])
            wait_for(lambda: False, rng.uniform(*delay), process)
        assert process.poll() is None, f"{what}: the run ended before the kill"
        kill_hard(process)
        record["injected"] += 1
        # -------- what survived the kill
        epochs = _checkpoints_load(run_dir) if run_dir.exists() else {}
        done_after = epochs.get("last.pth", 0)
        in_progress = marker_epochs(markers)
        lost = max(0, (in_progress - 1) - done_after)
        record["epochs_lost_beyond_current"] += lost
        assert done_after >= done_before, f"{what}: last.pth went back from epoch {done_before} to {done_after}"
        assert lost == 0, f"{what}: killed in epoch {in_progress} but last.pth holds epoch {done_after}"
        temps = sorted(run_dir.glob(".*.pth.*.tmp")) if run_dir.exists() else []
        record["stale_temps_seen"] += len(temps)
        if save_pause:
            assert temps, f"{what}: no half-written temporary checkpoint was left (the kill missed the write)"
            with pytest.raises(CheckpointError):
                load_checkpoint(temps[0])  # really half a file; last.pth above still loaded
        record["survived"] += 1
    # -------- final resume to the end
    final = start_hooked(tmp_path / "markers_final", tmp_path / "child.log", *args, "--resume", run_dir)
    assert final.wait(timeout=600) == 0, (tmp_path / "child.log").read_text(errors="replace")[-4000:]
    epochs = _checkpoints_load(run_dir)
    assert epochs["last.pth"] == EPOCHS and "best.pth" in epochs
    assert _csv_epochs(run_dir) == list(range(1, EPOCHS + 1)), "an epoch was trained twice or skipped"
    history = load_checkpoint(run_dir / "last.pth")["history"]
    assert [row["epoch"] for row in history] == list(range(1, EPOCHS + 1))
    assert not list(run_dir.glob(".*.tmp")), "half-written temporary checkpoints were left behind"
    log = (run_dir / "train.log").read_text(encoding="utf-8")
    assert log.count("resumed after epoch") >= len(FAULTS) - 1
    print("kill/resume:", json.dumps(record))
    assert record == {"injected": len(FAULTS), "survived": len(FAULTS), "epochs_lost_beyond_current": 0,
                      "stale_temps_seen": record["stale_temps_seen"]}


def test_ctrl_c_saves_last_pth(tmp_path):
    data = tiny_voc(tmp_path / "data", train=8, val=4)
    markers, run_dir = tmp_path / "markers", tmp_path / "logs" / "run"
    process = start_hooked(markers, tmp_path / "child.log", "--data", data, "--epochs", 5, "--save-dir",
                           tmp_path / "logs", "--name", "run", *TRAIN_FAST)
    assert wait_for(lambda: (markers / "step_2_1").exists(), STARTUP_S, process), \
        (tmp_path / "child.log").read_text(errors="replace")[-3000:]
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130  # train.py's exit status for an interrupted run
    output = (tmp_path / "child.log").read_text(errors="replace")
    assert "interrupted: saving" in output and "Traceback" not in output
    checkpoint = load_checkpoint(run_dir / "last.pth")
    assert checkpoint["epoch"] == 1  # epoch 2 was not finished; resuming repeats it
    shutil.rmtree(markers)
