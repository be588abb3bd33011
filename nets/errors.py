"""The one error type of the model package: a model option that cannot build a network.

nets/ imports nothing from utils/, so it has its own: utils.common.errors.ConfigError derives from it, and the
commands report either as one `error: ...` line naming the flag (utils.common.cli.run_command).
"""


class ModelConfigError(ValueError):
    """An unknown attention, a placement, a block option or an input size this network cannot be built with."""
