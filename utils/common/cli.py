"""What every command shares: the argument parser (`CommandParser`: --help with every default and range, a bad
value as one line), range-checked argument types (`probability`, `positive_int`, ...), logging through tqdm, and
`run_command` (errors as one line, Ctrl-C and SIGTERM, out of memory).

Nothing heavy is imported here (no torch): `--help` and a bad value answer before the work's imports start.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator, NoReturn

from tqdm import tqdm

from utils.common.errors import ConfigError, ModelConfigError, UserError
from utils.common.text import EscapingFormatter

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
    console.setFormatter(EscapingFormatter("%(message)s"))  # names from data never reach the terminal raw
    console.setLevel(logging.DEBUG if verbose else (logging.INFO if main_process else logging.WARNING))
    root.addHandler(console)
    if log_file is not None:
        add_log_file(log_file)


def add_log_file(path: Path) -> logging.Handler:
    """Also log into `path`; returns the handler, for `remove_log_file` when that run ends."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(EscapingFormatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)
    return handler


def remove_log_file(handler: logging.Handler | None) -> None:
    """Stop logging into a file added by add_log_file (a second run in the same process gets its own)."""
    if handler is not None:
        logging.getLogger().removeHandler(handler)
        handler.close()


# ---------------------------------------------------------------------------------------------- ranges of values
class NumberRange:
    """A range of numbers, as an argparse `type` and as a check of values from files, so that a flag and the same
    option read from a --config file or a checkpoint obey one rule.

    `kind` is int or float; `low`/`high` are bounds (None: open), inclusive unless `low_open`/`high_open`. Floats
    must be finite (nan and inf are outside every range); ints must be whole (no 2.5, no True). `why` is added to the
    message of a value above `high` (e.g. where the bound comes from)."""

    def __init__(self, kind: type, low: float | None = None, high: float | None = None, low_open: bool = False,
                 high_open: bool = False, why: str = "") -> None:
        self.kind, self.low, self.high, self.low_open, self.high_open, self.why = (kind, low, high, low_open,
                                                                                    high_open, why)
        self.__name__ = self.text  # argparse names a type by __name__ in its own messages

    @property
    def text(self) -> str:
        """The range in words: 'a number in [0, 1]', 'an integer >= 1', 'a finite number > 0'."""
        noun = "an integer" if self.kind is int else ("a number" if self.low is not None and self.high is not None
                                                      else "a finite number")
        if self.low is not None and self.high is not None:
            return f"{noun} in {'(' if self.low_open else '['}{_plain(self.low)}, {_plain(self.high)}" \
                   f"{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{noun} {'>' if self.low_open else '>='} {_plain(self.low)}"
        if self.high is not None:
            return f"{noun} {'<' if self.high_open else '<='} {_plain(self.high)}"
        return noun

    def contains(self, value: float) -> bool:
        if self.kind is float and not math.isfinite(value):
            return False
        above_low = self.low is None or (value > self.low if self.low_open else value >= self.low)
        return above_low and (self.high is None or (value < self.high if self.high_open else value <= self.high))

    def convert(self, value: object) -> int | float:
        """`value` (a string from the command line, or a number from a file) as `kind` inside the range, or
        ValueError saying what is wrong with it."""
        if isinstance(value, bool) or (self.kind is int and isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{value!r} is not {self.text}")
        try:
            number = self.kind(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{value!r} is not {self.text}") from None
        if not self.contains(number):
            too_high = self.high is not None and math.isfinite(number) and number >= self.high
            raise ValueError(f"{value!r} is not {self.text}{self.why if too_high and self.why else ''}")
        return number

    def __call__(self, text: str) -> int | float:
        """argparse `type`: the error becomes argparse's `error: argument --flag: '2' is not a number in [0, 1]`."""
        try:
            return self.convert(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    def check(self, value: object, option: str) -> int | float:
        """A value read from a file (a --config YAML, a checkpoint): the converted value, or a ConfigError naming
        `option` (its flag)."""
        try:
            return self.convert(value)
        except ValueError as err:
            raise ConfigError(f"{option}: {err}") from None

    def __repr__(self) -> str:
        return self.text


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() and abs(number) < 1e15 else repr(number)


def max_workers() -> int:
    """The most data-loading processes a command starts: 4 per CPU (a loader worker waits on disk part of the
    time); more only competes for the same cores and memory."""
    return 4 * (os.cpu_count() or 1)


probability = NumberRange(float, 0, 1)  # thresholds (--conf, --iou), probabilities, fractions
positive_int = NumberRange(int, 1)  # counts and sizes (--epochs, --batch-size, --max-det)
non_negative_int = NumberRange(int, 0)  # counts where 0 means off or none (--save-period, --patience)
positive_float = NumberRange(float, 0, low_open=True)  # finite, > 0 (--lr, timeouts)
non_negative_float = NumberRange(float, 0)  # finite, >= 0 (--weight-decay, --grad-clip, warm-up epochs)
random_seed = NumberRange(int, 0, 2**32 - 1)  # what numpy and torch accept as a seed
workers = NumberRange(int, 0, max_workers(), why=f" (4 per CPU: this machine has {os.cpu_count() or 1}; more "
                                                 "processes only compete for the same cores and memory)")


def argument_type(parse: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse `type` from a parser that raises ConfigError, which then also checks the values read from files
    (so that both follow one rule): its message becomes argparse's one error line."""
    def convert(text: str) -> object:
        try:
            return parse(text)
        except ConfigError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


# ---------------------------------------------------------------------------------------------------- the parser
class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every default and the range of every number, except where it would say nothing or repeat itself:
    None and '' (the help text says what no value means: 'default: the checkpoint's', 'default: best available'),
    switches that are off unless given (store_true / store_false), and help texts that already name their default.
    Descriptions keep their layout."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help.make() if isinstance(action.help, LazyHelp) else action.help or ""
        if text == argparse.SUPPRESS:
            return text
        notes = [action.type.text.replace("%", "%%")] if isinstance(action.type, NumberRange) else []
        switch = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        if not (action.default in (None, "", argparse.SUPPRESS) or switch or "default" in text.lower()):
            notes.append("default: %(default)s")
        return text + (f" ({'; '.join(notes)})" if notes else "")


class LazyHelp(str):
    """A help text made when --help prints it (DefaultsHelpFormatter calls `make`): one that lists a registry whose
    import needs torch (the attention blocks) keeps building the parser, and refusing a bad value, light."""

    def __new__(cls, make: Callable[[], str]) -> "LazyHelp":
        text = super().__new__(cls, "(listed by --help)")
        text.make = make
        return text


class CommandParser(argparse.ArgumentParser):
    """The parser of every command: --help through DefaultsHelpFormatter, and a bad option or value as one line
    (`error: argument --conf: '2' is not a number in [0, 1]`), exit status 2, before any work or heavy import."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (--help lists the options)\n")


PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # --precision; utils.common.device.resolve_precision applies it
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
    except (MemoryError, RuntimeError) as err:
        if verbose or not is_out_of_memory(err):
            raise
        logger.error("error: out of memory (%s): %s", type(err).__name__, OUT_OF_MEMORY_FIX)
        return 1
    return 0


def is_out_of_memory(err: BaseException) -> bool:
    """MemoryError, CUDA's OutOfMemoryError, and the RuntimeError of torch's CPU allocator ('DefaultCPUAllocator:
    can't allocate memory: you tried to allocate 17179869184 bytes'), which is what a too large input gets on a CPU."""
    if isinstance(err, MemoryError):
        return True
    torch = sys.modules.get("torch")  # never imported just for this check
    if torch is not None and isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "can't allocate memory" in str(err)
