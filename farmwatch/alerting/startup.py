"""A restart must not resolve what it cannot see yet: the start-up hold of restored alerts.

A service that starts (``run`` after SIGTERM or kill -9, ``watch``) restores its window from the
store (``Window.restore``), so rules see what they saw before. What the store cannot give back
is the stretch the service was down: a value older than a rule's ``fresh``, a counter whose
``:rate`` needs two polls, a window not yet refilled. An alert that was live before the start
and that the rule does not find then is *held* (neither resolved nor cancelled) until the rule
has data from after the start to decide on: ``FRESH_SAMPLES`` samples of one of the rule's
series with the alert's labels, or the rule's lookback (at least ``at_least``) after the start.

Prometheus does the same in its own terms: it restores the ``for`` state of alerts after a
restart (``ALERTS_FOR_STATE``, ``--rules.alert.for-outage-tolerance``), and Alertmanager keeps
an alert firing until its ``endsAt`` (four resend delays) passes without Prometheus sending it
again, so a restart within that time neither resolves nor re-notifies anything.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from farmwatch.matchers import Matcher
from farmwatch.model import Alert, AlertState
from farmwatch.store.window import Window

FRESH_SAMPLES = 2
"""Samples since the start that count as data to decide on (two: a counter's rate, a difference)."""
RUN_STATE = frozenset({"daq.run_state", "daq.run_state_since"})


class StartupHold:
    """The live alerts at ``since`` (the start), kept by evaluations until their data is back."""

    def __init__(self, alerts: Iterable[Alert], since: float, at_least: float = 0.0) -> None:
        self.since = since
        self.at_least = at_least
        self.held = {a.fingerprint for a in alerts if a.state != AlertState.RESOLVED}

    def kept(self, rule, alerts: Mapping[str, Alert], window: Window, now: float) -> set[str]:
        """Fingerprints of ``rule``'s held alerts that an evaluation at ``now`` must not end."""
        out: set[str] = set()
        if not self.held:
            return out
        limit = self.since + max(rule.lookback(), self.at_least)
        for fp in list(self.held):
            alert = alerts.get(fp)
            if alert is None or alert.state == AlertState.RESOLVED:
                self.held.discard(fp)
            elif alert.rule == rule.name:
                if now >= limit or self._data_back(rule, alert, window, now):
                    self.held.discard(fp)
                else:
                    out.add(fp)
        return out

    def _data_back(self, rule, alert: Alert, window: Window, now: float) -> bool:
        own = dict(rule.labels)
        matchers = tuple(Matcher(k, "=", v) for k, v in alert.labels if k not in own)
        with window.lock:
            for name in sorted(set(rule.names()) - RUN_STATE):
                for sid in window.select_ids(name, matchers).tolist():
                    ts, _ = window.points(window.keys[sid], self.since, now)
                    if (ts > self.since).sum() >= FRESH_SAMPLES:
                        return True
        return False


__all__ = ["FRESH_SAMPLES", "StartupHold"]
