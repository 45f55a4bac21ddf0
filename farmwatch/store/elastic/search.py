"""The ``_search`` request behind ``farmwatch logs search`` on Elasticsearch: the same query words
and filters as the embedded full-text index."""

from __future__ import annotations

import logging
import re
from typing import Any


from farmwatch.model import level_names
from farmwatch.store.elastic.documents import iso

log = logging.getLogger("farmwatch.store.elastic")


def _glob_query(field: str, pattern: str) -> dict[str, Any]:
    """A shell glob over a keyword field: ``term`` when plain, ``wildcard`` for ``*``/``?``, else ``regexp``."""
    if not re.search(r"[*?\[]", pattern):
        return {"term": {field: pattern}}
    if "[" not in pattern:
        return {"wildcard": {field: {"value": pattern}}}
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = pattern.find("]", i + 2)
            if j < 0:
                out.append("\\[")
            else:
                body = pattern[i + 1:j]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = j
        elif c.isalnum() or c in "_-":
            out.append(c)
        else:
            out.append("\\" + c)
        i += 1
    return {"regexp": {field: {"value": "".join(out)}}}


def search_body(query: str, *, host: str | None = None, service: str | None = None, level: str | None = None,
                since: float | None = None, until: float | None = None, limit: int = 100,
                order: str = "desc") -> dict[str, Any]:
    """The ``_search`` request of ``ElasticStore.search``: words/phrases over ``message`` (all must
    match, ``"quoted phrases"`` and ``-excluded`` words as in ``simple_query_string``), filters."""
    must: list[dict[str, Any]] = []
    q = query.strip()
    if q and q != "*":
        must.append({"simple_query_string": {"query": q, "fields": ["message"], "default_operator": "and"}})
    filters: list[dict[str, Any]] = []
    if host:
        filters.append(_glob_query("host.name", host))
    if service:
        filters.append(_glob_query("service.name", service))
    if levels := level_names(level):
        filters.append({"bool": {"should": [{"term": {"log.level": {"value": lvl, "case_insensitive": True}}}
                                            for lvl in levels], "minimum_should_match": 1}})
    if since is not None or until is not None:
        rng: dict[str, Any] = {"format": "strict_date_optional_time"}
        if since is not None:
            rng["gte"] = iso(since)
        if until is not None:
            rng["lte"] = iso(until)
        filters.append({"range": {"@timestamp": rng}})
    return {
        "query": {"bool": {"must": must or [{"match_all": {}}], "filter": filters}},
        "sort": [{"@timestamp": {"order": order}}],
        "size": limit,
    }


__all__ = ["search_body"]
