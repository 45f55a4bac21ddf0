"""Where farmwatch data rests: the embedded SQLite store (always, ``sqlite``), its full-text log
index (``logs``) and, when configured, Elasticsearch (``elastic``). Parts are typed against the
``SampleStore`` protocol, not a class.

    from farmwatch.store import SQLiteStore
    with SQLiteStore("farmwatch.db", readonly=True) as store:
        df = store.query("hlt.output.*", {"unit": "hlt01"}, since=time.time() - 600)

The names from submodules are imported when first used (PEP 562): a config's sections under
``store`` (``elastic.config``, ``remote.settings``) are read without loading the store (numpy),
and what keeps its own tables in the file (alert state, the log index) opens a ``StoreFile``
(``storefile``, ``open_file``) without the time series.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from farmwatch.config.base import ConfigError
from farmwatch.config.sections import StoreSettings
from farmwatch.lazy import exports
from farmwatch.matchers import Matcher, parse_matchers

if TYPE_CHECKING:
    from farmwatch.store.protocol import SampleStore
    from farmwatch.store.sqlite import SQLiteStore
    from farmwatch.store.storefile import StoreError, StoreFile

_WHERE = {"SQLiteStore": "sqlite", "StoreError": "storefile", "StoreFile": "storefile", "SampleStore": "protocol"}


def folder_problem(settings: StoreSettings) -> str | None:
    """One line when the store's folder does not exist (a typo, an unmounted disk): a service
    must stop there, not start an empty store somewhere nobody looks."""
    folder = settings.path.parent
    if folder.is_dir():
        return None
    return f"{settings.path}: store.path: the folder {folder} does not exist (create it, or correct [store] path)"


def open_store(settings: StoreSettings, readonly: bool = False) -> SQLiteStore:
    """The embedded store a config's ``[store]`` names (``readonly``: for commands that only read).
    Writing into a folder that does not exist is a config error (``folder_problem``)."""
    _check_folder(settings, readonly)
    from farmwatch.store.sqlite import SQLiteStore

    return SQLiteStore(settings.path, retention=settings.retention, readonly=readonly,
                       rollup_retention={"1m": settings.retention_1m, "10m": settings.retention_10m})


def open_file(settings: StoreSettings, readonly: bool = False) -> StoreFile:
    """The same file without its time series, for what keeps its own tables there (alert state,
    the log index): commands that read only those start without numpy."""
    _check_folder(settings, readonly)
    from farmwatch.store.storefile import StoreFile

    return StoreFile(settings.path, retention=settings.retention, readonly=readonly)


def _check_folder(settings: StoreSettings, readonly: bool) -> None:
    problem = None if readonly else folder_problem(settings)
    if problem:
        raise ConfigError([problem])


__all__ = ["Matcher", "SQLiteStore", "SampleStore", "StoreError", "StoreFile", "folder_problem", "open_file", "open_store",
           "parse_matchers"]

__getattr__, __dir__ = exports(__name__, _WHERE)
