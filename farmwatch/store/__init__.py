"""Where farmwatch data rests: the embedded SQLite store (always) and, later, Elasticsearch."""

from farmwatch.store.matchers import Matcher, parse_matchers
from farmwatch.store.sqlite import SQLiteStore, StoreError

__all__ = ["Matcher", "SQLiteStore", "StoreError", "parse_matchers"]
