"""A simulated run-control node: the ``rcstate`` state machine of the spec (nsm-epics.md, "Run
control state") driving simulated HLT units and, optionally, the run-state records of a SimIOC.

Requests (``load``, ``start``, ``stop``, ``abort``, ``recover``) enter the transitional state at
once and reach the target ``transition_time`` seconds of the clock later. Like SimUnit, the
controller is lazy: the target is reached when ``state`` is read or ``step()`` is called after the
time has passed, so it works with a ``SimClock`` (advance, then ``step()``) and in real time (call
``step()`` now and then). ``fail()`` puts it into ERROR, from which ``recover()`` leads to READY.

Effects on the units (while not RUNNING no events flow):

* START request: ``start_run()`` (``n`` to every app, next run number), input held back until
  RUNNING is reached, then it flows.
* STOP request: ``stop_run()`` (the event builder stops, ``l`` to the distributor, the stop
  messages pass down the chain, counters stop moving, workers idle).
* ABORT request and ``fail()``: input stalls (``stall_input``).

Every state change is written to the IOC's ``B2_nsm:get:<node>:rcstate`` (stringin, the nsm2cad
bridge name) and ``SIM:<node>:state`` (mbbi) records, those of them the IOC has.
"""

from __future__ import annotations

import threading
from typing import Iterable

from farmwatch.clock import Clock, RealClock
from farmwatch.sim.ioc import SimIOC
from farmwatch.sim.unit import SimUnit

# request: (states it is allowed from, transitional state, target state); None = any but its own
# transitional state (ABORT also cancels a transition under way)
TRANSITIONS: dict[str, tuple[frozenset[str] | None, str, str]] = {
    "load": (frozenset({"NOTREADY"}), "LOADING", "READY"),
    "start": (frozenset({"READY"}), "STARTING", "RUNNING"),
    "stop": (frozenset({"RUNNING", "PAUSED"}), "STOPPING", "READY"),
    "abort": (None, "ABORTING", "NOTREADY"),
    "recover": (frozenset({"ERROR"}), "RECOVERING", "READY"),
}
TRANSITIONAL = frozenset(t for _, t, _ in TRANSITIONS.values())
INITIAL_STATES = ("NOTREADY", "READY", "RUNNING")


class RunController:
    """See the module docstring. Thread-safe."""

    def __init__(self, units: Iterable[SimUnit], ioc: SimIOC | None = None, *, clock: Clock | None = None,
                 node: str = "RUNCONTROL", transition_time: float = 1.0, initial: str = "NOTREADY") -> None:
        if initial not in INITIAL_STATES:
            raise ValueError(f"initial run state must be one of {', '.join(INITIAL_STATES)}, not {initial!r}")
        if transition_time < 0:
            raise ValueError("transition_time must be >= 0")
        self.units = list(units)
        self.ioc = ioc
        self.clock = clock or (self.units[0].clock if self.units else RealClock())
        self.node = node
        self.transition_time = float(transition_time)
        self._lock = threading.RLock()
        self._state = initial
        self._target: str | None = None
        self._due = 0.0
        self.since = self.clock.time()
        self.history: list[tuple[float, str]] = []
        """Every state entered, with the clock time it was entered (lazily: when it was noticed)."""
        for unit in self.units:
            unit.stall_input(initial != "RUNNING")
        self._enter(initial, self.since)

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> str:
        return self.step()

    @property
    def rc_pvs(self) -> tuple[str, str]:
        """The IOC record names written: the nsm2cad bridge stringin and the mbbi."""
        return f"B2_nsm:get:{self.node}:rcstate", f"SIM:{self.node}:state"

    def step(self) -> str:
        """Finish a transition whose time is over; the current state."""
        with self._lock:
            if self._target is not None and self.clock.time() >= self._due:
                target, self._target = self._target, None
                if target == "RUNNING":
                    for unit in self.units:
                        unit.stall_input(False)
                self._enter(target, self._due)
            return self._state

    # ---------------------------------------------------------------- requests
    def load(self) -> None:
        self._request("load")

    def start(self) -> None:
        self._request("start")

    def stop(self) -> None:
        self._request("stop")

    def abort(self) -> None:
        self._request("abort")

    def recover(self) -> None:
        self._request("recover")

    def fail(self) -> None:
        """Something went wrong: ERROR at once, input stalls (leave with ``abort`` or ``recover``)."""
        with self._lock:
            self.step()
            self._target = None
            for unit in self.units:
                unit.stall_input(True)
            self._enter("ERROR", self.clock.time())

    def _request(self, name: str) -> None:
        allowed, transitional, target = TRANSITIONS[name]
        with self._lock:
            state = self.step()
            if (state == transitional if allowed is None else state not in allowed):
                expected = f"any state but {transitional}" if allowed is None else " or ".join(sorted(allowed))
                raise ValueError(f"run control {self.node}: {name.upper()} is not allowed in state {state} "
                                 f"(only from {expected})")
            for unit in self.units:
                if name == "start":
                    unit.stall_input(True)  # STARTING: the apps get n, events flow only when RUNNING
                    unit.start_run()
                elif name == "stop":
                    unit.stop_run()
                elif name == "abort":
                    unit.stall_input(True)
            now = self.clock.time()
            self._target, self._due = target, now + self.transition_time
            self._enter(transitional, now)
        self.step()  # transition_time 0: straight on to the target

    def restart_ioc(self) -> None:
        """The killed IOC starts again and the bridge publishes the current state (nsm2cad does on
        reconnect): what a client reads again is today's state, not the one at the kill."""
        self.ioc.start()
        self._publish(self.state)

    def _enter(self, state: str, ts: float) -> None:
        self._state, self.since = state, ts
        self.history.append((ts, state))
        self._publish(state)

    def _publish(self, state: str) -> None:
        if self.ioc is not None and self.ioc.running:  # a killed IOC misses the change, as a real one would
            for pv in self.rc_pvs:
                if pv in self.ioc.records:
                    self.ioc.set(pv, state)

    def __repr__(self) -> str:
        return f"RunController({self.node}, {self._state}, {len(self.units)} units)"


__all__ = ["INITIAL_STATES", "TRANSITIONAL", "TRANSITIONS", "RunController"]
