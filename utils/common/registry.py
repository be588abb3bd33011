"""A small registry of named extension points (export targets, runtime backends, ...), as mmengine's Registry or
timm's create_* factories: a new entry is one `register(name)` line, and an unknown name is one error listing the
valid ones."""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from utils.common.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one `kind` ("export target", "runtime backend"), in registration order."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator (or call) adding an entry under `name`; a second entry of the same name is a bug."""
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry
        return add

    def get(self, name: str) -> T:
        """The entry `name`, or a ConfigError naming the valid ones."""
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; valid: {', '.join(self._entries)}")
        return self._entries[name]

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())
