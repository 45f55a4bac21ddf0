"""The rule set of an ``[alerting]`` section: rule files (shipped and the site's), inhibit rules,
timers, and the window sized for what the rules read.

``farmwatch run``/``watch`` (``farmwatch.service.pipeline``), ``farmwatch rules check|test|unittest``
and the scenario harness all load rules through here, so they agree on what a config means.
The window and the dispatcher's timers (numpy, the store) are imported where they are made:
checking rules needs neither.
"""

from __future__ import annotations

import os
import sys
import tomllib
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING

from farmwatch.alerting.muting import InhibitRule
from farmwatch.alerting.rules import Rule, load_rules
from farmwatch.config.base import ConfigError
from farmwatch.config.sections import AlertingSettings
from farmwatch.durations import parse_duration

if TYPE_CHECKING:
    from farmwatch.alerting.dispatch import Timers
    from farmwatch.store.window import Window

HORIZON_MARGIN = 60.0


def shipped_rules_dir() -> Path | None:
    """The ``alerts/`` folder shipped with farmwatch (source checkout or installed data files)."""
    env = os.environ.get("FARMWATCH_SHIPPED_RULES")
    candidates = [Path(env)] if env else []
    candidates += [Path(__file__).resolve().parents[2] / "alerts", Path(sys.prefix) / "share" / "farmwatch" / "alerts"]
    return next((p for p in candidates if p.is_dir() and any(p.glob("*.toml"))), None)


def rule_paths(alerting: AlertingSettings) -> list[Path]:
    paths = list(alerting.rules)
    shipped = shipped_rules_dir() if alerting.shipped_rules else None
    return ([shipped] if shipped else []) + paths


def load_rule_set(alerting: AlertingSettings) -> list[Rule]:
    return load_rules(rule_paths(alerting))


def file_inhibits(paths: list[Path]) -> list[InhibitRule]:
    """``[[inhibit]]`` tables (source, target, equal) of rule files: inhibition ships with its rules."""
    files = [f for p in paths for f in (sorted(p.glob("*.toml")) if p.is_dir() else [p])]
    found, problems = [], []
    for f in files:
        try:
            tables = tomllib.loads(f.read_text(encoding="utf-8")).get("inhibit", [])
        except (OSError, tomllib.TOMLDecodeError):
            continue  # the rule loader reports unreadable files
        for i, t in enumerate(tables):
            try:
                found.append(InhibitRule.parse(t["source"], t["target"], t.get("equal", ()),
                                               parse_duration(t.get("hold", "0s"))))
            except (KeyError, TypeError, ValueError) as exc:
                problems.append(f"{f}: inhibit[{i}]: {exc} (expected source = [matchers], target = [matchers], "
                                f"equal = [labels], hold = duration)")
    if problems:
        raise ConfigError(problems)
    return found


def inhibit_rules(alerting: AlertingSettings) -> list[InhibitRule]:
    found = [InhibitRule.parse(i.source, i.target, i.equal, i.hold) for i in alerting.inhibit]
    if alerting.rule_file_inhibits:
        found += file_inhibits(rule_paths(alerting))
    return found


def make_window(rules: list[Rule], alerting: AlertingSettings, *, extra: set[str] = frozenset(),
                min_horizon: float = 0.0) -> Window:
    """The window of what ``rules`` read; ``extra`` names (globs) and ``min_horizon`` for other
    readers of the window (the anomaly scorer's family series and windows)."""
    from farmwatch.store.window import Window

    names = set().union(*(r.names() for r in rules)) if rules else set()
    names |= {"daq.run_state", "daq.run_state_since"} | set(extra)
    horizon = max([r.lookback() for r in rules] + [0.0, min_horizon]) + HORIZON_MARGIN
    exact = {n for n in names if not any(c in n for c in "*?[")}
    globs = [n for n in names if n not in exact]

    def wants(name: str) -> bool:
        return name in exact or any(fnmatchcase(name, g) for g in globs)

    return Window(horizon, run_state_node=alerting.run_state_node, wants=wants,
                  forget_after=max(alerting.forget_series_after, horizon))


def timers(alerting: AlertingSettings) -> Timers:
    """Grouping and repeat timers of an ``[alerting]`` section."""
    from farmwatch.alerting.dispatch import Timers

    return Timers(tuple(alerting.group_by), alerting.group_wait, alerting.group_interval, alerting.repeat_interval,
                  alerting.new_alert_wait)


__all__ = ["HORIZON_MARGIN", "file_inhibits", "inhibit_rules", "load_rule_set", "make_window", "rule_paths",
           "shipped_rules_dir", "timers"]
