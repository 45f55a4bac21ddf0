"""The dead-man's switch (alerts/farmwatch.toml): farmwatch alerts when one of its own sources
stops producing, and when it drops samples. Fed as `farmwatch run` feeds the rules (the runner's
listener) and on a simulated clock."""

from __future__ import annotations

import pytest

from farmwatch.alerting.rules import load_rules
from farmwatch.alerting.window import Window
from farmwatch.clock import SimClock
from farmwatch.config import parse
from farmwatch.model import Batch
from farmwatch.runner import Runner
from farmwatch.sim import SimUnit
from farmwatch.sim.scenario import ALERTS
from farmwatch.sources.hlt_zmq import HltZmqSource
from farmwatch.store import SQLiteStore

pytestmark = pytest.mark.timeout(60)
RULES = {r.name: r for r in load_rules([ALERTS / "farmwatch.toml"])}
START = 1_780_000_000.0


def test_a_source_that_stops_cycling_is_reported_by_name(tmp_path):
    clock = SimClock(START)
    window = Window(600.0)
    rule = RULES["FarmwatchSourceSilent"]
    with SimUnit("hlt01", worker_nodes=1, workers_per_node=2, input_rate=100.0, clock=clock, seed=2) as unit, \
            SQLiteStore(tmp_path / "fw.db", clock=clock) as store:
        cfg = parse({"sources": {"hlt": {"kind": "hlt_zmq", "interval": "2s", "timeout": "200ms", "endpoints": unit.endpoints}}})
        source = HltZmqSource("hlt", cfg.sources["hlt"], clock=clock)
        runner = Runner([source], store, clock=clock, listeners=[lambda name, batches: window.ingest(batches)])
        try:
            for _ in range(10):  # 20 s of normal cycles
                runner.run_once()
                clock.advance(2.0)
            assert rule.evaluate(window, clock.time()) == []
            clock.advance(170.0)  # the collector hangs: no cycle for 3 min
            assert rule.evaluate(window, clock.time()) == []
            clock.advance(20.0)
            (active,) = rule.evaluate(window, clock.time())
            assert dict(rule.alert_labels(active))["source"] == "hlt" and active.value > 180
            summary, _ = rule.render(active)
            assert summary.startswith("farmwatch source hlt has produced nothing for 19")
            runner.run_once()  # it comes back
            assert rule.evaluate(window, clock.time()) == []
        finally:
            source.close()


def test_dropped_samples_alert_while_the_count_grows():
    """farmwatch.dropped_samples is the store writer's cumulative count (written with every store
    write); the rule holds while it grew within the last 5 minutes."""
    window = Window(900.0)
    rule = RULES["FarmwatchDroppingSamples"]
    dropped = [0, 0, 0, 0, 1200, 2400, 2400, 2400]  # one value a minute: drops in minutes 4 and 5
    for minute, value in enumerate(dropped):
        b = Batch(START + 60 * minute)
        b.add(("farmwatch.dropped_samples", ()), float(value))
        window.ingest([b])
        now = START + 60 * minute
        active = rule.evaluate(window, now)
        if minute < 4:
            assert active == [], minute
        else:
            assert len(active) == 1 and active[0].value == value, (minute, active)
    for minute in range(8, 12):  # no new drops: quiet again once the growth leaves the window
        b = Batch(START + 60 * minute)
        b.add(("farmwatch.dropped_samples", ()), 2400.0)
        window.ingest([b])
    assert rule.evaluate(window, START + 60 * 11) == []
