"""What a config builds for a service: its store, sources, log sinks, notifiers and the alerting
pipeline (rules, window, engine, delivery, anomaly scorer, alert context).

The wiring of farmwatch in one place: the parts below (sources, store, detect, alerting) know
nothing of each other beyond their types; ``run``/``watch``/``collect``, the demo and the tests
get the same objects from the same config through here. Config problems raise ``ConfigError``
before anything starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from farmwatch.alerting import notifiers as chat
from farmwatch.alerting.delivery import Delivery
from farmwatch.alerting.engine import AlertEngine
from farmwatch.alerting.logkinds import bind_store
from farmwatch.alerting.rules import Rule
from farmwatch.alerting.ruleset import inhibit_rules, load_rule_set, make_window, timers
from farmwatch.alerting.state import AlertDB
from farmwatch.store.window import Window
from farmwatch.clock import Clock, RealClock
from farmwatch.config.base import ConfigError
from farmwatch.config.loader import Settings, secret_problems
from farmwatch.config.sections import NotifierSettings
from farmwatch.credentials import section_secret
from farmwatch.sources import source_class
from farmwatch.sources.base import Source
from farmwatch.sources.zabbix.source import ZabbixContext
from farmwatch.store.logs import LogFeed, LogSink, wants_logs
from farmwatch.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from farmwatch.detect.scorer import Scorer


def build_sources(settings: Settings, only: Sequence[str] = ()) -> list[Source]:
    """The configured sources (or the ones named in ``only``), ready to poll."""
    names = list(only) or list(settings.sources)
    unknown = [n for n in names if n not in settings.sources]
    if unknown:
        raise ConfigError([f"{settings.file}: sources.{n}: no such source in this config (have: {', '.join(settings.sources)})"
                           for n in unknown])
    problems = secret_problems(settings, names)  # an unset token variable is the config's fault, said now
    if problems:
        raise ConfigError(problems)
    return [source_class(settings.sources[n].kind)(n, settings.sources[n]) for n in names]


def log_sinks(settings: Settings) -> list[LogSink]:
    """Log sinks besides the embedded store: Elasticsearch when ``[elastic]`` is configured."""
    if settings.elastic is None:
        return []
    from farmwatch.store.elastic.store import ElasticStore  # the client library only where it is used

    return [ElasticStore(settings.elastic)]


def build_notifier(name: str, cfg: NotifierSettings, clock: Clock | None = None) -> chat.Notifier:
    verify: bool | str = str(cfg.ca_file) if cfg.ca_file else cfg.verify
    if cfg.kind == "console":
        return chat.ConsoleNotifier()
    what = f"alerting.notify.{name}"
    if cfg.kind == "webhook":
        url = section_secret(cfg, "url", f"{what}: webhook URL")
        return chat.RocketChatWebhook(url, channel=cfg.channel, alias=cfg.alias, emoji=cfg.emoji,
                                      timeout=cfg.timeout, verify=verify, clock=clock)
    token = section_secret(cfg, "token", f"{what}: token")
    password = section_secret(cfg, "password", f"{what}: password")
    return chat.RocketChatREST(cfg.url, channel=cfg.channel, room_id=cfg.room_id, token=token,
                               user_id=cfg.user_id, username=cfg.username, password=password,
                               timeout=cfg.timeout, verify=verify, alias=cfg.alias, emoji=cfg.emoji, clock=clock)


@dataclass
class Alerting:
    """The assembled alerting pipeline of one service."""

    rules: list[Rule]
    window: Window
    engine: AlertEngine
    delivery: Delivery
    db: AlertDB
    scorer: Scorer | None = None
    """The anomaly scorer when ``[detect]`` has families, else None."""

    def names(self) -> list[str]:
        """Series names (globs) the window holds: ``watch`` loads these from the store."""
        names = set().union(*(r.names() for r in self.rules)) | {"daq.run_state", "daq.run_state_since"}
        return sorted(names | (self.scorer.names() if self.scorer else set()))

    def restore(self, store: SQLiteStore, now: float, *, until: float | None = None, settle: float = 0.0) -> None:
        """The service starts at ``now``: the window as it was (from the store, up to ``until``),
        and the alerts live before the start held until data from after it decides on them (at
        most the rule's lookback, at least ``settle`` seconds: until the sources delivered)."""
        self.window.restore(store, now, self.names(), until)
        self.engine.hold_restored(now, settle)


def build_alerting(settings: Settings, store: SQLiteStore, *, clock: Clock | None = None,
                   notifiers: dict[str, chat.Notifier] | None = None, persist: bool = True) -> Alerting:
    """Everything ``run``/``watch`` need besides the sources."""
    alerting = settings.alerting
    clock = clock or RealClock()
    rules = load_rule_set(alerting) if alerting.enabled else []
    scorer = None
    if settings.detect is not None and settings.detect.families:  # else nothing is imported or done
        from farmwatch.detect.scorer import Scorer

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
    engine = AlertEngine(rules, window, db, timers=timers(alerting), notifiers=list(notifiers),
                         inhibits=inhibit_rules(alerting), clock=clock, keep_resolved=alerting.keep_resolved,
                         persist=persist, context=ZabbixContext(store) if hasattr(store, "series") else None)
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


__all__ = ["Alerting", "build_alerting", "build_notifier", "build_sources", "log_sinks"]
