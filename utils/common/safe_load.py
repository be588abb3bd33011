"""Bounded readers for the YAML and JSON files that reach the project from outside (data.yaml, args.yaml, --config
recipes, COCO instances json). Every YAML read of the project goes through `load_yaml`.

`yaml.safe_load` builds no arbitrary objects, but aliases let a small file describe a huge structure: 1 KB of nested
anchors (`b: &b [*a, *a, ...]`) is 10^9 class names to whatever walks them (and merge keys copy them), which runs out
of memory. Deep nesting overflows the recursive composer (YAML) or decoder (JSON). So each read is bounded before and
while it parses: the file's size (checked before it is read), the number of values once aliases are expanded (counted
while composing, so a bomb is refused after its first million values, never expanded), and the nesting depth. Each
refusal is one `error:` line naming the file and the fix.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from utils.common.errors import ConfigError, MissingFileError, UserError
from utils.common.paths import is_regular_file

MAX_YAML_BYTES = 1 << 20  # a data.yaml or args.yaml is a few KB
MAX_YAML_VALUES = 1_000_000  # values once aliases are expanded; a 1 MB file without aliases holds fewer than 500k
MAX_YAML_DEPTH = 64  # a data.yaml is 3 levels deep
MAX_JSON_BYTES = 4 << 30  # COCO instances_train2017.json is 448 MB; Objects365's train json is a few GB


class JsonFileError(UserError, ValueError):
    """A JSON file that cannot be read within the bounds (too large, too deep, not JSON); names the file."""


class _TooLarge(Exception):
    """Raised inside the composer; turned into a ConfigError naming the file."""


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that counts the values a document expands to (an alias counts as the values of its anchor)
    and its nesting depth while composing, and stops at the bounds."""

    def __init__(self, stream: str, max_values: int, max_depth: int) -> None:
        super().__init__(stream)
        self.max_values, self.max_depth = max_values, max_depth
        self.values = 0
        self.depth = 0
        self.anchor_values: dict[str, int] = {}  # anchor -> values of its node, aliases inside it expanded

    def _count(self, values: int) -> None:
        self.values += values
        if self.values > self.max_values:
            raise _TooLarge(f"its aliases expand to more than {self.max_values} values (an alias bomb?); write the "
                           "values out instead of repeating anchors")

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            anchor = self.peek_event().anchor
            if anchor in self.anchors and anchor not in self.anchor_values:
                raise _TooLarge(f"the alias *{anchor} refers to its own anchor (a recursive structure); remove "
                                "the alias")
            self._count(self.anchor_values.get(anchor, 1))
            return super().compose_node(parent, index)
        anchor = self.peek_event().anchor
        self.depth += 1
        if self.depth > self.max_depth:
            raise _TooLarge(f"it is nested more than {self.max_depth} levels deep; is this the right file?")
        before = self.values
        node = super().compose_node(parent, index)
        self.depth -= 1
        self._count(1)
        if anchor is not None:
            self.anchor_values[anchor] = self.values - before
        return node


def parse_yaml(text: str, where: str, max_values: int = MAX_YAML_VALUES, max_depth: int = MAX_YAML_DEPTH) -> Any:
    """yaml.safe_load of `text` within the bounds; ConfigError naming `where` (the file, or the flag and file)."""
    loader = _BoundedLoader(text, max_values, max_depth)
    try:
        return loader.get_single_data()
    except _TooLarge as err:
        raise ConfigError(f"{where}: refused: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{where}: not a valid YAML file{line}; fix its syntax") from None
    finally:
        loader.dispose()


def load_yaml(path: str | Path, where: str | None = None, max_bytes: int = MAX_YAML_BYTES) -> Any:
    """The content of the YAML file `path` (safe types only), bounded in bytes, expanded values and depth.

    where: how messages name the file (default: the path; e.g. "--config args.yaml")."""
    path = Path(path)
    where = where or str(path)
    text = _read_text(path, where, max_bytes, ConfigError)
    return parse_yaml(text, where)


def load_json(path: str | Path, where: str | None = None, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The content of the JSON file `path`, bounded in bytes (checked before reading) and depth (Python's decoder
    refuses nesting deeper than the interpreter's recursion limit: one JsonFileError line, no traceback).

    NaN and Infinity are accepted as Python's json accepts them: the caller checks each number it uses."""
    path = Path(path)
    where = where or str(path)
    text = _read_text(path, where, max_bytes, JsonFileError)
    try:
        return json.loads(text)
    except RecursionError:
        raise JsonFileError(f"{where}: nested too deeply for a data file (thousands of levels); refused") from None
    except json.JSONDecodeError as err:
        raise JsonFileError(f"{where}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None


def _read_text(path: Path, where: str, max_bytes: int, error: type[UserError]) -> str:
    if not path.exists():
        raise MissingFileError(f"{where}: not found")
    if not is_regular_file(path):
        raise error(f"{where}: not a regular file (a folder, FIFO or device); refused without opening it")
    size = path.stat().st_size
    if size > max_bytes:
        raise error(f"{where}: {size} bytes is more than the {max_bytes}-byte limit for this kind of file; give "
                    "the right file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{where}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
