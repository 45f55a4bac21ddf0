"""Sources: one folder per input kind, as Telegraf has one per input plugin.

A config section ``[sources.<name>]`` with ``kind = "hlt_zmq"`` is served by the package
``farmwatch.sources.hlt_zmq``: its ``config`` module exposes ``CONFIG`` (the pydantic model of
the section), its ``source`` module ``SOURCE`` (a ``base.Source`` subclass), and it carries ``sample.toml`` (a commented collector config) and ``series.md``
(the series it writes); ``collectors/`` and ``docs/`` are generated from them
(``farmwatch.config.reference``). Third-party packages can add kinds through the
``farmwatch.sources`` entry point group. Nothing in the core lists the kinds, so a new source is
one new folder and its test.
"""

from __future__ import annotations

import functools
import importlib
import importlib.resources
import pkgutil
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from farmwatch.sources.base import Source, SourceConfig

_NOT_KINDS = {"base"}


@functools.cache
def builtin_kinds() -> tuple[str, ...]:
    """The kinds of the folders here."""
    return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__)
                        if not m.name.startswith("_") and m.name not in _NOT_KINDS))


@functools.cache
def known_kinds() -> tuple[str, ...]:
    """The built-in kinds and those of installed plugins; looked up once per process (scanning the
    installed packages' entry points costs more than reading a config)."""
    plugins = [ep.name for ep in entry_points(group="farmwatch.sources")]
    return tuple(sorted(set(builtin_kinds()) | set(plugins)))


def source_class(kind: object) -> type["Source"]:
    """The Source class for ``kind``; LookupError with the known kinds when there is none."""
    kinds = known_kinds()
    if not isinstance(kind, str) or kind not in kinds:
        got = "missing" if kind is None else repr(kind)
        raise LookupError(f"unknown source kind {got}; expected one of: {', '.join(kinds)}")
    if kind in _NOT_KINDS or kind.startswith("_"):
        raise LookupError(f"unknown source kind {kind!r}")
    try:
        module = importlib.import_module(f"{__name__}.{kind}.source")
    except ModuleNotFoundError:
        (ep,) = [ep for ep in entry_points(group="farmwatch.sources") if ep.name == kind]
        module = ep.load()
    return module.SOURCE


def config_class(kind: object) -> type["SourceConfig"]:
    """The Config model of ``kind`` without importing the source's code (``<kind>/config.py``
    exposes ``CONFIG``), so that reading a config stays cheap (a built-in kind: without scanning
    the installed packages for plugins); LookupError as ``source_class``."""
    if kind in builtin_kinds():
        return importlib.import_module(f"{__name__}.{kind}.config").CONFIG
    return source_class(kind).Config  # a plugin's kind, or the LookupError naming the known kinds


def source_file(kind: str, name: str) -> str:
    """A file a source kind carries in its folder (``sample.toml``, ``series.md``)."""
    return importlib.resources.files(f"{__name__}.{kind}").joinpath(name).read_text(encoding="utf-8")


__all__ = ["builtin_kinds", "config_class", "known_kinds", "source_class", "source_file"]
