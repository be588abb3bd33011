"""Does a training choice really help on your data? Train and evaluate every combination of the choices, over several
seeds, and compare them paired by seed:

    python -m utils.ablate --data VOCdevkit --phi none,se,cbam,eca,ca --at neck,backbone --seeds 3 --epochs 30 \\
        --input-shape 320 [any other train.py flag]
    python -m utils.ablate --data VOCdevkit --vary multi_scale=off,on --vary mosaic=0,0.5 --seeds 5 --epochs 20

A factor is any train.py option (`--vary NAME=V1,V2,...`; `--phi` and `--at` are shorthands for the attention and its
placement; without --vary or --phi every attention is compared). Every run is a normal train.py run folder under the
study folder (default logs/ablation): same data, same schedule, and for a given seed the same initial weights of the
shared layers, the same data order and the same augmentation, so seed s of two variants differ only by the factors.
Combinations that do not exist (a placement for `none`) run once per seed. Each run is then scored by eval.py on one
split (default test). The report (ablation.md, .csv, .png) gives, against the baseline (the first level of each
factor, or --baseline), every factor level's difference paired by seed with its 95% Student-t interval and verdict
(better / worse / within noise) and the seeds a difference of --detect would need, the interaction of every two
factors, and every variant ranked by --metric with its spread over seeds and its cost (parameters, GFLOPs, images/s).

Interrupted (Ctrl-C, a kill, a reboot)? Run the same command again: finished runs (those with result.json, written
atomically after their evaluation) are kept, a run cut short resumes from its last.pth. One run per device at a time:
every CUDA device gets its own run (--nproc-per-run K: K devices per run under torchrun); on a CPU the runs go one
after another. Many machines sharing the study folder: `--shard I/N` runs every N-th run (a SLURM array, a Kubernetes
indexed job, GNU parallel); the last shard to finish writes the report, or `--report` does.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch
from tqdm import tqdm

from nets.summary import count_gflops, count_parameters
from utils.common.cli import CommandParser, non_negative_int, positive_int, run_command, setup_logging
from utils.common.errors import ConfigError, MissingFileError
from utils.runtime.loader import load_runnable
from utils.study.analysis import METRICS, Design, effect_rows, interaction_rows, variant_rows
from utils.study.factors import (
    Factor,
    Run,
    Variant,
    check_grid,
    default_attentions,
    grid_of,
    parse_baseline,
    plan_runs,
    study_factors,
)
from utils.study.folder import RESULT_FILE, StudyError, StudyFolder, write_json_atomic
from utils.study.report import run_row, write_files
from utils.train import cli as train  # train.py's parser defines the flags a study passes through

LOGGER = logging.getLogger("ablate")
ROOT = Path(__file__).resolve().parents[2]
# train.py flags that the study itself sets for each run
STUDY_FLAGS = ("phi", "attention_at", "seed", "name", "save_dir", "resume", "device", "data", "epochs")
# train.py options that eval.py takes too: each run is scored with its own (passed through or varied)
EVAL_FORWARDED = ("workers", "precision", "amp")


def get_args_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: train.py's flags pass through untouched (--eval-period is not --eval-split)
    p = CommandParser(description=__doc__, allow_abbrev=False)
    p.add_argument("--data", default="VOCdevkit", help="dataset, as train.py --data")
    p.add_argument("--vary", action="append", metavar="NAME=V1,V2,...",
                   help="a train.py option to vary (NAME with - or _), at these values, parsed as train.py parses "
                        "them; switches take on/off; values holding commas are separated by ; instead. Repeat for "
                        "more factors: every combination runs")
    p.add_argument("--phi", default=None, help="attentions to compare, comma-separated (= --vary phi=...); without "
                   f"--vary or --phi: {default_attentions()}")
    p.add_argument("--at", default=None, help="placements, comma-separated (= --vary attention_at=...; default neck)")
    p.add_argument("--baseline", action="append", metavar="NAME=LEVEL",
                   help="the level each factor is compared against (default: the first level given)")
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds 0..N-1 per variant")
    p.add_argument("--epochs", type=positive_int, default=30, help="epochs per run")
    p.add_argument("--study", default="logs/ablation", help="study folder; the same command again resumes it")
    p.add_argument("--eval-split", default="test", help="split every run is scored on with eval.py")
    p.add_argument("--evaluate", choices=("best", "last"), default="best",
                   help="checkpoint scored: best.pth (best val mAP50, what train.py ships) or last.pth")
    p.add_argument("--metric", choices=METRICS, default="mAP50", help="what the variants are ranked by")
    p.add_argument("--detect", type=float, default=0.02, help="the difference (in mAP) the power estimate is for: "
                   "seeds needed to tell it from 0 at the spread observed")
    p.add_argument("--shard", default=None, metavar="I/N", help="run only every N-th run of the study, starting at "
                   "run I (0 <= I < N), e.g. --shard $SLURM_ARRAY_TASK_ID/8; the last shard to finish writes the "
                   "report")
    p.add_argument("--report", action="store_true", help="train nothing: write the report of what the study folder "
                   "holds (its settings come from its study.json)")
    p.add_argument("--devices", default=None, help="cpu, or CUDA indices such as 0,1 (default: every CUDA device, "
                   "else the CPU); one run per device at a time")
    p.add_argument("--nproc-per-run", type=positive_int, default=1,
                   help="processes per run under torchrun (DDP): K CUDA devices per run, or K CPU processes")
    p.add_argument("--speed-images", type=positive_int, default=30, help="images per timing round for images/s")
    p.add_argument("--speed-rounds", type=non_negative_int, default=5,
                   help="interleaved timing rounds (the best counts); 0: do not time")
    p.add_argument("--verbose", action="store_true", help="debug logging and full tracebacks")
    return p


# ------------------------------------------------------------------------------------------------ arguments
def check_train_flags(extra: list[str], factors: tuple[str, ...] = ()) -> None:
    """The pass-through flags must be valid train.py flags and must not set what the study sets per run."""
    parser = train.get_args_parser()
    parser.prog = "train.py flags given to utils.ablate"
    sentinel = object()
    parser.set_defaults(**{dest: sentinel for dest in (*STUDY_FLAGS, *factors)})
    args = parser.parse_args(extra)
    taken = [dest for dest in STUDY_FLAGS if getattr(args, dest) is not sentinel]
    if taken:
        raise ConfigError(f"--{taken[0].replace('_', '-')} is set by the study for each run; use utils.ablate's "
                          "--data, --phi, --at, --vary, --seeds, --epochs, --study and --devices instead")
    varied = [dest for dest in factors if getattr(args, dest) is not sentinel]
    if varied:
        raise ConfigError(f"--{varied[0].replace('_', '-')} is varied by this study (--vary {varied[0]}=...); drop it "
                          "from the train.py flags")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'3/8' -> (3, 8): this process runs runs 3, 11, 19, ... of the study's plan."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not int(match[1]) < int(match[2]):
        raise ConfigError(f"--shard {text}: give I/N with 0 <= I < N, e.g. --shard $SLURM_ARRAY_TASK_ID/8 for an "
                          "array of 8 tasks numbered from 0")
    return int(match[1]), int(match[2])


def study_devices(text: str | None) -> list[str]:
    """'cpu', 'cuda:0', ...: one worker each."""
    if text is None:
        count = torch.cuda.device_count()
        return [f"cuda:{i}" for i in range(count)] or ["cpu"]
    if text.strip().lower() == "cpu":
        return ["cpu"]
    available = torch.cuda.device_count()
    try:
        indices = [int(t) for t in text.replace("cuda:", "").split(",") if t.strip()]
    except ValueError:
        indices = []
    bad = [i for i in indices if not 0 <= i < available]
    if bad or not indices:
        raise ConfigError(f"--devices {text}: {available} CUDA device(s) available; give indices below that, or cpu")
    return [f"cuda:{i}" for i in indices]


@dataclass(frozen=True)
class DeviceSlot:
    """Where one run at a time trains: one device, or (--nproc-per-run K) K processes under torchrun, on K CUDA
    devices made visible to them alone, or on the CPU."""

    device: str  # train.py's --device: cpu, cuda:1, or cuda under torchrun (each process takes its LOCAL_RANK)
    visible: str | None = None  # CUDA_VISIBLE_DEVICES of the run's processes
    nproc: int = 1

    @property
    def label(self) -> str:
        return f"cuda:{self.visible}" if self.visible is not None else self.device

    @property
    def eval_device(self) -> str:
        return "cuda:0" if self.visible is not None else self.device

    def env(self) -> dict[str, str] | None:
        return None if self.visible is None else {**os.environ, "CUDA_VISIBLE_DEVICES": self.visible}

    def train_launcher(self) -> list[str]:
        if self.nproc == 1:
            return [sys.executable, str(ROOT / "train.py")]
        # --standalone: a rendezvous on a free local port, so several runs on one machine never collide
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(self.nproc),
                str(ROOT / "train.py")]


def device_slots(text: str | None, nproc: int) -> list[DeviceSlot]:
    """One slot per device, or per group of `nproc` CUDA devices (indices as this process sees them: under SLURM's
    CUDA_VISIBLE_DEVICES=2,3, device 0 is GPU 2)."""
    devices = study_devices(text)
    if nproc < 1:
        raise ConfigError(f"--nproc-per-run {nproc}: give 1 or more")
    if nproc == 1:
        return [DeviceSlot(d) for d in devices]
    if devices == ["cpu"]:
        return [DeviceSlot("cpu", None, nproc)]
    if len(devices) < nproc:
        raise ConfigError(f"--nproc-per-run {nproc} needs {nproc} CUDA devices per run; {len(devices)} given")
    parent = os.environ.get("CUDA_VISIBLE_DEVICES")
    physical = parent.split(",") if parent else [str(i) for i in range(torch.cuda.device_count())]
    indices = [int(d.split(":")[1]) for d in devices]
    if len(indices) % nproc:
        LOGGER.warning("--nproc-per-run %d: %d of the %d devices stay idle", nproc, len(indices) % nproc, len(indices))
    groups = [indices[i:i + nproc] for i in range(0, len(indices) - nproc + 1, nproc)]
    return [DeviceSlot("cuda", ",".join(physical[i] for i in group), nproc) for group in groups]


def option_value(extra: list[str], flag: str) -> str | None:
    """The value of `flag` among the pass-through train.py flags (`--flag v` or `--flag=v`), else None."""
    for i, token in enumerate(extra):
        if token == flag and i + 1 < len(extra):
            return extra[i + 1]
        if token.startswith(flag + "="):
            return token.split("=", 1)[1]
    return None


# ----------------------------------------------------------------------------------------------- subprocesses
_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform.startswith("linux") else None
PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int):
    """preexec_fn: the child is killed when the study process dies (even by SIGKILL), so no orphan keeps training
    into a folder that the resumed study will use (Linux; elsewhere Ctrl-C still reaches the whole group)."""
    def setup() -> None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
    return setup if _LIBC is not None else None


def run_logged(command: list[str], log_path: Path, stop: threading.Event, on_poll=None,
               env: dict[str, str] | None = None, lock: IO | None = None) -> int:
    """Run `command` with its console output appended to `log_path`; returns its exit status. `on_poll` is called
    every second while it runs; `stop` set (Ctrl-C) sends it SIGINT, so train.py saves last.pth and exits. `lock`
    (the run's lock file) is inherited, so the lock lives as long as the run's process does, even one that outlives
    a killed study process where the kernel cannot end it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                   preexec_fn=_die_with_parent(os.getpid()),
                                   pass_fds=(lock.fileno(),) if lock is not None else ())
        interrupted = False
        while process.poll() is None:
            if stop.is_set() and not interrupted:
                process.send_signal(signal.SIGINT)
                interrupted = True
            if on_poll is not None:
                on_poll()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=1.0)
        return process.returncode


def epochs_done(run_dir: Path) -> int:
    """Epochs recorded in a run's results.csv (0 before the first epoch ends)."""
    try:
        with open(run_dir / "results.csv", encoding="utf-8") as handle:
            return max(sum(1 for _ in handle) - 1, 0)
    except OSError:
        return 0


def discard_unfinished(run_dir: Path) -> None:
    """A run folder without last.pth was killed before its first epoch ended: nothing in it is worth keeping, and
    train.py needs the name free (it never reuses a folder)."""
    if any(run_dir.glob("*.pth")):
        raise StudyError(f"{run_dir} holds checkpoints but no last.pth; move it away and rerun the study")
    LOGGER.warning("%s was cut short before its first epoch ended; starting it again", run_dir.name)
    shutil.rmtree(run_dir)


class StudyProgress:
    """One bar over every epoch of the study (finished runs count in full), updated from each run's results.csv."""

    def __init__(self, runs: list[Run], epochs: int, folder: StudyFolder):
        self.epochs, self._lock, self._last = epochs, threading.Lock(), None
        self.done = {run: epochs if folder.result(run) else epochs_done(folder.run_dir(run)) for run in runs}
        self.bar = tqdm(total=len(runs) * epochs, initial=sum(self.done.values()), unit="epoch", desc="study",
                        dynamic_ncols=True, smoothing=0.0)

    def update(self, run: Run, epochs: int, note: str = "") -> None:
        """Record `run`'s progress; the bar redraws only when something changed (runs poll every second)."""
        with self._lock:
            state = (run, min(epochs, self.epochs), note)
            if state == self._last:
                return
            self._last = state
            self.done[run] = state[1]
            self.bar.n = sum(self.done.values())
            self.bar.set_postfix_str(f"{run.name} {note or f'epoch {state[1]}/{self.epochs}'}", refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


# ---------------------------------------------------------------------------------------------------- the study
class Study:
    """Runs the planned runs (this shard's) that have no result yet, one per device slot at a time."""

    def __init__(self, args: argparse.Namespace, train_flags: list[str], factors: list[Factor]):
        self.args, self.train_flags, self.factors = args, train_flags, factors
        self.folder = StudyFolder(args.study)
        self.grid = grid_of(factors)
        check_grid(self.grid)
        self.runs = plan_runs(self.grid, args.seeds)
        self.shard = parse_shard(args.shard)
        self.todo = self.runs[self.shard[0]::self.shard[1]] if self.shard else self.runs
        self.slots = device_slots(args.devices, args.nproc_per_run)
        self.stop = threading.Event()
        self.failed: list[Run] = []
        self.succeeded = 0

    def settings(self) -> dict:
        """What must be equal for every run of the study (stored in study.json)."""
        return {"data": str(Path(self.args.data).resolve()), "epochs": self.args.epochs,
                "eval_split": self.args.eval_split, "evaluate": self.args.evaluate, "train_flags": self.train_flags}

    def execute(self) -> None:
        """Train and evaluate every pending run; Ctrl-C stops the runs in flight (they keep last.pth) and re-raises."""
        pending = [run for run in self.todo if self.folder.result(run) is None]
        shard = f" (shard {self.shard[0]}/{self.shard[1]}: {len(self.todo)} of its {len(self.runs)} runs)" \
            if self.shard else ""
        LOGGER.info("study %s%s: %d runs, %d finished, %d to do on %s", self.folder.path, shard, len(self.todo),
                    len(self.todo) - len(pending), len(pending), ", ".join(s.label for s in self.slots))
        jobs: queue.Queue = queue.Queue()
        for run in pending:
            jobs.put(run)
        self.progress = StudyProgress(self.todo, self.args.epochs, self.folder)
        workers = [threading.Thread(target=self._worker, args=(slot, jobs), name=f"study-{slot.label}", daemon=True)
                   for slot in self.slots]
        try:
            for worker in workers:
                worker.start()
            while any(worker.is_alive() for worker in workers):
                for worker in workers:
                    worker.join(timeout=0.5)
        except KeyboardInterrupt:
            self.stop.set()
            for worker in workers:
                worker.join()
            raise
        finally:
            self.progress.close()

    def _worker(self, slot: DeviceSlot, jobs: queue.Queue) -> None:
        while not self.stop.is_set():
            try:
                run = jobs.get_nowait()
            except queue.Empty:
                return
            lock = self.folder.claim(run)
            if lock is None:  # another process of the study trains it: leave it to that one
                tqdm.write(f"{run.name}: in progress in another process; skipped here")
                continue
            with lock:
                if self.folder.result(run) is not None:  # finished by another process meanwhile
                    continue
                succeeded = self.execute_run(run, slot, lock)
            if succeeded:
                self.succeeded += 1
            elif not self.stop.is_set():
                self.failed.append(run)
                if not self.succeeded:  # the very first run failed: the others would fail alike
                    LOGGER.error("stopping the study: its first run failed; fix the cause and run the same command")
                    self.stop.set()

    def execute_run(self, run: Run, slot: DeviceSlot, lock: IO | None = None) -> bool:
        """train.py (fresh or --resume), then eval.py, then result.json; False when a step failed."""
        run_dir, log = self.folder.run_dir(run), self.folder.path / "console" / f"{run.name}.txt"
        resumed = (run_dir / "last.pth").is_file()
        start = time.perf_counter()
        status = run_logged(self.train_command(run, slot), log, self.stop,
                            lambda: self.progress.update(run, epochs_done(run_dir)), slot.env(), lock)
        train_seconds = time.perf_counter() - start
        if status != 0:
            return self._failure(run, "train.py", status, log)
        for stale in run_dir.glob("eval*"):  # an evaluation cut short earlier
            shutil.rmtree(stale)
        self.progress.update(run, self.args.epochs, "evaluating")
        start = time.perf_counter()
        status = run_logged(self.eval_command(run, slot.eval_device), log, self.stop, env=slot.env(), lock=lock)
        if status != 0:
            return self._failure(run, "eval.py", status, log)
        metrics = json.loads((run_dir / "eval" / "metrics.json").read_text(encoding="utf-8"))
        result = {"run": run.name, "levels": dict(run.variant), "seed": run.seed, "mAP50": metrics["mAP50"],
                  "mAP50_95": metrics["mAP50_95"], "weights": f"{self.args.evaluate}.pth",
                  "split": self.args.eval_split, "device": slot.label, "train_seconds": round(train_seconds, 1),
                  "resumed": resumed, "eval_seconds": round(time.perf_counter() - start, 1)}
        write_json_atomic(run_dir / RESULT_FILE, result)
        self.progress.update(run, self.args.epochs, "done")
        tqdm.write(f"{run.name}: mAP50 {result['mAP50']:.4f}, mAP50-95 {result['mAP50_95']:.4f} "
                   f"({train_seconds:.0f} s training{', resumed' if resumed else ''})")
        return True

    def _failure(self, run: Run, step: str, status: int, log: Path) -> bool:
        if not self.stop.is_set():
            tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
            LOGGER.error("%s: %s exited with status %d; see %s. Last lines:\n  %s", run.name, step, status, log,
                         "\n  ".join(tail))
        return False

    def train_command(self, run: Run, slot: DeviceSlot) -> list[str]:
        run_dir = self.folder.run_dir(run)
        command = slot.train_launcher()
        if (run_dir / "last.pth").is_file():
            return command + ["--resume", str(run_dir), "--device", slot.device]
        if run_dir.exists():
            discard_unfinished(run_dir)
        levels = [arg for factor in self.factors for arg in factor.train_args(run.level(factor.name))]
        return command + ["--data", self.args.data, "--epochs", str(self.args.epochs), *levels,
                          "--seed", str(run.seed), "--save-dir", str(self.folder.path), "--name", run.name,
                          "--device", slot.device, *self.train_flags]

    def eval_command(self, run: Run, device: str) -> list[str]:
        """eval.py on the run's checkpoint, with the data loading and the precision the run trained with (its
        validation scored that way too), whether they were passed through or are a factor of the study."""
        flags = list(self.train_flags)
        for factor in self.factors:  # a factor is never also passed through (check_train_flags)
            if factor.name in EVAL_FORWARDED:
                flags += factor.train_args(run.level(factor.name))
        forwarded = []
        for flag in ("--workers", "--precision"):
            value = option_value(flags, flag)
            if value is not None:
                forwarded += [flag, value]
        if "--no-amp" in flags:
            forwarded.append("--no-amp")
        run_dir = self.folder.run_dir(run)
        return [sys.executable, str(ROOT / "eval.py"), "--weights", str(run_dir / f"{self.args.evaluate}.pth"),
                "--data", self.args.data, "--split", self.args.eval_split, "--save-dir", str(run_dir), "--name", "eval",
                "--device", device, *forwarded]


# --------------------------------------------------------------------------------------------------- measuring
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(detectors: dict, device: torch.device, images: int, rounds: int) -> dict:
    """Batch-1 forward pass + box decoding (no NMS, whose cost depends on what a model detects) on a grey letterbox
    canvas, with each detector as predict.py runs it (fused Conv+BN, channels_last, the device's default precision).
    The variants take turns for `rounds` rounds after a warm-up round, and each keeps its fastest round, so a busy
    moment on a shared machine slows one round, not one variant."""
    best = dict.fromkeys(detectors, 0.0)
    for round_index in range(rounds + 1):
        for variant, detector in detectors.items():
            canvas = np.full((1, *detector.input_shape, 3), 114, np.uint8)
            count = images if round_index else 2
            _synchronize(device)
            start = time.perf_counter()
            for _ in range(count):
                detector.forward(canvas)
            _synchronize(device)
            if round_index:
                best[variant] = max(best[variant], count / (time.perf_counter() - start))
    return best


def measure_variants(folder: StudyFolder, finished: dict[Run, dict], device: str, images: int, rounds: int
                     ) -> dict[Variant, dict]:
    """Parameters, GFLOPs and images/s of every variant with a finished run, from that run's checkpoint. Variants
    that build the same model (multi-scale on or off, another mosaic probability) share one timing: their
    inference cost is equal by construction, and timing them apart would only show the machine's noise."""
    chosen: dict[Variant, Path] = {}
    for run, result in finished.items():
        chosen.setdefault(run.variant, folder.run_dir(run) / result["weights"])
    measured, models, detectors = {}, {}, {}
    for variant, path in chosen.items():
        loaded = load_runnable(path, device=device)
        model_key = json.dumps(loaded.config.to_dict(), sort_keys=True)
        if model_key not in models:
            models[model_key] = {"parameters": count_parameters(loaded.model),
                                 "gflops": count_gflops(loaded.model, tuple(loaded.config.input_shape))}
            if rounds > 0:
                detectors[model_key] = loaded.detector(optimize=True)
        measured[variant] = models[model_key]
    if detectors:
        LOGGER.info("timing %d models on %s (%d interleaved rounds of %d images)", len(detectors), device, rounds,
                    images)
        for model_key, speed in images_per_second(detectors, torch.device(device), images, rounds).items():
            models[model_key]["images_per_s"] = speed
    return measured


# ------------------------------------------------------------------------------------------------------ report
def report_header(stored: dict, args: argparse.Namespace, baseline: dict, counts: tuple[int, int],
                  run_seconds: float, command: str, device: str) -> str:
    flags = " ".join(stored["train_flags"]) or "(defaults)"
    factors = "; ".join(f"{name}: {', '.join(levels)}" for name, levels in stored["grid"].items())
    base = ", ".join(f"{name}={level}" for name, level in baseline.items())
    timing = (f"batch 1, forward pass + box decoding on a grey canvas at the run's input size, fused Conv+BN and the "
              f"device's default precision as predict.py; {args.speed_rounds} interleaved rounds of "
              f"{args.speed_images} images on {device}, fastest round per model (variants that build the same model "
              "share it)"
              if args.speed_rounds > 0 else "not measured (--speed-rounds 0)")
    return "\n".join([
        "# Study", "",
        f"Command: `{command}`", "",
        f"- data `{stored['data']}`, {stored['epochs']} epochs per run, seeds 0..{stored['seeds'] - 1}, train.py "
        f"flags: `{flags}`",
        f"- factors: {factors}",
        f"- baseline: {base} (the first level of each factor unless `--baseline NAME=LEVEL` says otherwise)",
        f"- scored by eval.py on the `{stored['eval_split']}` split with each run's `{stored['evaluate']}.pth`",
        f"- {counts[0]} of {counts[1]} runs finished; their run time summed {run_seconds / 60:.1f} min",
        f"- images/s: {timing}",
        "- Δ: mean over seeds of (variant - baseline) for the same seed (same data order, augmentation and initial "
        "weights of the shared layers), with a 95% Student-t interval; **better** / **worse** when the whole "
        "interval lies above / below 0, else **within noise**. A factor level's Δ is averaged over the other "
        "factors' levels; an interaction is how much a level's gain changes with another factor's level",
        f"- seeds for ±{args.detect:g}: how many seeds a true difference of {args.detect:g} would need for its 95% "
        "interval to exclude 0 with 80% power, at the spread of the per-seed differences observed here (Student t)",
        "- GFLOPs from torch.utils.flop_counter count convolutions and matrix products; attention blocks' pooling, "
        "sigmoids and products are not in them (images/s shows their cost)", ""])


def write_report(folder: StudyFolder, stored: dict, args: argparse.Namespace, command: str, device: str
                 ) -> tuple[str, int]:
    """Every report file for the runs of the study's whole grid that have finished; returns the Markdown body and
    the number of runs still missing. Hold folder.locked() around it."""
    if "grid" not in stored:
        raise StudyError(f"{folder.path} was made before study.json recorded its plan; run the study's own command "
                         "once more (it keeps every finished run, and writes the report)")
    runs = plan_runs(stored["grid"], stored["seeds"])
    finished = {run: result for run in runs if (result := folder.result(run)) is not None}
    if not finished:
        raise StudyError(f"no run of the study in {folder.path} has finished; see the messages above and "
                         f"{folder.path / 'console'}")
    design = Design(stored["grid"], parse_baseline(args.baseline, stored["grid"]), args.detect)
    scores = {(run.variant, run.seed): result for run, result in finished.items()}
    measured = measure_variants(folder, finished, device, args.speed_images, args.speed_rounds)
    tables = {"variants": variant_rows(design, scores, measured, args.metric),
              "effects": effect_rows(design, scores), "interactions": interaction_rows(design, scores),
              "runs": [run_row(result, run.variant, run.name) for run, result in finished.items()]}
    run_seconds = sum(r.get("train_seconds", 0) + r.get("eval_seconds", 0) for r in finished.values())
    header = report_header(stored, args, design.baseline, (len(finished), len(runs)), run_seconds, command, device)
    body = write_files(folder.path, header, design.factors, tables, args.metric, args.detect)
    return body, len(runs) - len(finished)


def report_only(args: argparse.Namespace, command: str) -> int:
    """--report: the study folder's own settings, nothing trained."""
    folder = StudyFolder(args.study)
    if not (folder.path / "study.json").is_file():
        raise MissingFileError(f"--study {args.study} holds no study.json; give the folder of a study")
    device = device_slots(args.devices, 1)[0].device
    with folder.locked():
        body, missing = write_report(folder, folder.read_settings(), args, command, device)
    print(body)
    print(f"study written to {folder.path} (ablation.md, ablation*.csv, ablation.png)")
    if missing:
        LOGGER.error("%d runs of the study have not finished yet; the report covers the others", missing)
        return 1
    return 0


def check_report_options(args: argparse.Namespace) -> None:
    if not args.detect > 0:
        raise ConfigError(f"--detect {args.detect}: give the difference to detect, in mAP (e.g. 0.02)")


def run_study(args: argparse.Namespace, train_flags: list[str], command: str) -> int:
    """Plan, train and evaluate what is missing (this shard's part), then write the report; 1 when runs of this
    command are missing."""
    check_report_options(args)
    if args.report:
        return report_only(args, command)
    factors = study_factors(args.vary, args.phi, args.at)
    check_train_flags(train_flags, tuple(f.name for f in factors if f.name not in STUDY_FLAGS))
    if not Path(args.data).exists():
        raise MissingFileError(f"--data {args.data} not found; give a VOCdevkit, images/+annotations/ folder or "
                               "COCO json, as for train.py")
    study = Study(args, train_flags, factors)
    parse_baseline(args.baseline, study.grid)  # a bad --baseline fails before hours of training
    with study.folder.locked():
        study.folder.record(study.settings(), study.grid, args.seeds)
    try:
        study.execute()
    except KeyboardInterrupt:
        LOGGER.warning("interrupted: the runs in flight saved their last.pth; run the same command to continue")
        raise
    missing_here = sum(study.folder.result(run) is None for run in study.todo)
    if study.shard and any(study.folder.result(run) is None for run in study.runs):
        done = sum(study.folder.result(run) is not None for run in study.runs)
        LOGGER.info("shard %d/%d finished its part: %d of the study's %d runs are done; the last shard to finish, or "
                    "--report, writes the report", *study.shard, done, len(study.runs))
    else:
        with study.folder.locked():
            body, _ = write_report(study.folder, study.folder.read_settings(), args, command,
                                   study.slots[0].eval_device)
        print(body)
        print(f"study written to {study.folder.path} (ablation.md, ablation*.csv, ablation.png)")
    if missing_here:
        LOGGER.error("%d of this command's %d runs did not finish; run the same command to retry them", missing_here,
                     len(study.todo))
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args, train_flags = parser.parse_known_args(argv)
    setup_logging(args.verbose)
    words = sys.argv[1:] if argv is None else argv
    command = "python -m utils.ablate " + " ".join(words)
    status = [1]

    def study() -> None:
        status[0] = run_study(args, train_flags, command)
    code = run_command(study, args.verbose, LOGGER)
    return code or status[0]


if __name__ == "__main__":
    sys.exit(main())
