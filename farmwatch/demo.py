"""``farmwatch demo``: the first thing a new user runs.

A simulated HLT unit on loopback ports, collected by the real HLT source into the embedded store,
shown live, with a worker death and an input stall injected on the way. At the end the store is
asked when each fault became visible, so the demo proves the whole chain, not just the screen.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.live import Live
from rich.table import Table

from farmwatch.config import load
from farmwatch.overview import LatestValues, render, summarize
from farmwatch.runner import Runner
from farmwatch.sim import SimUnit
from farmwatch.sim.ioc import SimIOC
from farmwatch.sources import source_class
from farmwatch.store import SQLiteStore


@dataclass
class _Fault:
    at: float
    what: str
    inject: Callable[[], None]
    series: str
    matchers: dict[str, str]
    seen: Callable[[float, float], bool]  # (value before, value now) → fault visible
    injected_ts: float | None = None


def run_demo(duration: float = 60.0, out: Path = Path("demo-out")) -> int:
    console = Console() if Console().is_terminal else Console(width=150)
    if duration < 12:
        console.print("[red]farmwatch demo: --duration must be at least 12s[/red]")
        return 2
    out.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{out / 'farmwatch.db'}{suffix}").unlink(missing_ok=True)

    with SimUnit("hlt01", worker_nodes=4, workers_per_node=8, input_rate=1000.0, seed=42) as unit, SimIOC() as ioc:
        cfg = out / "farmwatch.toml"
        cfg.write_text('[store]\npath = "farmwatch.db"\nretention = "1d"\n\n'
                       + unit.config_toml(source_name="hlt", interval="1s", timeout="500ms")
                       + _slow_control_toml(ioc))
        settings = load(cfg)
        sources = [source_class(c.kind)(n, c) for n, c in settings.sources.items()]
        store = SQLiteStore(settings.store.path, retention=settings.store.retention)
        latest = LatestValues()
        runner = Runner(sources, store, listeners=[latest])
        stop = threading.Event()
        worker = threading.Thread(target=runner.run, args=(stop,), name="runner", daemon=True)

        node = unit.nodes[1]
        faults = [
            _Fault(0.30 * duration, f"2 worker processes die on {node}", lambda: unit.kill_workers(node, 2),
                   "hlt.input.dead_workers", {"unit": "hlt01", "app": "collector"}, lambda before, now: now > before),
            _Fault(0.55 * duration, "event builder stops sending (input stall)", lambda: unit.stall_input(True),
                   "hlt.input.received_events:rate", {"unit": "hlt01", "app": "distributor"}, lambda before, now: now == 0),
        ]
        resume_at = 0.80 * duration
        ioc.set("B2_nsm:get:RUNCONTROL:rcstate", "RUNNING")
        console.print(f"[bold]farmwatch demo[/bold]: simulated unit hlt01 ({len(unit.endpoints)} monitor endpoints, "
                      f"{len(unit.nodes)} worker nodes) → {settings.store.path}, for {duration:.0f}s")
        started = time.monotonic()
        worker.start()
        resumed = False
        try:
            with Live(console=console, auto_refresh=False, transient=False) if console.is_terminal else _NoLive() as live:
                last_print = -10.0
                while (elapsed := time.monotonic() - started) < duration:
                    for f in faults:
                        if f.injected_ts is None and elapsed >= f.at:
                            f.inject()
                            f.injected_ts = time.time()
                            console.print(f"[yellow]+{elapsed:4.0f}s injected: {f.what}[/yellow]")
                    if not resumed and elapsed >= resume_at:
                        unit.stall_input(False)
                        resumed = True
                        console.print(f"[green]+{elapsed:4.0f}s input resumes[/green]")
                    snap = latest.snapshot()
                    run_state = next((v for (n, _), (_, v) in snap.items() if n == "daq.run_state"), "?")
                    view = render(summarize(snap), title=f"hlt01 — run state {run_state} (real IOC) — +{elapsed:.0f}s of {duration:.0f}s")
                    if console.is_terminal:
                        live.update(view, refresh=True)
                    elif elapsed - last_print >= 10:
                        console.print(view)
                        last_print = elapsed
                    time.sleep(0.5)
        finally:
            stop.set()
            worker.join()
            for s in sources:
                s.close()

    ok = _report(console, store, faults, started_wall=time.time() - (time.monotonic() - started))
    states = store.latest("daq.run_state")
    run_state = states["state"].iloc[-1] if len(states) else None
    console.print(f"Run state from the IOC (B2_nsm:get:RUNCONTROL:rcstate → daq.run_state): {run_state or '[red]never read[/red]'}")
    ok = ok and run_state == "RUNNING"
    store.close()
    console.print(f"\nStore: {settings.store.path}   Config: {cfg}")
    console.print(f"Try:   farmwatch query -c {cfg} hlt.input.dead_workers --label app=collector --since 10m\n"
                  f"       farmwatch query -c {cfg} 'hlt.input.received_events:rate' --label app=distributor --format csv")
    console.print(f"{runner.written:,} samples written, {runner.dropped} dropped.")
    return 0 if ok else 1


def _slow_control_toml(ioc: SimIOC) -> str:
    """The run state and a few NSM variables through the nsm2cad bridge names of a real IOC."""
    return f"""
[sources.slowcontrol]
kind = "nsm"
method = "epics"
interval = "1s"
timeout = "500ms"
run_control = "RUNCONTROL"
ca_addr_list = ["{ioc.address}"]
ca_auto_addr_list = false
ca_repeater_port = {ioc.repeater_port}
vars = [
  {{ node = "HLT01", var = "rcstate", labels = {{ unit = "hlt01" }} }},
  {{ node = "HLT01", var = "nworkers", labels = {{ unit = "hlt01" }} }},
  {{ node = "HLT01", var = "input.rate", labels = {{ unit = "hlt01" }} }},
]
"""


def _report(console: Console, store: SQLiteStore, faults: list[_Fault], started_wall: float) -> bool:
    """When did each injected fault show up in the stored data?"""
    table = Table(title="fault injected → seen in the store")
    for col in ("fault", "injected", "seen", "delay", "evidence"):
        table.add_column(col)
    all_seen = True
    for f in faults:
        if f.injected_ts is None:
            table.add_row(f.what, "-", "-", "-", "not injected")
            all_seen = False
            continue
        df = store.query(f.series, f.matchers)
        before = df[df.ts.map(lambda t: t.timestamp()) < f.injected_ts]["value"]
        after = df[df.ts.map(lambda t: t.timestamp()) >= f.injected_ts]
        base = float(before.iloc[-1]) if len(before) else 0.0
        hit = next(((r.ts.timestamp(), r.value) for r in after.itertuples() if f.seen(base, r.value)), None)
        inj = f"+{f.injected_ts - started_wall:.1f}s"
        if hit is None:
            table.add_row(f.what, inj, "[red]never[/red]", "-", f"{f.series} stayed {base:g}")
            all_seen = False
        else:
            table.add_row(f.what, inj, f"+{hit[0] - started_wall:.1f}s", f"{hit[0] - f.injected_ts:.1f}s", f"{f.series}: {base:g} → {hit[1]:g}")
    console.print(table)
    return all_seen


class _NoLive:
    """Stand-in for rich.Live when stdout is not a terminal (CI logs get periodic tables instead)."""

    def __enter__(self) -> "_NoLive":
        return self

    def __exit__(self, *exc: object) -> None:
        return None
