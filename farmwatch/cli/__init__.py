"""The ``farmwatch`` command line: one module per command group, ``main`` parses and dispatches.

``services`` (collect, run, watch), ``query``, ``top``, ``configuration`` (check-config,
config-reference), ``alerts`` (alerts, silence, ack), ``rules``, ``logsearch`` (logs search),
``anomaly`` (train, models), ``status``, ``demo``; ``common`` holds what they share.
"""

from farmwatch.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
