"""The one base of the errors a user can fix, so entry points can tell them from bugs.

`utils.run_logging.run_command` prints a `UserError` (and an `OSError`) as one `error: ...` line; anything else keeps
its traceback, because it is a bug to report (in this project, in torch, in a dependency). Each message names the file
or the flag at fault and says what to do.

The project's other error types derive from `UserError` too, and keep the builtin base that callers catch (an
`ImageReadError` is a `ValueError`, a `CheckpointError` a `RuntimeError`); each lives next to the code that raises it.
"""
from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: a bad flag value, a missing or unusable input file. Never a bug."""


class ConfigError(UserError, ValueError):
    """A bad command-line value or configuration file (--phi, --input-shape, --device, a classes or anchors file)."""


class DatasetError(UserError, ValueError):
    """A dataset that cannot be used as given: unknown layout or split, no usable images."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder that the user named (or that a default points at) does not exist."""


class MissingDependencyError(UserError, ImportError):
    """An optional package that this feature needs is not installed; the message says how to install it."""
