"""The component and index templates farmwatch installs (unless ``manage_templates = false``), so
that its fields are mapped as keywords, dates and numbers before the first document arrives."""

from __future__ import annotations

from typing import Any


_KEYWORD = {"type": "keyword", "ignore_above": 1024}


def component_templates(prefix: str) -> dict[str, dict[str, Any]]:
    """Mappings shared by every farmwatch index (``base``) and those of log documents (``logs``)."""
    base = {
        "template": {
            "mappings": {
                "dynamic_templates": [
                    {"labels": {"path_match": "labels.*", "mapping": {"type": "keyword"}}},
                    {"strings_as_keyword": {"match_mapping_type": "string", "mapping": _KEYWORD}},
                ],
                "properties": {
                    "@timestamp": {"type": "date"},
                    "ecs": {"properties": {"version": {"type": "keyword"}}},
                    "host": {"properties": {"name": {"type": "keyword"}}},
                    "service": {"properties": {"name": {"type": "keyword"}}},
                    "labels": {"type": "object"},
                    "message": {"type": "text"},
                },
            }
        },
        "_meta": {"managed_by": "farmwatch"},
    }
    logs = {
        "template": {
            "mappings": {
                "properties": {
                    "log": {"properties": {
                        "level": {"type": "keyword"},
                        "logger": {"type": "keyword"},
                        "offset": {"type": "long"},
                        "file": {"properties": {"path": {"type": "keyword"}, "fingerprint": {"type": "keyword"}}},
                        # farmwatch's message template (docs/log-templates.md): the id to aggregate on,
                        # the text to read (a keyword for terms aggregations, and searchable words)
                        "template": {"properties": {"id": {"type": "keyword"}, "text": {
                            "type": "keyword", "ignore_above": 2048, "fields": {"words": {"type": "text"}}}}},
                        "origin": {"properties": {"function": {"type": "keyword"}, "file": {"properties": {
                            "name": {"type": "keyword"}, "line": {"type": "long"}}}}},
                    }},
                    "process": {"properties": {"pid": {"type": "long"}, "name": {"type": "keyword"}}},
                    "event": {"properties": {
                        "original": {"type": "keyword", "index": False, "doc_values": False},
                        "dataset": {"type": "keyword"},
                        "module": {"type": "keyword"},
                    }},
                    "error": {"properties": {"message": {"type": "text"}, "type": {"type": "keyword"},
                                             "stack_trace": {"type": "keyword", "index": False, "doc_values": False}}},
                }
            }
        },
        "_meta": {"managed_by": "farmwatch"},
    }
    return {f"{prefix}-base": base, f"{prefix}-logs-mappings": logs}


def index_templates(prefix: str, mode: str, priority: int) -> dict[str, dict[str, Any]]:
    """One composable template per kind of document; data streams need ``data_stream: {}``."""
    out = {}
    for kind in ("logs", "samples", "alerts"):
        body: dict[str, Any] = {
            "index_patterns": [f"{prefix}-{kind}*"],
            "priority": priority,
            "composed_of": [f"{prefix}-base"] + ([f"{prefix}-logs-mappings"] if kind == "logs" else []),
            "_meta": {"managed_by": "farmwatch"},
        }
        if mode == "data_stream":
            body["data_stream"] = {}
        out[f"{prefix}-{kind}"] = body
    return out


__all__ = ["component_templates", "index_templates"]
