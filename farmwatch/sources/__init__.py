"""Sources: one module per input kind.

A config section ``[sources.<name>]`` with ``kind = "hlt_zmq"`` is served by the module
``farmwatch.sources.hlt_zmq``, which exposes ``SOURCE`` (a ``base.Source`` subclass with its own
pydantic ``Config``). Third-party packages can add kinds through the ``farmwatch.sources`` entry
point group. Nothing in the core lists the kinds, so a new source is one new module.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from farmwatch.sources.base import Source

_NOT_KINDS = {"base"}


def known_kinds() -> list[str]:
    builtin = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_") and m.name not in _NOT_KINDS]
    plugins = [ep.name for ep in entry_points(group="farmwatch.sources")]
    return sorted(set(builtin) | set(plugins))


def source_class(kind: object) -> type["Source"]:
    """The Source class for ``kind``; LookupError with the known kinds when there is none."""
    kinds = known_kinds()
    if not isinstance(kind, str) or kind not in kinds:
        got = "missing" if kind is None else repr(kind)
        raise LookupError(f"unknown source kind {got}; expected one of: {', '.join(kinds)}")
    if kind in _NOT_KINDS or kind.startswith("_"):
        raise LookupError(f"unknown source kind {kind!r}")
    try:
        module = importlib.import_module(f"{__name__}.{kind}")
    except ModuleNotFoundError:
        (ep,) = [ep for ep in entry_points(group="farmwatch.sources") if ep.name == kind]
        module = ep.load()
    return module.SOURCE


__all__ = ["known_kinds", "source_class"]
