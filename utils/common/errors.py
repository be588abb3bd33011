"""The one base of the errors a user can fix, so entry points can tell them from bugs.

`utils.common.cli.run_command` prints a `UserError` (and an `OSError`) as one `error: ...` line; anything else keeps
its traceback, because it is a bug to report (in this project, in torch, in a dependency). Each message names the file
or the flag at fault and says what to do.

The project's other error types derive from `UserError` too, and keep the builtin base that callers catch (an
`ImageReadError` is a `ValueError`, a `CheckpointError` a `RuntimeError`); each lives next to the code that raises it.
"""
from __future__ import annotations

from nets.errors import ModelConfigError


class UserError(Exception):
    """Something the user can fix: a bad flag value, a missing or unusable input file. Never a bug."""


class ConfigError(UserError, ModelConfigError):
    """A bad command-line value or configuration file (--phi, --input-shape, --device, a classes or anchors file).

    A ModelConfigError (and so a ValueError): nets/ raises that one for bad model options, and both read the same."""


class DatasetError(UserError, ValueError):
    """A dataset that cannot be used as given: unknown layout or split, no usable images."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder that the user named (or that a default points at) does not exist."""


class MissingDependencyError(UserError, ImportError):
    """An optional package that this feature needs is not installed; the message says how to install it."""
