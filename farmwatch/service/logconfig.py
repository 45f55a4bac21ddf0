"""farmwatch's own log lines (stderr): plain for a terminal or journald, JSON for log shippers."""

from __future__ import annotations

import json
import logging
import sys


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"ts": record.created, "level": record.levelname.lower(), "logger": record.name,
                           "message": record.getMessage()})


def setup_logging(level: str = "info", fmt: str = "plain") -> None:
    """Route every farmwatch logger to stderr at ``level`` (``[log]`` of the config)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


__all__ = ["JsonFormatter", "setup_logging"]
