"""What `top` computes from the latest samples, and how the runner accounts for every sample."""

import logging
import sqlite3
import threading


from farmwatch.clock import SimClock
from farmwatch.model import Batch, labels
from farmwatch.overview import summarize
from farmwatch.service.runner import Runner
from farmwatch.sources.base import Source, SourceConfig
from farmwatch.store import SQLiteStore


def L(**kw):
    return labels(kw)


def test_overview_keeps_input_and_output_apart_and_finds_slow_nodes():
    v = {
        ("up", L(unit="hlt02", app="distributor")): (0, 1.0),
        ("up", L(unit="hlt02", app="collector")): (0, 0.0),
        ("up", L(unit="hlt02", app="proxyhistoserver", node="hltwk03")): (0, 0.0),
        ("hlt.input.received_events:rate", L(unit="hlt02", app="distributor")): (0, 1000.0),
        ("hlt.output.sent_events:rate", L(unit="hlt02", app="finalcollector")): (0, 300.0),
        ("hlt.output.ready_queue_size", L(unit="hlt02", app="distributor")): (0, 0.0),
        ("hlt.monitor.output_state", L(unit="hlt02", app="distributor")): (0, "not_ready"),
        ("hlt.output.registered_workers", L(unit="hlt02", app="distributor")): (0, 40.0),
        ("hlt.input.registered_workers", L(unit="hlt02", app="collector")): (0, 38.0),
        ("hlt.input.dead_workers", L(unit="hlt02", app="collector")): (0, 2.0),
    }
    for i, host in enumerate(["hlt_wk01", "hlt_wk02", "hlt_wk03", "hlt_wk04"]):
        for pid in ("11", "12"):
            v[("hlt.output.sent_events:rate", L(unit="hlt02", app="distributor", host=host, pid=pid))] = (0, 10.0 if host == "hlt_wk03" else 120.0)
    (s,) = summarize(v)
    assert (s.endpoints_up, s.endpoints_total) == (1, 3)
    assert s.down == ["collector", "proxyhistoserver node=hltwk03"]
    assert (s.input_rate, s.output_rate) == (1000.0, 300.0)  # not averaged together
    assert (s.workers_distributor, s.workers_collector, s.dead_workers) == (40.0, 38.0, 2.0)
    assert s.output_state == "not_ready" and s.ready_queue == 0.0
    assert s.node_rates == {"hlt_wk01": 240.0, "hlt_wk02": 240.0, "hlt_wk03": 20.0, "hlt_wk04": 240.0}
    assert s.slow_nodes == ["hlt_wk03"]


class Counting(Source):
    """A source that produces `n` samples per cycle (for accounting, not for realism)."""

    Config = SourceConfig

    def __init__(self, name, n, clock):
        super().__init__(name, SourceConfig(kind="counting", interval="1s", timeout="100ms"), clock=clock)
        self.n = n
        self.cycles = 0

    def poll(self):
        self.cycles += 1
        b = Batch(self.clock.time())
        for i in range(self.n):
            b.add(("x", labels(i=i)), float(self.cycles))
        return [b]


class BrokenDisk(SQLiteStore):
    def write(self, items):
        raise sqlite3.OperationalError("disk I/O error")


def run_for(runner, clock, cycles):
    stop = threading.Event()
    source = runner.sources[0]
    original = source.poll

    def poll():
        out = original()
        if source.cycles >= cycles:
            stop.set()
        return out

    source.poll = poll
    runner.run(stop)


def test_every_sample_is_written_or_counted_as_dropped(tmp_path, caplog):
    clock = SimClock()
    store = SQLiteStore(tmp_path / "ok.db")
    runner = Runner([Counting("c", 100, clock)], store, clock=clock)
    run_for(runner, clock, 5)
    assert runner.dropped == 0
    assert len(store.query("x")) == 500
    store.close()

    caplog.set_level(logging.ERROR)
    broken = BrokenDisk(tmp_path / "broken.db")
    runner = Runner([Counting("c", 100, clock)], broken, clock=clock, write_attempts=2, backoff=0.001)
    run_for(runner, clock, 3)
    assert runner.written == 0 and runner.dropped >= 300
    assert any("gave up writing" in r.getMessage() and "farmwatch.dropped_samples" in r.getMessage() for r in caplog.records)
    broken.close()


def test_a_failing_source_does_not_stop_the_runner(tmp_path, caplog):
    clock = SimClock()

    class Flaky(Counting):
        def poll(self):
            out = super().poll()
            if self.cycles == 2:
                raise RuntimeError("boom")
            return out

    store = SQLiteStore(tmp_path / "f.db")
    runner = Runner([Flaky("f", 10, clock)], store, clock=clock)
    run_for(runner, clock, 4)
    assert "source f: poll failed" in caplog.text
    assert sorted(store.query("x")["value"].unique()) == [1.0, 3.0, 4.0]
    store.close()
