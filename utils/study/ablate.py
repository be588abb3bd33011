"""Does an attention block really help on your data? Train and evaluate every (attention, placement, seed) alike:

    python -m utils.ablate --data VOCdevkit --phi none,se,cbam,eca,ca --at neck,backbone --seeds 3 --epochs 30 \\
        --input-shape 320 [any other train.py flag]

Every run is a normal train.py run folder under the study folder (default logs/ablation): same data, same schedule,
and for a given seed the same initial weights of the shared layers, the same data order and the same augmentation,
so seed s of two attentions differ only by the attention. `none` has no placement and runs once per seed. Each run is
then scored by eval.py on one split (default test). The study writes ablation.csv, ablation.md and ablation.png: per
attention and placement mean +- std of mAP50 and mAP50-95 over seeds, parameters, GFLOPs, images/s, and against
`none` the mean difference paired by seed with a 95% Student-t interval and a verdict (better / worse / within noise).

Interrupted (Ctrl-C, a kill, a reboot)? Run the same command again: finished runs (those with result.json, written
atomically after their evaluation) are kept, a run cut short resumes from its last.pth. One run per device at a time:
every CUDA device gets its own run; on a CPU the runs go one after another.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import ctypes.util
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nets.attention import attention_name
from nets.summary import count_gflops, count_parameters
from nets.yolo import ATTENTION_PLACES, attention_place
from utils.common.cli import CommandParser, positive_int, run_command, setup_logging
from utils.common.errors import ConfigError, MissingFileError, UserError
from utils.runtime.loader import load_runnable
from utils.study.stats import mean_std, paired_difference
from utils.train import cli as train  # train.py's parser defines the flags a study passes through

try:
    import fcntl  # POSIX advisory locks (one study process per folder)
except ImportError:  # Windows: no advisory locks here; do not start two studies in one folder
    fcntl = None

LOGGER = logging.getLogger("ablate")
ROOT = Path(__file__).resolve().parents[2]
RESULT_FILE = "result.json"  # written last, atomically: its presence means the run is finished
# train.py flags that the study itself sets for each run
STUDY_FLAGS = ("phi", "attention_at", "seed", "name", "save_dir", "resume", "device", "data", "epochs")


class StudyError(UserError, RuntimeError):
    """A study that cannot go on as asked (its folder is in use or in an unexpected state, no run finished); the
    message says what to do."""


@dataclass(frozen=True)
class Run:
    """One cell of the study: attention, placement ('-' for none) and seed."""

    attention: str
    placement: str
    seed: int

    @property
    def name(self) -> str:
        where = "" if self.attention == "none" else f"-{self.placement}"
        return f"{self.attention}{where}-s{self.seed}"

    @property
    def variant(self) -> tuple[str, str]:
        return self.attention, self.placement


def plan_runs(attentions: list[str], placements: list[str], seeds: int) -> list[Run]:
    """Seed-major order, so that complete paired comparisons exist as early as possible."""
    runs = []
    for seed in range(seeds):
        for name in attentions:
            for at in (["-"] if name == "none" else placements):
                runs.append(Run(name, at, seed))
    return runs


def get_args_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: train.py's flags pass through untouched (--eval-period is not --eval-split)
    p = CommandParser(description=__doc__, allow_abbrev=False)
    p.add_argument("--data", default="VOCdevkit", help="dataset, as train.py --data")
    p.add_argument("--phi", default="none,se,cbam,eca,ca", help="attentions to compare, comma-separated (none is the "
                   "baseline the verdicts compare against)")
    p.add_argument("--at", default="neck", help=f"placements, comma-separated: {','.join(ATTENTION_PLACES)}")
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds 0..N-1 per attention and placement")
    p.add_argument("--epochs", type=positive_int, default=30, help="epochs per run")
    p.add_argument("--study", default="logs/ablation", help="study folder; the same command again resumes it")
    p.add_argument("--eval-split", default="test", help="split every run is scored on with eval.py")
    p.add_argument("--evaluate", choices=("best", "last"), default="best",
                   help="checkpoint scored: best.pth (best val mAP50, what train.py ships) or last.pth")
    p.add_argument("--devices", default=None, help="cpu, or CUDA indices such as 0,1 (default: every CUDA device, "
                   "else the CPU); one run per device at a time")
    p.add_argument("--speed-images", type=positive_int, default=30, help="images per timing round for images/s")
    p.add_argument("--speed-rounds", type=positive_int, default=5, help="interleaved timing rounds (the best counts)")
    p.add_argument("--verbose", action="store_true", help="debug logging and full tracebacks")
    return p


# ------------------------------------------------------------------------------------------------ arguments
def parse_list(text: str, parse, what: str) -> list[str]:
    items = [parse(t) for t in text.split(",") if t.strip()]
    if not items:
        raise ConfigError(f"{what} is empty")
    return list(dict.fromkeys(items))


def check_train_flags(extra: list[str]) -> None:
    """The pass-through flags must be valid train.py flags and must not set what the study sets per run."""
    parser = train.get_args_parser()
    parser.prog = "train.py flags given to utils.study.ablate"
    sentinel = object()
    parser.set_defaults(**{dest: sentinel for dest in STUDY_FLAGS})
    args = parser.parse_args(extra)
    taken = [dest for dest in STUDY_FLAGS if getattr(args, dest) is not sentinel]
    if taken:
        raise ConfigError(f"--{taken[0].replace('_', '-')} is set by the study for each run; use utils.study.ablate's "
                         "--data, --phi, --at, --seeds, --epochs, --study and --devices instead")


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


def option_value(extra: list[str], flag: str) -> str | None:
    """The value of `flag` among the pass-through train.py flags (`--flag v` or `--flag=v`), else None."""
    for i, token in enumerate(extra):
        if token == flag and i + 1 < len(extra):
            return extra[i + 1]
        if token.startswith(flag + "="):
            return token.split("=", 1)[1]
    return None


# ------------------------------------------------------------------------------------------- the study folder
class StudyFolder:
    """The study's folder: its settings (study.json), a lock against a second study process, the run folders."""

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()
        self._lock_handle = None

    def lock(self) -> None:
        """One study process per folder; the lock dies with the process, even on SIGKILL."""
        self.path.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            return
        self._lock_handle = open(self.path / "study.lock", "w")  # noqa: SIM115 - held for the process lifetime
        try:
            fcntl.flock(self._lock_handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StudyError(f"another utils.study.ablate process is working in {self.path}; wait for it, or pass "
                               "another --study folder") from None

    def check_settings(self, settings: dict) -> None:
        """Write study.json on the first start; afterwards the settings that shape every run must be the same
        (attentions, placements and seeds may be added)."""
        path = self.path / "study.json"
        if path.is_file():
            stored = json.loads(path.read_text(encoding="utf-8"))
            changed = [k for k in settings if stored.get(k) != settings[k]]
            if changed:
                key = changed[0]
                raise ConfigError(f"{self.path} holds a study made with {key} = {stored.get(key)!r}, not "
                                 f"{settings[key]!r}; rerun it with the same settings to resume, or pass another "
                                 "--study folder")
            return
        write_json_atomic(path, settings)

    def run_dir(self, run: Run) -> Path:
        return self.path / run.name

    def result(self, run: Run) -> dict | None:
        """The finished run's result.json, or None while it is missing, unreadable or for another run."""
        path = self.run_dir(run) / RESULT_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if data.get("run") == run.name and "mAP50" in data else None


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)


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


def run_logged(command: list[str], log_path: Path, stop: threading.Event, on_poll=None) -> int:
    """Run `command` with its console output appended to `log_path`; returns its exit status. `on_poll` is called
    every second while it runs; `stop` set (Ctrl-C) sends it SIGINT, so train.py saves last.pth and exits."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   preexec_fn=_die_with_parent(os.getpid()))
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
    """Runs the planned (attention, placement, seed) cells that have no result yet, one per device at a time."""

    def __init__(self, args: argparse.Namespace, train_flags: list[str]):
        self.args, self.train_flags = args, train_flags
        self.folder = StudyFolder(args.study)
        self.attentions = parse_list(args.phi, attention_name, "--phi")
        self.placements = parse_list(args.at, attention_place, "--at")
        self.runs = plan_runs(self.attentions, self.placements, args.seeds)
        self.devices = study_devices(args.devices)
        self.stop = threading.Event()
        self.failed: list[Run] = []
        self.succeeded = 0

    def settings(self) -> dict:
        """What must be equal for every run of the study (stored in study.json)."""
        return {"data": str(Path(self.args.data).resolve()), "epochs": self.args.epochs,
                "eval_split": self.args.eval_split, "evaluate": self.args.evaluate, "train_flags": self.train_flags}

    def execute(self) -> None:
        """Train and evaluate every pending run; Ctrl-C stops the runs in flight (they keep last.pth) and re-raises."""
        pending = [run for run in self.runs if self.folder.result(run) is None]
        LOGGER.info("study %s: %d runs, %d finished, %d to do on %s", self.folder.path, len(self.runs),
                    len(self.runs) - len(pending), len(pending), ", ".join(self.devices))
        jobs: queue.Queue = queue.Queue()
        for run in pending:
            jobs.put(run)
        self.progress = StudyProgress(self.runs, self.args.epochs, self.folder)
        workers = [threading.Thread(target=self._worker, args=(device, jobs), name=f"study-{device}", daemon=True)
                   for device in self.devices]
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

    def _worker(self, device: str, jobs: queue.Queue) -> None:
        while not self.stop.is_set():
            try:
                run = jobs.get_nowait()
            except queue.Empty:
                return
            if self.execute_run(run, device):
                self.succeeded += 1
            elif not self.stop.is_set():
                self.failed.append(run)
                if not self.succeeded:  # the very first run failed: the others would fail alike
                    LOGGER.error("stopping the study: its first run failed; fix the cause and run the same command")
                    self.stop.set()

    def execute_run(self, run: Run, device: str) -> bool:
        """train.py (fresh or --resume), then eval.py, then result.json; False when a step failed."""
        run_dir, log = self.folder.run_dir(run), self.folder.path / "console" / f"{run.name}.txt"
        resumed = (run_dir / "last.pth").is_file()
        start = time.perf_counter()
        status = run_logged(self.train_command(run, device), log, self.stop,
                            lambda: self.progress.update(run, epochs_done(run_dir)))
        train_seconds = time.perf_counter() - start
        if status != 0:
            return self._failure(run, "train.py", status, log)
        for stale in run_dir.glob("eval*"):  # an evaluation cut short earlier
            shutil.rmtree(stale)
        self.progress.update(run, self.args.epochs, "evaluating")
        start = time.perf_counter()
        status = run_logged(self.eval_command(run_dir, device), log, self.stop)
        if status != 0:
            return self._failure(run, "eval.py", status, log)
        metrics = json.loads((run_dir / "eval" / "metrics.json").read_text(encoding="utf-8"))
        result = {"run": run.name, **asdict(run), "mAP50": metrics["mAP50"], "mAP50_95": metrics["mAP50_95"],
                  "weights": f"{self.args.evaluate}.pth", "split": self.args.eval_split, "device": device,
                  "train_seconds": round(train_seconds, 1), "resumed": resumed,
                  "eval_seconds": round(time.perf_counter() - start, 1)}
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

    def train_command(self, run: Run, device: str) -> list[str]:
        run_dir = self.folder.run_dir(run)
        command = [sys.executable, str(ROOT / "train.py")]
        if (run_dir / "last.pth").is_file():
            return command + ["--resume", str(run_dir), "--device", device]
        if run_dir.exists():
            discard_unfinished(run_dir)
        placement = [] if run.attention == "none" else ["--attention-at", run.placement]
        return command + ["--data", self.args.data, "--epochs", str(self.args.epochs), "--phi", run.attention,
                          *placement, "--seed", str(run.seed), "--save-dir", str(self.folder.path),
                          "--name", run.name, "--device", device, *self.train_flags]

    def eval_command(self, run_dir: Path, device: str) -> list[str]:
        forwarded = []
        workers = option_value(self.train_flags, "--workers")
        if workers is not None:
            forwarded += ["--workers", workers]
        if "--no-amp" in self.train_flags:
            forwarded.append("--no-amp")
        precision = option_value(self.train_flags, "--precision")
        if precision is not None:  # scored in the precision the runs trained in, as their validation was
            forwarded += ["--precision", precision]
        return [sys.executable, str(ROOT / "eval.py"), "--weights", str(run_dir / f"{self.args.evaluate}.pth"),
                "--data", self.args.data, "--split", self.args.eval_split, "--save-dir", str(run_dir), "--name", "eval",
                "--device", device, *forwarded]

    def results(self) -> list[dict]:
        return [r for r in (self.folder.result(run) for run in self.runs) if r is not None]


# --------------------------------------------------------------------------------------------------- measuring
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(detectors: dict, device: torch.device, images: int, rounds: int) -> dict:
    """Batch-1 forward pass + box decoding (no NMS, whose cost depends on what a model detects) on a grey letterbox
    canvas, with each detector as predict.py runs it (fused Conv+BN, channels_last, the device's default precision). The
    variants take turns for `rounds` rounds after a warm-up round, and each keeps its fastest round, so a busy
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


def measure_variants(study: Study, results: list[dict]) -> dict[tuple[str, str], dict]:
    """Parameters, GFLOPs and images/s of every variant with a finished run, from that run's checkpoint."""
    device = torch.device(study.devices[0])
    chosen: dict[tuple[str, str], Path] = {}
    for result in results:
        chosen.setdefault((result["attention"], result["placement"]), study.folder.path / result["run"] /
                          result["weights"])
    measured, detectors = {}, {}
    for variant, path in chosen.items():
        loaded = load_runnable(path, device=str(device))
        measured[variant] = {"parameters": count_parameters(loaded.model),
                             "gflops": count_gflops(loaded.model, tuple(loaded.config.input_shape))}
        detectors[variant] = loaded.detector(optimize=True)
    LOGGER.info("timing %d variants on %s (%d interleaved rounds of %d images)", len(detectors), device,
                study.args.speed_rounds, study.args.speed_images)
    speeds = images_per_second(detectors, device, study.args.speed_images, study.args.speed_rounds)
    for variant, speed in speeds.items():
        measured[variant]["images_per_s"] = speed
    return measured


# ---------------------------------------------------------------------------------------------------- the table
METRICS = ("mAP50", "mAP50_95")
COLUMNS = ("attention", "placement", "seeds", "mAP50_mean", "mAP50_std", "mAP50_95_mean", "mAP50_95_std",
           "parameters", "gflops", "images_per_s", "pairs", "delta_mAP50", "delta_mAP50_low", "delta_mAP50_high",
           "verdict_mAP50", "delta_mAP50_95", "delta_mAP50_95_low", "delta_mAP50_95_high", "verdict_mAP50_95")


def summarise(results: list[dict], measured: dict | None = None, order: list[tuple[str, str]] | None = None
              ) -> list[dict]:
    """One row per (attention, placement): mean and std over seeds, sizes and speed, and against none the mean
    paired difference with its 95% interval and verdict (only seeds that both have count)."""
    by_variant: dict[tuple[str, str], dict[int, dict]] = {}
    for result in results:
        by_variant.setdefault((result["attention"], result["placement"]), {})[int(result["seed"])] = result
    planned = list(dict.fromkeys(order or []))
    variants = [v for v in planned if v in by_variant] + sorted(set(by_variant) - set(planned))
    baseline = by_variant.get(("none", "-"), {})
    rows = []
    for variant in variants:
        per_seed = by_variant[variant]
        row = {"attention": variant[0], "placement": variant[1], "seeds": len(per_seed),
               **(measured or {}).get(variant, {})}
        for key in METRICS:
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std([r[key] for r in per_seed.values()])
        common = sorted(set(per_seed) & set(baseline))
        if variant != ("none", "-") and common:
            row["pairs"] = len(common)
            for key in METRICS:
                diff = paired_difference([baseline[s][key] for s in common], [per_seed[s][key] for s in common])
                row.update({f"delta_{key}": diff.mean, f"delta_{key}_low": diff.low, f"delta_{key}_high": diff.high,
                            f"verdict_{key}": diff.verdict})
        rows.append(row)
    return rows


def _mean_std_text(row: dict, key: str) -> str:
    std = row.get(f"{key}_std")
    return f"{row[f'{key}_mean']:.4f} ± {std:.4f}" if std is not None else f"{row[f'{key}_mean']:.4f}"


def _delta_text(row: dict, key: str) -> str:
    if f"delta_{key}" not in row:
        return "—"
    low, high = row[f"delta_{key}_low"], row[f"delta_{key}_high"]
    interval = f" [{low:+.4f}, {high:+.4f}]" if low is not None else ""
    return f"{row[f'delta_{key}']:+.4f}{interval}"


def format_table(rows: list[dict]) -> str:
    """The Markdown table printed at the end and written into ablation.md."""
    lines = ["| attention | placement | seeds | mAP50 | mAP50-95 | parameters | GFLOPs | images/s | "
             "Δ mAP50 vs none [95% CI] | verdict | Δ mAP50-95 vs none [95% CI] | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        size = (f"{row['parameters']:,} | {row['gflops']:.3f} | {row['images_per_s']:.1f}" if "parameters" in row
                else "— | — | —")
        lines.append(f"| {row['attention']} | {row['placement']} | {row['seeds']} | {_mean_std_text(row, 'mAP50')} | "
                     f"{_mean_std_text(row, 'mAP50_95')} | {size} | {_delta_text(row, 'mAP50')} | "
                     f"{row.get('verdict_mAP50', '—')} | {_delta_text(row, 'mAP50_95')} | "
                     f"{row.get('verdict_mAP50_95', '—')} |")
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path, columns: tuple[str, ...] = COLUMNS) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else (f"{row[k]:.6g}" if isinstance(row.get(k), float)
                                                                else row[k])) for k in columns})
    os.replace(tmp, path)


def plot_study(rows: list[dict], path: Path) -> None:
    """mAP50 and mAP50-95 (mean +- std over seeds) per variant, and the paired differences against none with their
    95% intervals."""
    # local: matplotlib takes 0.7-0.8 s to import on the 2-core CI machine (python -X importtime); only the report at
    # the end of a study needs it, not --help, a bad flag, or the tests of the planning and statistics
    import matplotlib
    matplotlib.use("Agg")  # files only; studies run on machines without a display
    import matplotlib.pyplot as plt

    labels = [r["attention"] if r["placement"] == "-" else f"{r['attention']}\n{r['placement']}" for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(max(13.0, 4 + 2.4 * len(rows)), 4.2), squeeze=False)
    for ax, key, title in ((axes[0][0], "mAP50", "mAP50"), (axes[0][1], "mAP50_95", "mAP50-95")):
        means = [r[f"{key}_mean"] for r in rows]
        errors = [r[f"{key}_std"] or 0.0 for r in rows]
        ax.bar(range(len(rows)), means, yerr=errors, capsize=4, color="#4c72b0")
        ax.set_xticks(range(len(rows)), labels, fontsize=8)
        ax.set_title(f"{title}, mean ± std over seeds", fontsize=10)
        low = min(m - e for m, e in zip(means, errors, strict=True))
        ax.set_ylim(max(0.0, low - 0.1 * (max(means) - low + 1e-9)), None)  # differences are small: zoom in
        ax.grid(axis="y", alpha=0.3)
    _plot_deltas(axes[0][2], rows)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_deltas(ax, rows: list[dict]) -> None:
    compared = [r for r in rows if "delta_mAP50" in r]
    for offset, key, color in ((-0.15, "mAP50", "#4c72b0"), (0.15, "mAP50_95", "#dd8452")):
        ys = [i + offset for i in range(len(compared))]
        means = [r[f"delta_{key}"] for r in compared]
        low = [r[f"delta_{key}"] - r[f"delta_{key}_low"] if r[f"delta_{key}_low"] is not None else 0 for r in compared]
        high = [r[f"delta_{key}_high"] - r[f"delta_{key}"] if r[f"delta_{key}_high"] is not None else 0
                for r in compared]
        ax.errorbar(means, ys, xerr=[low, high], fmt="o", capsize=4, color=color, label=key.replace("_", "-"))
    ax.axvline(0.0, color="grey", lw=1)
    ax.set_yticks(range(len(compared)), [f"{r['attention']} {r['placement']}" for r in compared], fontsize=8)
    ax.set_ylim(len(compared) - 0.5, -0.5)  # first variant on top
    ax.set_title("attention - none (paired by seed), 95% CI", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)


# ------------------------------------------------------------------------------------------------------ report
RUN_COLUMNS = ("run", "attention", "placement", "seed", "mAP50", "mAP50_95", "weights", "split", "device",
               "train_seconds", "eval_seconds", "resumed")


def report_header(study: Study, results: list[dict], command: str, wall_seconds: float) -> str:
    run_seconds = sum(r["train_seconds"] + r["eval_seconds"] for r in results)
    flags = " ".join(study.train_flags) or "(defaults)"
    return "\n".join([
        "# Attention ablation", "",
        f"Command: `{command}`", "",
        f"- data `{study.args.data}`, {study.args.epochs} epochs per run, seeds 0..{study.args.seeds - 1}, "
        f"train.py flags: `{flags}`",
        f"- scored by eval.py on the `{study.args.eval_split}` split with each run's `{study.args.evaluate}.pth`",
        f"- {len(results)} of {len(study.runs)} runs finished; their run time summed {run_seconds / 60:.1f} min; "
        f"this session's wall time {wall_seconds / 60:.1f} min",
        f"- images/s: batch 1, forward pass + box decoding on a grey canvas at the run's input size, fused Conv+BN "
        f"and the device's default precision as predict.py; {study.args.speed_rounds} interleaved rounds of "
        f"{study.args.speed_images} images on {study.devices[0]}, fastest round per variant",
        "- Δ: mean over seeds of (attention - none) for the same seed (same data order, augmentation and initial "
        "weights of the shared layers), with a 95% Student-t interval; **better** / **worse** when the whole "
        "interval lies above / below 0, else **within noise**",
        "- GFLOPs from torch.utils.flop_counter count convolutions and matrix products; the attention blocks' "
        "pooling, sigmoids and products are not in them (images/s shows their cost)", ""])


def write_report(study: Study, rows: list[dict], results: list[dict], command: str, wall_seconds: float) -> str:
    """ablation.csv, ablation_runs.csv, ablation.md and ablation.png in the study folder; returns the table."""
    folder = study.folder.path
    write_csv(rows, folder / "ablation.csv")
    write_csv(results, folder / "ablation_runs.csv", RUN_COLUMNS)
    plot_study(rows, folder / "ablation.png")
    table = format_table(rows)
    text = report_header(study, results, command, wall_seconds) + "\n" + table + "\n\n![ablation](ablation.png)\n"
    (folder / "ablation.md").write_text(text, encoding="utf-8")
    return table


def run_study(args: argparse.Namespace, train_flags: list[str], command: str) -> int:
    """Plan, train and evaluate what is missing, then measure and write the report; 1 when runs are missing."""
    if args.seeds < 1 or args.epochs < 1:
        raise ConfigError(f"--seeds and --epochs must be at least 1 (got {args.seeds} and {args.epochs})")
    check_train_flags(train_flags)
    if not Path(args.data).exists():
        raise MissingFileError(f"--data {args.data} not found; give a VOCdevkit, images/+annotations/ folder or "
                                "COCO json, as for train.py")
    study = Study(args, train_flags)
    study.folder.lock()
    study.folder.check_settings(study.settings())
    start = time.perf_counter()
    try:
        study.execute()
    except KeyboardInterrupt:
        LOGGER.warning("interrupted: the runs in flight saved their last.pth; run the same command to continue")
        raise
    results = study.results()
    if not results:
        raise StudyError(f"no run of the study in {study.folder.path} has finished; see the messages above and "
                           f"{study.folder.path / 'console'}")
    measured = measure_variants(study, results)
    rows = summarise(results, measured, [run.variant for run in study.runs])
    table = write_report(study, rows, results, command, time.perf_counter() - start)
    print(table)
    print(f"study written to {study.folder.path} (ablation.md, ablation.csv, ablation.png)")
    missing = len(study.runs) - len(results)
    if missing:
        LOGGER.error("%d of %d runs did not finish; run the same command to retry them", missing, len(study.runs))
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
