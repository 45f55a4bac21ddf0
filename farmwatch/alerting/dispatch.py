"""Grouping and notification timing, as Alertmanager's dispatcher does it.

Alerts that share the values of the grouping labels (default: rule and unit) form one *group*;
one incident of a group is one chat message. The first notification waits ``group_wait`` so that
alerts arriving together (twenty workers dying with their node) land in one message; after that, a
changed group is notified at most every ``group_interval`` (except that a new firing alert in it is
shown after ``new_alert_wait``: the root cause of a cascade is named as soon as it fires); an unchanged firing group that nobody
acknowledged is reminded every ``repeat_interval``. When every alert of a notified group has
resolved, a last notification says so and the incident ends. A group never notified (all its
alerts resolved or were muted within ``group_wait``) ends silently: nobody needs to hear about it.

The dispatcher only decides; the notifications go into the persisted outbox together with the
group timers (one transaction), and the delivery worker sends them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from farmwatch.alerting.state import notification_doc
from farmwatch.model import Alert, AlertState, Labels, Notification

DEFAULT_GROUP_BY = ("alertname", "unit")


@dataclass(frozen=True)
class Timers:
    group_by: tuple[str, ...] = DEFAULT_GROUP_BY
    group_wait: float = 10.0
    group_interval: float = 60.0
    repeat_interval: float = 4 * 3600.0
    new_alert_wait: float | None = None
    """A *new firing alert* joining an incident that was already notified is shown this long after
    it joined, not up to ``group_interval`` later (None: ``group_wait``). A cascade alert often
    fires first and the root cause second; the root cause must not wait a minute to be named.
    Other changes (values, resolutions) still wait ``group_interval``."""


@dataclass
class Decision:
    """One dispatch step's result: group states to save or remove, notifications for the outbox."""

    changed: dict[str, dict[str, Any]]
    removed: list[str]
    outbox: list[tuple[str, str, dict[str, Any]]]
    notifications: list[Notification]


def group_labels(alert: Alert, group_by: Sequence[str]) -> Labels:
    found = dict(alert.labels)
    found.setdefault("alertname", alert.rule)
    return tuple((k, found.get(k, "")) for k in group_by)


def group_key(lbls: Labels) -> str:
    return ",".join(f"{k}={v}" for k, v in lbls)


def _digest(members: list[Alert]) -> str:
    h = hashlib.blake2b(digest_size=8)
    for a in sorted(members, key=lambda a: a.fingerprint):
        h.update(f"{a.fingerprint}|{a.state.value}|{a.severity}|{a.muted}|{a.acked_by}\n".encode())
    return h.hexdigest()


class Dispatcher:
    def __init__(self, timers: Timers, notifiers: Sequence[str],
                 groups: Mapping[str, dict[str, Any]] | None = None,
                 rule_group_by: Mapping[str, Sequence[str]] | None = None) -> None:
        self.timers = timers
        self.notifiers = list(notifiers)
        self.groups: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (groups or {}).items()}
        self.rule_group_by = {k: tuple(v) for k, v in (rule_group_by or {}).items()}

    def step(self, alerts: Mapping[str, Alert], now: float) -> Decision:
        t = self.timers
        decision = Decision({}, [], [], [])
        for alert in alerts.values():
            if alert.state != AlertState.FIRING:
                continue
            lbls = group_labels(alert, self.rule_group_by.get(alert.rule, t.group_by))
            key = group_key(lbls)
            group = self.groups.get(key)
            if group is None:
                if alert.muted:
                    continue
                group = self.groups[key] = {
                    "labels": [list(p) for p in lbls], "first_seen": now, "members": [],
                    "notified_at": None, "digest": None, "seq": 0,
                    "incident": f"{key}@{now:.3f}",
                }
                decision.changed[key] = group
            if alert.fingerprint not in group["members"]:
                group["members"].append(alert.fingerprint)
                decision.changed[key] = group

        for key, group in list(self.groups.items()):
            members = [alerts[fp] for fp in group["members"] if fp in alerts]
            if len(members) != len(group["members"]):
                group["members"] = [a.fingerprint for a in members]
                decision.changed[key] = group
            notified = group["notified_at"] is not None
            # A muted alert is only mentioned if the message already showed it (then as "silenced"
            # or "inhibited by …"); one that was muted from the start is never news.
            shown = set(group.setdefault("shown", []))
            firing = [a for a in members if a.state == AlertState.FIRING and (not a.muted or a.fingerprint in shown)]
            resolved = [a for a in members if a.state == AlertState.RESOLVED and (not a.muted or a.fingerprint in shown)]
            if not notified and not firing:
                if not any(a.state == AlertState.FIRING for a in members):
                    self._remove(key, decision)
                continue
            digest = _digest(firing + resolved)
            if not notified:
                due = now >= group["first_seen"] + t.group_wait
                repeat = False
            elif digest != group["digest"]:
                due = now >= group["notified_at"] + t.group_interval
                if any(a.fingerprint not in shown for a in firing if not a.muted):
                    group.setdefault("new_since", now)
                    wait = t.group_wait if t.new_alert_wait is None else t.new_alert_wait
                    due = due or now >= group["new_since"] + wait
                repeat = False
            else:
                reminders = [a for a in firing if not a.muted and a.acked_by is None]
                due = bool(reminders) and now >= group["notified_at"] + t.repeat_interval
                repeat = True
            if not due:
                continue
            group["seq"] += 1
            group["notified_at"], group["digest"] = now, digest
            group.pop("new_since", None)
            group["shown"] = sorted(shown | {a.fingerprint for a in firing if not a.muted})
            lbls = tuple(tuple(p) for p in group["labels"])
            note = Notification(key, lbls, sorted(firing, key=_order), sorted(resolved, key=_order),
                                now, group["seq"], repeat)
            decision.notifications.append(note)
            payload = notification_doc(note, group["incident"])
            decision.outbox += [(name, group["incident"], payload) for name in self.notifiers]
            if firing:
                decision.changed[key] = group
            else:
                self._remove(key, decision)
        return decision

    def _remove(self, key: str, decision: Decision) -> None:
        del self.groups[key]
        decision.changed.pop(key, None)
        decision.removed.append(key)


def _order(alert: Alert) -> tuple:
    return (alert.labels, alert.fingerprint)


__all__ = ["DEFAULT_GROUP_BY", "Decision", "Dispatcher", "Timers", "group_key", "group_labels"]
