"""What every command shares: logging through tqdm, --help formatting, and `run_command` (errors as one line,
Ctrl-C and SIGTERM, out of memory)."""
from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator

import torch
from tqdm import tqdm

from utils.common.device import PRECISIONS
from utils.common.errors import ConfigError, ModelConfigError, UserError

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class TqdmHandler(logging.StreamHandler):
    """Log lines that do not tear the progress bar apart."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except (OSError, ValueError):
            self.handleError(record)


def setup_logging(verbose: bool = False, log_file: Path | None = None, main_process: bool = True) -> None:
    """Console logging through tqdm on the main process (warnings only elsewhere), plus an optional log file."""
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    console = TqdmHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    console.setLevel(logging.DEBUG if verbose else (logging.INFO if main_process else logging.WARNING))
    root.addHandler(console)
    if log_file is not None:
        add_log_file(log_file)


def add_log_file(path: Path) -> logging.Handler:
    """Also log into `path`; returns the handler, for `remove_log_file` when that run ends."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)
    return handler


def remove_log_file(handler: logging.Handler | None) -> None:
    """Stop logging into a file added by add_log_file (a second run in the same process gets its own)."""
    if handler is not None:
        logging.getLogger().removeHandler(handler)
        handler.close()


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every default, except where it would say nothing or repeat itself: None and '' (the help text says
    what no value means: 'default: the checkpoint's', 'default: best available'), switches that are off unless given
    (store_true / store_false), and help texts that already name their default. Descriptions keep their layout."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        switch = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        if action.default in (None, "") or switch or "default" in text.lower():
            return text
        return super()._get_help_string(action)


PRECISION_HELP = ("compute precision: auto (bf16, else fp16, on CUDA; fp32 on every other device), fp32, bf16 or fp16 "
                  "(autocast). Fixed by this option, never measured, and recorded in the run's files")


def add_precision_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--precision, the same in train.py, eval.py and predict.py (see utils.common.device.resolve_precision)."""
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)


def requested_precision(precision: str, fp32_flag: bool, flag: str) -> str:
    """--precision, with an older fp32 switch (`flag`: --no-amp, --fp32) as a spelling of --precision fp32; the two
    contradicting each other is one clear error."""
    if not fp32_flag:
        return precision
    if precision not in ("auto", "fp32"):
        raise ConfigError(f"{flag} asks for fp32 but --precision asks for {precision}; give one of them")
    return "fp32"


OUT_OF_MEMORY = (MemoryError, torch.cuda.OutOfMemoryError)
OUT_OF_MEMORY_FIX = "lower --batch-size, --input-shape or --workers (run with --verbose for the original error)"


class Terminated(KeyboardInterrupt):
    """SIGTERM (what SLURM, Kubernetes and `timeout` send), raised like Ctrl-C so the same clean-up runs (train.py
    saves last.pth); run_command then exits with 143 (128 + SIGTERM), as a process killed by it would."""


def _raise_terminated(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut short the clean-up of the first
    raise Terminated


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises Terminated inside the block (main thread only: only it can set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_command(action: Callable[[], object], verbose: bool, logger: logging.Logger) -> int:
    """Run `action()` for an entry script and return its exit status.

    0 on success; 130 on Ctrl-C; 1 with one `error: ...` line for what the user can fix (UserError, OSError) and with
    one line naming the fix for running out of memory. With `verbose` those re-raise, so the traceback shows.
    Anything else (a bug here, in torch or in a dependency) propagates with its traceback: it is what to report.
    """
    try:
        with _sigterm_raises():
            action()
    except Terminated:
        logger.warning("terminated (SIGTERM): exit 143")
        return 143
    except KeyboardInterrupt:
        return 130
    except (UserError, ModelConfigError, OSError) as err:
        if verbose:
            raise
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            logger.error("error: no space left on %s; free some space (then --resume a training run)",
                         err.filename or "the output device")
            return 1
        logger.error("error: %s", err)
        return 1
    except OUT_OF_MEMORY as err:
        if verbose:
            raise
        logger.error("error: out of memory (%s): %s", type(err).__name__, OUT_OF_MEMORY_FIX)
        return 1
    return 0
