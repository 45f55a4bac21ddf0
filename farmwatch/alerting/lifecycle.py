"""Alert lifecycle with Alertmanager's semantics: pending → firing → resolved.

An alert is identified by its rule and labels (the fingerprint). It is *pending* while the rule's
condition holds for less than the rule's ``for``, *firing* after that, and *resolved* the first
evaluation in which the condition no longer holds. A pending alert whose condition stops holding
is cancelled (it never reached anyone). Resolved alerts stay listed for ``keep_resolved`` so that
``farmwatch alerts`` shows what happened recently; the history table keeps every transition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Container, Iterable, Protocol, Sequence

from farmwatch.model import Alert, AlertState, Labels, fingerprint


class RuleLike(Protocol):
    """What the lifecycle needs from a rule (``farmwatch.alerting.rules.Rule``)."""

    name: str
    for_: float
    severity: str

    def alert_labels(self, active) -> Labels: ...

    def render(self, active) -> tuple[str, str]: ...


Event = tuple[float, str, Alert]
"""(time, event name, alert as it is after the event)."""


@dataclass
class Changes:
    """What one evaluation changed, for persistence and for the dispatcher."""

    events: list[Event] = field(default_factory=list)
    changed: dict[str, Alert] = field(default_factory=dict)
    forgotten: set[str] = field(default_factory=set)

    def record(self, ts: float, event: str | None, alert: Alert) -> None:
        if event:
            self.events.append((ts, event, alert))
        self.changed[alert.fingerprint] = alert


class Tracker:
    """The alerts of all rules, updated once per evaluation."""

    def __init__(self, alerts: dict[str, Alert] | None = None, *, keep_resolved: float = 86400.0,
                 context: Callable[[Labels, float], list[str]] | None = None) -> None:
        self.alerts: dict[str, Alert] = dict(alerts or {})
        self.keep_resolved = keep_resolved
        self.context = context
        """Lines about an alert's labels from elsewhere (a ``context.ContextProvider``), put before its description."""
        # A resolved alert whose condition holds again is replaced by a new pending one; if that
        # is cancelled, the resolved one comes back (it still belongs in the recent alerts).
        self._replaced: dict[str, Alert] = {}

    def active(self) -> list[Alert]:
        return [a for a in self.alerts.values() if a.state != AlertState.RESOLVED]

    def notifiable(self) -> dict[str, Alert]:
        """The alerts as notifications must see them: a resolved alert whose condition holds again
        is pending (not news yet), so its group still gets to say that it resolved."""
        if not self._replaced:
            return self.alerts  # the usual case: no copy each evaluation
        out = dict(self.alerts)
        for fp, previous in self._replaced.items():
            current = out.get(fp)
            if current is not None and current.state == AlertState.PENDING:
                out[fp] = previous
        return out

    def update(self, rule: RuleLike, actives: Iterable, now: float, changes: Changes,
               keep: Container[str] = ()) -> None:
        """Apply one evaluation of ``rule``: ``actives`` are the elements whose condition holds.
        Alerts in ``keep`` (fingerprints) that are not among them stay as they are: the rule has
        no data to decide on yet (``AlertEngine.hold_restored``)."""
        seen: set[str] = set()
        for active in actives:
            lbls = rule.alert_labels(active)
            fp = fingerprint(rule.name, lbls)
            if fp in seen:
                continue  # two elements with the same labels: the first one speaks for both
            seen.add(fp)
            summary, description = rule.render(active)
            if self.context is not None:
                extra = self.context(lbls, now)
                if extra:
                    description = "\n".join([*extra, description]) if description else "\n".join(extra)
            alert = self.alerts.get(fp)
            if (alert is None or alert.state == AlertState.RESOLVED) and not getattr(active, "starts", True):
                continue  # hysteresis: this value keeps an alert active but does not start one
            if alert is None or alert.state == AlertState.RESOLVED:
                if alert is not None:
                    self._replaced[fp] = alert
                alert = Alert(rule.name, lbls, AlertState.PENDING, rule.severity, summary, description,
                              fingerprint=fp, active_since=now)
                self.alerts[fp] = alert
                changes.record(now, "pending", alert)
            else:
                moved = (alert.summary, alert.description, alert.severity) != (summary, description, rule.severity)
                alert.summary, alert.description, alert.severity = summary, description, rule.severity
                if moved:
                    changes.record(now, None, alert)
            alert.value = float(active.value)
            alert.values = dict(getattr(active, "values", {}) or {})
            if alert.state == AlertState.PENDING and now - alert.active_since >= rule.for_:
                alert.state, alert.starts_at = AlertState.FIRING, now
                self._replaced.pop(fp, None)
                changes.record(now, "firing", alert)
        for alert in self._of_rule(rule.name):
            if alert.fingerprint not in seen and alert.fingerprint not in keep:
                self._end(alert, now, changes, "resolved")

    def retire(self, rule_names: Sequence[str], now: float, changes: Changes) -> None:
        """Resolve the alerts of rules that no longer exist (a reload or restart removed them)."""
        known = set(rule_names)
        for alert in list(self.active()):
            if alert.rule not in known:
                self._end(alert, now, changes, "resolved (rule removed)")

    def forget_old(self, now: float, changes: Changes) -> None:
        for fp, alert in list(self.alerts.items()):
            if alert.state == AlertState.RESOLVED and now - (alert.ends_at or now) > self.keep_resolved:
                del self.alerts[fp]
                changes.forgotten.add(fp)
                changes.changed.pop(fp, None)

    def _of_rule(self, name: str) -> list[Alert]:
        return [a for a in self.alerts.values() if a.rule == name and a.state != AlertState.RESOLVED]

    def _end(self, alert: Alert, now: float, changes: Changes, event: str) -> None:
        if alert.state == AlertState.PENDING:
            fp = alert.fingerprint
            changes.events.append((now, "cancelled", alert))
            previous = self._replaced.pop(fp, None)
            if previous is not None:
                self.alerts[fp] = previous
                changes.record(now, None, previous)
            else:
                del self.alerts[fp]
                changes.changed.pop(fp, None)
                changes.forgotten.add(fp)
            return
        alert.state, alert.ends_at = AlertState.RESOLVED, now
        if math.isnan(alert.starts_at):
            alert.starts_at = alert.active_since
        changes.record(now, event, alert)


__all__ = ["Changes", "Event", "RuleLike", "Tracker"]
