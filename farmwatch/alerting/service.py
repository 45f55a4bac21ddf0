"""Assemble the alerting pipeline from a config: rules, window, engine, notifiers, delivery.

``farmwatch run`` feeds the window from the collector runner in the same process; ``farmwatch
watch`` fills it from the store (split deployments, one alerting service for many collectors);
``farmwatch rules test`` replays stored data through the same engine on a simulated clock.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farmwatch.alerting.context import HostContext
from farmwatch.alerting.dispatch import Timers
from farmwatch.alerting.engine import AlertEngine
from farmwatch.alerting.muting import InhibitRule
from farmwatch.alerting.state import AlertDB
from farmwatch.clock import Clock, RealClock
from farmwatch.config import AlertingSettings, ConfigError, NotifierSettings, Settings
from farmwatch.durations import parse_duration

log = logging.getLogger("farmwatch.alerting")

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


def load_rule_set(alerting: AlertingSettings) -> list:
    from farmwatch.alerting.rules import load_rules

    return load_rules(rule_paths(alerting))


def file_inhibits(paths: list[Path]) -> list[InhibitRule]:
    """``[[inhibit]]`` tables (source, target, equal) of rule files: inhibition ships with its rules."""
    import tomllib

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


def make_window(rules: list, alerting: AlertingSettings, *, extra: set[str] = frozenset(), min_horizon: float = 0.0):
    """The window of what ``rules`` read; ``extra`` names (globs) and ``min_horizon`` for other
    readers of the window (the anomaly scorer's family series and windows)."""
    from farmwatch.alerting.window import Window

    names = set().union(*(r.names() for r in rules)) if rules else set()
    names |= {"daq.run_state", "daq.run_state_since"} | set(extra)
    horizon = max([r.lookback() for r in rules] + [0.0, min_horizon]) + HORIZON_MARGIN
    from fnmatch import fnmatchcase

    exact = {n for n in names if not any(c in n for c in "*?[")}
    globs = [n for n in names if n not in exact]

    def wants(name: str) -> bool:
        return name in exact or any(fnmatchcase(name, g) for g in globs)

    return Window(horizon, run_state_node=alerting.run_state_node, wants=wants,
                  forget_after=max(alerting.forget_series_after, horizon))


def _secret(env: str | None, file: Path | None, what: str) -> str | None:
    from farmwatch.secrets import secret

    if not (env or file):
        return None
    return secret(env, str(file) if file else None, what)


def build_notifier(name: str, cfg: NotifierSettings, clock: Clock | None = None):
    from farmwatch.alerting import notifiers

    verify: bool | str = str(cfg.ca_file) if cfg.ca_file else cfg.verify
    if cfg.kind == "console":
        return notifiers.ConsoleNotifier()
    if cfg.kind == "webhook":
        url = _secret(cfg.url_env, cfg.url_file, f"alerting.notify.{name}: webhook URL")
        return notifiers.RocketChatWebhook(url, channel=cfg.channel, alias=cfg.alias, emoji=cfg.emoji,
                                           timeout=cfg.timeout, verify=verify, clock=clock)
    token = _secret(cfg.token_env, cfg.token_file, f"alerting.notify.{name}: token")
    password = _secret(cfg.password_env, cfg.password_file, f"alerting.notify.{name}: password")
    return notifiers.RocketChatREST(cfg.url, channel=cfg.channel, room_id=cfg.room_id, token=token,
                                    user_id=cfg.user_id, username=cfg.username, password=password,
                                    timeout=cfg.timeout, verify=verify, alias=cfg.alias, emoji=cfg.emoji, clock=clock)


@dataclass
class Alerting:
    """The assembled pipeline of one service."""

    rules: list
    window: Any
    engine: AlertEngine
    delivery: Any
    db: AlertDB
    scorer: Any = None
    """``farmwatch.detect.service.Scorer`` when ``[detect]`` has families, else None."""

    def names(self) -> list[str]:
        """Series names (globs) the window holds: ``watch`` loads these from the store."""
        names = set().union(*(r.names() for r in self.rules)) | {"daq.run_state", "daq.run_state_since"}
        return sorted(names | (self.scorer.names() if self.scorer else set()))


def build(settings: Settings, store, *, clock: Clock | None = None, notifiers: dict[str, Any] | None = None,
          persist: bool = True) -> Alerting:
    """Everything ``run``/``watch`` need; config problems raise ``ConfigError`` before anything starts."""
    from farmwatch.alerting.delivery import Delivery

    alerting = settings.alerting
    clock = clock or RealClock()
    rules = load_rule_set(alerting) if alerting.enabled else []
    scorer = None
    if settings.detect is not None and settings.detect.families:  # else nothing is imported or done
        from farmwatch.detect.service import Scorer

        scorer = Scorer(settings.detect, store)
    window = make_window(rules, alerting, extra=scorer.names() if scorer else set(),
                         min_horizon=scorer.horizon() if scorer else 0.0)
    if notifiers is None:
        problems: list[str] = []
        notifiers = {}
        for name, cfg in alerting.notify.items():
            try:
                notifiers[name] = build_notifier(name, cfg, clock)
            except (ValueError, OSError) as exc:
                problems.append(f"{settings.file}: alerting.notify.{name}: {exc}")
        if problems:
            raise ConfigError(problems)
    db = AlertDB(store)
    timers = Timers(tuple(alerting.group_by), alerting.group_wait, alerting.group_interval, alerting.repeat_interval,
                    alerting.new_alert_wait)
    engine = AlertEngine(rules, window, db, timers=timers, notifiers=list(notifiers), inhibits=inhibit_rules(alerting),
                         clock=clock, keep_resolved=alerting.keep_resolved, persist=persist,
                         context=HostContext(store) if hasattr(store, "series") else None)
    from farmwatch.store.logs import LogFeed, wants_logs

    from farmwatch.alerting.logkinds import bind_store

    bind_store(rules, store)  # kinds that read more than the window (log template histories)
    if wants_logs(rules) and hasattr(store, "transaction"):
        engine.log_feed = LogFeed(store, window.horizon)  # run and watch alike: what the store holds
    # `run` feeds the window from the runner and nothing else forgot old samples: keep it to its horizon.
    engine.before_rules.append(window.prune)
    if scorer:
        scorer.window = window
        engine.before_rules.append(scorer.step)  # the scores of this step are what the rules read
    max_chars = min([c.max_chars for c in alerting.notify.values()] + [5000])
    delivery = Delivery(db, notifiers, clock=clock, link_template=alerting.link, max_chars=max_chars)
    return Alerting(rules, window, engine, delivery, db, scorer)
