"""The ablation command: Student-t quantiles, paired verdicts, the plan, the table, and a real study that is killed
with SIGKILL after its first run and resumed without redoing that run."""
from __future__ import annotations

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
from utils.study.ablate import Run, check_train_flags, format_table, plan_runs, summarise
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


def test_none_runs_once_per_seed_and_seed_major_order():
    runs = plan_runs(["none", "se", "ca"], ["neck", "backbone"], seeds=2)
    assert [r.name for r in runs[:5]] == ["none-s0", "se-neck-s0", "se-backbone-s0", "ca-neck-s0", "ca-backbone-s0"]
    assert len(runs) == 2 * (1 + 2 * 2)


@pytest.mark.parametrize("flags", [["--seed", "3"], ["--phi", "se"], ["--attention-at", "both"], ["--name=x"],
                                   ["--resume"]])
def test_flags_the_study_sets_are_refused(flags):
    with pytest.raises(ValueError, match="set by the study"):
        check_train_flags(flags)


@pytest.mark.parametrize("argv, message", [
    (["--seed", "3"], "--seed is set by the study"),
    (["--devices", "gpu0"], "--devices gpu0"),
    (["--phi", "none,sk"], "invalid attention 'sk'"),
    (["--seeds", "0"], "--seeds and --epochs must be at least 1"),
])
def test_bad_study_commands_are_one_error_line(tmp_path, capsys, argv, message):
    """What the user can fix is a UserError: exit 1 with one `error:` line naming it, no traceback, no study folder."""
    data = make_voc(tmp_path / "data", images=2)
    study = tmp_path / "study"
    assert ablate.main(["--data", str(data), "--study", str(study), *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and "error:" in err and "Traceback" not in err
    assert not study.exists()


def test_a_study_folder_in_use_is_a_user_error(tmp_path):
    first, second = ablate.StudyFolder(tmp_path / "s"), ablate.StudyFolder(tmp_path / "s")
    first.lock()
    if ablate.fcntl is None:
        pytest.skip("no advisory locks on this platform")
    with pytest.raises(ablate.StudyError, match="another utils.study.ablate process"):
        second.lock()


def test_summary_pairs_by_seed_only_where_both_exist():
    results = [{"attention": a, "placement": p, "seed": s, "mAP50": m, "mAP50_95": m / 2}
               for a, p, s, m in [("none", "-", 0, 0.5), ("none", "-", 1, 0.6), ("none", "-", 2, 0.7),
                                  ("se", "neck", 0, 0.55), ("se", "neck", 1, 0.66)]]
    rows = summarise(results, order=[("none", "-"), ("se", "neck"), ("none", "-")])
    assert [(r["attention"], r["seeds"]) for r in rows] == [("none", 3), ("se", 2)]
    assert rows[1]["pairs"] == 2 and rows[1]["delta_mAP50"] == pytest.approx(0.055)
    assert "delta_mAP50" not in rows[0]
    assert format_table(rows).count("\n") == 3  # header, rule, two rows


# ----------------------------------------------------------------------------------------------- a real study
def study_command(data: Path, study: Path) -> list[str]:
    return [sys.executable, "-m", "utils.ablate", "--data", str(data), "--phi", "none,eca", "--seeds", "2",
            "--epochs", "1", "--study", str(study), "--speed-images", "2", "--speed-rounds", "1",
            "--input-shape", "64", "--workers", "0", "--batch-size", "2", "--no-preview", "--devices", "cpu"]


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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses SIGKILL and /proc")
def test_killed_study_resumes_without_redoing_finished_runs(tmp_path):
    data, study = make_voc(tmp_path / "data", images=4), tmp_path / "study"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    process = subprocess.Popen(study_command(data, study), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    first = study / "none-s0" / ablate.RESULT_FILE
    deadline = time.monotonic() + 300
    while not first.is_file() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert first.is_file(), "the first run did not finish"
    process.send_signal(signal.SIGKILL)  # a real kill: no handler runs in the study process
    process.wait()
    time.sleep(1.0)
    assert processes_using(study) == []  # its train.py/eval.py child died with it
    finished_before = first.read_bytes(), first.stat().st_mtime_ns

    resumed = subprocess.run(study_command(data, study), cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert (first.read_bytes(), first.stat().st_mtime_ns) == finished_before
    assert (study / "console" / "none-s0.txt").read_text().count("\n$ ") == 2  # one train.py, one eval.py
    runs = sorted(p.name for p in study.iterdir() if p.is_dir() and p.name != "console")
    assert runs == ["eca-neck-s0", "eca-neck-s1", "none-s0", "none-s1"]  # no duplicate folder such as none-s02
    for run in runs:
        result = json.loads((study / run / ablate.RESULT_FILE).read_text())
        assert 0.0 <= result["mAP50"] <= 1.0 and result["run"] == run
    table = (study / "ablation.csv").read_text().splitlines()
    assert table[0].split(",") == list(ablate.COLUMNS) and len(table) == 3  # header + none + eca/neck
    assert table[2].startswith("eca,neck,2,") and ("within noise" in table[2] or "better" in table[2]
                                                  or "worse" in table[2])
    assert "| eca | neck | 2 |" in resumed.stdout and (study / "ablation.png").stat().st_size > 0
    assert "| eca | neck | 2 |" in (study / "ablation.md").read_text()


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
    study = ablate.Study(args, [])
    busy, started, lock = {}, [], threading.Lock()

    def fake_run(run: Run, device: str) -> bool:
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
    study = ablate.Study(args, [])
    calls = []
    monkeypatch.setattr(study, "execute_run", lambda run, device: calls.append(run) or False)
    study.execute()
    assert len(calls) == 1 and study.failed == calls and study.stop.is_set()
