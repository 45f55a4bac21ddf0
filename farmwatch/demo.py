"""``farmwatch demo``: the first thing a new user runs.

A small simulated farm — three HLT units on loopback ports — under a simulated run controller that
writes its state to a real EPICS IOC; the real HLT and NSM sources poll them, the worker nodes'
application logs are written to files (rotated once by "logrotate") and tailed by the real
``logfiles`` source, everything goes into the embedded store, and the shipped alert rules watch
it, delivering to a Rocket.Chat stand-in over HTTP. Simulated time runs faster than the wall clock
(``--speed``). The first minutes of the run are quiet and fast-forwarded: the anomaly model of the
worker nodes is trained on them from the store (``farmwatch train``'s path) and scores every step
from then on. Then faults of every kind the shipped rules and the detector cover are injected in
turn, in different units: dying workers, a node losing speed too slowly for any threshold (the
detector's case), an error burst in a node's log, a known warning repeating (the detector on the
rate of its log template), events lost, a mute monitor socket, a restarted application, a throttled
node, the log collector hanging (farmwatch's dead-man's switch), an input stall, back-pressure, a
hung output process, an exception no rule names (a new log template: the alert shows the template
and an example line), the run-state IOC dying, DQM histograms stopping and a node losing power
before a run stop. At the end a table says, for every injected fault, which
alert it raised, how long that took, how many chat messages it made and when it resolved, and
every log line written is checked to be stored once — the demo proves the whole chain, not just a
screen. The only shipped rule it does not provoke is ``FarmwatchDroppingSamples`` (it needs a
store that cannot keep up; tests/test_selfwatch_rules.py drives it against a locked store).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from farmwatch.alerting.dispatch import Timers
from farmwatch.clock import SimClock
from farmwatch.overview import LatestValues, render, summarize
from farmwatch.report import write_report
from farmwatch.sim import faults as slow
from farmwatch.sim.ioc import SimIOC
from farmwatch.testing.scenario import RUN_CONTROL, Scenario
from farmwatch.sim.sockets import endpoints_toml
from farmwatch.store import SQLiteStore

INTERVAL = 2.0
UNITS = 3
NODES = 4  # worker nodes per unit: hlt01 has hltwk01-04, hlt02 hltwk05-08, hlt03 hltwk09-12
TIMERS = Timers(group_by=("alertname", "unit"), group_wait=10.0, group_interval=30.0, repeat_interval=4 * 3600.0)
WORKER = {"series": ["hlt.output.sent_events:rate", "hlt.input.received_events:rate"],
          "match": ["app=~distributor|collector", "host=~hltwk.*"], "entity": ["unit", "host"],
          "window": 30, "step": 1, "freq": "4s"}
"""Per worker node: the events the distributor sends it and the events the collector receives
from it, in 2-minute windows (30 points of 4 s). One family per unit (``workers_<unit>``): the
nodes of a unit share its load, so they are each other's peers; nodes of other units are not
(when two units stall, the third one's nodes would look odd against them)."""


def families(units: list[str]) -> dict[str, dict]:
    return {f"workers_{u}": {**WORKER, "match": [*WORKER["match"], f"unit={u}"]} for u in units}


TRAIN_AT = 420.0
"""The quiet start of the run, fast-forwarded; the model is trained on it."""
END = 1320.0
ROTATE_AT = 600.0


@dataclass
class Fault:
    at: float
    what: str
    rule: str
    where: dict[str, str]
    """Labels the fault's alert must carry; the first is the place its chat message names (the
    unit, the host, the log source or the run-control node)."""
    inject: Callable[[Scenario], object]
    clear_at: float | None = None
    clear: Callable[[Scenario], object] | None = None
    injected: float | None = None
    cleared: float | None = None


class _Decline:
    """hltwk06 loses speed linearly to 42 % in 3 minutes: it can no longer keep up with its share
    of the events (its rate falls by a fifth to a third with the load), but never to half its
    peers' (HltWorkerNodeSlow's threshold): only the detector can see it."""

    fault: slow.SlowFault | None = None

    def start(self, s: Scenario) -> None:
        self.fault = slow.make("decline", s.unit_named("hlt02"), "hltwk06", s.now, 3600.0, ramp=180.0, floor=0.42)

    def end(self, s: Scenario) -> None:
        assert self.fault is not None
        self.fault.end = s.now  # full speed from the next traffic step


def _plan() -> tuple[list[Fault], list[tuple[float, str, Callable[[Scenario], object]]]]:
    """The script, in simulated seconds after the start (faults from ``TRAIN_AT`` on)."""
    decline = _Decline()
    faults = [
        Fault(430, "hlt03: a worker process dies on hltwk09", "HltWorkersDied", {"unit": "hlt03"},
              lambda s: s.unit_named("hlt03").kill_workers("hltwk09", 1)),
        Fault(450, "hlt02: hltwk06 slows down gradually to 42 % speed in 3 min — no rule threshold is crossed",
              "AnomalyScoreHigh", {"host": "hltwk06", "unit": "hlt02"}, decline.start, 1040, decline.end),
        Fault(480, "hltwk10 (hlt03): a worker loops on an exception, 20 tracebacks/s in its log",
              "HltLogErrorBurst", {"host": "hltwk10"},
              lambda s: s.error_burst("hltwk10", 20.0), 540, lambda s: s.error_burst("hltwk10", 0)),
        Fault(520, "hlt03: the output process loses 10 % of the events", "HltEventsLost", {"unit": "hlt03"},
              lambda s: s.unit_named("hlt03").drop_output(0.1), 590, lambda s: s.unit_named("hlt03").drop_output(0.0)),
        Fault(540, "hltwk05 (hlt02): a known warning (ready queue below N slots) twice a second instead of a few a minute",
              "LogPatternRateAnomalous", {"host": "hltwk05"}, lambda s: s.stuck("hltwk05", 2.0), 640,
              lambda s: s.stuck("hltwk05", 0)),
        Fault(560, "hlt01: the collector's monitor socket stops answering", "HltMonitorEndpointDown", {"unit": "hlt01"},
              lambda s: s.unit_named("hlt01").set_reply("collector", "mute"), 620,
              lambda s: s.unit_named("hlt01").set_reply("collector", "normal")),
        Fault(580, "hlt03: two more worker processes die (hltwk11, hltwk12)", "HltWorkersUnregistered",
              {"unit": "hlt03"}, lambda s: (s.unit_named("hlt03").kill_workers("hltwk11", 1),
                                            s.unit_named("hlt03").kill_workers("hltwk12", 1))),
        Fault(610, "hlt03: the final collector restarts", "HltAppRestarted", {"unit": "hlt03"},
              lambda s: s.unit_named("hlt03").restart_app("finalcollector")),
        Fault(640, "hlt01: hltwk03 throttled to 20 % CPU", "HltWorkerNodeSlow", {"unit": "hlt01", "host": "hltwk03"},
              lambda s: s.unit_named("hlt01").slow_node("hltwk03", 0.2), 740,
              lambda s: s.unit_named("hlt01").slow_node("hltwk03", 1.0)),
        Fault(660, "farmwatch's log collector hangs (the nodes keep writing)", "FarmwatchSourceSilent",
              {"source": "logs"}, lambda s: s.logs.hang(True), 900, lambda s: s.logs.hang(False)),
        Fault(700, "hlt03: the event builder stops sending (input stall)", "HltInputStalled", {"unit": "hlt03"},
              lambda s: s.unit_named("hlt03").stall_input(True), 790, lambda s: s.unit_named("hlt03").stall_input(False)),
        Fault(800, "hlt01: storage stops reading (back-pressure)", "HltReadyQueueDrained", {"unit": "hlt01"},
              lambda s: s.unit_named("hlt01").back_pressure(True), 860, lambda s: s.unit_named("hlt01").back_pressure(False)),
        Fault(820, "hlt03: the output process hangs", "HltFinalCollectorNotReceiving", {"unit": "hlt03"},
              lambda s: s.unit_named("hlt03").stall_output(True), 890, lambda s: s.unit_named("hlt03").stall_output(False)),
        Fault(905, "hltwk07 (hlt02): an exception no rule names (a KeyError in the DQM module), a FATAL every 20 s",
              "LogNewErrorPattern", {"host": "hltwk07"}, lambda s: s.new_exception("hltwk07", 20.0)),
        Fault(930, "the run-state IOC dies (nsm2cad bridge)", "RunStateUnknown", {"node": RUN_CONTROL},
              lambda s: s.rc.ioc.kill(), 990, lambda s: s.rc.restart_ioc()),
        Fault(1010, "hlt03: the DQM module stops sending histograms on every node", "HltHistogramsNotMerged",
              {"unit": "hlt03"}, lambda s: s.unit_named("hlt03").stop_dqm()),
        Fault(1010, "hlt02: the DQM module stops sending histograms on hltwk07", "HltProxyHistogramsNotMerged",
              {"unit": "hlt02"}, lambda s: s.unit_named("hlt02").stop_dqm(node="hltwk07")),
        Fault(1020, "hlt01: worker node hltwk04 loses power", "HltProxyHistoServerDown", {"unit": "hlt01"},
              lambda s: s.unit_named("hlt01").kill_node("hltwk04")),
        Fault(1050, "run control: STOP while hltwk04 (hlt01) is gone", "HltRunStopIncomplete", {"unit": "hlt01"},
              lambda s: s.rc.stop()),
    ]
    run_control = [
        (6.0, "run control: START", lambda s: s.rc.start()),
        (ROTATE_AT, "logrotate on every worker node (rename): the log source follows the files",
         lambda s: s.logs.rotate("rename")),
        (1130.0, "run control: START (the DQM histograms of the last run are gone now)", lambda s: s.rc.start()),
    ]
    return faults, run_control


def run_demo(speed: float = 10.0, out: Path = Path("demo-out")) -> int:
    console = Console() if Console().is_terminal else Console(width=150)
    if speed < 0:
        console.print("[red]farmwatch demo: --speed must be >= 0 (0: as fast as possible)[/red]")
        return 2
    out.mkdir(parents=True, exist_ok=True)
    store_path = out / "farmwatch.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store_path}{suffix}").unlink(missing_ok=True)
    logs = out / "logs"
    _clear_logs(logs)  # the store's offsets are gone: old files would be read again
    for old in (out / "models").glob("*.*"):  # models of an earlier run (the families are retrained)
        if old.suffix in (".joblib", ".json"):
            old.unlink()
    cfg = out / "farmwatch.toml"
    faults, run_control = _plan()
    latest = LatestValues()
    seen_messages: dict[str, int] = {}
    # The simulated timeline ends when the demo does (the fast-forwarded start takes a few seconds
    # more), never in the future: right afterwards `--since 10m` finds its last ten minutes.
    paced_wall = (END - TRAIN_AT) / speed if speed else 0.0
    clock = SimClock(float(int(time.time() - END + paced_wall)))
    family_series = WORKER["series"]
    with SimIOC() as ioc:
        store = SQLiteStore(store_path, retention=86400.0, clock=clock)
        with Scenario(units=UNITS, nodes=NODES, workers_per_node=4, input_rate=100.0, interval=INTERVAL, ioc=ioc,
                      initial="READY", timers=TIMERS, store=store, listeners=[latest], seed=42, clock=clock,
                      logs=logs, episodes=False, extra_series=family_series) as s:
            cfg.write_text(_config(s))
            for unit in s.units:  # the luminosity: the same slow swing and noise for every unit
                unit.add_schedule(slow.Load(base=90.0, swing=0.1, period=300.0, noise=0.02, tau=30.0, seed=7, t0=s.now))
            start = s.now
            names = ", ".join(u.name for u in s.units)
            console.print(f"[bold]farmwatch demo[/bold]: simulated units {names} ({len(s.endpoints)} monitor "
                          f"endpoints, {len(s.logs.writers)} worker nodes writing logs to {logs}), run control via a "
                          f"real IOC ({ioc.address}), {len(s.rules)} shipped alert rules and an anomaly model → "
                          f"Rocket.Chat stand-in at {s.chat.url}; {END / 60:.0f} simulated minutes → {store_path}")
            console.print(f"The first {TRAIN_AT / 60:.0f} minutes of the run are quiet and fast-forwarded: the "
                          f"anomaly model learns what normal looks like from them. Then {speed:g}× real time.")
            wall0 = time.monotonic()
            paced_from: tuple[float, float] | None = None  # (simulated, wall) when pacing started
            pending = sorted(run_control, key=lambda e: e[0])
            live = Live(console=console, auto_refresh=False) if console.is_terminal else None
            if live:
                live.start()
            last_table = -1e9
            try:
                while (t := s.now - start) < END:
                    if paced_from is None and t >= TRAIN_AT:
                        _train(console, live, s, cfg, store, start, t)
                        paced_from = (s.now, time.monotonic())
                    while pending and pending[0][0] <= t:
                        _, what, action = pending.pop(0)
                        action(s)
                        _note(console, live, t, what, "cyan")
                    for f in faults:
                        if f.injected is None and f.at <= t:
                            f.inject(s)
                            f.injected = t
                            _note(console, live, t, f"injected: {f.what}", "yellow")
                        if f.clear and f.cleared is None and f.clear_at is not None and f.clear_at <= t:
                            f.clear(s)
                            f.cleared = t
                            _note(console, live, t, f"cleared: {f.what}", "green")
                    s.step()
                    _chat_news(console, live, s, start, seen_messages)
                    if live:
                        live.update(_view(s, latest, t), refresh=True)
                    elif t - last_table >= 180:
                        console.print(_view(s, latest, t))
                        last_table = t
                    if speed and paced_from is not None:
                        behind = (s.now - paced_from[0]) / speed - (time.monotonic() - paced_from[1])
                        if behind > 0:
                            time.sleep(behind)
            finally:
                if live:
                    live.stop()
            s.logs.collect()  # the last record of each file, now that its file has been quiet long enough
            wall = time.monotonic() - wall0
            ok, rows = _report(console, s, faults, start)
            ok = _new_patterns(console, s) and ok
            run_state, _ = s.window.run_state()
            console.print(f"Run state from the IOC (B2_nsm:get:{RUN_CONTROL}:rcstate → daq.run_state): "
                          f"{run_state or '[red]never read[/red]'}")
            written, stored = s.logs.written, s.logs.stored
            console.print(f"Log records: {written:,} written on {len(s.logs.writers)} worker nodes "
                          f"(rotated at +{_mmss(ROTATE_AT)}, the collector hung for a while), {stored:,} stored"
                          + (" — every one, once." if stored == written else f" — [red]{written - stored:,} missing[/red]"))
            ok = ok and run_state == "RUNNING" and stored == written
            s.delivery.pump()
            depth = sum(s.engine.db.outbox_depth().values())
            report = write_report(store, out / "report.html", title="farmwatch demo", summary=rows,
                                  notes=[f"{END / 60:.0f} simulated minutes of units {names} ({len(s.logs.writers)} worker "
                                         f"nodes), {len(s.rules)} shipped rules and an anomaly model per unit trained "
                                         f"on the first {TRAIN_AT / 60:.0f} minutes, {len(s.messages())} chat message(s), "
                                         f"{stored:,} log records."])
        store.close()
    console.print(f"\n{END / 60:.0f} simulated minutes in {wall:.0f} s; {s.samples:,} samples stored, "
                  f"{len(s.messages())} chat message(s), {depth} undelivered.")
    console.print(f"Store: {store_path}   Config: {cfg}   Logs: {logs}   Report: {report}")
    console.print(f"Try:   farmwatch alerts -c {cfg} --all\n"
                  f"       farmwatch alerts -c {cfg} --history --since 1h\n"
                  f"       farmwatch query -c {cfg} hlt.input.dead_workers --label app=collector --label host=\n"
                  f"       farmwatch query -c {cfg} anomaly.explanation --label host=hltwk06 --since 30m\n"
                  f"       farmwatch models show -c {cfg} workers_hlt02\n"
                  f"       farmwatch logs search -c {cfg} 'event skipped' --host hltwk10 --since 1h --limit 3\n"
                  f"       farmwatch logs patterns -c {cfg} --since 30m --level error,fatal --new")
    return 0 if ok and depth == 0 else 1


def _train(console: Console, live: Live | None, s: Scenario, cfg: Path, store: SQLiteStore, start: float,
           t: float) -> None:
    """``farmwatch train`` on the quiet start, then score every step as ``farmwatch run`` does; the
    families are the ``[detect]`` section of the config the demo wrote (what ``farmwatch models``
    and ``farmwatch run -c`` on it see)."""
    from farmwatch.alerting.state import AlertDB
    from farmwatch.config.loader import load
    from farmwatch.detect import save
    from farmwatch.detect.scorer import Scorer
    from farmwatch.detect.training import train_from_store

    detect = load(cfg).detect
    began = time.perf_counter()
    alert_periods = AlertDB(store).firing_periods(until=s.now)
    for name, fam in detect.families.items():
        save(train_from_store(store, name, fam, start, s.now, alert_periods=alert_periods), detect.models / name)
    scorer = Scorer(detect, store)
    s.attach_scorer(scorer)
    _note(console, live, t, f"anomaly models ({', '.join(detect.families)}: the worker nodes of each unit) trained "
          f"on the first {t / 60:.0f} minutes in {time.perf_counter() - began:.1f} s → {detect.models}; "
          f"scored at every step from now on", "cyan")


def _clear_logs(folder: Path) -> None:
    """Remove the log files an earlier demo run wrote (only those: ``<unit>/<node>/*.log*``)."""
    for path in folder.glob("*/*/*.log*"):
        path.unlink()


def _config(s: Scenario) -> str:
    """A config for the store the demo wrote, so the CLI commands can be tried on it."""
    assert s.logs is not None
    paths = ", ".join(json.dumps(p) for p in s.logs.config.paths)
    return ('[store]\npath = "farmwatch.db"\nretention = "1d"\n\n[alerting]\n'
            f'run_state_node = "{RUN_CONTROL}"\n\n[alerting.notify.console]\nkind = "console"\n\n'
            + endpoints_toml(s.endpoints, source_name="hlt", interval=f"{INTERVAL:g}s", timeout="200ms")
            + f'\n[sources.logs]\nkind = "logfiles"\npaths = [{paths}]\nformat = "basf2"\ntimezone = "UTC"\n'
            f"path_pattern = '{s.logs.config.path_pattern}'\ninterval = \"{INTERVAL:g}s\"\n"
            + _detect_toml([u.name for u in s.units]))


def _detect_toml(units: list[str]) -> str:
    lines = ['\n[detect]\nmodels = "models"']
    for name, fam in families(units).items():
        lines += [f"\n[detect.families.{name}]"] + [f"{k} = {json.dumps(v)}" for k, v in fam.items()]
    return "\n".join(lines) + "\n"


def _note(console: Console, live: Live | None, t: float, what: str, style: str) -> None:
    line = Text(f"+{_mmss(t)}  {what}", style=style)
    (live.console if live else console).print(line)


def _chat_news(console: Console, live: Live | None, s: Scenario, start: float, seen: dict[str, int]) -> None:
    """Print each chat post and edit once, as an operator would see it arrive."""
    for msg in s.messages():
        versions = len(msg.history)
        if seen.get(msg.id, 0) == versions:
            continue
        kind = "posted" if msg.id not in seen else "edited"
        seen[msg.id] = versions
        headline = msg.text.splitlines()[0] if msg.text else ""
        style = "bold red" if "FIRING" in headline else "bold green"
        (live.console if live else console).print(
            Text(f"+{_mmss(s.now - start)}  chat {kind}: {headline}", style=style))


def _view(s: Scenario, latest: LatestValues, t: float):
    state, _ = s.window.run_state()
    unit = render(summarize(latest.snapshot()), title=f"{', '.join(u.name for u in s.units)} — run state "
                                                     f"{state or '?'} (real IOC) — +{_mmss(t)} of {_mmss(END)}")
    alerts = Table(title="alerts", expand=False)
    for col in ("state", "rule", "labels", "summary"):
        alerts.add_column(col, overflow="fold")
    for a in sorted(s.engine.tracker.active(), key=lambda a: (a.state.value, a.rule)):
        extra = ",".join(f"{k}={v}" for k, v in a.labels if k not in ("system", "unit"))
        note = " (inhibited)" if a.inhibited_by else ""
        alerts.add_row(Text(a.state.value + note), Text(a.rule), Text(extra), Text(a.summary))
    return Group(unit, alerts)


def _report(console: Console, s: Scenario, faults: list[Fault], start: float) -> tuple[bool, list[dict[str, str]]]:
    """For every fault: the alert it raised, when, its chat messages, and when it resolved (also
    returned as plain rows for the HTML report)."""
    history = s.engine.db.history()
    table = Table(title="fault injected → alert → chat")
    for col in ("fault", "injected", "alert", "fired after", "in chat after", "messages",
                "resolved after clear"):
        table.add_column(col)
    ok = True
    rows: list[dict[str, str]] = []
    for f in faults:
        t0 = start + (f.injected or 0.0)
        ours = [r for r in history if r["rule"] == f.rule and r["ts"] >= t0
                and all(r["labels"].get(k) == v for k, v in f.where.items())]
        firing = next((r for r in ours if r["event"] == "firing"), None)
        fired = None if firing is None else firing["ts"]
        resolved = next((r["ts"] for r in ours if r["event"] == "resolved" and firing is not None
                         and r["fingerprint"] == firing["fingerprint"] and r["ts"] >= firing["ts"]), None)
        # The posts and edits that name the rule and the place (the unit, or a log burst's host)
        # until the alert resolved: a fault in a unit with an open incident shows up as an edit
        # of that message; a later fault's cascade in the same unit is not this one's.
        place = next(iter(f.where.values()))
        until = resolved if resolved is not None else float("inf")
        shown = [(ts, m.id) for m in s.messages() for ts, text, _ in m.history
                 if t0 <= ts <= until and f.rule in text and place in text]
        first = min((ts for ts, _ in shown), default=None)
        msgs = {mid for _, mid in shown}
        cleared = None if f.cleared is None else start + f.cleared
        fine = fired is not None and first is not None and (f.clear is None or resolved is not None)
        ok = ok and fine
        row = {"fault": f.what, "injected": f"+{_mmss(f.injected or 0)}", "alert": f.rule,
               "fired after": "never" if fired is None else f"{fired - t0:.0f} s",
               "in chat after": "never" if first is None else f"{first - t0:.0f} s",
               "messages": str(len(msgs)),
               "resolved after clear": "-" if f.clear is None else (
                   "never" if resolved is None or cleared is None else f"{max(0.0, resolved - cleared):.0f} s")}
        rows.append(row)
        table.add_row(*(f"[red]{v}[/red]" if v == "never" else v for v in row.values()))
    console.print(table)
    expected = {f.rule for f in faults}
    others = sorted({r["rule"] for r in history if r["event"] == "firing"} - expected)
    if others:
        console.print(f"Also fired (cascades of the faults above, grouped or inhibited in chat): {', '.join(others)}")
    return ok, rows


def _new_patterns(console: Console, s: Scenario) -> bool:
    """The new kinds of error the log templates found, with template and example: the injected
    exception must be exactly one alert, and say what it is."""
    found = [a for a in s.engine.tracker.alerts.values() if a.rule == "LogNewErrorPattern"]
    for a in sorted(found, key=lambda a: a.active_since):
        where = dict(a.labels)
        console.print(Text(f"New kind of error on {where.get('host')} ({where.get('unit', '-')}): "
                           f"template “{a.values.get('template')}”, e.g. “{a.values.get('example')}”"))
    ours = [a for a in found if dict(a.labels).get("host") == "hltwk07"]
    return len(ours) == 1 and bool(ours[0].values.get("template")) and bool(ours[0].values.get("example"))


def _mmss(seconds: float) -> str:
    m, sec = divmod(int(round(seconds)), 60)
    return f"{m:02d}:{sec:02d}"


__all__ = ["END", "INTERVAL", "NODES", "ROTATE_AT", "TIMERS", "TRAIN_AT", "UNITS", "WORKER", "Fault", "families",
           "run_demo"]
