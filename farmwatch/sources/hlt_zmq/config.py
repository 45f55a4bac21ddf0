"""``[sources.<name>] kind = "hlt_zmq"``: the settings of the source, apart from its code so that
reading a config does not import what the source needs to run."""

from __future__ import annotations

import re
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ByteSize, Field, field_validator, model_validator

from farmwatch.config.base import Duration
from farmwatch.model import Labels, labels as make_labels
from farmwatch.sources.base import SourceConfig
from farmwatch.templates import expand

_ADDRESS = re.compile(r"^(tcp://[^\s:]+:\d+|ipc://\S+|inproc://\S+)$")
_RESERVED = {"host", "pid", "peer"}  # labels a per-peer key adds


class HltZmqConfig(SourceConfig):
    """``[sources.<name>]`` with ``kind = "hlt_zmq"``."""

    kind: Literal["hlt_zmq"]
    endpoints: list[dict[str, str]] = Field(min_length=1)
    """Each entry: ``unit``, ``app``, ``address`` and optional extra labels; ranges ``{01..20}`` expand."""
    max_reply_size: ByteSize = ByteSize(16 * 1024 * 1024)
    """Replies larger than this are refused by ZeroMQ (the endpoint then counts as not answering)."""
    exclude: list[str] = ["*.event_rate*"]
    """Globs over ``section.key`` (per-peer keys without the bracket) that are not stored. The apps'
    own ``event_rate`` is a stale moving estimate; farmwatch computes rates from counters instead."""
    rates: list[str] = ["*.received_events", "*.sent_events", "*.total_number_messages", "*.sent_ready"]
    """Counters (globs over ``section.key``) for which a ``<name>:rate`` series (per second) is derived.
    Not ``data_size*``: basf2 keeps those as the mean of the last 100 event sizes, not as byte counters."""
    rate_lookback: Duration = Field(default=900.0, ge=0)
    """How old a stored counter may be to give the first cycle after a start its ``:rate`` (each
    ``collect --once`` of a cron job, a restarted service): the previous run's value is read from
    the store. ``0``: rates only from counters this process read itself."""
    timezone: str = "local"
    """Time zone of the apps' ``ctime()`` strings (IANA name, or ``local``)."""

    @field_validator("endpoints", mode="before")
    @classmethod
    def _expand_endpoints(cls, value: Any) -> Any:
        if not isinstance(value, list):
            raise ValueError("expected a list of inline tables { unit = …, app = …, address = … }")
        out: list[dict[str, str]] = []
        for i, entry in enumerate(value):
            if not isinstance(entry, dict):
                raise ValueError(f"endpoints[{i}]: expected an inline table {{ unit = …, app = …, address = … }}")
            missing = [k for k in ("unit", "app", "address") if k not in entry]
            if missing:
                raise ValueError(f"endpoints[{i}]: missing {', '.join(missing)}")
            bad = [k for k, v in entry.items() if not isinstance(v, str) or not v]
            if bad:
                raise ValueError(f"endpoints[{i}]: {', '.join(bad)} must be non-empty strings")
            reserved = sorted(_RESERVED & entry.keys())
            if reserved:
                raise ValueError(f"endpoints[{i}]: label(s) {', '.join(reserved)} are set by per-peer keys; use another name")
            try:
                expanded = expand(entry)
            except ValueError as exc:
                raise ValueError(f"endpoints[{i}]: {exc}") from None
            for e in expanded:
                if not _ADDRESS.match(e["address"]):
                    raise ValueError(f"endpoints[{i}]: address {e['address']!r} is not tcp://host:port, ipc://… or inproc://…")
            out.extend(expanded)
        return out

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        if value != "local":
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {value!r}; expected an IANA name such as 'Asia/Tokyo' or 'local'") from None
        return value

    @model_validator(mode="after")
    def _check_unique(self) -> "HltZmqConfig":
        seen: dict[Labels, str] = {}
        for e in self.endpoints:
            key = make_labels({k: v for k, v in e.items() if k != "address"})
            if key in seen:
                raise ValueError(f"two endpoints have the same labels {dict(key)} ({seen[key]} and {e['address']}); add a label that tells them apart")
            seen[key] = e["address"]
        return self


CONFIG = HltZmqConfig

__all__ = ["CONFIG", "HltZmqConfig"]
