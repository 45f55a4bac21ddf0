"""Rule unit tests in promtool's manner: fixture series in a file, and the alerts expected to be
firing at given times, so that a site tests its own rules without a simulator or a store.

A test file (TOML; ``farmwatch rules unittest FILE``, docs/rules.md)::

    rule_files = ["../hlt.toml"]          # relative to this file
    evaluation_interval = "5s"            # how often the rules are evaluated (default 5s)

    [[test]]
    name = "a dead worker is reported at once"
    interval = "5s"                       # between two values of a series (default: evaluation_interval)
    series = [
      { series = 'hlt.input.dead_workers{unit="hlt01",app="collector",host=""}', values = "0x5 1x20" },
      { series = 'daq.run_state{node="RUNCONTROL"}', values = "RUNNINGx25" },
    ]
    logs = [{ at = "1m", count = 120, every = "1s", host = "hltwk01", level = "error", message = "crash" }]

    [[test.alerts]]
    at = "40s"                            # after the first value
    rule = "HltWorkersDied"
    firing = [{ labels = { unit = "hlt01", system = "hlt" }, summary = "…" }]   # [] = none firing

Values use promtool's expanding notation: ``1`` one value; ``1+2x3`` is 1 3 5 7; ``5-1x2`` is 5 4 3;
``7x2`` is 7 7 7; ``_`` is a step without a sample and ``_x3`` three of them; any other word is a
state (``RUNNINGx2`` is RUNNING RUNNING RUNNING).
Expected labels are compared exactly with the alert's labels; ``summary``, ``severity`` and
``description`` are compared when given.
"""

from __future__ import annotations

import re
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pydantic import Field, ValidationError

from farmwatch.alerting.engine import AlertEngine
from farmwatch.alerting.rules import Rule, load_rules
from farmwatch.alerting.ruleset import file_inhibits, make_window
from farmwatch.alerting.state import AlertDB
from farmwatch.clock import SimClock
from farmwatch.config.base import ConfigError, Duration, Section, validation_problems
from farmwatch.config.sections import AlertingSettings
from farmwatch.model import AlertState, Batch, LogRecord, Value, format_series, labels
from farmwatch.store.sqlite import SQLiteStore

START = 1_767_225_600.0
"""2026-01-01T00:00:00Z: time 0 of every test (the first value of each series)."""

_SELECTOR = re.compile(r"^\s*([A-Za-z_][\w.:]*)\s*(?:\{(.*)\})?\s*$")
_LABEL = re.compile(r'\s*([A-Za-z_]\w*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_EXPANDING = re.compile(rf"^({_NUMBER})(?:([-+])({_NUMBER}))?x(\d+)$")


class SeriesFixture(Section):
    series: str
    """A series as ``name{label="value",…}``."""
    values: str
    """Values at ``interval`` steps from time 0, in promtool's expanding notation."""


class LogFixture(Section):
    at: Duration = 0.0
    """When the first record is written (after time 0)."""
    count: int = Field(default=1, ge=1)
    every: Duration = Field(default=1.0, gt=0)
    host: str = "host"
    service: str = "service"
    level: str = "error"
    message: str = "message"
    fields: dict[str, str] = Field(default_factory=dict)
    """Extra fields, e.g. ``{"labels.unit" = "hlt01"}`` (what a log source's path pattern gives)."""


class ExpectedAlert(Section):
    labels: dict[str, str] = Field(default_factory=dict)
    summary: str | None = None
    severity: str | None = None
    description: str | None = None


class AlertCheck(Section):
    at: Duration
    """When to look (after time 0)."""
    rule: str
    firing: list[ExpectedAlert] = Field(default_factory=list)
    """Every alert of ``rule`` that fires at ``at`` (empty: none)."""


class RuleTest(Section):
    name: str = ""
    interval: Duration | None = Field(default=None, gt=0)
    series: list[SeriesFixture] = Field(default_factory=list)
    logs: list[LogFixture] = Field(default_factory=list)
    alerts: list[AlertCheck] = Field(min_length=1)


class RuleTestFile(Section):
    rule_files: list[Path] = Field(min_length=1)
    evaluation_interval: Duration = Field(default=5.0, gt=0)
    run_state_node: str | None = None
    test: list[RuleTest] = Field(min_length=1)


@dataclass
class Outcome:
    name: str
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures


def parse_selector(text: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``name{k="v",…}`` → (name, labels); ValueError naming what is wrong."""
    m = _SELECTOR.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a series like name{{label=\"value\"}}")
    name, body = m.group(1), (m.group(2) or "").strip()
    found: dict[str, str] = {}
    pos = 0
    while pos < len(body):
        lm = _LABEL.match(body, pos)
        if not lm or lm.end() == pos:
            raise ValueError(f"{text!r}: labels must be written label=\"value\", separated by commas")
        found[lm.group(1)] = lm.group(2).encode().decode("unicode_escape")
        pos = lm.end()
    return name, labels(found)


def expand_values(text: str) -> list[Value | None]:
    """promtool's expanding notation → one entry per step (None: no sample at that step)."""
    out: list[Value | None] = []
    for token in text.split():
        base, _, times = token.rpartition("x") if re.search(r"x\d+$", token) else (token, "", "")
        if token == "_" or base == "_":
            out += [None] * (int(times) if times else 1)
            continue
        m = _EXPANDING.match(token)
        if m:
            start, sign, step, n = float(m.group(1)), m.group(2), float(m.group(3) or 0.0), int(m.group(4))
            step = -step if sign == "-" else step
            out += [start + i * step for i in range(n + 1)]
            continue
        try:
            out.append(float(token))
            continue
        except ValueError:
            pass
        out += [base] * (int(times) + 1) if times else [token]  # a state, maybe repeated
    return out


def load_test_file(path: str | Path) -> tuple[RuleTestFile, list[Rule]]:
    """The test file and its rules; ConfigError with one line per problem."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read the test file: {exc.strerror or exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{p}: not valid TOML: {exc}"]) from None
    try:
        spec = RuleTestFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc, str(p))) from None
    problems = []
    for i, t in enumerate(spec.test):
        for j, s in enumerate(t.series):
            try:
                parse_selector(s.series)
                expand_values(s.values)
            except ValueError as exc:
                problems.append(f"{p}: test[{i}].series[{j}]: {exc}")
    if problems:
        raise ConfigError(problems)
    files = [f if f.is_absolute() else p.resolve().parent / f for f in spec.rule_files]
    spec = spec.model_copy(update={"rule_files": files})
    return spec, load_rules(files)


def run_file(path: str | Path) -> list[Outcome]:
    """Run every test of the file; one ``Outcome`` per test."""
    spec, rules = load_test_file(path)
    with tempfile.TemporaryDirectory(prefix="farmwatch-ruletest-") as tmp:
        store = SQLiteStore(Path(tmp) / "alerts.db")
        try:
            return [Outcome(t.name or f"test[{i}]", _run(spec, t, rules, store)) for i, t in enumerate(spec.test)]
        finally:
            store.close()


def _run(spec: RuleTestFile, test: RuleTest, rules: list[Rule], store: SQLiteStore) -> list[str]:
    alerting = AlertingSettings().model_copy(update={"evaluation_interval": spec.evaluation_interval,
                                                     "run_state_node": spec.run_state_node})
    window = make_window(rules, alerting)
    engine = AlertEngine(rules, window, AlertDB(store), notifiers=[], inhibits=file_inhibits(spec.rule_files),
                         clock=SimClock(START), persist=False)
    points = sorted(_points(test, spec.evaluation_interval), key=lambda p: p[0])
    logs = sorted(_log_records(test), key=lambda r: r.ts)
    checks = sorted(test.alerts, key=lambda c: c.at)
    step = spec.evaluation_interval
    times = sorted({START + k * step for k in range(int(checks[-1].at // step) + 1)} | {START + c.at for c in checks})
    failures: list[str] = []
    fed = logged = 0
    for t in times:
        batch_at = {}
        while fed < len(points) and points[fed][0] <= t:
            ts, key, value = points[fed]
            batch_at.setdefault(ts, Batch(ts)).add(key, value)
            fed += 1
        window.ingest(batch_at[ts] for ts in sorted(batch_at))
        new_logs = []
        while logged < len(logs) and logs[logged].ts <= t:
            new_logs.append(logs[logged])
            logged += 1
        if new_logs:
            window.ingest_logs(new_logs)
        window.prune(t)
        engine.evaluate(t)
        for check in (c for c in checks if START + c.at == t):
            failures += _compare(check, engine)
    return failures


def _points(test: RuleTest, default_interval: float) -> Iterator[tuple[float, tuple, Value]]:
    interval = test.interval or default_interval
    for fixture in test.series:
        key = parse_selector(fixture.series)
        for i, value in enumerate(expand_values(fixture.values)):
            if value is not None:
                yield START + i * interval, key, value


def _log_records(test: RuleTest) -> Iterator[LogRecord]:
    for f in test.logs:
        for i in range(f.count):
            yield LogRecord(START + f.at + i * f.every, f.host, f.service, f.level, f.message, dict(f.fields))


def _compare(check: AlertCheck, engine: AlertEngine) -> list[str]:
    firing = sorted((a for a in engine.tracker.alerts.values() if a.rule == check.rule and a.state == AlertState.FIRING),
                    key=lambda a: a.labels)
    unmatched = list(firing)
    problems = []
    for exp in check.firing:
        want = labels(exp.labels)
        found = next((a for a in unmatched if a.labels == want), None)
        if found is None:
            problems.append(f"at {_offset(check.at)}: {format_series(check.rule, want)} is not firing")
            continue
        unmatched.remove(found)
        for key in ("summary", "severity", "description"):
            expected = getattr(exp, key)
            if expected is not None and getattr(found, key) != expected:
                problems.append(f"at {_offset(check.at)}: {format_series(check.rule, want)}: {key} is "
                                f"{getattr(found, key)!r}, expected {expected!r}")
    for a in unmatched:
        problems.append(f"at {_offset(check.at)}: {format_series(a.rule, a.labels)} fires, not expected")
    return problems


def _offset(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    return (f"{int(m)}m" if m else "") + (f"{s:g}s" if s or not m else "")


__all__ = ["START", "AlertCheck", "ExpectedAlert", "LogFixture", "Outcome", "RuleTest", "RuleTestFile",
           "SeriesFixture", "expand_values", "load_test_file", "parse_selector", "run_file"]
