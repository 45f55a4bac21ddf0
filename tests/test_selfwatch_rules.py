"""The dead-man's switch (alerts/farmwatch.toml): farmwatch alerts when one of its own sources
stops producing, and when it drops samples. Fed as `farmwatch run` feeds the rules (the runner's
listener) and on a simulated clock."""

from __future__ import annotations

import pytest

from farmwatch.alerting.rules import load_rules
from farmwatch.store.window import Window
from farmwatch.clock import SimClock
from farmwatch.config.loader import parse
from farmwatch.service.runner import Runner
from farmwatch.sim import SimUnit
from farmwatch.testing.scenario import ALERTS
from farmwatch.sources.hlt_zmq.source import HltZmqSource
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


@pytest.mark.timeout(60)
def test_dropped_samples_alert_when_the_store_cannot_be_written(tmp_path):
    """The real runner against a store another process holds locked: its writes fail, the cycles
    are dropped and counted, and the rule fires from the window fed the way `farmwatch run` feeds it
    (the runner's listener, not the store)."""
    import sqlite3
    import threading
    import time as _time

    rule = RULES["FarmwatchDroppingSamples"]
    window = Window(900.0)
    with SimUnit("hlt01", worker_nodes=1, workers_per_node=2, input_rate=100.0, seed=4) as unit:
        store = SQLiteStore(tmp_path / "fw.db", busy_timeout=0.05)
        cfg = parse({"sources": {"hlt": {"kind": "hlt_zmq", "interval": "100ms", "timeout": "50ms", "endpoints": unit.endpoints}}})
        source = HltZmqSource("hlt", cfg.sources["hlt"])
        runner = Runner([source], store, write_attempts=1, backoff=0.0,
                        listeners=[lambda name, batches: window.ingest(batches)])
        blocker = sqlite3.connect(tmp_path / "fw.db")
        blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        stop = threading.Event()
        thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
        thread.start()
        try:
            deadline = _time.monotonic() + 20
            while runner.dropped == 0 and _time.monotonic() < deadline:
                _time.sleep(0.1)
            _time.sleep(0.5)  # a few more cycles carry the count
            assert runner.dropped > 0
            (active,) = rule.evaluate(window, _time.time())
            assert active.value > 0 and "dropping samples" in rule.render(active)[0]
        finally:
            blocker.rollback()
            blocker.close()
            stop.set()
            thread.join(timeout=20)
            source.close()
            store.close()
