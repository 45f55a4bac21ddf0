"""Context for an alert from other systems: lines put at the top of its description.

An operator reading "worker node hltwk07 is far below its peers" wants to know at once whether the
node's own monitoring sees something (a temperature, a full disk). A ``ContextProvider`` gives
those lines for an alert's labels at a time; the tracker asks it whenever an alert is
(re-)evaluated, so a message edit shows a problem that appeared or went. Which systems provide
context is wired by the service (``farmwatch.service.pipeline``: the Zabbix source's
``ZabbixContext``), so alerting depends on no source.
"""

from __future__ import annotations

from typing import Protocol

from farmwatch.model import Labels


class ContextProvider(Protocol):
    """Lines about the alert with ``labels`` at ``now`` (empty when there is nothing to say).

    Called on every evaluation of every alert: cache, and never raise (context is a courtesy;
    the alert goes out without it)."""

    def __call__(self, labels: Labels, now: float) -> list[str]: ...


__all__ = ["ContextProvider"]
