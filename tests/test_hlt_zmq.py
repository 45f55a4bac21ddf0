"""The HLT source against a simulated unit over real sockets: names, labels, rates, faults.

The simulator and the source share a simulated clock, so counters move by exactly one second of
farm time between two polls and rates are deterministic.
"""

import math

import pytest

from farmwatch.clock import SimClock
from farmwatch.config.loader import parse
from farmwatch.model import labels
from farmwatch.sim import SimUnit
from farmwatch.sources.hlt_zmq.source import HltZmqSource

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def clock():
    return SimClock(1_790_000_000.0)


@pytest.fixture
def unit(clock):
    with SimUnit("hlt01", worker_nodes=3, workers_per_node=4, input_rate=1000.0, clock=clock, seed=7) as u:
        yield u


@pytest.fixture
def source(unit, clock):
    cfg = {"kind": "hlt_zmq", "interval": "1s", "timeout": "400ms", "endpoints": unit.endpoints}
    src = HltZmqSource("hlt", parse({"sources": {"hlt": cfg}}).sources["hlt"], clock=clock)
    yield src
    src.close()


class Cycle(dict):
    """{(name, labels): value} of one poll, with helpers to read it like a test reads."""

    def get1(self, name, **lbls):
        want = set(labels(lbls))
        hits = [v for (n, lb), v in self.items() if n == name and want <= set(lb) and not ({"host", "pid", "peer"} & dict(lb).keys() - set(lbls))]
        assert len(hits) == 1, (name, lbls, hits)
        return hits[0]

    def names(self):
        return {n for n, _ in self}


def poll(source, clock, advance=1.0) -> Cycle:
    clock.advance(advance)
    return Cycle((k, v) for b in source.poll() for k, v in zip(b.keys, b.values))


def test_series_names_and_labels(unit, source, clock):
    c = poll(source, clock)
    assert c.get1("up", unit="hlt01", app="distributor") == 1.0
    assert all(v == 1.0 for (n, _), v in c.items() if n == "up")
    assert sum(1 for (n, _) in c if n == "up") == len(unit.endpoints) == 4 + 3
    assert c.get1("hlt.output.ready_queue_size", unit="hlt01", app="distributor") >= 0
    assert c.get1("hlt.monitor.output_state", unit="hlt01", app="distributor") == "ready"
    assert c.get1("hlt.input.socket_state", unit="hlt01", app="distributor") == "connected"
    # per-peer keys: one series per worker process with host and pid
    node = unit.nodes[0]
    ident = unit.workers(node)[0]
    host, pid = ident.rsplit("_", 1)
    assert c.get1("hlt.output.sent_events", unit="hlt01", app="distributor", host=host, pid=pid) >= 0
    per_peer = [lb for (n, lb) in c if n == "hlt.output.sent_events" and dict(lb).get("app") == "distributor" and "pid" in dict(lb)]
    assert len(per_peer) == 3 * 4
    # the proxy histogram servers carry their node label
    assert c.get1("up", unit="hlt01", app="proxyhistoserver", node=node) == 1.0
    # apps' own stale rates are not stored; ctime strings became epoch seconds
    assert not any("event_rate" in n for n in c.names())
    assert abs(c.get1("hlt.monitor.waiting_since", unit="hlt01", app="distributor") - clock.time()) < 86400


def test_states_are_stored_when_they_change(unit, source, clock):
    first = poll(source, clock)
    second = poll(source, clock)
    key = ("hlt.monitor.output_state", labels(unit="hlt01", app="distributor"))
    assert key in first and key not in second  # unchanged: not repeated
    unit.back_pressure(True)
    states = [poll(source, clock).get(key) for _ in range(30)]
    assert "not_ready" in states


def test_rates_come_from_counter_differences(unit, source, clock):
    poll(source, clock)
    rates = [poll(source, clock).get1("hlt.input.received_events:rate", unit="hlt01", app="distributor") for _ in range(5)]
    assert all(900 <= r <= 1100 for r in rates), rates
    c = poll(source, clock)
    node_rates = [v for (n, lb), v in c.items() if n == "hlt.output.sent_events:rate" and "pid" in dict(lb) and dict(lb)["app"] == "distributor"]
    assert len(node_rates) == 12 and sum(node_rates) == pytest.approx(c.get1("hlt.output.sent_events:rate", unit="hlt01", app="distributor"), rel=0.05)


def test_worker_death_is_seen_at_the_collector(unit, source, clock):
    before = poll(source, clock)
    unit.kill_workers(unit.nodes[1], 2)
    after = poll(source, clock)
    assert after.get1("hlt.input.dead_workers", unit="hlt01", app="collector") == before.get1("hlt.input.dead_workers", unit="hlt01", app="collector") + 2
    assert after.get1("hlt.input.registered_workers", unit="hlt01", app="collector") == before.get1("hlt.input.registered_workers", unit="hlt01", app="collector") - 2
    # the distributor still counts them (registered_workers never decreases)
    assert after.get1("hlt.output.registered_workers", unit="hlt01", app="distributor") == 12


def test_input_stall_gives_a_zero_rate(unit, source, clock):
    poll(source, clock)
    unit.stall_input(True)
    poll(source, clock)
    assert poll(source, clock).get1("hlt.input.received_events:rate", unit="hlt01", app="distributor") == 0.0


def test_app_restart_is_a_counter_reset_not_a_negative_rate(unit, source, clock):
    for _ in range(3):
        poll(source, clock)
    unit.restart_app("distributor")
    c = poll(source, clock)
    assert c.get1("hlt.poll.restarts", unit="hlt01", app="distributor") == 1.0
    assert c.get1("hlt.input.received_events:rate", unit="hlt01", app="distributor") >= 0
    rates = [v for (n, lb), v in c.items() if n.endswith(":rate")]
    assert rates and min(rates) >= 0


@pytest.mark.parametrize("mode", ["mute", "garbage", "bad_frames", "late"])
def test_a_broken_endpoint_only_fails_itself(unit, source, clock, mode):
    poll(source, clock)
    healthy = poll(source, clock)

    def numeric_distributor_series(cycle):
        return {k for k, v in cycle.items() if dict(k[1]).get("app") == "distributor" and isinstance(v, float)}

    unit.set_reply("collector", mode, delay=1.0)
    for _ in range(2):
        c = poll(source, clock)
        assert c.get1("up", unit="hlt01", app="collector") == 0.0
        assert c.get1("up", unit="hlt01", app="distributor") == 1.0
        assert c.get1("up", unit="hlt01", app="finalcollector") == 1.0
        assert numeric_distributor_series(c) == numeric_distributor_series(healthy)
    assert c.get1("hlt.poll.failures", unit="hlt01", app="collector") == 2.0
    unit.set_reply("collector", "normal")
    import time

    time.sleep(1.2)  # let a late answer of the last cycle arrive (and be discarded)
    c = poll(source, clock)
    assert c.get1("up", unit="hlt01", app="collector") == 1.0


def test_nan_inf_type_changes_unknown_sections_and_binary_identities(unit, source, clock):
    poll(source, clock)
    for app, mode in (("distributor", "nan"), ("collector", "type_change"), ("finalcollector", "unknown_section"), ("finalhistoserver", "binary_identity")):
        unit.set_reply(app, mode)
    c = poll(source, clock)
    for app in ("distributor", "collector", "finalcollector", "finalhistoserver"):
        assert c.get1("up", unit="hlt01", app=app) == 1.0, app
    dist = [v for (n, lb), v in c.items() if dict(lb).get("app") == "distributor" and isinstance(v, float)]
    assert any(math.isnan(v) for v in dist) and any(math.isinf(v) for v in dist)
    # type_change turned ints into doubles and into strings like "0": all still numbers
    coll = {n: v for (n, lb), v in c.items() if dict(lb).get("app") == "collector" and n.startswith("hlt.input.") and "pid" not in dict(lb)}
    assert coll and all(isinstance(v, float) and v == v for v in coll.values()), coll
    assert any(n.startswith("hlt.") and n.split(".")[1] not in ("monitor", "input", "output", "poll") for n in c.names())
    assert c.get1("hlt.poll.ignored_values", unit="hlt01", app="finalcollector") >= 1
    for (n, lb), _ in c.items():
        for _, v in lb:
            assert v.isprintable() and v.isascii(), (n, lb)


def test_an_answer_twice_is_counted_not_confused(unit, source, clock):
    poll(source, clock)
    unit.set_reply("distributor", "twice")
    a = poll(source, clock)
    b = poll(source, clock)
    assert b.get1("hlt.poll.duplicate_replies", unit="hlt01", app="distributor") >= 1
    assert b.get1("hlt.monitor.monitoring_counter", unit="hlt01", app="distributor") > a.get1("hlt.monitor.monitoring_counter", unit="hlt01", app="distributor")


def test_huge_replies_are_refused_without_hurting_the_others(unit, clock):
    unit.set_reply("distributor", "huge", size=3_000_000)
    cfg = {"kind": "hlt_zmq", "interval": "1s", "timeout": "400ms", "endpoints": unit.endpoints, "max_reply_size": "1MiB"}
    src = HltZmqSource("hlt", parse({"sources": {"hlt": cfg}}).sources["hlt"], clock=clock)
    try:
        c = poll(src, clock)
        assert c.get1("up", unit="hlt01", app="distributor") == 0.0
        assert c.get1("up", unit="hlt01", app="collector") == 1.0
    finally:
        src.close()
