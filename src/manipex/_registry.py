"""One small registry for everything manipex looks up by name: explanation methods, LRP
composites, architectures, datasets, defenses and experiments.

A name is registered once (a second registration is an error unless ``overwrite=True``), and an
unknown name fails with the names that are available::

    >>> from manipex._registry import Registry
    >>> shapes = Registry("shape")
    >>> shapes.register("square", 4)
    4
    >>> shapes.get("circle")
    Traceback (most recent call last):
    ...
    ValueError: unknown shape 'circle'; available: square
"""
from __future__ import annotations

from typing import Dict, Generic, Iterator, List, Type, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Items of one ``kind`` by name.

    Args:
        kind: what the items are, for messages ("explanation method", "experiment").
        error: the exception raised for an unknown name (a ``ValueError`` subclass, e.g. a
            config error that the command line reports without a traceback).
    """

    def __init__(self, kind: str, error: Type[Exception] = ValueError) -> None:
        self.kind = kind
        self.error = error
        self._items: Dict[str, T] = {}

    def register(self, name: str, item: T, *, overwrite: bool = False) -> T:
        """Register ``item`` as ``name`` and return it; a name taken is an error unless ``overwrite``."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"a {self.kind} needs a non-empty name (str), got {name!r}")
        if name in self._items and not overwrite:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        """The item registered as ``name``; raises ``error`` naming the available ones."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise self.error(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}") from None

    def names(self) -> List[str]:
        """The registered names, sorted."""
        return sorted(self._items)

    def items(self):
        return self._items.items()

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"
