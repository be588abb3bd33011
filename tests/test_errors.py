"""The error policy of the command-line tools: what the user can fix is one line, a bug keeps its traceback."""
from __future__ import annotations

import logging

import pytest
import torch

from utils.common.cli import run_command
from utils.common.errors import ConfigError, DatasetError, MissingDependencyError, MissingFileError, UserError
from utils.common.image_io import ImageReadError
from utils.data.annotations import AnnotationError
from utils.data.loader import CacheTooLargeError
from utils.deploy.quantize import QuantizationError
from utils.deploy.sources import SourceError
from utils.model.checkpoint import CheckpointError
from utils.model.darknet import DarknetFormatError
from utils.runtime.onnx import ExportError
from utils.train.trainer import NonFiniteLossError

LOGGER = logging.getLogger("test_errors")
# every project error type, with the builtin base that existing callers catch
PROJECT_ERRORS = [(ImageReadError, ValueError), (AnnotationError, ValueError), (SourceError, ValueError),
                  (DarknetFormatError, ValueError), (ConfigError, ValueError), (DatasetError, ValueError),
                  (CheckpointError, RuntimeError), (ExportError, RuntimeError), (QuantizationError, RuntimeError),
                  (CacheTooLargeError, RuntimeError), (NonFiniteLossError, RuntimeError),
                  (MissingFileError, FileNotFoundError), (MissingDependencyError, ImportError)]


def raiser(error: BaseException):
    def action() -> None:
        raise error
    return action


def error_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("kind,builtin", PROJECT_ERRORS, ids=[k.__name__ for k, _ in PROJECT_ERRORS])
def test_every_project_error_is_a_user_error_and_keeps_its_builtin_base(kind, builtin, caplog):
    assert issubclass(kind, UserError) and issubclass(kind, builtin)
    assert run_command(raiser(kind("data/x.jpg: broken; fix it")), False, LOGGER) == 1
    assert error_lines(caplog) == ["error: data/x.jpg: broken; fix it"]


def test_os_errors_are_one_line_and_verbose_reraises(caplog):
    assert run_command(raiser(PermissionError("logs: permission denied")), False, LOGGER) == 1
    assert error_lines(caplog) == ["error: logs: permission denied"]
    with pytest.raises(ConfigError):
        run_command(raiser(ConfigError("--phi 7")), True, LOGGER)


def test_a_runtime_error_from_inside_torch_keeps_its_traceback(caplog):
    """A bug (here a shape mismatch inside torch) must reach the user with its traceback, not as one line."""
    def buggy() -> None:
        torch.zeros(2, 3) @ torch.zeros(2, 3)
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        run_command(buggy, False, LOGGER)
    assert not error_lines(caplog)


def test_a_bug_inside_a_command_reaches_the_user_with_its_traceback(monkeypatch):
    """The same through a real entry point: predict.main lets a torch RuntimeError out instead of printing a line."""
    import predict

    def buggy_run(args) -> None:
        torch.zeros(2, 3) @ torch.zeros(2, 3)
    monkeypatch.setattr("utils.deploy.cli.run", buggy_run)
    monkeypatch.setattr("utils.deploy.cli.setup_logging", lambda verbose=False: None)
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        predict.main(["--source", "photo.jpg"])


@pytest.mark.parametrize("builtin", [ValueError, TypeError, KeyError, ImportError])
def test_plain_builtin_errors_are_bugs(builtin):
    with pytest.raises(builtin):
        run_command(raiser(builtin("a bug")), False, LOGGER)


@pytest.mark.parametrize("oom", [MemoryError(), torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate")])
def test_out_of_memory_names_the_fix(oom, caplog):
    assert run_command(raiser(oom), False, LOGGER) == 1
    (line,) = error_lines(caplog)
    assert line.startswith("error: out of memory") and all(f in line for f in ("--batch-size", "--input-shape",
                                                                                 "--workers", "--verbose"))
    with pytest.raises(type(oom)):
        run_command(raiser(oom), True, LOGGER)


def test_ctrl_c_exits_130():
    assert run_command(raiser(KeyboardInterrupt()), False, LOGGER) == 130
