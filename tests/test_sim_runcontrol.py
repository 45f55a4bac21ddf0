"""The simulated run controller: its state machine with a SimClock, its effects on a SimUnit read
over real monitor sockets, and its run state read by farmwatch's nsm source from a real IOC
through the nsm2cad bridge name (CA setup as in tests/test_nsm.py)."""

from __future__ import annotations

import time

import pytest

from farmwatch.clock import SimClock
from farmwatch.config.loader import parse
from farmwatch.model import labels
from farmwatch.sim import SimUnit
from farmwatch.sim.runcontrol import RunController
from farmwatch.sources.epics.source import EpicsSource
from farmwatch.sources.nsm.source import NsmSource
from sim_helpers import flat, real_ioc

NODES, PER_NODE, RATE = 2, 4, 200.0
T0 = 1_700_000_000.0


@pytest.fixture
def clock():
    return SimClock(T0)


# -- the state machine ------------------------------------------------------------------------------
@pytest.mark.timeout(10)
def test_transitions_go_through_the_transitional_state(clock):
    rc = RunController([], clock=clock, transition_time=2.0)
    assert rc.state == "NOTREADY" and rc.since == T0
    steps = [("load", "LOADING", "READY"), ("start", "STARTING", "RUNNING"), ("stop", "STOPPING", "READY"),
             ("abort", "ABORTING", "NOTREADY")]
    for request, transitional, target in steps:
        getattr(rc, request)()
        assert rc.state == transitional
        clock.advance(1.9)
        assert rc.step() == transitional
        clock.advance(0.1)
        assert rc.state == target and rc.since == clock.time()
    rc.fail()
    assert rc.state == "ERROR"
    rc.recover()
    assert rc.state == "RECOVERING"
    clock.advance(5)  # noticed late: the target is dated at the end of the transition
    assert rc.state == "READY" and rc.since == clock.time() - 3
    assert [s for _, s in rc.history] == ["NOTREADY", "LOADING", "READY", "STARTING", "RUNNING", "STOPPING",
                                          "READY", "ABORTING", "NOTREADY", "ERROR", "RECOVERING", "READY"]
    assert rc.history[:3] == [(T0, "NOTREADY"), (T0, "LOADING"), (T0 + 2, "READY")]


@pytest.mark.timeout(10)
def test_abort_from_anywhere_and_zero_transition_time(clock):
    rc = RunController([], clock=clock, transition_time=1.0, initial="RUNNING")
    rc.stop()
    rc.abort()  # during STOPPING: the stop is abandoned
    clock.advance(1)
    assert rc.state == "NOTREADY" and [s for _, s in rc.history][-2:] == ["ABORTING", "NOTREADY"]
    rc.abort()  # NOTREADY → ABORTING → NOTREADY is allowed too
    assert rc.state == "ABORTING"
    fast = RunController([], clock=clock, transition_time=0)
    fast.load()
    assert fast.state == "READY" and [s for _, s in fast.history] == ["NOTREADY", "LOADING", "READY"]


@pytest.mark.timeout(10)
def test_illegal_transitions_raise_and_change_nothing(clock):
    rc = RunController([], clock=clock, node="HLTRC")
    with pytest.raises(ValueError, match=r"HLTRC: START is not allowed in state NOTREADY \(only from READY\)"):
        rc.start()
    for request in ("stop", "recover"):
        with pytest.raises(ValueError, match=f"{request.upper()} is not allowed in state NOTREADY"):
            getattr(rc, request)()
    rc.load()
    for request in ("load", "start", "stop"):
        with pytest.raises(ValueError, match="not allowed in state LOADING"):
            getattr(rc, request)()
    rc.abort()
    with pytest.raises(ValueError, match="ABORT is not allowed in state ABORTING"):
        rc.abort()
    assert rc.state == "ABORTING" and len(rc.history) == 3
    with pytest.raises(ValueError, match="initial run state"):
        RunController([], clock=clock, initial="STOPPING")


# -- effects on a simulated unit, read over real DEALER sockets -------------------------------------
@pytest.mark.timeout(20)
def test_unit_counters_stop_after_stop_and_move_after_start(clock):
    with SimUnit("hlt01", worker_nodes=NODES, workers_per_node=PER_NODE, input_rate=RATE, clock=clock, seed=1) as unit:
        dist = next(e["address"] for e in unit.endpoints if e["app"] == "distributor")
        col = next(e["address"] for e in unit.endpoints if e["app"] == "collector")

        def received():
            return flat(dist)["input.received_events"]

        rc = RunController([unit], clock=clock, transition_time=1.0)
        clock.advance(3)
        assert received() == 0  # NOTREADY: nothing flows
        rc.load()
        clock.advance(1)
        assert rc.state == "READY"
        run = unit.run
        rc.start()
        assert unit.run == run + 1
        clock.advance(1)
        assert received() == 0  # STARTING: still nothing
        assert rc.state == "RUNNING"
        clock.advance(2)
        assert received() == 2 * RATE

        rc.stop()
        clock.advance(1)
        assert rc.state == "READY"
        clock.advance(4)  # past --stopWaitingTime: the stop messages went down the chain
        stopped = flat(dist)
        assert flat(col)["input.received_stop_messages"] == NODES * PER_NODE
        clock.advance(10)
        after = flat(dist)
        assert after["input.received_events"] == stopped["input.received_events"]
        assert after["output.ready_queue_size"] == NODES * PER_NODE * 20  # workers idle: all credits back
        collected = flat(col)["input.received_events"]
        clock.advance(5)
        assert flat(col)["input.received_events"] == collected

        rc.start()
        clock.advance(1)
        assert rc.state == "RUNNING" and unit.run == run + 2
        clock.advance(3)
        assert received() == stopped["input.received_events"] + 3 * RATE
        assert flat(col)["input.received_events"] > collected

        rc.abort()
        frozen = received()
        clock.advance(1)
        assert rc.state == "NOTREADY"
        clock.advance(5)
        assert received() == frozen


# -- the run state through the nsm2cad bridge on a real IOC -----------------------------------------
@pytest.fixture(scope="module")
def ioc():
    with real_ioc("the run-control IOC tests") as sim:
        yield sim


def _ca(ioc):
    return {"interval": "1s", "timeout": "500ms", "missing_after": "1s", **ioc.ca_config}


@pytest.mark.real
@pytest.mark.timeout(30)
def test_run_state_through_the_nsm_bridge(ioc):
    rc = RunController([SimUnit("hlt01", worker_nodes=1, workers_per_node=2)], ioc, transition_time=0.5)
    body = {"kind": "nsm", **_ca(ioc), "vars": [{"node": "HLT01", "var": "nworkers"}], "run_control": "RUNCONTROL"}
    nsm = NsmSource("n", parse({"sources": {"n": body}}).sources["n"])
    enum = EpicsSource("e", parse({"sources": {"e": {"kind": "epics", **_ca(ioc),
                                                       "pvs": ["SIM:RUNCONTROL:state"]}}}).sources["e"])
    states: list[str] = []
    enum_states: list[str] = []
    rc_key = ("daq.run_state", labels(node="RUNCONTROL"))
    enum_key = ("epics.pv", labels(pv="SIM:RUNCONTROL:state"))

    def until(done, timeout=8.0):
        deadline = time.monotonic() + timeout
        while True:
            rc.step()
            for src, key, into in ((nsm, rc_key, states), (enum, enum_key, enum_states)):
                for b in src.poll():
                    into += [v for k, v in zip(b.keys, b.values) if k == key and (not into or into[-1] != v)]
            if done() or time.monotonic() > deadline:
                return
            time.sleep(0.05)

    try:
        until(lambda: states[-1:] == ["NOTREADY"] and enum_states[-1:] == ["NOTREADY"], timeout=15.0)  # both connected
        assert states == ["NOTREADY"] and enum_states == ["NOTREADY"]
        rc.load()
        until(lambda: rc.state == "READY")
        rc.start()
        until(lambda: states[-1:] == ["RUNNING"])
        assert states == ["NOTREADY", "LOADING", "READY", "STARTING", "RUNNING"]
        rc.stop()
        until(lambda: states[-1:] == ["READY"] and enum_states[-1:] == ["READY"])
        assert states[-3:] == ["RUNNING", "STOPPING", "READY"]  # the intermediate state is seen
        assert enum_states == states  # the mbbi follows, as labels (never the index)
        assert nsm.run_state == "READY"
    finally:
        nsm.close()
        enum.close()
        ioc.set("B2_nsm:get:RUNCONTROL:rcstate", "RUNNING")
        ioc.set("SIM:RUNCONTROL:state", "RUNNING")
