"""Context from other systems for an alert about a host: what Zabbix reports about that node.

An operator reading "worker node hltwk07 is far below its peers" wants to know at once whether the
node's own monitoring sees something (a temperature, a full disk). The Zabbix source stores open
problems per host (``zabbix.problem``/``zabbix.problems``); an alert with a ``host`` (or ``node``)
label gets their lines at the top of its description, e.g. "Zabbix reports: high temperature on
hltwk07 since 10:42 (high)", refreshed as the alert is re-evaluated (so a message edit shows a
problem that appeared or went). Without Zabbix data in the store this costs one catalogue lookup
every few minutes.
"""

from __future__ import annotations

import logging
from typing import Any

from farmwatch.model import Labels

log = logging.getLogger(__name__)


class HostContext:
    """``context(labels, now) -> lines``, cached per host for ``ttl`` seconds of alert time."""

    def __init__(self, store: Any, *, ttl: float = 30.0, recheck: float = 300.0, tz: str | None = None) -> None:
        self.store = store
        self.ttl = ttl
        self.recheck = recheck
        self.tz = tz
        self._present: tuple[float, bool] | None = None
        self._cache: dict[str, tuple[float, list[str]]] = {}
        self._failed = False

    def __call__(self, labels: Labels, now: float) -> list[str]:
        lbls = dict(labels)
        host = lbls.get("host") or lbls.get("node")
        if not host or not self._zabbix_present(now):
            return []
        cached = self._cache.get(host)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        from farmwatch.sources.zabbix import problem_context

        try:
            lines = problem_context(self.store, host, at=now, tz=self.tz)
            self._failed = False
        except Exception as exc:  # noqa: BLE001 - context is a courtesy: the alert goes out without it
            if not self._failed:
                log.warning("cannot read Zabbix problems for alert context: %s", exc)
            self._failed = True
            lines = []
        self._cache[host] = (now, lines)
        return lines

    def _zabbix_present(self, now: float) -> bool:
        if self._present is None or now - self._present[0] >= self.recheck:
            try:
                found = not self.store.series("zabbix.problems").empty
            except Exception:  # noqa: BLE001 - e.g. a store that keeps no series
                found = False
            self._present = (now, found)
        return self._present[1]
