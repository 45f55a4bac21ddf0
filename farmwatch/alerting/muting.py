"""Silences, inhibition and acknowledgements: why an active alert does not (or no longer) notify.

- A **silence** (``farmwatch silence add unit=hlt03 --for 2h``) mutes matching alerts until it
  expires; they stay listed and in history.
- **Inhibition** (Alertmanager's ``inhibit_rules``): while a *source* alert fires, *target* alerts
  with the same values of the ``equal`` labels are muted — a unit whose monitor endpoints are all
  down need not also report every stalled app and dead worker of that unit. ``hold`` keeps them
  muted that long after the source resolved: consequences that outlast their cause (an anomaly
  score computed over a window that still holds the stall) are not news either.
- An **acknowledgement** (``farmwatch ack``) keeps an alert notifying changes but stops reminders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from farmwatch.alerting.state import Ack, Silence, label_map
from farmwatch.model import Alert, AlertState
from farmwatch.matchers import Matcher, parse_matchers


@dataclass(frozen=True)
class InhibitRule:
    """While an alert matching ``source`` fires (and ``hold`` seconds after it resolved), mute
    alerts matching ``target`` that share ``equal``."""

    source: tuple[Matcher, ...]
    target: tuple[Matcher, ...]
    equal: tuple[str, ...] = ()
    hold: float = 0.0

    @classmethod
    def parse(cls, source: Iterable[str], target: Iterable[str], equal: Iterable[str] = (),
              hold: float = 0.0) -> InhibitRule:
        if not hold >= 0:
            raise ValueError(f"hold must be >= 0 seconds, not {hold!r}")
        return cls(tuple(parse_matchers(list(source))), tuple(parse_matchers(list(target))), tuple(equal), float(hold))

    def holds(self, alert: Alert, now: float) -> bool:
        """``alert`` (matching ``source``) mutes targets now: firing, or resolved within ``hold``."""
        if alert.state == AlertState.FIRING:
            return True
        return (self.hold > 0 and alert.state == AlertState.RESOLVED and alert.ends_at is not None
                and now - alert.ends_at < self.hold)


def _all(matchers: Iterable[Matcher], found: Mapping[str, str]) -> bool:
    return all(m.matches(found) for m in matchers)


def _pairs(found: Mapping[str, str], keys: Iterable[str]) -> str:
    return ", ".join(f"{k}={found.get(k, '')}" for k in keys) or "all"


def silenced_by(alert: Alert, silences: Iterable[Silence]) -> str | None:
    """The first of ``silences`` (the active ones) that matches ``alert``: ``silence <id> by <who>``."""
    return next((f"silence {s.id} by {s.created_by}" for s in silences if s.matches(alert)), None)


def apply(alerts: Iterable[Alert], silences: Iterable[Silence], inhibits: Iterable[InhibitRule],
          acks: Mapping[str, Ack], now: float) -> list[tuple[str, Alert]]:
    """Set ``silenced_by``, ``inhibited_by`` and ``acked_by`` on active alerts; return what changed.

    The result lists (event, alert) for history: ``silenced``, ``inhibited``, ``acked``,
    ``unmuted``. Resolved alerts keep the marks they had when they resolved.
    """
    alerts = list(alerts)
    active = [a for a in alerts if a.state != AlertState.RESOLVED]
    inhibits = list(inhibits)
    longest = max((r.hold for r in inhibits), default=0.0)
    held = [a for a in alerts if a.state == AlertState.RESOLVED and a.ends_at is not None
            and now - a.ends_at < longest]
    labelled = {a.fingerprint: label_map(a) for a in active + held}
    silences = [s for s in silences if s.active(now)]
    sources = [(rule, a) for rule in inhibits for a in active + held
               if rule.holds(a, now) and _all(rule.source, labelled[a.fingerprint])]
    changes: list[tuple[str, Alert]] = []
    for alert in active:
        found = labelled[alert.fingerprint]
        silenced = silenced_by(alert, silences)
        inhibited = next(
            (f"{src.rule} ({_pairs(found, rule.equal)})"
             for rule, src in sources
             if src.fingerprint != alert.fingerprint and _all(rule.target, found)
             and all(labelled[src.fingerprint].get(k, "") == found.get(k, "") for k in rule.equal)),
            None)
        ack = acks.get(alert.fingerprint)
        was_muted = alert.muted
        if silenced != alert.silenced_by:
            alert.silenced_by = silenced
            if silenced:
                changes.append(("silenced", alert))
        if inhibited != alert.inhibited_by:
            alert.inhibited_by = inhibited
            if inhibited:
                changes.append(("inhibited", alert))
        if was_muted and not alert.muted:
            changes.append(("unmuted", alert))
        if ack is not None and alert.acked_by != ack.by:
            alert.acked_by, alert.acked_at = ack.by, ack.at
            changes.append(("acked", alert))
    return changes


__all__ = ["InhibitRule", "apply", "silenced_by"]
