"""Reading configs written by older versions (checkpoints, args.yaml, --config files): pure dict work, no torch, so
that train.py's options and TrainConfig stay light to import."""
from __future__ import annotations

# Fields of configs written before `attention_options`: field -> (block option, the value that meant "the block's
# default"). Read back as attention_options; never written again.
LEGACY_OPTION_FIELDS = {"attention_reduction": ("reduction", None), "cbam_kernel": ("kernel_size", 7)}


def upgrade_legacy_options(data: dict) -> dict:
    """`data` (a ModelConfig or TrainConfig dict) with the fields of LEGACY_OPTION_FIELDS moved into
    attention_options (a value that meant the default is dropped, so the block's own default applies)."""
    if not LEGACY_OPTION_FIELDS.keys() & data.keys():
        return data
    data = dict(data)
    options = dict(data.get("attention_options") or {})
    for old, (option, default) in LEGACY_OPTION_FIELDS.items():
        value = data.pop(old, default)
        if value != default:
            options.setdefault(option, value)
    data["attention_options"] = options
    return data
