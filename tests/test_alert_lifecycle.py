"""Alert lifecycle, grouping, silences, inhibition, acknowledgements and restarts.

The rules here are tiny condition rules whose truth each test sets by hand, so that every
transition happens at a known simulated time; the real rule kinds are tested in test_rules.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from farmwatch.alerting.dispatch import Timers
from farmwatch.alerting.engine import AlertEngine
from farmwatch.alerting.muting import InhibitRule
from farmwatch.alerting.state import AlertDB
from farmwatch.clock import SimClock
from farmwatch.model import AlertState, labels
from farmwatch.store.sqlite import SQLiteStore

T0 = 1_700_000_000.0


@dataclass(frozen=True)
class Hit:
    labels: tuple
    value: float
    values: dict = field(default_factory=dict)


class SetRule:
    """A rule that is active for exactly the label sets the test puts into ``on``."""

    def __init__(self, name: str, for_: float = 0.0, severity: str = "critical", group_by=None) -> None:
        self.name, self.for_, self.severity, self.group_by = name, for_, severity, group_by
        self.on: dict[tuple, float] = {}
        self.broken = False

    def evaluate(self, window, now):
        if self.broken:
            raise RuntimeError("division by zero in the expert's function")
        return [Hit(lbls, v) for lbls, v in self.on.items()]

    def alert_labels(self, active):
        return active.labels

    def render(self, active):
        return f"{self.name} on {dict(active.labels)} = {active.value}", ""


class Farm:
    """An engine on a real store file with a simulated clock; ``step`` advances and evaluates."""

    def __init__(self, path: Path, rules, timers=Timers(group_wait=10, group_interval=60, repeat_interval=3600),
                 inhibits=()) -> None:
        self.path, self.rules, self.timers, self.inhibits = path, rules, timers, inhibits
        self.clock = SimClock(T0)
        self.store = SQLiteStore(path, clock=self.clock)
        self.db = AlertDB(self.store)
        self.engine = self._engine()
        self.sent = []

    def _engine(self) -> AlertEngine:
        return AlertEngine(self.rules, None, self.db, timers=self.timers, notifiers=["chat"],
                           inhibits=self.inhibits, clock=self.clock)

    def restart(self) -> None:
        self.store.close()
        self.store = SQLiteStore(self.path, clock=self.clock)
        self.db = AlertDB(self.store)
        self.engine = self._engine()

    def step(self, seconds: float = 5.0):
        self.clock.advance(seconds)
        result = self.engine.evaluate()
        self.sent += result.notifications
        return result

    def run(self, seconds: float, every: float = 5.0) -> None:
        for _ in range(int(seconds / every)):
            self.step(every)


def unit(name: str, **more) -> tuple:
    return labels(unit=name, **more)


@pytest.fixture
def stalled(tmp_path: Path):
    rule = SetRule("HltInputStalled", for_=30)
    return rule, Farm(tmp_path / "farm.db", [rule])


def test_pending_then_firing_after_for_then_resolved(stalled) -> None:
    rule, farm = stalled
    rule.on[unit("hlt01")] = 0.0
    farm.step()
    (alert,) = farm.engine.tracker.alerts.values()
    assert alert.state == AlertState.PENDING
    farm.run(25)
    assert alert.state == AlertState.PENDING
    farm.step()
    assert alert.state == AlertState.FIRING and alert.starts_at - alert.active_since == 30
    rule.on.clear()
    farm.step()
    assert alert.state == AlertState.RESOLVED and alert.ends_at == farm.clock.time()
    events = [row["event"] for row in farm.db.history()]
    assert events == ["pending", "firing", "resolved"]


def test_condition_that_stops_before_for_is_cancelled_and_never_notified(stalled) -> None:
    rule, farm = stalled
    rule.on[unit("hlt01")] = 0.0
    farm.run(20)
    rule.on.clear()
    farm.run(120)
    assert farm.engine.tracker.alerts == {}
    assert farm.sent == []
    assert [row["event"] for row in farm.db.history()] == ["pending", "cancelled"]


def test_alerts_of_one_unit_arriving_together_make_one_notification(tmp_path: Path) -> None:
    rule = SetRule("HltWorkersDied")
    farm = Farm(tmp_path / "farm.db", [rule])
    for node in ("hltwk01", "hltwk02", "hltwk03"):
        rule.on[unit("hlt01", host=node)] = 1
    farm.step()
    rule.on[unit("hlt01", host="hltwk04")] = 1
    rule.on[unit("hlt02", host="hltwk01")] = 1
    farm.step()
    assert farm.sent == []  # still within group_wait
    farm.step()
    assert [n.group_key for n in farm.sent] == ["alertname=HltWorkersDied,unit=hlt01"]
    farm.step()  # hlt02's group started one step later, so it waits one step longer
    by_group = {n.group_key: n for n in farm.sent}
    assert set(by_group) == {"alertname=HltWorkersDied,unit=hlt01", "alertname=HltWorkersDied,unit=hlt02"}
    assert len(by_group["alertname=HltWorkersDied,unit=hlt01"].firing) == 4


def test_group_changes_wait_for_group_interval_and_resolve_ends_the_incident(tmp_path: Path) -> None:
    rule = SetRule("HltWorkersDied")
    farm = Farm(tmp_path / "farm.db", [rule])
    rule.on[unit("hlt01", host="hltwk01")] = 1
    rule.on[unit("hlt01", host="hltwk02")] = 1
    farm.run(15)
    assert [len(n.firing) for n in farm.sent] == [2]
    rule.on.pop(unit("hlt01", host="hltwk01"))  # a resolution is news, but not urgent
    farm.run(50)
    assert len(farm.sent) == 1
    farm.run(10)
    assert [(len(n.firing), len(n.resolved)) for n in farm.sent] == [(2, 0), (1, 1)]
    rule.on.clear()
    farm.run(60)
    last = farm.sent[-1]
    assert last.status == "resolved" and len(last.resolved) == 2 and last.seq == 3
    assert farm.db.load_groups() == {}
    outbox = farm.db.outbox_log()
    assert [row["payload"]["seq"] for row in outbox] == [1, 2, 3]
    assert len({row["incident"] for row in outbox}) == 1


def test_a_new_firing_alert_joins_the_incident_message_after_group_wait_not_group_interval(tmp_path: Path) -> None:
    """A cascade alert often fires first and opens the incident; the root cause, firing later, is
    named within group_wait (new_alert_wait) instead of up to group_interval later — in the same message."""
    rule = SetRule("HltWorkersDied")
    farm = Farm(tmp_path / "farm.db", [rule])
    rule.on[unit("hlt01", host="hltwk01")] = 1
    farm.run(15)
    assert len(farm.sent) == 1
    rule.on[unit("hlt01", host="hltwk02")] = 1
    farm.run(5)
    assert len(farm.sent) == 1
    farm.run(10)
    assert [len(n.firing) for n in farm.sent] == [1, 2] and farm.sent[1].seq == 2
    assert len({row["incident"] for row in farm.db.outbox_log()}) == 1

    alertmanager_like = Farm(tmp_path / "am.db", [rule2 := SetRule("HltWorkersDied")],
                             timers=Timers(group_wait=10, group_interval=60, repeat_interval=3600, new_alert_wait=60))
    rule2.on[unit("hlt01", host="hltwk01")] = 1
    alertmanager_like.run(15)
    rule2.on[unit("hlt01", host="hltwk02")] = 1
    alertmanager_like.run(50)
    assert len(alertmanager_like.sent) == 1  # new_alert_wait = group_interval: Alertmanager's timing
    alertmanager_like.run(10)
    assert [len(n.firing) for n in alertmanager_like.sent] == [1, 2]


def test_unchanged_firing_group_is_reminded_unless_acknowledged(tmp_path: Path) -> None:
    rule = SetRule("HltInputStalled")
    farm = Farm(tmp_path / "farm.db", [rule], Timers(group_wait=0, group_interval=60, repeat_interval=600))
    rule.on[unit("hlt01")] = 0
    rule.on[unit("hlt02")] = 0
    farm.step()
    farm.run(600)
    reminders = [n for n in farm.sent if n.repeat]
    assert len(reminders) == 2 and {n.group_key for n in reminders} == {
        "alertname=HltInputStalled,unit=hlt01", "alertname=HltInputStalled,unit=hlt02"}
    fp = next(a.fingerprint for a in farm.engine.tracker.alerts.values() if ("unit", "hlt01") in a.labels)
    farm.db.ack([fp], "shifter", farm.clock.time(), "looking at EB2")
    count = len(farm.sent)
    farm.run(60)  # the change is notified after group_interval, as any change
    (ack_update,) = farm.sent[count:]
    assert ack_update.firing[0].acked_by == "shifter" and not ack_update.repeat
    count = len(farm.sent)
    farm.run(1200)
    assert all(n.group_key.endswith("hlt02") for n in farm.sent[count:])


def test_silence_mutes_matching_alerts_until_it_expires(tmp_path: Path) -> None:
    rule = SetRule("HltInputStalled")
    farm = Farm(tmp_path / "farm.db", [rule], Timers(group_wait=0, group_interval=30, repeat_interval=3600))
    silence = farm.db.add_silence(["unit=hlt03"], T0, T0 + 600, "expert", "hardware work on hlt03")
    rule.on[unit("hlt03")] = 0
    rule.on[unit("hlt04")] = 0
    farm.run(60)
    assert {n.group_key for n in farm.sent} == {"alertname=HltInputStalled,unit=hlt04"}
    hlt03 = next(a for a in farm.engine.tracker.alerts.values() if ("unit", "hlt03") in a.labels)
    assert hlt03.state == AlertState.FIRING and hlt03.silenced_by.startswith(f"silence {silence.id}")
    assert farm.db.expire_silence(silence.id[:4], farm.clock.time())
    farm.step()
    assert hlt03.silenced_by is None
    assert farm.sent[-1].group_key.endswith("hlt03")


def test_a_down_unit_inhibits_the_alerts_of_its_apps(tmp_path: Path) -> None:
    down, stalled = SetRule("HltUnitDown"), SetRule("HltInputStalled")
    inhibit = InhibitRule.parse(["alertname=HltUnitDown"], ["alertname!=HltUnitDown"], ["unit"])
    farm = Farm(tmp_path / "farm.db", [down, stalled], Timers(group_wait=10), [inhibit])
    down.on[unit("hlt05")] = 0
    stalled.on[unit("hlt05")] = 0
    stalled.on[unit("hlt06")] = 0
    farm.run(30)
    assert {n.group_key for n in farm.sent} == {"alertname=HltUnitDown,unit=hlt05",
                                                "alertname=HltInputStalled,unit=hlt06"}
    muted = next(a for a in farm.engine.tracker.alerts.values()
                 if a.rule == "HltInputStalled" and ("unit", "hlt05") in a.labels)
    assert muted.inhibited_by == "HltUnitDown (unit=hlt05)"


def test_an_inhibit_hold_keeps_consequences_muted_after_the_cause_resolved(tmp_path: Path) -> None:
    """A consequence that outlasts its cause (an anomaly score over a window that still holds the
    stall) stays muted for ``hold`` after the source resolved, then notifies if it still fires."""
    stalled, odd = SetRule("HltInputStalled"), SetRule("AnomalyScoreHigh")
    inhibit = InhibitRule.parse(["alertname=HltInputStalled"], ["alertname=AnomalyScoreHigh"], ["unit"], hold=120)
    farm = Farm(tmp_path / "farm.db", [stalled, odd], Timers(group_wait=10), [inhibit])
    stalled.on[unit("hlt02")] = 0
    odd.on[unit("hlt02")] = 1
    farm.run(30)
    stalled.on.clear()  # the stall ends; the anomaly lingers
    farm.run(100)
    assert [n.group_key for n in farm.sent] == ["alertname=HltInputStalled,unit=hlt02"] * 2  # firing, resolved
    muted = next(a for a in farm.engine.tracker.alerts.values() if a.rule == "AnomalyScoreHigh")
    assert muted.state == AlertState.FIRING and muted.inhibited_by == "HltInputStalled (unit=hlt02)"
    farm.run(40)  # hold over: still firing, so now it is news
    assert muted.inhibited_by is None and farm.sent[-1].group_key == "alertname=AnomalyScoreHigh,unit=hlt02"
    with pytest.raises(ValueError, match="hold"):
        InhibitRule.parse(["a=b"], ["c=d"], hold=-1)


def test_restart_neither_resends_nor_forgets(stalled) -> None:
    rule, farm = stalled
    rule.on[unit("hlt01")] = 0
    farm.run(45)
    assert len(farm.sent) == 1
    farm.restart()
    farm.run(30)
    assert len(farm.sent) == 1, "a restart must not notify again"
    (alert,) = farm.engine.tracker.alerts.values()
    assert alert.state == AlertState.FIRING and alert.active_since == T0 + 5
    rule.on.clear()
    farm.restart()
    farm.run(60)
    assert farm.sent[-1].status == "resolved"


def test_a_rule_that_raises_keeps_its_alerts_and_others_go_on(tmp_path: Path, caplog) -> None:
    bad, good = SetRule("ExpertCheck"), SetRule("HltInputStalled")
    farm = Farm(tmp_path / "farm.db", [bad, good])
    bad.on[unit("hlt01")] = 1
    farm.run(15)
    bad.broken = True
    good.on[unit("hlt02")] = 0
    result = farm.step()
    assert "division by zero" in result.errors["ExpertCheck"]
    states = {a.rule: a.state for a in farm.engine.tracker.alerts.values()}
    assert states == {"ExpertCheck": AlertState.FIRING, "HltInputStalled": AlertState.FIRING}
    farm.run(20)
    assert sum("ExpertCheck" in r.getMessage() and "failed" in r.getMessage() for r in caplog.records) == 1


def test_alerts_of_a_removed_rule_resolve_at_start(tmp_path: Path) -> None:
    old = SetRule("Obsolete")
    farm = Farm(tmp_path / "farm.db", [old])
    old.on[unit("hlt01")] = 1
    farm.run(15)
    farm.rules = [SetRule("HltInputStalled")]
    farm.restart()
    farm.run(60)
    (alert,) = farm.db.alerts()
    assert alert.state == AlertState.RESOLVED
    assert farm.sent[-1].status == "resolved"
    assert farm.db.history()[-1]["event"] == "resolved (rule removed)"


def test_a_resolved_alert_stays_listed_when_its_condition_briefly_holds_again(stalled) -> None:
    rule, farm = stalled
    rule.on[unit("hlt01")] = 0.0
    farm.run(40)
    rule.on.clear()
    farm.step()
    rule.on[unit("hlt01")] = 0.0
    farm.run(10)  # pending again, shorter than `for`
    rule.on.clear()
    farm.step()
    (alert,) = farm.db.alerts()
    assert alert.state == AlertState.RESOLVED and alert.ends_at == T0 + 45
    assert [row["event"] for row in farm.db.history()] == ["pending", "firing", "resolved", "pending", "cancelled"]


def test_an_incident_whose_alert_is_pending_again_still_says_it_resolved(tmp_path: Path) -> None:
    """Notified, resolved, then pending again before group_interval let the resolution out: the
    message must say RESOLVED with that alert (the new pending episode is not news yet), never
    an empty "0 alerts" message."""
    rule = SetRule("AnomalyScoreHigh", for_=60, severity="warning")
    farm = Farm(tmp_path / "farm.db", [rule], Timers(group_wait=10, group_interval=30, repeat_interval=3600))
    rule.on[unit("hlt02", host="hltwk06")] = 0.995
    farm.run(75)
    assert [(n.status, len(n.firing)) for n in farm.sent] == [("firing", 1)]
    rule.on.clear()
    farm.step()          # resolved …
    rule.on[unit("hlt02", host="hltwk06")] = 0.995
    farm.run(40)         # … and pending again when group_interval lets the change out
    last = farm.sent[-1]
    assert len(farm.sent) == 2 and last.status == "resolved"
    assert [a.labels for a in last.resolved] == [unit("hlt02", host="hltwk06")] and not last.firing
    farm.run(60)         # held for `for` again: a new incident
    assert farm.sent[-1].status == "firing" and farm.sent[-1].seq == 1
