"""Names a package offers but imports on first use, so importing the package (the CLI's --help) loads no torch."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy(where: dict[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__`: each name in `where` is read from the module it names, imported when first
    asked for (Python calls a module's `__getattr__` only for names it does not hold)."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(name)
        return getattr(importlib.import_module(where[name]), name)

    return __getattr__
