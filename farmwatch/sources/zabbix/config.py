"""``[sources.<name>] kind = "zabbix"``: the settings of the source, apart from its code so that
reading a config does not import what the source needs to run."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from farmwatch.config.base import Duration
from farmwatch.sources.base import SourceConfig

NUMERIC = {0: "float", 3: "unsigned"}
TEXTUAL = {1: "char", 2: "log", 4: "text"}
SEVERITIES = ("not classified", "information", "warning", "average", "high", "disaster")


class ZabbixConfig(SourceConfig):
    """``[sources.<name>]`` with ``kind = "zabbix"``."""

    secrets = ("token", "password")
    secret_aliases = {"api_token": "token"}
    kind: Literal["zabbix"]
    interval: Duration = Field(default=30.0, gt=0)
    timeout: Duration = Field(default=10.0, gt=0)
    """Per API call (HTTP connect + read)."""
    url: str
    """The frontend's base URL (``https://zabbix.example/zabbix``); ``/api_jsonrpc.php`` is appended."""
    token_env: str | None = None
    token_file: Path | None = None
    user: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    verify: bool = True
    ca_file: Path | None = None
    host_groups: list[str] = Field(default_factory=list)
    hosts: list[str] = Field(default_factory=list)
    """Globs over the Zabbix technical host name (``hltwk*``); with host_groups, both must match."""
    items: list[str] = Field(min_length=1)
    """Globs over item keys; only ``*`` and ``?`` are wildcards, so ``net.if.in[*]`` means what it says."""
    host_map: dict[str, str] = Field(default_factory=dict)
    """Zabbix host name → farm host name, where they differ."""
    text: Literal["skip", "state"] = "skip"
    """Character, text and log items: not collected (counted), or stored as state values."""
    max_text: int = Field(default=256, ge=16)
    chunk_items: int = Field(default=500, ge=1, le=10_000)
    window: Duration = Field(default=3600.0, ge=60)
    limit: int = Field(default=50_000, ge=100)
    horizon: Duration = Field(default=6 * 3600.0, gt=0)
    """How far back history is caught up after an outage; older gaps get hourly trends."""
    trends: bool = True
    backfill: Duration = Field(default=600.0, ge=0)
    """How much history a newly seen item starts with."""
    settle: Duration = Field(default=60.0, ge=0)
    """A quiet item's cursor moves up to ``now - settle``: values that reach Zabbix later than
    this after their clock (e.g. buffered by a proxy) would be missed, so raise it for proxies."""
    rediscover: Duration = Field(default=300.0, gt=0)
    """How often hosts and items are listed again (new, deleted or renamed ones); the lists are cached in the store for as long, so cron runs (`collect --once`) list them once per interval."""
    problems: bool = True
    problem_limit: int = Field(default=1000, ge=1)
    backoff: Duration = Field(default=5.0, gt=0)
    backoff_max: Duration = Field(default=300.0, gt=0)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(f"expected http(s)://host[:port][/path] of the Zabbix frontend, got {value!r}")
        return value.rstrip("/")

    @field_validator("ca_file")
    @classmethod
    def _exists(cls, value: Path | None) -> Path | None:
        # Secret files are read at every login instead (they may be rotated or appear later).
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @model_validator(mode="after")
    def _complete(self) -> "ZabbixConfig":
        token = bool(self.token_env or self.token_file)
        login = bool(self.user and (self.password_env or self.password_file))
        if self.token_env and self.token_file:
            raise ValueError("token_env and token_file: give one of them")
        if not token and not login:
            raise ValueError("needs an API token (token_env or token_file, preferred) or user with "
                             "password_env or password_file")
        if token and self.user:
            raise ValueError("user: not used with an API token; remove it or the token settings")
        if not self.host_groups and not self.hosts:
            raise ValueError("needs host_groups and/or hosts (globs such as 'hltwk*'; hosts = ['*'] for all the token can read)")
        if self.backoff_max < self.backoff:
            raise ValueError("backoff_max must not be shorter than backoff")
        return self


CONFIG = ZabbixConfig

__all__ = ["CONFIG", "NUMERIC", "SEVERITIES", "TEXTUAL", "ZabbixConfig"]
