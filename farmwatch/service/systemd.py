"""Talking to systemd when running as a service: readiness, watchdog, status, stopping.

systemd's notification protocol is one datagram per message on the socket named in
``$NOTIFY_SOCKET`` (``READY=1``, ``WATCHDOG=1``, ``STATUS=…``, ``STOPPING=1``); see
sd_notify(3). Outside systemd the variable is unset and every call here does nothing, so the same
commands run unchanged in a terminal, under cron or in tests.

The watchdog is only useful if a hung farmwatch stops pinging. ``Watchdog`` therefore pings from
its own thread only while the work loops keep calling ``beat()``: a writer stuck on a locked store
or a deadlocked source loop lets the beats go stale, the pings stop, and systemd restarts the
service (``WatchdogSec=`` in the unit, ``Restart=on-failure``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

log = logging.getLogger(__name__)


def notify(*messages: str) -> bool:
    """Send ``messages`` (e.g. ``"READY=1"``) to systemd; False (and nothing done) outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(messages).encode())
        return True
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of ``WatchdogSec``), or None when systemd wants none."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None


class Watchdog:
    """Pings systemd's watchdog while the service shows progress through ``beat()``.

    ``stale_after`` is how long without a beat counts as hung: a little more than the longest
    normal cycle (the slowest source interval, the evaluation interval).
    """

    def __init__(self, stale_after: float, interval: float | None = None) -> None:
        self.stale_after = stale_after
        self.interval = interval if interval is not None else watchdog_interval()
        self._last_beat = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stale_logged = False

    def beat(self, *_: object) -> None:
        """Record progress; accepts and ignores arguments so it can be a runner listener."""
        self._last_beat = time.monotonic()

    def healthy(self) -> bool:
        return time.monotonic() - self._last_beat <= self.stale_after

    def start(self) -> "Watchdog":
        if self.interval and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="systemd-watchdog", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        assert self.interval
        while not self._stop.wait(self.interval):
            if self.healthy():
                notify("WATCHDOG=1")
                self._stale_logged = False
            elif not self._stale_logged:
                self._stale_logged = True
                log.error("no progress for %.0f s: not pinging the systemd watchdog (systemd will restart this service)",
                          time.monotonic() - self._last_beat)


__all__ = ["Watchdog", "notify", "watchdog_interval"]
