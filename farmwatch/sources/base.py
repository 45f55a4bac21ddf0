"""What every source is: a configured input polled once per interval.

Pollers (HLT monitor sockets, Zabbix, nsmvget) do their I/O in ``poll``; subscription sources
(EPICS monitors, log tailers) collect in the background and hand over what arrived since the last
call. Either way the runner sees one shape and one schedule, and a source never blocks another
because each runs on its own thread.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Mapping, Protocol

from pydantic import Field, model_validator

from farmwatch.clock import Clock, RealClock
from farmwatch.config.base import Duration, Section
from farmwatch.durations import format_duration
from farmwatch.model import Batch, LogRecord


class SourceConfig(Section):
    kind: str
    interval: Duration = Field(default=1.0, gt=0)
    """How often the source runs a cycle (polls, or hands over what its subscriptions collected)."""
    timeout: Duration = Field(default=0.5, gt=0)
    """How long one cycle may wait for its targets; must be shorter than ``interval``."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Extra labels added to every series of this source (e.g. ``site = "kek"``)."""

    def warnings(self) -> list[str]:
        """What is valid but probably a mistake (``check-config`` prints it), one line each."""
        return []

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> "SourceConfig":
        if self.timeout >= self.interval:
            raise ValueError(f"timeout ({format_duration(self.timeout)}) must be shorter than interval ({format_duration(self.interval)}), "
                             "or cycles would overlap")
        return self


@dataclass(eq=False)
class LogBatch:
    """Log records a source read in one cycle, and what must happen once every sink has them.

    A source returns this among its ``poll()`` results. The runner writes ``records`` to every
    sink, the embedded store last and together with ``cursors`` (saved under the source's name,
    ``drop`` deleted) in one transaction, then calls ``ack()``: only then may the source move its
    offsets on. When a sink refuses the records the runner calls ``nack()`` and the source reads
    the same data again later; the file is the buffer, so nothing is lost.
    """

    source: str
    records: list[LogRecord]
    cursors: dict[str, Any] = field(default_factory=dict)
    drop: list[str] = field(default_factory=list)
    ack: Callable[[], None] = lambda: None
    nack: Callable[[], None] = lambda: None

    def __len__(self) -> int:
        return len(self.records)


class CursorStore(Protocol):
    """What a source may ask of the store it writes to: its own cursors (where to resume)."""

    def cursors(self, source: str) -> dict[str, Any]: ...

    def save_cursors(self, source: str, cursors: Mapping[str, Any], *, drop: Iterable[str] = ()) -> None: ...


class Source(abc.ABC):
    Config: ClassVar[type[SourceConfig]]
    once: bool = False
    """True under ``collect --once`` (cron): no later cycle runs in this process, so no log line may
    promise one (``later``)."""

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

    def bind_store(self, store: CursorStore) -> None:
        """Called once by the runner, before the first poll, with the store the data goes to.

        Sources that resume where they stopped (Zabbix: the last clock per item) read their
        cursors from it (``store.cursors(name)``). Default: nothing.
        """

    def written(self, batches: list[Batch]) -> None:
        """Called by the runner once the batches that one ``poll`` returned are in the store.

        Calls come in poll order and never for a cycle that was dropped, so a source that saves
        its cursors here (``store.save_cursors``) never has a cursor ahead of the stored data;
        after a crash it reads some values again, which the store keeps once. Default: nothing.
        """

    def failure(self) -> str | None:
        """Why the last cycle got nothing at all from the source's target (credentials refused, no
        answer), else None; ``collect --once`` then exits 1. Sources whose targets fail one by one
        (an endpoint's ``up`` = 0: data, not a failure) keep the default."""
        return None

    def later(self, what: str) -> str:
        """``what`` a later cycle will do (for a log line), or under ``--once`` that the next run will."""
        return "the next run (collect --once) tries again" if self.once else what

    def close(self) -> None:
        """Release sockets and threads; called once, after the last poll."""


__all__ = ["CursorStore", "LogBatch", "Source", "SourceConfig"]
