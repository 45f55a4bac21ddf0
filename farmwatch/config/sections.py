"""The sections of a config that belong to no single part: ``[store]``, ``[log]``,
``[self_metrics]`` and ``[alerting]`` with its inhibit rules and notifiers.

The sections of a part live with it (a source kind's ``Config`` in its module, ``[elastic]`` in
``farmwatch.store.elastic``, ``[detect]`` in ``farmwatch.detect.settings``); the loader
(``farmwatch.config.loader``) puts them all together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from farmwatch.config.base import Duration, Section
from farmwatch.matchers import parse_matchers


class StoreSettings(Section):
    path: Path = Path("farmwatch.db")
    """The SQLite file (WAL mode); collectors and the watch service of one deployment share it."""
    retention: Duration = Field(default=14 * 86400.0, gt=0)
    """Samples older than this are dropped (whole hours at a time)."""
    retention_1m: Duration = Field(default=90 * 86400.0, gt=0)
    """1-minute rollups (min/max/mean/last/count per series) are kept this long."""
    retention_10m: Duration = Field(default=730 * 86400.0, gt=0)
    """10-minute rollups are kept this long."""


class LogSettings(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level of farmwatch's own log lines."""
    format: Literal["plain", "json"] = "plain"
    """`json`: one JSON object per line (ts, level, logger, message), for log shippers."""


class SelfMetricsSettings(Section):
    """``[self_metrics]``: where a service exposes its own health for Prometheus (off unless ``port`` is set)."""

    port: int | None = Field(default=None, ge=1, le=65535)
    """TCP port of the /metrics endpoint; unset: no endpoint."""
    address: str = "127.0.0.1"
    """Address to listen on (keep it on loopback or a monitoring network: no authentication)."""
    instance: str | None = Field(default=None, min_length=1)
    """Value of the `instance` label on the service's own series in the store (`farmwatch.written_samples`, …); default: config file name and host, `hlt-zmq@hltmon01` (plus `:source,…` for `collect --source`). Services sharing a store need different ones."""


class InhibitSettings(Section):
    """While an alert matching ``source`` fires, alerts matching ``target`` with equal ``equal`` labels are muted."""

    source: list[str] = Field(min_length=1)
    """Matchers (`alertname=HltUnitDown`) selecting the alerts that mute others."""
    target: list[str] = Field(min_length=1)
    """Matchers selecting the alerts that are muted."""
    equal: list[str] = Field(default_factory=list)
    """Labels whose values must be equal in source and target (e.g. `unit`)."""
    hold: Duration = Field(default=0.0, ge=0)
    """Keep the targets muted this long after the source resolved (consequences that outlast their cause)."""

    @field_validator("source", "target")
    @classmethod
    def _matchers(cls, value: list[str]) -> list[str]:
        parse_matchers(value)
        return value


class NotifierSettings(Section):
    """One place alerts go. Secrets (token, password, webhook URL) only from environment or files."""

    secrets = ("token", "password")
    kind: Literal["rocketchat", "webhook", "console"]
    """`rocketchat`: REST API, one message per incident edited in place, never posted twice; `webhook`: incoming webhook (a new message per change; a post whose answer was lost may show twice, docs/chat.md); `console`: stdout."""
    url: str | None = None
    """Rocket.Chat server URL (rocketchat)."""
    url_env: str | None = None
    """Environment variable holding the webhook URL (it contains a secret)."""
    url_file: Path | None = None
    """File holding the webhook URL."""
    channel: str | None = None
    """Channel to post to, e.g. `#hlt-alerts` (rocketchat)."""
    room_id: str | None = None
    """Room id instead of a channel name."""
    user_id: str | None = None
    """User id of the personal access token owner."""
    token_env: str | None = None
    """Environment variable holding the personal access token."""
    token_file: Path | None = None
    """File holding the personal access token."""
    username: str | None = None
    """Log in with user name and password instead of a token."""
    password_env: str | None = None
    """Environment variable holding the password."""
    password_file: Path | None = None
    """File holding the password."""
    alias: str | None = "farmwatch"
    """Sender name shown in the chat."""
    emoji: str | None = None
    """Avatar emoji, e.g. `:rotating_light:`."""
    timeout: Duration = Field(default=10.0, gt=0)
    """HTTP timeout per request."""
    verify: bool = True
    """Verify TLS certificates (keep it on; use ca_file for a site CA)."""
    ca_file: Path | None = None
    """CA bundle for the chat server."""
    max_chars: int = Field(default=5000, ge=600)
    """Longest message; bigger incidents are summarised to fit."""

    @model_validator(mode="after")
    def _complete(self) -> "NotifierSettings":
        if self.kind == "rocketchat":
            if not self.url:
                raise ValueError("a rocketchat notifier needs url (the server, e.g. https://chat.example.org)")
            if not (self.channel or self.room_id):
                raise ValueError("a rocketchat notifier needs channel (e.g. '#hlt-alerts') or room_id")
            token = bool(self.token_env or self.token_file)
            login = bool(self.username and (self.password_env or self.password_file))
            if not (token or login):
                raise ValueError("a rocketchat notifier needs token_env/token_file with user_id "
                                 "(personal access token) or username with password_env/password_file")
            if token and not self.user_id:
                raise ValueError("a personal access token needs user_id (the token owner's user id)")
        if self.kind == "webhook" and not (self.url_env or self.url_file):
            raise ValueError("a webhook notifier needs url_env or url_file (the URL contains its secret token, "
                             "so it never goes into the config)")
        if self.kind == "webhook" and self.url:
            raise ValueError("put the webhook URL into an environment variable (url_env) or a file (url_file): "
                             "it contains the secret token")
        return self


class AlertingSettings(Section):
    """Rules, their evaluation, grouping and where notifications go (``[alerting]``)."""

    enabled: bool = True
    """Evaluate rules at all (`run`, `watch`)."""
    rules: list[Path] = Field(default_factory=list)
    """Rule files or folders of your own (`*.toml`), besides the shipped ones."""
    shipped_rules: bool = True
    """Load the rules shipped in alerts/ (HLT farm, dead-man's switch)."""
    evaluation_interval: Duration = Field(default=5.0, gt=0)
    """How often every rule is evaluated."""
    run_state_node: str | None = None
    """Node whose `daq.run_state` rules with `run_state = [...]` follow (e.g. `RUNCONTROL`); unset: the only one there is."""
    group_by: list[str] = Field(default_factory=lambda: ["alertname", "unit"])
    """Labels that make a group: one chat message per incident of a group."""
    group_wait: Duration = Field(default=10.0, ge=0)
    """Wait this long before the first message of an incident, so alerts arriving together share it."""
    group_interval: Duration = Field(default=60.0, gt=0)
    """At most one update of an incident message this often."""
    new_alert_wait: Duration | None = Field(default=None, ge=0)
    """A new firing alert joining a notified incident is shown after this (default: group_wait), not after group_interval."""
    repeat_interval: Duration = Field(default=4 * 3600.0, gt=0)
    """Remind about a firing, unacknowledged incident this often."""
    keep_resolved: Duration = Field(default=86400.0, gt=0)
    """Resolved alerts stay listed by `farmwatch alerts` this long (history is kept regardless)."""
    forget_series_after: Duration = Field(default=86400.0, gt=0)
    """A series with no sample for this long is forgotten by the rules (its `absent`/`down` alert resolves); at least the rules' lookback."""
    link: str | None = None
    """Link template shown in every message, e.g. `https://grafana/d/hlt?var-unit={unit}`."""
    inhibit: list[InhibitSettings] = Field(default_factory=list)
    """Inhibit rules besides those shipped with the rule files."""
    rule_file_inhibits: bool = True
    """Use the `[[inhibit]]` tables of the rule files."""
    notify: dict[str, NotifierSettings] = Field(default_factory=dict)
    """Named notifiers; every notification goes to all of them."""


__all__ = ["AlertingSettings", "InhibitSettings", "LogSettings", "NotifierSettings", "SelfMetricsSettings",
           "StoreSettings"]
