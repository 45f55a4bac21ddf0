"""How a farmwatch service reacts to signals: SIGTERM/SIGINT stop it, SIGHUP reloads its config.

A reload must never leave the farm unwatched: the new config (and its rules, sources, notifiers)
is built completely *before* anything of the running one is stopped; if that fails, one line says
why and the running configuration simply continues. The work loops are given ``wake`` as their stop
event, so both signals end the current generation cleanly (cycle finished, store flushed) and the
caller decides: exit, or start the next generation with what ``reload`` built.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Callable, Generic, TypeVar

from farmwatch.config.base import ConfigError
from farmwatch.config.loader import Settings, load
from farmwatch.service import systemd
from farmwatch.service.logconfig import setup_logging

log = logging.getLogger(__name__)
T = TypeVar("T")


class ServiceSignals:
    """``stop``: the service should end; ``wake``: the current generation should end (stop or reload)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.wake = threading.Event()
        self._reload = threading.Event()

    def install(self) -> "ServiceSignals":
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        return self

    def _on_stop(self, signum: int, _frame: object) -> None:
        log.info("received %s: finishing the current cycle and flushing", signal.Signals(signum).name)
        systemd.notify("STOPPING=1")
        self.stop.set()
        self.wake.set()

    def _on_reload(self, signum: int, _frame: object) -> None:
        log.info("received SIGHUP: reloading the configuration")
        self._reload.set()
        self.wake.set()

    def next_generation(self) -> bool:
        """After the loops returned: True if a reload was asked for (and no stop); resets ``wake``."""
        if self.stop.is_set():
            return False
        reload = self._reload.is_set()
        self._reload.clear()
        self.wake.clear()
        return reload


def stop_on_signals() -> threading.Event:
    """For commands that are not services (``top``, ``logs search --follow``): an event that
    SIGTERM and SIGINT set, so the command ends its loop and cleans up instead of dying mid-write."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        log.info("received %s: finishing", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


class Reloaded(Generic[T]):
    """The result of a successful reload: the new settings and what was built from them."""

    def __init__(self, settings: Settings, built: T) -> None:
        self.settings = settings
        self.built = built


def reload(path: str, build: Callable[[Settings], T]) -> Reloaded[T] | None:
    """Load ``path`` and ``build`` from it; on any failure log one line and return None.

    ``build`` should construct everything the new generation needs (sources, rules, notifiers) so
    that an error shows here, while the old generation's objects are still intact.
    """
    systemd.notify("RELOADING=1")
    try:
        settings = load(path)
        built = build(settings)
    except ConfigError as exc:
        log.error("reload rejected, the running configuration stays: %s", " | ".join(exc.problems))
        systemd.notify("READY=1", "STATUS=reload rejected (see the log); running the previous configuration")
        return None
    except Exception as exc:  # noqa: BLE001 - anything the new config causes must not end the service
        log.error("reload rejected, the running configuration stays: %s: %s", type(exc).__name__, exc)
        systemd.notify("READY=1", "STATUS=reload rejected (see the log); running the previous configuration")
        return None
    setup_logging(settings.log.level, settings.log.format)
    systemd.notify("READY=1", f"STATUS=reloaded {path}")
    return Reloaded(settings, built)


__all__ = ["Reloaded", "ServiceSignals", "reload", "stop_on_signals"]
