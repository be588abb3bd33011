"""Errors of model files, shared by the checkpoint reader and the checks that run before it."""
from __future__ import annotations

from utils.common.errors import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used, with a message that says why and what to do."""
