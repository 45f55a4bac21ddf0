"""What an operator wants to see of each HLT unit, computed from the latest samples.

This is what ``b2hlt_unitinfo.py --watch`` tried to show, done right (spec section 6): rates
from counter differences rather than the apps' stale ``event_rate``; input and output kept
apart instead of averaged; registered workers of the distributor (ever seen) and of the collector
(currently alive) side by side, since their difference *is* the dead workers; per-node rates
from the distributor's per-peer counters with hosts split at the last ``_``.
"""

from __future__ import annotations

import statistics
import threading
from dataclasses import dataclass, field

from farmwatch.model import Batch, SeriesKey, Value


class LatestValues:
    """The newest value of every series seen; a runner listener, safe to read from another thread."""

    def __init__(self) -> None:
        self._values: dict[SeriesKey, tuple[float, Value]] = {}
        self._lock = threading.Lock()

    def __call__(self, source: str, batches: list[Batch]) -> None:
        with self._lock:
            for b in batches:
                ts = b.ts
                for key, value in zip(b.keys, b.values):
                    self._values[key] = (ts, value)

    def snapshot(self) -> dict[SeriesKey, tuple[float, Value]]:
        with self._lock:
            return dict(self._values)


@dataclass
class UnitSummary:
    unit: str
    endpoints_up: int = 0
    endpoints_total: int = 0
    down: list[str] = field(default_factory=list)
    input_rate: float | None = None
    output_rate: float | None = None
    ready_queue: float | None = None
    output_state: str | None = None
    input_state: str | None = None
    workers_distributor: float | None = None
    workers_collector: float | None = None
    dead_workers: float | None = None
    node_rates: dict[str, float] = field(default_factory=dict)

    @property
    def slow_nodes(self) -> list[str]:
        """Nodes far below the median of their peers (half or less), worst first."""
        if len(self.node_rates) < 3:
            return []
        med = statistics.median(self.node_rates.values())
        if med <= 0:
            return []
        return sorted((h for h, r in self.node_rates.items() if r <= 0.5 * med), key=self.node_rates.get)


def summarize(values: dict[SeriesKey, tuple[float, Value]]) -> list[UnitSummary]:
    """One summary per unit, sorted by unit name."""
    units: dict[str, UnitSummary] = {}

    def unit_of(lbls: dict[str, str]) -> UnitSummary | None:
        u = lbls.get("unit")
        if u is None:
            return None
        return units.setdefault(u, UnitSummary(u))

    for (name, lbl_tuple), (_, value) in values.items():
        lbls = dict(lbl_tuple)
        s = unit_of(lbls)
        if s is None:
            continue
        app = lbls.get("app")
        per_peer = "host" in lbls or "pid" in lbls or "peer" in lbls
        if name == "up":
            s.endpoints_total += 1
            if value == 1.0:
                s.endpoints_up += 1
            else:
                extra = "".join(f" {k}={v}" for k, v in lbl_tuple if k not in ("unit", "app"))
                s.down.append(f"{app}{extra}")
            continue
        if app == "distributor":
            if per_peer:
                if name == "hlt.output.sent_events:rate" and "host" in lbls:
                    s.node_rates[lbls["host"]] = s.node_rates.get(lbls["host"], 0.0) + float(value)
                continue
            if name == "hlt.input.received_events:rate":
                s.input_rate = float(value)
            elif name == "hlt.output.ready_queue_size":
                s.ready_queue = float(value)
            elif name == "hlt.monitor.output_state":
                s.output_state = str(value)
            elif name == "hlt.input.socket_state":
                s.input_state = str(value)
            elif name == "hlt.output.registered_workers":
                s.workers_distributor = float(value)
        elif app == "collector" and not per_peer:
            if name == "hlt.input.registered_workers":
                s.workers_collector = float(value)
            elif name == "hlt.input.dead_workers":
                s.dead_workers = float(value)
        elif app == "finalcollector" and not per_peer and name == "hlt.output.sent_events:rate":
            s.output_rate = float(value)
    for s in units.values():
        s.down.sort()
    return [units[u] for u in sorted(units)]


def render(summaries: list[UnitSummary], title: str = "farmwatch top"):
    """A rich Table of the summaries (imported lazily: only terminals need rich)."""
    from rich.table import Table

    def num(v: float | None, fmt: str = "{:,.0f}") -> str:
        return "-" if v is None or v != v else fmt.format(v)

    t = Table(title=title, expand=False)
    for col, just in (("unit", "left"), ("up", "right"), ("in Hz", "right"), ("out Hz", "right"), ("readyQ", "right"), ("output", "left"),
                      ("workers d/c", "right"), ("dead", "right"), ("node Hz min/med/max", "right"), ("slow nodes", "left"), ("down", "left")):
        t.add_column(col, justify=just, overflow="fold")
    for s in summaries:
        rates = list(s.node_rates.values())
        nodes = f"{min(rates):,.0f}/{statistics.median(rates):,.0f}/{max(rates):,.0f} ({len(rates)})" if rates else "-"
        ep = f"{s.endpoints_up}/{s.endpoints_total}"
        if s.endpoints_up < s.endpoints_total:
            ep = f"[red]{ep}[/red]"
        dead = num(s.dead_workers)
        if s.dead_workers:
            dead = f"[red]{dead}[/red]"
        state = s.output_state or "-"
        if state not in ("ready", "-"):
            state = f"[yellow]{state}[/yellow]"
        in_rate = num(s.input_rate)
        if s.input_rate == 0:
            in_rate = f"[yellow]{in_rate}[/yellow]"
        t.add_row(
            s.unit, ep, in_rate, num(s.output_rate), num(s.ready_queue), state,
            f"{num(s.workers_distributor)}/{num(s.workers_collector)}", dead, nodes,
            ", ".join(s.slow_nodes) or "-", ", ".join(s.down) or "-",
        )
    return t


__all__ = ["LatestValues", "UnitSummary", "render", "summarize"]
