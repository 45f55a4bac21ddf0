"""Slow faults with ground truth, a varying load, and per-node history for evaluating detectors.

The faults of ``SimUnit`` (``kill_node``, ``slow_node``, ``stall_input``…) switch at one instant;
threshold rules catch those. What rules miss develops slowly or looks normal at every single
point: a node losing speed over 20 minutes, processing time creeping up, a rate that oscillates,
a node whose counters freeze while its peers keep moving. Each fault here is a schedule
(``SimUnit.add_schedule``) that sets its node's worker speed at every 1-second traffic step, and
knows its ground truth (``GroundTruth``: unit, host, kind, start, end) so a benchmark can score
detectors against it.

Without load variation every healthy node's rate would be a flat line and any detector would
look perfect; ``Load`` varies the unit's input rate the way a fill's luminosity and the trigger
mix do (a slow swing plus correlated noise), identically seen by all nodes of the unit.

``record`` polls a unit's distributor and collector on a fixed grid and turns their per-worker
counters into per-node series (``NODE_METRICS``), one DataFrame per node: the family-model
input of the ``worker`` family.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import numpy as np
import pandas as pd

from farmwatch.clock import SimClock
from farmwatch.sim.unit import SimUnit
from farmwatch.sources.hlt_zmq.source import decode_reply

KINDS = ("decline", "latency", "oscillation", "stuck")
NODE_METRICS = ("sent_rate", "accepted_rate", "credits")
"""Per node: events/s the distributor sent to its workers, events/s the collector received from
them (the accepted ones), and the credits its workers hold at the distributor (free input slots)."""


@dataclass(frozen=True)
class GroundTruth:
    """One injected fault: where (unit, host), what (kind), when (epoch seconds, end exclusive)."""

    unit: str
    host: str
    kind: str
    start: float
    end: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SlowFault:
    """A node's worker speed following ``speed(t)`` (1 = normal) between ``start`` and ``end``.

    Kinds (``make``): ``decline`` 100 % → ``floor`` linearly over ``ramp`` seconds, then held;
    ``latency`` processing time per event growing linearly to ``1 + growth`` times normal
    (speed 1/(1 + growth·τ), τ the fraction of the fault elapsed): its free credits run out and
    its rate falls fast at first, then ever more slowly (hyperbolic, where ``decline`` is linear);
    ``oscillation`` speed swinging between 1 and 1 − ``depth`` with ``period`` seconds (its peers
    swing in antiphase, less, as they take over its events); ``stuck`` the workers hang
    (speed 0): the node's counters freeze and its credits stay at 0 while its peers move.
    """

    unit: str
    node: str
    kind: str
    start: float
    end: float
    ramp: float = 1200.0
    floor: float = 0.4
    growth: float = 3.0
    period: float = 240.0
    depth: float = 0.6

    def speed(self, t: float) -> float:
        if not self.start <= t < self.end:
            return 1.0
        tau = t - self.start
        if self.kind == "decline":
            return 1.0 - (1.0 - self.floor) * min(1.0, tau / self.ramp)
        if self.kind == "latency":
            return 1.0 / (1.0 + self.growth * tau / (self.end - self.start))
        if self.kind == "oscillation":
            return 1.0 - self.depth * 0.5 * (1.0 - math.cos(2.0 * math.pi * tau / self.period))
        return 0.0  # stuck

    def apply(self, unit: SimUnit, t: float) -> None:
        unit.set_speed(self.node, self.speed(t))

    @property
    def truth(self) -> GroundTruth:
        return GroundTruth(self.unit, self.node, self.kind, self.start, self.end)


def make(kind: str, unit: SimUnit, node: str, start: float, duration: float, **params: float) -> SlowFault:
    """A slow fault of ``kind`` on ``node`` of ``unit`` from ``start`` for ``duration`` seconds, scheduled."""
    if kind not in KINDS:
        raise ValueError(f"unknown slow fault {kind!r}; expected one of: {', '.join(KINDS)}")
    if node not in unit.nodes:
        raise ValueError(f"unit {unit.name} has no worker node {node!r}; nodes: {', '.join(unit.nodes)}")
    fault = SlowFault(unit.name, node, kind, float(start), float(start) + float(duration), **params)
    unit.add_schedule(fault)
    return fault


@dataclass
class Load:
    """The unit's input rate over time: ``base`` × (1 + ``swing``·sin(2πt/``period`` + phase) + noise),
    the noise an AR(1) process with relative size ``noise`` and correlation time ``tau`` seconds."""

    base: float
    swing: float = 0.15
    period: float = 7200.0
    noise: float = 0.04
    tau: float = 120.0
    seed: int = 0
    t0: float = 0.0
    """The time the swing is counted from (epoch seconds): the same start gives the same load."""

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._phase = self._rng.uniform(0, 2 * math.pi)
        self._x = 0.0
        self._t: float | None = None

    def apply(self, unit: SimUnit, t: float) -> None:
        if self._t is not None and t > self._t:
            a = math.exp(-(t - self._t) / self.tau)
            self._x = a * self._x + math.sqrt(1 - a * a) * self._rng.gauss(0.0, self.noise)
        self._t = t
        level = 1.0 + self.swing * math.sin(2 * math.pi * (t - self.t0) / self.period + self._phase) + self._x
        unit.input_rate = self.base * max(0.05, level)


def _node_sums(section: dict[str, Any], family: str, node_of: dict[str, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    prefix = family + "["
    for key, value in section.items():
        if key.startswith(prefix) and key.endswith("]"):
            node = node_of.get(key[len(prefix):-1])
            if node is not None and isinstance(value, (int, float)):
                out[node] = out.get(node, 0.0) + float(value)
    return out


def record(unit: SimUnit, clock: SimClock, seconds: float, step: float = 10.0) -> dict[str, pd.DataFrame]:
    """Advance ``clock`` by ``seconds`` in ``step``s, reading the unit's distributor and collector
    after each step; per node a DataFrame (UTC time index, ``NODE_METRICS`` columns).

    The replies are the exact JSON the unit's monitor sockets would send (``SimUnit.answer`` is
    the sockets' callback) decoded by the HLT source's own parser; the sockets themselves are
    skipped because hours of farm time are the point here, not the transport.
    """
    node_of = {w: n for n in unit.nodes for w in unit.workers(n)}
    rows: list[tuple[float, dict[str, float], dict[str, float], dict[str, float]]] = []
    n = int(round(seconds / step))
    for _ in range(n + 1):
        dist = decode_reply(unit.answer("distributor", "normal", 0))
        col = decode_reply(unit.answer("collector", "normal", 0))
        rows.append((clock.time(), _node_sums(dist.get("output", {}), "sent_events", node_of),
                     _node_sums(col.get("input", {}), "received_events", node_of),
                     _node_sums(dist.get("output", {}), "ready_messages", node_of)))
        if len(rows) <= n:
            clock.advance(step)
    times = pd.to_datetime(np.array([r[0] for r in rows[1:]]), unit="s", utc=True)
    dt = np.diff([r[0] for r in rows])
    frames = {}
    for node in unit.nodes:
        sent = np.array([r[1].get(node, np.nan) for r in rows])
        acc = np.array([r[2].get(node, np.nan) for r in rows])
        credits = np.array([r[3].get(node, np.nan) for r in rows[1:]])
        frames[node] = pd.DataFrame({"sent_rate": np.diff(sent) / dt, "accepted_rate": np.diff(acc) / dt,
                                     "credits": credits}, index=times)
    return frames


def concat(parts: Iterable[dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """Consecutive ``record`` results joined per node."""
    parts = list(parts)
    return {node: pd.concat([p[node] for p in parts]) for node in parts[0]}


__all__ = ["KINDS", "NODE_METRICS", "GroundTruth", "Load", "SlowFault", "concat", "make", "record"]
