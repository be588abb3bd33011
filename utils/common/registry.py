"""A registry of named implementations: an extension point instead of an if/elif chain.

    READERS = Registry("dataset format")

    @READERS.register("voc")
    class VocReader: ...

    READERS.get("voc")        # the class; an unknown name is a ConfigError listing the valid ones
    list(READERS)             # names in registration order (the order detection tries them in)

Modelled on mmengine's `Registry.register_module` and detectron2's `DatasetCatalog.register`, kept to what this
project uses: register by name, get by name, iterate in registration order.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from utils.common.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind (`kind` names them in messages: "unknown dataset format 'x'; ...")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding the decorated object under `name`; a name registered twice is a bug (ValueError)."""
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice ({self._entries[name]!r} and {entry!r})")
            self._entries[name] = entry
            return entry
        return add

    def unregister(self, name: str) -> T:
        """Remove and return the entry `name` (tests that register a toy entry take it out again)."""
        return self._entries.pop(name)

    def get(self, name: str) -> T:
        """The entry registered as `name`; ConfigError listing the valid names when there is none."""
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} {name!r}; expected one of: {', '.join(self._entries)}") from None

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """(name, entry) pairs in registration order."""
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
