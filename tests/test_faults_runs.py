"""Fault suite, runs (issue 12): runs started together never share a folder, a failure before any output leaves no
empty folder, a read-only output location is found before the work, SIGTERM behaves like Ctrl-C (last.pth, exit 143),
a full disk keeps the previous checkpoint and says so, checkpoints get the umask's permissions. Crash consistency: a
second `--resume` of a run in training is refused naming the holder, the lock of a killed run is taken over, a resumed
run whose dataset lost its classes is refused as a fresh one is, and result files are only ever seen complete.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.fault_helpers import TRAIN_FAST, cli_many, start_hooked, tiny_voc, wait_for
from tests.synthetic import make_voc
from utils.common.run_dir import OutputFolderError, claim_run_dir
from utils.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

POSIX = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals and mounts")
STARTUP_S = 180


def _mount_tmpfs(folder: Path, options: str) -> bool:
    """Mount a tmpfs at `folder` (root only); False where that is not allowed (CI without privileges)."""
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None or os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def _umount(folder: Path) -> None:
    subprocess.run(["umount", str(folder)], capture_output=True)


def test_checkpoint_gets_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        save_checkpoint({"x": torch.zeros(2)}, tmp_path / "a.pth")
        (tmp_path / "b.txt").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.pth").stat().st_mode & 0o777 == (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o644


def test_full_disk_keeps_the_previous_checkpoint_monkeypatched(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    save_checkpoint({"epoch": 1}, path)

    def no_space(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr("utils.model.checkpoint.torch.save", no_space)
    with pytest.raises(CheckpointError, match=f"no space left on {tmp_path}"):
        save_checkpoint({"epoch": 2}, path)
    assert load_checkpoint(path)["epoch"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]


@POSIX
def test_full_disk_on_a_real_tiny_file_system(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "size=1m"):
        pytest.skip("cannot mount a tmpfs here (needs root); the monkeypatched test covers the message")
    try:
        save_checkpoint({"epoch": 1}, disk / "last.pth")
        with pytest.raises(CheckpointError, match=f"no space left on {disk}"):
            save_checkpoint({"epoch": 2, "w": torch.zeros(1_000_000)}, disk / "last.pth")  # 4 MB on 1 MB
        assert load_checkpoint(disk / "last.pth")["epoch"] == 1
        assert sorted(p.name for p in disk.iterdir()) == ["last.pth"]
    finally:
        _umount(disk)


@POSIX
@pytest.mark.slow
def test_read_only_output_is_found_before_the_work(tmp_path):
    read_only = tmp_path / "ro"
    if not _mount_tmpfs(read_only, "ro,size=1m"):
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        with pytest.raises(OutputFolderError):
            claim_run_dir(read_only, "exp")
        data = tiny_voc(tmp_path / "data", train=2, val=1)
        weights = tmp_path / "missing.pth"  # never reached: the folder check comes first
        results = cli_many([
            ("train.py", ["--data", data, "--save-dir", read_only, *TRAIN_FAST]),
            ("eval.py", ["--weights", weights, "--data", data, "--device", "cpu", "--save-dir", read_only,
                         "--name", "e"]),
            ("predict.py", ["--weights", weights, "--source", data, "--device", "cpu", "--save-dir", read_only,
                            "--name", "p"]),
        ])
    finally:
        _umount(read_only)
    for result in results:
        lines = [line for line in result.stdout.splitlines() if line.startswith("error:")]
        assert result.returncode == 1 and "Traceback" not in result.stdout, result.stdout[-2000:]
        assert len(lines) == 1 and "--save-dir" in lines[0] and str(read_only) in lines[0], result.stdout[-2000:]
        assert "not found" not in lines[0]  # the folder was checked before the weights were looked at


@POSIX
@pytest.mark.slow
def test_runs_started_together_and_failures_leave_no_shared_or_empty_folder(tmp_path):
    data = tiny_voc(tmp_path / "data", train=4, val=2)
    background = make_voc(tmp_path / "background", images=3)
    for xml in (background / "VOC2007" / "Annotations").glob("*.xml"):  # no objects anywhere
        text = xml.read_text()
        xml.write_text(text[:text.index("<object>")] + "</annotation>")
    logs = tmp_path / "logs"
    same = ["--data", data, "--epochs", "1", "--save-dir", logs, "--name", "same", *TRAIN_FAST]
    results = cli_many([("train.py", same), ("train.py", same)])  # started together, same --save-dir/--name
    results += cli_many([("train.py", ["--data", background, "--save-dir", logs, "--name", "bg", *TRAIN_FAST])])
    results, failed = results[:2], results[2:]
    assert all(r.returncode == 0 for r in results), [r.stdout[-2000:] for r in results]
    folders = sorted(p.name for p in logs.iterdir())
    assert folders == ["same", "same2"], folders  # the failed runs left nothing behind
    for folder in folders:
        assert load_checkpoint(logs / folder / "last.pth")["epoch"] == 1
    for result in failed:
        assert result.returncode == 1 and "Traceback" not in result.stdout, result.stdout[-2000:]
    assert "no class names" in failed[0].stdout
    print("runs:", json.dumps({"injected": 3, "survived": 3, "lost": 0}))


@POSIX
@pytest.mark.slow
def test_sigterm_in_the_first_epoch_saves_a_resumable_last_pth(tmp_path):
    data = tiny_voc(tmp_path / "data", train=8, val=2)
    markers, run_dir, log = tmp_path / "markers", tmp_path / "logs" / "run", tmp_path / "child.log"
    process = start_hooked(markers, log, "--data", data, "--epochs", 1, "--save-dir", tmp_path / "logs",
                           "--name", "run", *TRAIN_FAST)
    assert wait_for(lambda: (markers / "step_1_1").exists(), STARTUP_S, process), log.read_text()[-3000:]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143, log.read_text()[-3000:]
    output = log.read_text(errors="replace")
    assert "terminated (SIGTERM): saving" in output and "Traceback" not in output, output[-3000:]
    assert load_checkpoint(run_dir / "last.pth")["epoch"] == 0
    resumed = cli_many([("train.py", ["--resume", run_dir])])[0]
    assert resumed.returncode == 0 and "Traceback" not in resumed.stdout, resumed.stdout[-3000:]
    assert load_checkpoint(run_dir / "last.pth")["epoch"] == 1


@POSIX
@pytest.mark.slow
def test_sigterm_stops_eval_and_predict_cleanly(tmp_path):
    from tests.fault_helpers import child_env
    from tests.paths import ROOT
    from tests.synthetic import write_weights
    from utils.model.config import ModelConfig, build_model

    config = ModelConfig(classes=["a"], input_shape=(416, 416))
    weights = write_weights(tmp_path / "w.pth", build_model(config).state_dict(), config)
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    source = next((ROOT / "VOCdevkit" / "VOC2007" / "JPEGImages").glob("*.jpg"))
    for i in range(400):  # long enough that the signal arrives mid-work
        shutil.copy(source, pictures / f"{i:03d}.jpg")
    data = tiny_voc(tmp_path / "data", train=2, val=40)
    commands = {"predict": ["predict.py", "--weights", weights, "--source", pictures, "--device", "cpu",
                            "--nosave"],
                "eval": ["eval.py", "--weights", weights, "--data", data, "--split", "val", "--device", "cpu",
                         "--workers", "0", "--batch-size", "1", "--save-dir", tmp_path, "--name", "eval"]}
    for name, command in commands.items():
        log = tmp_path / f"{name}.log"
        with open(log, "wb") as sink:
            process = subprocess.Popen([sys.executable, *map(str, command)], cwd=ROOT, env=child_env(), stdout=sink,
                                       stderr=subprocess.STDOUT)
        assert wait_for(lambda log=log: "weights " in log.read_text(errors="replace"), STARTUP_S, process), \
            log.read_text()[-2000:]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 143, (name, log.read_text()[-2000:])
        output = log.read_text(errors="replace")
        assert "terminated (SIGTERM)" in output and "Traceback" not in output, (name, output[-2000:])
    assert not (tmp_path / "eval").exists()  # stopped before writing anything: no empty run folder left


def test_full_disk_elsewhere_is_one_line_naming_the_file(tmp_path, monkeypatch, caplog):
    import logging
    from pathlib import Path as _Path

    from utils.common.cli import run_command
    from utils.train.results import write_results_csv

    def no_space(self, *_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(_Path, "write_text", no_space)
    status = run_command(lambda: write_results_csv([{"epoch": 1}], tmp_path / "results.csv"), False,
                         logging.getLogger("t"))
    assert status == 1 and f"no space left on {tmp_path / 'results.csv'}" in caplog.text
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------- one process per run folder (#4)
def test_run_lock_names_the_holder_and_takes_over_a_dead_ones(tmp_path, caplog):
    import logging

    from utils.common.run_dir import LOCK_NAME, RunFolderBusyError, RunLock
    holder = RunLock(tmp_path).acquire()
    with pytest.raises(RunFolderBusyError, match=f"process {os.getpid()} on "):
        RunLock(tmp_path).acquire()  # another open file description: refused as another process would be
    holder.release()
    assert not (tmp_path / LOCK_NAME).exists()
    # a lock file whose process died (the kernel dropped its flock): taken over, and said
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 999999, "host": "elsewhere", "since": "yesterday"}))
    with caplog.at_level(logging.INFO), RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert "taking over the lock" in caplog.text and "process 999999 on elsewhere" in caplog.text
    assert not (tmp_path / LOCK_NAME).exists()


def test_atomic_output_keeps_the_previous_file_when_a_write_fails(tmp_path):
    from utils.common.run_dir import atomic_output, remove_partial_outputs
    target = tmp_path / "results.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_output(target) as partial:
        assert partial.suffix == ".png" and partial.parent == tmp_path
        partial.write_bytes(b"half a pic")
        raise RuntimeError("the plot failed")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["results.png"]
    with atomic_output(target) as partial:
        partial.write_bytes(b"new")
    assert target.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["results.png"]
    (tmp_path / ".labels.partial.png").write_bytes(b"left by a kill")
    assert [p.name for p in remove_partial_outputs(tmp_path)] == [".labels.partial.png"]


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


@POSIX
@pytest.mark.slow
def test_a_second_resume_is_refused_and_a_killed_holders_lock_taken_over(tmp_path):
    from tests.fault_helpers import cli, kill_hard
    data = tiny_voc(tmp_path / "data", train=8, val=2)
    logs, run_dir, markers = tmp_path / "logs", tmp_path / "logs" / "run", tmp_path / "markers"
    first = cli("train.py", "--data", data, "--epochs", "1", "--save-dir", logs, "--name", "run", *TRAIN_FAST)
    assert first.returncode == 0, first.stdout[-3000:]
    holder = start_hooked(markers, tmp_path / "holder.log", "--resume", run_dir, "--epochs", "3", eval_pause=600)
    assert wait_for(lambda: (markers / "eval_2").exists(), STARTUP_S, holder), (tmp_path / "holder.log").read_text()
    before = (run_dir / "results.csv").read_bytes(), (run_dir / "train.log").stat().st_size
    second = cli("train.py", "--resume", run_dir, "--epochs", "3")  # while the holder sits in its validation
    errors = _error_lines(second.stdout)
    assert second.returncode == 1 and len(errors) == 1 and "Traceback" not in second.stdout, second.stdout[-3000:]
    assert str(run_dir) in errors[0] and f"process {holder.pid} on " in errors[0], errors
    assert ((run_dir / "results.csv").read_bytes(), (run_dir / "train.log").stat().st_size) == before
    kill_hard(holder)  # SIGKILL: no clean-up, its lock file stays behind
    assert (run_dir / ".train.lock").exists()
    third = cli("train.py", "--resume", run_dir, "--epochs", "3")
    assert third.returncode == 0 and "taking over the lock" in third.stdout, third.stdout[-3000:]
    assert f"process {holder.pid} on " in third.stdout
    assert not (run_dir / ".train.lock").exists() and load_checkpoint(run_dir / "last.pth")["epoch"] == 3
    rows = (run_dir / "results.csv").read_text(encoding="utf-8").splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == ["1", "2", "3"]
    print("runs:", json.dumps({"injected": 2, "refused": 1, "taken_over": 1, "lost": 0}))


@POSIX
@pytest.mark.slow
def test_a_dataset_without_the_runs_classes_is_refused_on_resume_as_when_fresh(tmp_path):
    import re

    from tests.fault_helpers import cli
    data = tiny_voc(tmp_path / "data", train=4, val=2)
    logs, run_dir = tmp_path / "logs", tmp_path / "logs" / "run"
    first = cli("train.py", "--data", data, "--epochs", "1", "--save-dir", logs, "--name", "run", *TRAIN_FAST)
    assert first.returncode == 0, first.stdout[-3000:]
    for xml in (data / "VOC2007" / "Annotations").glob("*.xml"):  # relabelled since: no object of the run's classes
        xml.write_text(re.sub(r"<name>[^<]*</name>", "<name>hexagon</name>", xml.read_text()))
    names = tmp_path / "names.txt"
    names.write_text("circle\nsquare\n")
    resumed, fresh = cli_many([("train.py", ["--resume", run_dir, "--epochs", "2"]),
                               ("train.py", ["--data", data, "--names", names, "--epochs", "1", "--save-dir", logs,
                                             "--name", "fresh", *TRAIN_FAST])])
    for result, fix in ((resumed, "the dataset changed since the run started"), (fresh, f"check --names {names}")):
        errors = _error_lines(result.stdout)
        assert result.returncode == 1 and len(errors) == 1 and "Traceback" not in result.stdout, result.stdout[-3000:]
        assert "no object of the run's classes" in errors[0] and "hexagon" in errors[0] and fix in errors[0], errors
    assert load_checkpoint(run_dir / "last.pth")["epoch"] == 1  # nothing trained on background
    assert sorted(p.name for p in logs.iterdir()) == ["run"]  # the fresh run left no folder
    print("runs:", json.dumps({"injected": 2, "refused": 2, "trained_on_background": 0}))


def _complete(path: Path, data: bytes) -> bool:
    """A PNG ends with its IEND chunk; a CSV has whole lines with the header's column count."""
    if path.suffix == ".png":
        return data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")
    lines = data.decode("utf-8").split("\n")
    return data.endswith(b"\n") and len({line.count(",") for line in lines[:-1]}) == 1


@POSIX
@pytest.mark.slow
def test_results_appear_only_complete(tmp_path):
    data = tiny_voc(tmp_path / "data", train=8, val=4)
    logs, run_dir, log = tmp_path / "logs", tmp_path / "logs" / "run", tmp_path / "child.log"
    with_pictures = [a for a in TRAIN_FAST if a != "--no-preview"]
    process = start_hooked(tmp_path / "markers", log, "--data", data, "--epochs", "6", "--save-dir", logs,
                           "--name", "run", *with_pictures)
    reads, incomplete, seen, partial_reads = 0, [], set(), 0
    while process.poll() is None:  # read every result file as often as we can while the run writes them
        for path in sorted(run_dir.iterdir()) if run_dir.is_dir() else []:
            if path.suffix not in (".png", ".csv"):
                continue
            try:
                content = path.read_bytes()
            except FileNotFoundError:  # a temporary file renamed meanwhile
                continue
            if path.name.startswith("."):  # a file being written: what a reader saw before the writes were atomic
                partial_reads += not _complete(path, content)
                continue
            reads, seen = reads + 1, seen | {path.name}
            if not _complete(path, content):
                incomplete.append(path.name)
        time.sleep(0.002)  # often enough to land inside writes, without taking a whole core from the run
    assert process.wait() == 0, log.read_text(errors="replace")[-3000:]
    assert not incomplete, incomplete
    assert {"results.csv", "results.png", "labels.png", "confusion_matrix.png"} <= seen, seen
    assert not list(run_dir.glob(".*.partial.*")) and not (run_dir / ".train.lock").exists()
    print("results:", json.dumps({"reads": reads, "files": len(seen), "incomplete": len(incomplete),
                                  "half_written_temporaries_seen": partial_reads}))
