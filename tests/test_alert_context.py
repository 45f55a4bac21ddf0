"""An alert about a node carries what Zabbix reports about that node (the problems the Zabbix
source stored), in its description and so in the chat message; other alerts are unchanged."""

from __future__ import annotations

from pathlib import Path

from farmwatch.sources.zabbix.source import ZabbixContext
from farmwatch.alerting.dispatch import Timers
from farmwatch.alerting.engine import AlertEngine
from farmwatch.alerting.message import render
from farmwatch.alerting.state import AlertDB
from farmwatch.clock import SimClock
from farmwatch.model import Batch, labels
from farmwatch.store import SQLiteStore

T0 = 1_780_000_000.0  # 2026-05-28T20:26:40Z


class Hit:
    def __init__(self, lbls, value):
        self.labels, self.value, self.values = lbls, value, {}


class NodeSlow:
    name, for_, severity, group_by = "HltWorkerNodeSlow", 0.0, "warning", None

    def __init__(self):
        self.on = {}

    def evaluate(self, window, now):
        return [Hit(lbls, v) for lbls, v in self.on.items()]

    def alert_labels(self, active):
        return active.labels

    def render(self, active):
        return f"worker node {dict(active.labels)['host']} is slow", "Check the node."


def zabbix_poll(store: SQLiteStore, ts: float, problems: dict[str, list[tuple[str, str, float]]]) -> None:
    """What the Zabbix source writes each poll: one zabbix.problem per open problem (value: since)
    and zabbix.problems per host (the count)."""
    b = Batch(ts)
    for host, found in problems.items():
        for i, (name, severity, since) in enumerate(found):
            b.add(("zabbix.problem", labels(host=host, eventid=str(1000 + i), problem=name, severity=severity)), since)
        b.add(("zabbix.problems", labels(host=host)), float(len(found)))
    store.write([b])


def test_a_node_alert_says_what_zabbix_reports_about_the_node(tmp_path: Path):
    clock = SimClock(T0)
    store = SQLiteStore(tmp_path / "fw.db", clock=clock)
    rule = NodeSlow()
    engine = AlertEngine([rule], None, AlertDB(store), timers=Timers(group_wait=0), notifiers=["chat"], clock=clock,
                         context=ZabbixContext(store, tz="UTC"))
    zabbix_poll(store, T0 - 30, {"hltwk07": [("High CPU temperature on hltwk07", "high", T0 - 600)], "hltwk02": []})
    rule.on = {labels(unit="hlt01", host="hltwk07"): 3.0, labels(unit="hlt01", host="hltwk02"): 4.0}
    clock.advance(5)
    result = engine.evaluate()
    by_host = {dict(a.labels)["host"]: a for a in engine.tracker.alerts.values()}
    assert by_host["hltwk07"].description == "Zabbix reports: High CPU temperature on hltwk07 since 20:16 (high)\nCheck the node."
    assert by_host["hltwk02"].description == "Check the node."  # Zabbix has nothing open there
    text = render(result.notifications[0], now=clock.time()).as_text()
    assert "Zabbix reports: High CPU temperature on hltwk07 since 20:16 (high)" in text

    zabbix_poll(store, clock.time() + 55, {"hltwk07": [], "hltwk02": []})  # the problem was resolved in Zabbix
    clock.advance(60)
    engine.evaluate()
    assert by_host["hltwk07"].description == "Check the node."


def test_without_zabbix_data_nothing_is_added(tmp_path: Path):
    clock = SimClock(T0)
    store = SQLiteStore(tmp_path / "fw.db", clock=clock)
    context = ZabbixContext(store)
    assert context(labels(unit="hlt01", host="hltwk07"), T0) == []
    assert context(labels(unit="hlt01"), T0) == []
