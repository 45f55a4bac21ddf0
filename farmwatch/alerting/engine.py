"""One evaluation of the alerting pipeline: rules → lifecycle → muting → grouping → outbox.

``AlertEngine.evaluate`` is a pure step on a clock time, so the same code runs in the
``farmwatch run``/``watch`` services (every ``evaluation_interval``), in scenario tests on a
simulated clock, and in backtests over stored data. State is loaded from the store at start and
written back every step, so a restarted service continues where the last one stopped.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from farmwatch.alerting import muting
from farmwatch.alerting.dispatch import Dispatcher, Timers
from farmwatch.alerting.lifecycle import Changes, Tracker
from farmwatch.alerting.startup import StartupHold
from farmwatch.alerting.state import AlertDB
from farmwatch.clock import Clock, RealClock
from farmwatch.model import Alert, Notification, format_series

log = logging.getLogger("farmwatch.alerting")


@dataclass
class StepResult:
    """What one evaluation did; the scenario tests and ``rules test`` read this."""

    ts: float
    events: list[tuple[float, str, Alert]] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class EngineStats:
    evaluations: int = 0
    rule_errors: int = 0
    last_seconds: float = 0.0
    firing: int = 0
    pending: int = 0


class AlertEngine:
    """Evaluates ``rules`` against ``window`` and keeps alerts, groups and the outbox in ``db``."""

    def __init__(self, rules: Sequence, window, db: AlertDB, *, timers: Timers = Timers(),
                 notifiers: Sequence[str] = (), inhibits: Sequence[muting.InhibitRule] = (),
                 clock: Clock | None = None, keep_resolved: float = 86400.0, persist: bool = True,
                 context=None) -> None:
        self.rules = list(rules)
        self.window = window
        self.db = db
        self.clock = clock or RealClock()
        self.inhibits = list(inhibits)
        self.persist = persist
        self.tracker = Tracker(db.load_alerts() if persist else {}, keep_resolved=keep_resolved, context=context)
        rule_group_by = {r.name: r.group_by for r in self.rules if getattr(r, "group_by", None)}
        self.dispatcher = Dispatcher(timers, notifiers, db.load_groups() if persist else {}, rule_group_by)
        self.stats = EngineStats()
        self._errors: dict[str, str] = {}
        self._retired = False
        self.log_feed = None
        """Optional ``f(now) -> new log records`` (``farmwatch.store.logs.LogFeed``) for ``log_count`` rules."""
        self.before_rules: list[Callable[[float], None]] = []
        """Called with ``now`` before the rules of each step: derived series the rules read (anomaly scores)."""
        self._hook_errors: dict[int, str] = {}
        self.hold: StartupHold | None = None

    def hold_restored(self, since: float, at_least: float = 0.0) -> None:
        """A service starts at ``since``: alerts live before it resolve only on data from after it
        (``farmwatch.alerting.startup``), never on what the downtime left missing."""
        self.hold = StartupHold(self.tracker.alerts.values(), since, at_least)

    def evaluate(self, now: float | None = None) -> StepResult:
        now = self.clock.time() if now is None else now
        started = time.perf_counter()
        result = StepResult(now)
        changes = Changes()
        if self.log_feed is not None:
            try:
                self.window.ingest_logs(self.log_feed(now))
            except Exception as exc:  # the rules still run, on the log records read so far
                log.error("reading new log records for the alert rules failed: %s", exc)
        for i, hook in enumerate(self.before_rules):
            try:
                hook(now)
                self._hook_errors.pop(i, None)
            except Exception as exc:  # the rules still run, on what the window holds
                message = f"{type(exc).__name__}: {exc}"
                if self._hook_errors.get(i) != message:
                    self._hook_errors[i] = message
                    log.error("%s before the rules failed: %s", getattr(hook, "__qualname__", hook), message)
        if not self._retired:
            self.tracker.retire([r.name for r in self.rules], now, changes)
            self._retired = True
        for rule in self.rules:
            try:
                actives = rule.evaluate(self.window, now)
            except Exception as exc:  # one broken rule must not stop the others (nor resolve its alerts)
                self._rule_failed(rule, exc, result)
                continue
            if self._errors.pop(rule.name, None) is not None:
                log.info("rule %s evaluates again", rule.name)
            keep = self.hold.kept(rule, self.tracker.alerts, self.window, now) if self.hold else ()
            self.tracker.update(rule, actives, now, changes, keep)
        if self.hold is not None and not self.hold.held:
            self.hold = None
        silences = self.db.silences(now) if self.persist else []
        acks = self.db.acks() if self.persist else {}
        for event, alert in muting.apply(self.tracker.alerts.values(), silences, self.inhibits, acks, now):
            changes.record(now, event, alert)
        self.tracker.forget_old(now, changes)
        decision = self.dispatcher.step(self.tracker.notifiable(), now)
        if self.persist:
            self.db.save_alerts(changes.changed.values(), changes.events, changes.forgotten, now)
            self.db.save_groups(decision.changed, decision.removed, decision.outbox, now)
        result.events = changes.events
        result.notifications = decision.notifications
        result.seconds = time.perf_counter() - started
        self._account(result)
        return result

    def run(self, stop: threading.Event, interval: float) -> None:
        """Evaluate every ``interval`` seconds (aligned to the clock) until ``stop`` is set."""
        while not stop.is_set():
            try:
                self.evaluate()
            except Exception as exc:  # e.g. the store is locked for too long: try again next time
                log.error("alert evaluation failed: %s", exc)
            now = self.clock.time()
            self.clock.wait(stop, interval - now % interval)

    def _rule_failed(self, rule, exc: Exception, result: StepResult) -> None:
        message = f"{type(exc).__name__}: {exc}"
        result.errors[rule.name] = message
        self.stats.rule_errors += 1
        if self._errors.get(rule.name) != message:
            self._errors[rule.name] = message
            where = getattr(rule, "source", "") or rule.name
            log.error("rule %s (%s) failed to evaluate, its alerts are kept as they are: %s", rule.name, where, message)

    def _account(self, result: StepResult) -> None:
        s = self.stats
        s.evaluations += 1
        s.last_seconds = result.seconds
        states = [a.state.value for a in self.tracker.alerts.values()]
        s.firing, s.pending = states.count("firing"), states.count("pending")
        for ts, event, alert in result.events:
            if event in ("firing", "resolved"):
                log.info("%s %s: %s", event.upper(), format_series(alert.rule, alert.labels), alert.summary)


__all__ = ["AlertEngine", "EngineStats", "StepResult"]
