"""A registry of strategies of one kind (criteria, calibrated methods, channel importances).

Strategies are small frozen objects with a ``name``; a registry keeps them by name in
registration order, so the configuration validates against it and the command line reads
its choices from it. A plug-in (or a test) adds one with :meth:`Registry.register` and
removes it with :meth:`Registry.unregister`. Pure Python: nothing here knows about ONNX.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar


class Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=Named)


class Registry(Generic[T]):
    """Strategies of one ``kind`` by name, in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, item: T, *, replace: bool = False) -> T:
        """Add ``item`` under ``item.name`` (a second one of that name needs ``replace=True``)."""
        if item.name in self._items and not replace:
            raise ValueError(f"a {self.kind} named '{item.name}' is already registered")
        self._items[item.name] = item
        return item

    def unregister(self, name: str) -> None:
        """Forget ``name`` (nothing happens if it is not registered)."""
        self._items.pop(name, None)

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._items)

    def find(self, name: str) -> T | None:
        """The strategy called ``name``, or None."""
        return self._items.get(name)

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"no {self.kind} named '{name}' (registered: {', '.join(self._items)})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[T]:
        return iter(tuple(self._items.values()))

    def __len__(self) -> int:
        return len(self._items)
