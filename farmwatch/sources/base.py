"""What every source is: a configured input polled once per interval.

Pollers (HLT monitor sockets, Zabbix, nsmvget) do their I/O in ``poll``; subscription sources
(EPICS monitors, log tailers) collect in the background and hand over what arrived since the last
call. Either way the runner sees one shape and one schedule, and a source never blocks another
because each runs on its own thread.
"""

from __future__ import annotations

import abc
from typing import ClassVar

from pydantic import Field, model_validator

from farmwatch.clock import Clock, RealClock
from farmwatch.config import Duration, Section
from farmwatch.durations import format_duration
from farmwatch.model import Batch


class SourceConfig(Section):
    kind: str
    interval: Duration = Field(default=1.0, gt=0)
    timeout: Duration = Field(default=0.5, gt=0)
    labels: dict[str, str] = Field(default_factory=dict)
    """Extra labels added to every series of this source (e.g. ``site = "kek"``)."""

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> "SourceConfig":
        if self.timeout >= self.interval:
            raise ValueError(f"timeout ({format_duration(self.timeout)}) must be shorter than interval ({format_duration(self.interval)}), "
                             "or cycles would overlap")
        return self


class Source(abc.ABC):
    Config: ClassVar[type[SourceConfig]]

    def __init__(self, name: str, config: SourceConfig, *, clock: Clock | None = None) -> None:
        self.name = name
        self.config = config
        self.clock = clock or RealClock()

    @property
    def interval(self) -> float:
        return self.config.interval

    @abc.abstractmethod
    def poll(self) -> list[Batch]:
        """One cycle: everything new since the previous call. Must not raise for target faults."""

    def close(self) -> None:
        """Release sockets and threads; called once, after the last poll."""
