"""Scenario harness: a simulated HLT unit under run control, watched by the shipped alert rules.

A ``Scenario`` wires together what runs in production, on a simulated clock:

* a ``SimUnit`` (real ROUTER monitor sockets on loopback) and a ``RunController`` driving it;
* the real ``HltZmqSource`` polling the unit over those sockets once per ``interval`` of
  simulated time;
* the run state either through a real IOC and the real ``nsm`` source (``ioc=`` given: the
  nsm2cad bridge PV the controller writes, read with Channel Access, exactly as deployed), or, to
  keep fault tests fast, written from the controller in the same series and with the same
  timing rules as the ``nsm`` source (``daq.run_state``, ``daq.run_state_since``, ``up``);
* a ``Window`` fed with every batch, and every rule evaluated after every poll;
* optionally (``logs=``), the worker nodes' application logs: written by ``HltLogWriter``s at a
  steady rate of the simulated clock, tailed by the real ``logfiles`` source, stored through the
  runner's ``LogBatch`` path and fed to the ``log_count`` rules from the store, as in
  ``farmwatch run`` (``NodeLogs``).

``units`` > 1 gives several units (``hlt01``, ``hlt02``, … with distinct worker node names) under
one run controller, polled by one source: a small farm.

The harness records *episodes*: for each (rule, labels), when the condition first held, when it
last held, and whether it held long enough (``for``) to fire — what the rule tests check. Next to
that, the real alerting pipeline runs on the same clock (``chat=True``, the default): the
``AlertEngine`` with its lifecycle, inhibition and grouping, the outbox in an SQLite store, and
delivery over HTTP to a ``ChatServer`` (Rocket.Chat's REST API) — so a scenario can also ask when
the first chat message came and how many messages an incident made (``messages``).

Why a simulated clock with real sockets: the source's socket handling, parsing and rate
derivation are what production runs, while a 15-minute run takes seconds (the simulator's
traffic is computed lazily for the clock's time, so nothing waits in real time).
"""

from __future__ import annotations

import fnmatch
import math
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from farmwatch.alerting.delivery import Delivery
from farmwatch.alerting.dispatch import Timers
from farmwatch.alerting.engine import AlertEngine
from farmwatch.alerting.logkinds import bind_store
from farmwatch.alerting.notifiers import RocketChatREST
from farmwatch.alerting.rules import Rule, load_rules
from farmwatch.alerting.ruleset import file_inhibits, shipped_rules_dir
from farmwatch.alerting.state import AlertDB
from farmwatch.clock import SimClock
from farmwatch.config.loader import parse
from farmwatch.model import Batch, Labels, labels as make_labels
from farmwatch.service.runner import Runner
from farmwatch.sim import SimUnit
from farmwatch.sim.chat import ChatServer
from farmwatch.sim.logwriters import HltLogWriter
from farmwatch.sim.runcontrol import RunController
from farmwatch.sources.hlt_zmq.source import HltZmqConfig, HltZmqSource
from farmwatch.sources.logfiles.source import LogFilesConfig, LogFilesSource
from farmwatch.store.logs import LogFeed, LogStore
from farmwatch.store.sqlite import SQLiteStore
from farmwatch.store.window import Window

ALERTS = shipped_rules_dir() or Path(__file__).resolve().parents[2] / "alerts"
RUN_CONTROL = "RUNCONTROL"
START = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@dataclass
class Episode:
    """One stretch of consecutive evaluations in which a rule's condition held for ``labels``."""

    rule: str
    labels: Labels
    start: float
    last: float
    for_: float
    value: float
    summary: str
    description: str
    values: dict[str, float] = field(default_factory=dict)
    end: float | None = None
    """First evaluation at which the condition no longer held (None: still holds)."""

    @property
    def held(self) -> float:
        return self.last - self.start

    @property
    def fired(self) -> bool:
        """Held for at least ``for``: an alert would have fired."""
        return self.held >= self.for_

    @property
    def fired_at(self) -> float | None:
        return self.start + self.for_ if self.fired else None

    @property
    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)

    def __str__(self) -> str:
        state = f"fired at +{self.for_:g}s" if self.fired else "pending"
        return f"{self.rule}{dict(self.labels)} held {self.held:g}s ({state}): {self.summary}"


class ControllerRunState:
    """The run-state series the ``nsm`` source writes for ``run_control``, taken straight from the
    controller: ``daq.run_state`` for every state entered (at the time it was entered),
    ``daq.run_state_since`` and the rcstate variable's ``up`` = 1 every cycle."""

    def __init__(self, rc: RunController) -> None:
        self.rc = rc
        var = make_labels(node=rc.node, var="rcstate")
        node = make_labels(node=rc.node)
        self._keys = (("daq.run_state", node), ("daq.run_state_since", node), ("up", var), ("nsm.var", var))
        self._seen = 0
        self._since: float | None = None
        self._last_ts = -math.inf

    def poll(self) -> list[Batch]:
        state_key, since_key, up_key, var_key = self._keys
        out = []
        for ts, state in self.rc.history[self._seen:]:
            ts = max(ts, self._last_ts)
            self._last_ts = ts
            batch = Batch(ts)
            batch.add(var_key, state)
            batch.add(state_key, state)
            out.append(batch)
            self._since = ts
        self._seen = len(self.rc.history)
        now = Batch(self.rc.clock.time())
        now.add(up_key, 1.0)
        if self._since is not None:
            now.add(since_key, self._since)
        out.append(now)
        return out

    def sync(self) -> list[Batch]:
        return []

    def close(self) -> None:
        pass


class IocRunState:
    """The run state as deployed: the controller writes the nsm2cad bridge PV of a real IOC, the
    real ``nsm`` source reads it over Channel Access. ``sync`` waits (real time, bounded) until
    the source has seen the controller's newest state *over a live connection*, so the simulated
    clock never runs ahead of a CA monitor update or of a reconnect after the IOC restarted (the
    source keeps the last state it read while the PV is away), and every state carries the
    simulated time it happened at."""

    def __init__(self, rc: RunController, ioc, clock: SimClock, timeout: float = 30.0) -> None:
        from farmwatch.sources.nsm.source import NsmSource

        body = {"kind": "nsm", "interval": "1s", "timeout": "500ms", "missing_after": "2s", **ioc.ca_config,
                "vars": [{"node": rc.node, "var": "rcstate"}], "run_control": rc.node}
        self.rc = rc
        self.timeout = timeout
        self.source = NsmSource("runstate", parse({"sources": {"runstate": body}}).sources["runstate"], clock=clock)
        self._pending: list[Batch] = []
        self._up: float | None = None  # the rcstate PV's newest "up" sample

    def sync(self) -> list[Batch]:
        want = self.rc.state
        deadline = time.monotonic() + self.timeout
        while self.source.run_state != want or self._up == 0.0:
            if not (self.rc.ioc is not None and self.rc.ioc.running):
                return []  # a killed IOC cannot deliver it: that is what the test wants to see
            if time.monotonic() > deadline:
                raise TimeoutError(f"the nsm source did not see run state {want} within {self.timeout:g}s "
                                   f"(it has {self.source.run_state}, up={self._up})")
            self._pending += self._read()
            time.sleep(0.005)
        return []

    def poll(self) -> list[Batch]:
        out, self._pending = self._pending + self._read(), []
        return out

    def _read(self) -> list[Batch]:
        batches = self.source.poll()
        for b in batches:
            for (name, lbls), value in zip(b.keys, b.values):
                if name == "up" and dict(lbls).get("var") == "rcstate":
                    self._up = float(value)
        return batches

    def close(self) -> None:
        self.source.close()


class NodeLogs:
    """The application logs of the worker nodes, written and collected as on the farm.

    One ``HltLogWriter`` per worker node appends to ``<folder>/<unit>/<node>/hltworker.log``,
    ``rate`` records per second of the simulated clock — the usual mix, the odd error and
    traceback included: the background a log rule must stay quiet on. ``error_burst`` adds ERROR
    records with tracebacks on one node. The real ``logfiles`` source tails the files, and one
    ``Runner`` cycle per poll stores its records with their offsets (the ``LogBatch`` path of
    ``farmwatch run``), so rules see exactly what was stored, when it was stored. ``folder``
    should start empty: the writers append, and the store's offsets are the ones to go by.
    """

    SERVICE = "hltworker"

    def __init__(self, units: Sequence[SimUnit], folder: Path, store: SQLiteStore, clock: SimClock, *,
                 rate: float, interval: float, seed: int = 1,
                 listeners: Sequence[Callable[[str, list[Batch]], None]] = ()) -> None:
        self.folder = Path(folder)
        self.rate = float(rate)
        self.writers: dict[str, HltLogWriter] = {}
        for unit in units:
            for node in unit.nodes:
                path = self.folder / unit.name / node / f"{self.SERVICE}.log"
                path.parent.mkdir(parents=True, exist_ok=True)
                self.writers[node] = HltLogWriter(path, clock=clock, seed=seed * 1000 + len(self.writers))
        self._carry = dict.fromkeys(self.writers, 0.0)
        self._bursts: dict[str, list[float]] = {}  # node → [errors per second, carry]
        self._exceptions: dict[str, list[float]] = {}  # node → [seconds between, carry]
        self._stuck: dict[str, list[float]] = {}  # node → [records per second, carry]
        self.config = LogFilesConfig.model_validate({
            "kind": "logfiles", "interval": f"{interval:g}s", "timeout": f"{min(0.5, interval / 2):g}s",
            "paths": [str(self.folder / "*" / "*" / "*.log"), str(self.folder / "*" / "*" / "*.log.[0-9]")],
            "format": "basf2", "timezone": "UTC",
            "path_pattern": r"/(?P<unit>[^/]+)/(?P<host>[^/]+)/(?P<service>[^/.]+)\.log"})
        self.source = LogFilesSource("logs", self.config, clock=clock)
        # The listeners (the scenario's window) get the runner's own series of every cycle, as in
        # ``farmwatch run``: farmwatch.source.cycle_duration{source="logs"} is the dead-man's switch.
        self.runner = Runner([self.source], store, clock=clock, listeners=listeners)
        self.store = LogStore(store)
        self.hung = False

    def error_burst(self, node: str, rate: float) -> None:
        """``node`` writes ``rate`` ERROR records (each with its traceback) per second on top of
        its usual log; ``rate=0`` ends the burst."""
        self._fault(self._bursts, node, rate)

    def stuck(self, node: str, rate: float) -> None:
        """``node`` writes ``rate`` per second of a known WARNING ("Ready queue below … slots")
        on top of its usual log; 0 ends it."""
        self._fault(self._stuck, node, rate)

    def new_exception(self, node: str, every: float) -> None:
        """``node`` writes a FATAL record with a traceback of an exception never seen before, every
        ``every`` seconds on top of its usual log (0: no more)."""
        self._fault(self._exceptions, node, every)

    def _fault(self, faults: dict[str, list[float]], node: str, amount: float) -> None:
        """Start (``amount`` > 0) or end one of ``node``'s log faults: [amount, carry] in ``faults``."""
        if node not in self.writers:
            raise KeyError(f"no worker node {node!r} (nodes: {', '.join(self.writers)})")
        if amount > 0:
            faults[node] = [float(amount), 0.0]
        else:
            faults.pop(node, None)

    def rotate(self, mode: str = "rename") -> None:
        """logrotate on every node (``rename`` or ``copytruncate``): the source must follow it."""
        for writer in self.writers.values():
            writer.rotate(mode)

    def write(self, seconds: float) -> None:
        """What the nodes log in ``seconds`` (fractions carried over, so the rate is exact)."""
        for node, writer in self.writers.items():
            self._carry[node] += self.rate * seconds
            n = int(self._carry[node])
            self._carry[node] -= n
            if n:
                writer.write(n)
        for faults, write in ((self._bursts, HltLogWriter.write_errors), (self._stuck, HltLogWriter.write_stuck)):
            for node, rate in faults.items():  # [per second, carry]
                rate[1] += rate[0] * seconds
                n = int(rate[1])
                rate[1] -= n
                if n:
                    write(self.writers[node], n)
        for node, every in self._exceptions.items():
            every[1] += seconds
            while every[1] >= every[0]:
                every[1] -= every[0]
                self.writers[node].write_exception()

    def hang(self, on: bool = True) -> None:
        """Fault: the log collector hangs (no cycle at all) while the nodes keep writing; when it
        resumes it reads on from its stored offsets."""
        self.hung = on

    def collect(self) -> int:
        """One cycle of the logfiles source, stored (records, offsets, its counters); samples
        written (0 while ``hang`` is on)."""
        return 0 if self.hung else self.runner.run_once()

    @property
    def written(self) -> int:
        """Records written so far on all nodes."""
        return sum(len(w.written) for w in self.writers.values())

    @property
    def stored(self) -> int:
        """Records the store holds (each once: they carry stable ids)."""
        return self.store.count()

    def close(self) -> None:
        self.source.close()
        for writer in self.writers.values():
            writer.close()


def unit_names(first: str, n: int) -> list[str]:
    """``hlt01`` and ``3`` → hlt01, hlt02, hlt03 (a name without a number gets ``-2``, ``-3``…)."""
    m = re.fullmatch(r"(.*?)(\d+)", first)
    if m is None:
        return [first] + [f"{first}-{i}" for i in range(2, n + 1)]
    stem, number = m.group(1), m.group(2)
    return [f"{stem}{int(number) + i:0{len(number)}d}" for i in range(n)]


class Scenario:
    """See the module docstring. Use as a context manager; drive with ``run``/``run_until`` and the
    fault methods of ``unit`` and ``rc``; read ``episodes``/``fired``."""

    def __init__(self, rules: Sequence[Rule] | None = None, *, nodes: int = 3, workers_per_node: int = 4,
                 input_rate: float = 100.0, interval: float = 2.0, seed: int = 1, ioc=None,
                 transition_time: float = 1.0, initial: str = "RUNNING", unit: str = "hlt01",
                 timeout: float = 0.2, chat: bool = True, timers: Timers = Timers(),
                 store: SQLiteStore | None = None, notifiers: dict | None = None,
                 listeners: Sequence[Callable[[str, list[Batch]], None]] = (),
                 clock: SimClock | None = None, units: int = 1, logs: bool | str | Path = False,
                 log_rate: float = 0.5, episodes: bool = True, extra_series: Iterable[str] = ()) -> None:
        """``units`` units named from ``unit`` on (``nodes`` worker nodes each, node names distinct
        across units); ``logs``: write and collect the nodes' logs (``True``: in a temporary
        folder, or the folder given), ``log_rate`` records per second and node. ``episodes=False``
        leaves the rules to the alert engine alone (half the evaluation time) when only its
        history and the chat matter, as in the demo. ``extra_series``: globs of series the window
        keeps besides the rules' (an anomaly family's, before its ``Scorer`` is attached)."""
        self.rules = list(load_rules([ALERTS]) if rules is None else rules)
        self.interval = float(interval)
        self.clock = clock or SimClock(START)
        self.units: list[SimUnit] = []
        for i, name in enumerate(unit_names(unit, units)):
            self.units.append(SimUnit(name, worker_nodes=nodes, workers_per_node=workers_per_node, input_rate=input_rate,
                                      clock=self.clock, seed=seed, first_node=i * nodes + 1).start())
        self.unit = self.units[0]
        """The first unit (the only one unless ``units`` > 1)."""
        self.rc = RunController(self.units, ioc, clock=self.clock, node=RUN_CONTROL,
                                transition_time=transition_time, initial=initial)
        # The poll deadline is real time: a muted endpoint costs it once per cycle, so keep it short
        # (the simulator answers within milliseconds).
        cfg = HltZmqConfig.model_validate({"kind": "hlt_zmq", "interval": f"{self.interval:g}s", "timeout": f"{timeout:g}s",
                                           "endpoints": self.endpoints})
        self.hlt = HltZmqSource("hlt", cfg, clock=self.clock)
        self.run_state = IocRunState(self.rc, ioc, self.clock) if ioc is not None else ControllerRunState(self.rc)
        globs = (set().union(*(r.names() for r in self.rules)) if self.rules else set()) | set(extra_series)
        horizon = max([r.lookback() for r in self.rules] + [60.0]) + 10 * self.interval
        self.window = Window(horizon, run_state_node=RUN_CONTROL,
                             wants=lambda name: any(fnmatch.fnmatchcase(name, g) for g in globs))
        self.track_episodes = episodes
        self.episodes: list[Episode] = []
        self._open: dict[tuple[str, Labels], Episode] = {}
        self.polls = 0
        self.samples = 0
        self.chat = self.engine = self.delivery = None
        # ``store`` (given): samples and log records are written there too and the alerts live in
        # it, as in ``farmwatch run``; otherwise alerts and logs go to a temporary store.
        self.samples_store = store
        self.listeners = list(listeners)
        self._tmp = None
        if store is None and (chat or logs):
            self._tmp = tempfile.TemporaryDirectory(prefix="farmwatch-scenario-")
            store = SQLiteStore(Path(self._tmp.name) / "alerts.db", clock=self.clock)
        self.store = store
        bind_store(self.rules, store)  # as ``farmwatch run``: template histories come from the store
        self.logs: NodeLogs | None = None
        self.log_feed: LogFeed | None = None
        if logs:
            if logs is True:
                if self._tmp is None:
                    self._tmp = tempfile.TemporaryDirectory(prefix="farmwatch-scenario-")
                logs = Path(self._tmp.name) / "logs"
            self.logs = NodeLogs(self.units, Path(logs), store, self.clock, rate=log_rate, interval=self.interval,
                                 seed=seed, listeners=[self.window])
            self.log_feed = LogFeed(store, horizon)
        if chat:
            self.chat = ChatServer(self.clock).start()
            token, uid = self.chat.personal_token()
            db = AlertDB(self.store)
            sinks = {"chat": RocketChatREST(self.chat.url, channel="#hlt-alerts", token=token, user_id=uid,
                                            clock=self.clock, timeout=2.0), **(notifiers or {})}
            self.engine = AlertEngine(self.rules, self.window, db, timers=timers, notifiers=list(sinks),
                                      inhibits=file_inhibits([ALERTS]), clock=self.clock)
            self.engine.log_feed = self.log_feed  # as ``farmwatch run``: the rules read what the store holds
            self.delivery = Delivery(db, sinks, clock=self.clock)

    @property
    def endpoints(self) -> list[dict[str, str]]:
        """Every unit's monitor endpoints (unit, app, node, address), as a config lists them."""
        return [ep for u in self.units for ep in u.endpoints]

    def unit_named(self, name: str) -> SimUnit:
        return next(u for u in self.units if u.name == name)

    def attach_scorer(self, scorer) -> None:
        """Score anomaly families at every evaluation, before the rules (``farmwatch run``'s
        ``AlertEngine.before_rules``); its series must be in the window (``extra_series``)."""
        if self.engine is None:
            raise RuntimeError("this scenario has no alert engine: create it with chat=True")
        scorer.window = self.window
        self.engine.before_rules.append(scorer.step)

    def error_burst(self, node: str, rate: float) -> None:
        """Fault: ``node``'s log gets ``rate`` ERROR records (tracebacks) per second; 0 ends it."""
        self._node_logs().error_burst(node, rate)

    def stuck(self, node: str, rate: float) -> None:
        """Fault: ``node``'s log repeats a known WARNING ``rate`` times per second; 0 ends it."""
        self._node_logs().stuck(node, rate)

    def new_exception(self, node: str, every: float) -> None:
        """Fault: ``node``'s log gets a FATAL record with an exception never seen before every
        ``every`` seconds (no rule names it: only the log templates can tell it is new); 0 ends it."""
        self._node_logs().new_exception(node, every)

    def _node_logs(self) -> NodeLogs:
        if self.logs is None:
            raise RuntimeError("this scenario writes no logs: create it with logs=True")
        return self.logs

    # ------------------------------------------------------------------ life cycle
    def __enter__(self) -> Scenario:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.hlt.close()
        self.run_state.close()
        for unit in self.units:
            unit.stop()
        if self.logs is not None:
            self.logs.close()
        if self.chat is not None:
            self.chat.stop()
        if self._tmp is not None:
            if self.samples_store is None:
                self.store.close()
            self._tmp.cleanup()

    def messages(self, since: float = -math.inf) -> list:
        """Chat messages posted since ``since`` (simulated time), oldest first; each incident is one."""
        found = [m for m in self.chat.room_messages("hlt-alerts") if m.ts >= since]
        return sorted(found, key=lambda m: m.ts)

    # ------------------------------------------------------------------ driving
    @property
    def now(self) -> float:
        return self.clock.time()

    def step(self) -> None:
        """One poll cycle at the clock's time, one rule evaluation, then the clock moves on."""
        self.rc.step()
        if self.logs is not None:
            self.logs.write(self.interval)  # what the nodes logged since the last poll
        batches = self.run_state.sync() + self.run_state.poll() + self.hlt.poll()
        if self.logs is not None:
            self.samples += self.logs.collect()
        self.polls += 1
        self.samples += sum(len(b) for b in batches)
        self.window.ingest(batches)
        if self.samples_store is not None:
            self.samples_store.write(batches)
        for listener in self.listeners:
            listener("hlt", batches)
        now = self.clock.time()
        self.evaluate(now)
        self.window.prune(now)
        self.clock.advance(self.interval)

    def run(self, seconds: float) -> None:
        """Poll and evaluate for ``seconds`` of simulated time."""
        end = self.clock.time() + seconds - 1e-9
        while self.clock.time() < end:
            self.step()

    def run_until(self, done: Callable[[], bool], limit: float) -> float:
        """Step until ``done()`` (checked after each step) or ``limit`` seconds; the time it took."""
        start = self.clock.time()
        while not done():
            if self.clock.time() - start >= limit:
                break
            self.step()
        return self.clock.time() - start

    def evaluate(self, now: float) -> None:
        """Every rule once; open, extend or close episodes (this is where ``for`` is applied).
        The engine goes first: it reads the new log records into the window (``log_feed``)."""
        if self.engine is not None:
            self.engine.evaluate(now)
            self.delivery.pump()
        elif self.log_feed is not None:
            self.window.ingest_logs(self.log_feed(now))
        if not self.track_episodes:
            return
        holding: set[tuple[str, Labels]] = set()
        for rule in self.rules:
            for active in rule.evaluate(self.window, now):
                labels = rule.alert_labels(active)
                key = (rule.name, labels)
                holding.add(key)
                summary, description = rule.render(active)
                ep = self._open.get(key)
                if ep is None:
                    ep = self._open[key] = Episode(rule.name, labels, now, now, rule.for_, active.value,
                                                   summary, description, dict(active.values))
                    self.episodes.append(ep)
                ep.last, ep.value, ep.values = now, active.value, dict(active.values)
                if not ep.fired:  # keep the text of the moment it fired, as the chat message would
                    ep.summary, ep.description = summary, description
        for key in [k for k in self._open if k not in holding]:
            self._open.pop(key).end = now

    # ------------------------------------------------------------------ reading
    def fired(self, rule: str | None = None, since: float = -math.inf) -> list[Episode]:
        """Episodes that held at least ``for`` (optionally of one rule, starting at or after ``since``)."""
        return [e for e in self.episodes if e.fired and (rule is None or e.rule == rule) and e.start >= since]

    def fired_rules(self, since: float = -math.inf) -> set[str]:
        return {e.rule for e in self.fired(since=since)}

    def rule(self, name: str) -> Rule:
        return next(r for r in self.rules if r.name == name)


def describe(episodes: Iterable[Episode]) -> str:
    """Episodes one per line, for assertion messages."""
    return "\n".join(str(e) for e in episodes) or "(none)"


__all__ = ["ALERTS", "RUN_CONTROL", "START", "ControllerRunState", "Episode", "IocRunState", "NodeLogs",
           "Scenario", "describe", "unit_names"]
