"""Names a package exports but imports only when first used (PEP 562 ``__getattr__``).

Packages whose submodules pull in heavy libraries (``detect``: pandas, scikit-learn; ``store.elastic``:
the client) or build many models (``config``) re-export through this, so that importing one light
submodule (``detect.settings``, ``store.elastic.config``) does not import the rest.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def exports(package: str, where: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: name → the submodule that defines it."""
    module = importlib.import_module(package)

    def getattr_(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        setattr(module, name, value)
        return value

    def dir_() -> list[str]:
        return sorted(set(vars(module)) | set(where))

    return getattr_, dir_


__all__ = ["exports"]
