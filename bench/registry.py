"""A small typed registry filled by a decorator (one per kind: architectures, attacks, protocols, targets).

Registering the same key twice is an error, and a lookup of an unknown key answers with the closest
registered names, so a typo in a config file fails loudly and helpfully.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """Unknown or duplicate registry key. The message says what is registered."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain.
        return str(self.args[0])


class Registry(Generic[T]):
    """Name -> object map for one kind of thing."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@ARCHS.register("cifar_resnet18")`` above a factory function."""

        def deco(obj: T) -> T:
            self.add(name, obj)
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise RegistryError(f"{self.kind} {name!r} is already registered; pick another name.")
        self._items[name] = obj

    def remove(self, name: str) -> T:
        """Unregister ``name`` and return its object (temporary entries of tests and plugins)."""
        if name not in self._items:
            raise RegistryError(self._unknown(name))
        return self._items.pop(name)

    @contextmanager
    def scoped(self, name: str, obj: T) -> Iterator[T]:
        """Register ``obj`` under ``name`` for the duration of a ``with`` block, then remove it again."""
        self.add(name, obj)
        try:
            yield obj
        finally:
            self._items.pop(name, None)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(self._unknown(name)) from None

    def __getitem__(self, name: str) -> T:
        """``REGISTRY[name]``: the same as ``get`` (an unknown name names the closest registered ones)."""
        return self.get(name)

    def _unknown(self, name: str) -> str:
        close = difflib.get_close_matches(name, self._items, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        known = ", ".join(sorted(self._items)) or "(none)"
        return f"unknown {self.kind} {name!r}.{hint} Registered: {known}."

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())
