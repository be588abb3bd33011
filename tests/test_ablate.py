"""The study command: Student-t quantiles, paired verdicts, bad commands, and real studies: one killed with SIGKILL
after its first run and resumed without redoing that run, and the same study run as two shards at once whose report
equals the unsharded one. (Factors, analysis, folders and shards alone: tests/test_study.py.)"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.paths import ROOT
from tests.synthetic import make_voc
from utils.study import ablate
from utils.study.ablate import check_train_flags
from utils.study.factors import Run, study_factors
from utils.study.folder import RESULT_FILE
from utils.study.stats import mean_std, paired_difference, t_cdf, t_quantile


# Two-sided 95% critical values of Student's t (any statistics table).
@pytest.mark.parametrize("df, expected", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (5, 2.5706),
                                          (9, 2.2622), (19, 2.0930), (29, 2.0452), (120, 1.9799)])
def test_t_quantile_matches_the_table(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)
    assert t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-4)


def test_t_cdf_and_quantile_are_inverse_and_tend_to_the_normal():
    for df in (1, 3, 10):
        for p in (0.6, 0.9, 0.99):
            assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-9)
    assert t_quantile(0.975, 1e6) == pytest.approx(1.95996, abs=1e-4)
    assert t_quantile(0.95, 1) == pytest.approx(6.3138, abs=1e-4)
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)


def test_paired_difference_interval_and_verdicts():
    base = [0.50, 0.60, 0.70]
    better = paired_difference(base, [0.53, 0.62, 0.73])  # differences 0.03, 0.02, 0.03
    mean, std = mean_std([0.03, 0.02, 0.03])
    assert better.mean == pytest.approx(mean)
    assert better.high - better.mean == pytest.approx(4.302653 * std / 3 ** 0.5)
    assert better.verdict == "better"
    assert paired_difference(base, [0.47, 0.58, 0.66]).verdict == "worse"
    assert paired_difference(base, [0.55, 0.58, 0.74]).verdict == "within noise"
    assert paired_difference([0.5], [0.6]).verdict == "needs 2+ seeds"


@pytest.mark.parametrize("flags", [["--seed", "3"], ["--phi", "se"], ["--attention-at", "both"], ["--name=x"],
                                   ["--resume"]])
def test_flags_the_study_sets_are_refused(flags):
    with pytest.raises(ValueError, match="set by the study"):
        check_train_flags(flags)


@pytest.mark.parametrize("argv, message", [
    (["--seed", "3"], "--seed is set by the study"),
    (["--devices", "gpu0"], "--devices gpu0"),
    (["--phi", "none,sk"], "invalid attention 'sk'"),
    (["--vary", "mosaic=0,0.5", "--mosaic", "0.2"], "--mosaic is varied by this study"),
    (["--vary", "multi-scale=off,on", "--multi-scale"], "--multi-scale is varied by this study"),
    (["--vary", "lr=0.01,0.02", "--baseline", "lr=0.03"], "lr has the levels 0.01, 0.02"),
    (["--vary", "foo=1"], "train.py has no option --foo"),
    (["--shard", "2/2"], "--shard 2/2: give I/N"),
    (["--detect", "0"], "--detect 0.0: give the difference"),
])
def test_bad_study_commands_are_one_error_line(tmp_path, capsys, argv, message):
    """What the user can fix is a UserError: exit 1 with one `error:` line naming it, no traceback, no study folder."""
    data = make_voc(tmp_path / "data", images=2)
    study = tmp_path / "study"
    assert ablate.main(["--data", str(data), "--study", str(study), *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and "error:" in err and "Traceback" not in err
    assert not study.exists()


# ---------------------------------------------------------------------------------------------- real studies
# 2 variants x 2 seeds, 1 epoch at 64 px on 4 synthetic images: each run is a real train.py and eval.py, and the
# runs of one seed are the same on every machine (seeded data order, augmentation and weights), so two ways of running
# one study must give one table.
def study_command(data: Path, study: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "utils.ablate", "--data", str(data), "--vary", "multi_scale=off,on", "--seeds", "2",
            "--epochs", "1", "--study", str(study), "--speed-images", "2", "--speed-rounds", "1",
            "--input-shape", "64", "--workers", "0", "--batch-size", "2", "--no-preview", "--devices", "cpu", *extra]


RUNS = ["multi_scale=off-s0", "multi_scale=off-s1", "multi_scale=on-s0", "multi_scale=on-s1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "2"}


def processes_using(path: Path) -> list[int]:
    """Pids whose command line mentions `path` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(path) in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """A study killed with SIGKILL once its first run finished, then resumed by the same command: (data, study
    folder, the resumed process, the first run's result.json bytes and mtime before the resume)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("uses SIGKILL and /proc")
    root = tmp_path_factory.mktemp("killed")
    data, study = make_voc(root / "data", images=4), root / "study"
    process = subprocess.Popen(study_command(data, study), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    first = study / RUNS[0] / RESULT_FILE
    deadline = time.monotonic() + 300
    while not first.is_file() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert first.is_file(), "the first run did not finish"
    process.send_signal(signal.SIGKILL)  # a real kill: no handler runs in the study process
    process.wait()
    time.sleep(1.0)
    assert processes_using(study) == []  # its train.py/eval.py child died with it
    before = first.read_bytes(), first.stat().st_mtime_ns
    resumed = subprocess.run(study_command(data, study), cwd=ROOT, env=ENV, capture_output=True, text=True,
                             timeout=900)
    return data, study, resumed, before


@pytest.mark.slow
def test_killed_study_resumes_without_redoing_finished_runs(killed_and_resumed):
    _, study, resumed, before = killed_and_resumed
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    first = study / RUNS[0] / RESULT_FILE
    assert (first.read_bytes(), first.stat().st_mtime_ns) == before
    assert (study / "console" / f"{RUNS[0]}.txt").read_text().count("\n$ ") == 2  # one train.py, one eval.py
    runs = sorted(p.name for p in study.iterdir() if p.is_dir() and p.name not in ("console", "locks"))
    assert runs == RUNS  # no duplicate folder such as multi_scale=off-s02
    for run in runs:
        result = json.loads((study / run / RESULT_FILE).read_text())
        assert 0.0 <= result["mAP50"] <= 1.0 and result["run"] == run
    trained_with = ["\nmulti_scale: true\n" in (study / run / "args.yaml").read_text() for run in RUNS]
    assert trained_with == [False, False, True, True]  # each run trained with its own level
    table = (study / "ablation.csv").read_text().splitlines()
    assert table[0].startswith("multi_scale,seeds,rank,") and len(table) == 3  # header + off + on
    assert table[2].startswith("on,2,") and ("within noise" in table[2] or "better" in table[2]
                                             or "worse" in table[2])
    assert "| multi_scale | on | off | — | 2 |" in resumed.stdout and (study / "ablation.png").stat().st_size > 0
    assert "| multi_scale | on | off | — | 2 |" in (study / "ablation.md").read_text()


def read_table(path: Path, leave_out: tuple[str, ...] = ("images_per_s",)) -> list[dict]:
    """A report csv without its timing columns (images/s is measured anew by whichever process reports)."""
    with open(path, encoding="utf-8") as handle:
        return [{k: v for k, v in row.items() if k not in leave_out} for row in csv.DictReader(handle)]


@pytest.mark.slow
def test_two_shards_at_once_then_report_give_the_table_of_one_unsharded_study(killed_and_resumed, tmp_path):
    data, single, resumed, _ = killed_and_resumed
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    sharded = tmp_path / "sharded"
    shards = [subprocess.Popen(study_command(data, sharded, "--shard", f"{index}/2"), cwd=ROOT, env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for index in (0, 1)]
    outputs = [shard.communicate(timeout=900) for shard in shards]
    assert [shard.returncode for shard in shards] == [0, 0], [err[-2000:] for _, err in outputs]
    assert sum("| multi_scale | on | off |" in out for out, _ in outputs) >= 1  # the last shard wrote the report
    assert sorted(p.name for p in sharded.iterdir() if p.is_dir() and p.name not in ("console", "locks")) == RUNS
    tables = ("ablation.csv", "ablation_effects.csv", "ablation_interactions.csv")
    for name in tables:
        assert read_table(sharded / name) == read_table(single / name), name
    report = subprocess.run([sys.executable, "-m", "utils.ablate", "--study", str(sharded), "--report",
                             "--speed-rounds", "0", "--devices", "cpu"], cwd=ROOT, env=ENV, capture_output=True,
                            text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    for name in tables:
        assert read_table(sharded / name) == read_table(single / name), name
    timing = ("train_seconds", "eval_seconds", "resumed", "device")
    assert read_table(sharded / "ablation_runs.csv", timing) == read_table(single / "ablation_runs.csv", timing)


def test_devices_default_to_every_cuda_device_else_the_cpu(monkeypatch):
    monkeypatch.setattr(ablate.torch.cuda, "device_count", lambda: 2)
    assert ablate.study_devices(None) == ["cuda:0", "cuda:1"]
    assert ablate.study_devices("1") == ["cuda:1"] and ablate.study_devices("cpu") == ["cpu"]
    with pytest.raises(ValueError, match="2 CUDA device"):
        ablate.study_devices("0,2")
    monkeypatch.setattr(ablate.torch.cuda, "device_count", lambda: 0)
    assert ablate.study_devices(None) == ["cpu"]


def test_each_device_runs_one_run_at_a_time_and_every_run_once(tmp_path, monkeypatch):
    monkeypatch.setattr(ablate.torch.cuda, "device_count", lambda: 3)
    args = ablate.get_args_parser().parse_args(["--phi", "none,se,ca", "--at", "neck,backbone", "--seeds", "2",
                                                "--study", str(tmp_path / "s"), "--epochs", "1"])
    study = ablate.Study(args, [], study_factors(args.vary, args.phi, args.at))
    busy, started, lock = {}, [], threading.Lock()

    def fake_run(run: Run, slot: ablate.DeviceSlot, run_lock) -> bool:
        device = slot.label
        with lock:
            assert not busy.get(device), f"{device} got a second run"
            busy[device] = True
            started.append((run, device))
        time.sleep(0.02)
        with lock:
            busy[device] = False
        return True
    monkeypatch.setattr(study, "execute_run", fake_run)
    study.execute()
    assert sorted(r.name for r, _ in started) == sorted(r.name for r in study.runs) and len(started) == 10
    assert {d for _, d in started} == {"cuda:0", "cuda:1", "cuda:2"}


def test_a_failing_first_run_stops_the_study(tmp_path, monkeypatch):
    args = ablate.get_args_parser().parse_args(["--phi", "none,se", "--seeds", "3", "--study", str(tmp_path / "s"),
                                                "--devices", "cpu"])
    study = ablate.Study(args, [], study_factors(args.vary, args.phi, args.at))
    calls = []
    monkeypatch.setattr(study, "execute_run", lambda run, slot, lock: calls.append(run) or False)
    study.execute()
    assert len(calls) == 1 and study.failed == calls and study.stop.is_set()
