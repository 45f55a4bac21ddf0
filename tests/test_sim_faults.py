"""Slow faults (farmwatch.sim.faults) do what they say, seen through the units' monitor replies:
a decline, growing latency, an oscillation and a stuck node, each with its ground truth, and a
load that varies the same way for every node."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from farmwatch.clock import SimClock
from farmwatch.sim import SimUnit, faults
from sim_helpers import flat

pytestmark = pytest.mark.timeout(60)

NODES, PER_NODE, RATE = 4, 4, 200.0


@pytest.fixture
def clock():
    return SimClock(1_700_000_000.0)


@pytest.fixture
def unit(clock):
    u = SimUnit("hlt01", worker_nodes=NODES, workers_per_node=PER_NODE, input_rate=RATE, clock=clock, seed=1)
    faults.record(u, clock, 120)  # past the start-up transient
    return u


def minutes(frames: dict[str, pd.DataFrame], metric: str, start: float, end: float) -> pd.Series:
    """Mean of ``metric`` per node between ``start`` and ``end`` minutes of the recording."""
    t0 = next(iter(frames.values())).index[0]
    return pd.Series({n: f[metric][(f.index >= t0 + pd.Timedelta(minutes=start))
                                   & (f.index < t0 + pd.Timedelta(minutes=end))].mean()
                      for n, f in frames.items()})


def test_decline_takes_a_node_down_to_its_floor_gradually_and_back(unit, clock):
    node = unit.nodes[1]
    fault = faults.make("decline", unit, node, clock.time() + 60, 900, ramp=600, floor=0.3)
    assert fault.truth == faults.GroundTruth("hlt01", node, "decline", clock.time() + 60, clock.time() + 960)
    frames = faults.record(unit, clock, 1500)
    others = [n for n in unit.nodes if n != node]
    ratio = lambda a, b: minutes(frames, "sent_rate", a, b)[node] / minutes(frames, "sent_rate", a, b)[others].mean()
    assert 0.85 < ratio(0, 1) < 1.15                    # before: like its peers
    assert 0.8 < ratio(2, 4) < 1.15                     # early in the ramp: barely different
    assert ratio(12, 16) < 0.6                          # at the floor: far fewer events
    assert 0.85 < ratio(20, 25) < 1.15                  # after the end: recovered
    assert minutes(frames, "credits", 12, 16)[node] < 1  # its workers hold no free credits


def test_growing_latency_runs_out_of_credits_then_falls_further_and_further(unit, clock):
    node = unit.nodes[0]
    faults.make("latency", unit, node, clock.time(), 1200, growth=4.0)
    frames = faults.record(unit, clock, 1200)
    others = [n for n in unit.nodes if n != node]
    ratios = []
    for a in (0, 5, 10, 15):
        rates = minutes(frames, "sent_rate", a, a + 5)
        ratios.append(rates[node] / rates[others].mean())
    assert ratios == sorted(ratios, reverse=True) and ratios[0] > 0.75 and ratios[-1] < 0.45
    assert ratios[0] - ratios[1] > ratios[2] - ratios[3]   # hyperbolic: fast at first, then slower
    assert minutes(frames, "credits", 5, 20)[node] < 1
    assert minutes(frames, "credits", 5, 20)[others].min() > 2


def test_oscillation_has_its_period_and_is_strongest_on_the_faulty_node(unit, clock):
    node = unit.nodes[2]
    faults.make("oscillation", unit, node, clock.time(), 1800, period=240, depth=0.8)
    frames = faults.record(unit, clock, 1800)

    def spectrum(x: np.ndarray) -> np.ndarray:
        return np.abs(np.fft.rfft(x - x.mean()))

    amp = spectrum(frames[node]["sent_rate"].to_numpy())
    k = 1 + int(np.argmax(amp[1:]))
    period = 1.0 / np.fft.rfftfreq(len(frames[node]), d=10.0)[k]
    assert 200 <= period <= 280
    # The peers take over what the node does not take (so they swing too, in antiphase, less).
    for other in unit.nodes:
        if other != node:
            assert spectrum(frames[other]["sent_rate"].to_numpy())[k] < amp[k] / 2


def test_a_stuck_node_freezes_its_counters_on_the_wire_while_peers_move(clock):
    with SimUnit("hlt01", worker_nodes=NODES, workers_per_node=PER_NODE, input_rate=RATE, clock=clock,
                 seed=2) as unit:
        node, peer = unit.nodes[3], unit.nodes[0]
        addr = next(e["address"] for e in unit.endpoints if e["app"] == "distributor")
        clock.advance(60)
        fault = faults.make("stuck", unit, node, clock.time(), 600)
        clock.advance(20)  # it hands back the events it still had
        before = flat(addr)
        clock.advance(300)
        after = flat(addr)
        sent = lambda d, n: sum(d[f"output.sent_events[{w}]"] for w in unit.workers(n))
        credits = lambda d, n: sum(d[f"output.ready_messages[{w}]"] for w in unit.workers(n))
        assert sent(after, node) == sent(before, node) and credits(after, node) == credits(before, node) == 0
        assert sent(after, peer) - sent(before, peer) > 0.5 * 300 * RATE / NODES
        assert fault.truth.kind == "stuck" and fault.truth.end == fault.truth.start + 600
        clock.advance(320)  # the fault is over: the node works again
        again = flat(addr)
        assert sent(again, node) - sent(after, node) > 0.5 * 20 * RATE / NODES


def test_load_varies_alike_for_all_nodes_and_is_reproducible():
    def run() -> dict[str, pd.DataFrame]:
        clock = SimClock(1_700_000_000.0)
        u = SimUnit("hlt01", worker_nodes=NODES, workers_per_node=PER_NODE, input_rate=RATE, clock=clock, seed=1)
        u.add_schedule(faults.Load(RATE, swing=0.2, period=1200, noise=0.05, seed=7))
        return faults.record(u, clock, 1200)

    a, b = run(), run()
    for n in a:
        pd.testing.assert_frame_equal(a[n], b[n])
    total = sum(f["sent_rate"] for f in a.values()).iloc[6:]
    assert total.std() > 0.05 * RATE          # the load moves ...
    assert total.min() > 0.5 * RATE
    corr = pd.DataFrame({n: f["sent_rate"].rolling(6).mean() for n, f in a.items()}).corr()
    assert corr.to_numpy().min() > 0.8        # ... and every node follows it


def test_speeds_ground_truth_and_bad_input(unit, clock):
    t = clock.time()
    f = faults.make("decline", unit, unit.nodes[0], t + 100, 1000, ramp=500, floor=0.4)
    assert f.speed(t) == 1.0 and f.speed(t + 100) == 1.0 and f.speed(t + 1100) == 1.0
    assert f.speed(t + 350) == pytest.approx(0.7) and f.speed(t + 900) == pytest.approx(0.4)
    osc = faults.SlowFault("hlt01", "hltwk01", "oscillation", 0, 1000, period=200, depth=0.6)
    assert osc.speed(0) == pytest.approx(1.0) and osc.speed(100) == pytest.approx(0.4)
    lat = faults.SlowFault("hlt01", "hltwk01", "latency", 0, 1000, growth=3.0)
    assert lat.speed(500) == pytest.approx(1 / 2.5)
    assert f.truth.to_dict() == {"unit": "hlt01", "host": unit.nodes[0], "kind": "decline",
                                 "start": t + 100, "end": t + 1100}
    with pytest.raises(ValueError, match="unknown slow fault 'melt'"):
        faults.make("melt", unit, unit.nodes[0], t, 10)
    with pytest.raises(ValueError, match="no worker node 'hltwk99'"):
        faults.make("stuck", unit, "hltwk99", t, 10)
    with pytest.raises(ValueError, match="factor"):
        unit.set_speed(unit.nodes[0], -1)
