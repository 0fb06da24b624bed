"""Name → factory registries (strategies, supernets, tasks, hardware, models) and plugins.

Each registry is a plain dict filled by a decorator, as timm does for models. A duplicate name
is an error. Third-party packages add entries through the ``nas.plugins`` entry-point group:
each entry point names a module (imported for its decorators) or a callable (called once).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

T = TypeVar("T")

PLUGIN_GROUP = "nas.plugins"
_plugins_loaded = False


class Registry(Generic[T]):
    """A named collection of factories of one kind (e.g. ``strategy``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: add ``obj`` under ``name``; a name already taken raises ``ValueError``."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """The factory named ``name``; an unknown name raises ``ValueError`` listing the known."""
        load_plugins()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise ValueError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        load_plugins()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests use this to undo a registration)."""
        self._items.pop(name, None)


def load_plugins() -> None:
    """Import every ``nas.plugins`` entry point once (idempotent)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            obj = ep.load()
        except Exception as e:  # a broken third-party plugin must not break the tool
            import warnings

            warnings.warn(f"nas plugin {ep.name!r} failed to load: {e}", stacklevel=2)
            continue
        if callable(obj) and not isinstance(obj, type):
            obj()
