"""Real and simulated clocks.

Everything in farmwatch that needs the time takes a ``Clock`` so that tests and scenarios can run
hours of farm time in seconds and be deterministic. Network deadlines (how long to wait for a
socket) stay in real time: a simulated clock cannot make a remote process answer faster.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the Unix epoch (sample timestamps)."""

    def monotonic(self) -> float:
        """Seconds for measuring intervals; never goes backwards."""

    def sleep(self, seconds: float) -> None:
        """Wait (or, for a simulated clock, advance) ``seconds``."""

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Like ``sleep`` but returns early (True) when ``event`` is set."""


class RealClock:
    """The system clock."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(max(0.0, seconds))


class SimClock:
    """A clock that only moves when told to.

    ``sleep`` advances the clock instead of blocking, so a loop that sleeps between cycles runs as
    fast as the CPU allows while seeing evenly spaced timestamps. Thread-safe: several threads may
    read it while a scenario advances it.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._mono = 0.0
        self._lock = threading.Lock()

    def time(self) -> float:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("a simulated clock cannot go backwards")
        with self._lock:
            self._now += seconds
            self._mono += seconds
            return self._now

    def set(self, ts: float) -> None:
        """Jump to an absolute time (forwards only), e.g. to replay recorded data."""
        with self._lock:
            if ts < self._now:
                raise ValueError("a simulated clock cannot go backwards")
            self._mono += ts - self._now
            self._now = ts

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.advance(seconds)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        if event.is_set():
            return True
        self.sleep(seconds)
        return event.is_set()


__all__ = ["Clock", "RealClock", "SimClock"]
