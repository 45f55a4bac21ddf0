"""``farmwatch rules check`` (load and validate rule files), ``rules test`` (replay stored data
through the rules on a simulated clock: what would have fired) and ``rules unittest`` (fixture
series in a file, the alerts expected at given times: promtool's ``test rules``)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from farmwatch.cli.common import (EXIT_FAIL, EXIT_OK, EXIT_USAGE, UsageError, add_config, duration_arg, iso, load_settings,
                                  time_arg)
from farmwatch.durations import format_duration

if TYPE_CHECKING:
    from farmwatch.config.loader import Settings


def _settings(path: str | None) -> Settings | None:
    """The config when one is given or found; None (shipped rules only) when there is none."""
    from farmwatch.config.loader import find

    found = find(path, required=False)
    return None if found is None else load_settings(str(found))


def cmd_rules(args: argparse.Namespace) -> int:
    from farmwatch.alerting.ruleset import inhibit_rules, load_rule_set
    from farmwatch.config.sections import AlertingSettings

    if args.action == "unittest":
        return _unittest(args.files)
    settings = _settings(args.config)
    alerting = settings.alerting if settings is not None else AlertingSettings()
    if args.paths:
        alerting = alerting.model_copy(update={"rules": [Path(p) for p in args.paths]})
    rules = load_rule_set(alerting)
    inhibits = inhibit_rules(alerting)
    if args.action == "check":
        for r in rules:
            print(f"{r.name:<32} {r.kind:<10} {r.severity:<8} for {format_duration(r.for_):<6} {getattr(r, 'source', '')}")
        print(f"{len(rules)} rule(s), {len(inhibits)} inhibit rule(s): OK")
        return EXIT_OK
    if settings is None:
        raise UsageError("-c CONFIG is required (the store to replay)")
    return _backtest(settings, alerting, rules, args)


def _backtest(settings, alerting, rules, args: argparse.Namespace) -> int:
    """Replay stored data through the rules on a simulated clock and print what would have fired."""
    from farmwatch.alerting.engine import AlertEngine
    from farmwatch.alerting.ruleset import inhibit_rules, make_window, timers
    from farmwatch.alerting.state import AlertDB
    from farmwatch.clock import SimClock
    from farmwatch.store import open_store

    start, end = args.from_, args.to if args.to is not None else time.time()
    if not end > start:
        print("farmwatch rules test: --from must be before --to", file=sys.stderr)
        return EXIT_USAGE
    step = args.step or alerting.evaluation_interval
    logging.getLogger("farmwatch.alerting").setLevel(logging.WARNING)  # each transition is printed below, once
    store = open_store(settings.store, readonly=True)
    try:
        scorer = None
        if settings.detect is not None and settings.detect.families:
            from farmwatch.detect.scorer import Scorer

            scorer = Scorer(settings.detect)  # the trained models score the replayed history; nothing is written
        extra = scorer.names() if scorer else set()
        window = make_window(rules, alerting, extra=extra, min_horizon=scorer.horizon() if scorer else 0.0)
        names = set().union(*(r.names() for r in rules)) | {"daq.run_state", "daq.run_state_since"} | extra
        if scorer:  # the models' scores of this replay, not what a service stored then
            names -= {"anomaly.score", "anomaly.surprise", "anomaly.explanation"}
        names = sorted(names)
        clock = SimClock(start)
        engine = AlertEngine(rules, window, AlertDB(store), timers=timers(alerting), notifiers=["backtest"],
                             inhibits=inhibit_rules(alerting), clock=clock, persist=False)
        if scorer:
            scorer.window = window
            engine.before_rules.append(scorer.step)
        window.load(store, start - window.horizon, start, names)
        t, fired, notes = start, 0, 0
        while t <= end:
            window.load(store, t - step, t, names)
            window.prune(t)
            result = engine.evaluate(t)
            for ts, event, alert in result.events:
                if event in ("firing", "resolved"):
                    fired += event == "firing"
                    lbls = ",".join(f"{k}={v}" for k, v in alert.labels)
                    print(f"{iso(ts)}  {event.upper():<8} {alert.rule} {{{lbls}}}  {alert.summary}")
            notes += len(result.notifications)
            t += step
    finally:
        store.close()
    print(f"{iso(start)} → {iso(end)}: {fired} alert(s) fired, {notes} notification(s) would have been sent")
    return EXIT_OK


def _unittest(files: list[str]) -> int:
    from farmwatch.alerting.ruletest import run_file

    failed = total = 0
    for path in files:
        for outcome in run_file(path):
            total += 1
            print(f"{'PASS' if outcome.passed else 'FAIL'}  {path}: {outcome.name}")
            for problem in outcome.failures:
                print(f"      {problem}")
            failed += not outcome.passed
    print(f"{total} test(s), {failed} failed")
    return EXIT_FAIL if failed else EXIT_OK


def add_parsers(sub: argparse._SubParsersAction) -> None:
    u = sub.add_parser("rules", help="check rule files, or replay stored data through them (backtest)")
    usub = u.add_subparsers(dest="action", required=True)
    uc = usub.add_parser("check", help="load and validate the rules (shipped + config + PATHs)")
    ut = usub.add_parser("test", help="replay stored data through the rules: what would have fired")
    ut.add_argument("--from", dest="from_", type=time_arg, required=True, metavar="TIME",
                    help="start: a duration ago (2h) or an ISO time")
    ut.add_argument("--to", type=time_arg, metavar="TIME", help="end: a duration ago, an ISO time or now (default)")
    ut.add_argument("--step", type=duration_arg, help="evaluation step (default: the config's evaluation_interval)")
    for p in (uc, ut):
        p.add_argument("paths", nargs="*", metavar="PATH", help="rule files or folders (besides the config's)")
        add_config(p)
    un = usub.add_parser("unittest", help="run rule unit tests: fixture series and the alerts expected at given "
                                          "times (e.g. alerts/tests/hlt_test.toml; docs/rules.md)")
    un.add_argument("files", nargs="+", metavar="FILE", help="test files (TOML)")
    u.set_defaults(func=cmd_rules)


__all__ = ["add_parsers", "cmd_rules"]
