"""Dataset formats behind one interface: each module here is one reader (utils.data.reader.DatasetReader),
registered by name in FORMATS, that turns its kind of source into the entries utils.data.index checks and indexes.

READER_MODULES is the detection order: `detect_format(--data)`, the one place that decides what a path is, asks each
format in turn and the first that recognises the path reads it. A new format is one module here plus its name in
READER_MODULES (docs/architecture.md, "Add a dataset format").
"""
from __future__ import annotations

import importlib
from pathlib import Path

from utils.common.errors import DatasetError
from utils.data.reader import FORMATS, DatasetReader

__all__ = ["FORMATS", "READER_MODULES", "DatasetReader", "detect_format"]

READER_MODULES = ("yolo", "coco", "folder", "voc")
for _module in READER_MODULES:  # each module registers its reader in FORMATS when imported
    importlib.import_module(f"{__name__}.{_module}")


def detect_format(data: Path) -> tuple[str, DatasetReader]:
    """(name, reader) of the first registered format that recognises `data`; DatasetError naming them all else."""
    for name, reader_class in FORMATS.items():
        reader = reader_class()
        if reader.detect(data):
            return name, reader
    accepted = "; ".join(f"{name}: {reader.description}" for name, reader in FORMATS.items())
    raise DatasetError(f"{data}: not a dataset in a format this project reads ({accepted})")
