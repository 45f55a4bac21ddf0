"""Delivery of the outbox to the notifiers: in order, with retries, never lost.

Every notification was written to the outbox (in the store) before anyone tried to send it, so a
chat server that is down for an hour, a 429 storm or a restart of farmwatch only delays messages.
Per notifier, notifications go out strictly in the order they were queued: the head of the queue
blocks the rest until it is delivered (or fails permanently), so an operator never reads
"resolved" before "firing". The wait before the next attempt is what the server asked for
(429 with ``X-RateLimit-Reset``) or an exponential backoff.

A notifier that can edit messages (Rocket.Chat's REST API) gets one message per incident: the
first notification posts it and later ones update it; queued notifications of an incident that
a newer one of the same incident supersedes are marked ``superseded`` instead of being sent (the
newer one carries everything). A reminder (``repeat``) posts a new message, so that it is seen.
A webhook cannot edit, so every notification is a new message, resolves included.

Every post carries a key that names it for good: notifier, incident and the outbox row it is
sent in the place of (the incident's oldest queued notification, which stays queued until the
post is confirmed). A retry, also by the next process after a crash, has the same key, so a
notifier that supports it (Rocket.Chat's REST API, :func:`~farmwatch.alerting.notifiers.message_id`)
never makes two messages of one post whose answer was lost.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Callable, Mapping

from farmwatch.alerting.state import AlertDB, OutboxItem, notification_from_doc
from farmwatch.clock import Clock, RealClock

log = logging.getLogger("farmwatch.alerting.delivery")

MIN_CHARS = 600


@dataclass
class DeliveryStats:
    delivered: int = 0
    superseded: int = 0
    failed: int = 0
    retries: int = 0
    by_notifier: dict[str, str] = field(default_factory=dict)


class Delivery:
    """Sends what the outbox holds, one notifier at a time; ``pump`` is one pass, ``run`` loops."""

    def __init__(self, db: AlertDB, notifiers: Mapping[str, object], *, clock: Clock | None = None,
                 link_template: str | None = None, max_chars: int = 5000,
                 backoff: tuple[float, float] = (1.0, 300.0),
                 render: Callable | None = None) -> None:
        from farmwatch.alerting import message

        self.db = db
        self.notifiers = dict(notifiers)
        self.clock = clock or RealClock()
        self.link_template = link_template
        self.max_chars = max_chars
        self.backoff = backoff
        self.render = render or message.render
        self.stats = DeliveryStats()
        self._failing: dict[str, str] = {}

    def pump(self) -> int:
        """Deliver everything that is due now; returns the number of notifications sent."""
        sent = 0
        for name, notifier in self.notifiers.items():
            sent += self._pump_one(name, notifier)
        return sent

    def next_due(self) -> float | None:
        """When the next queued notification may be tried (None: the outbox is empty)."""
        heads = [items[0].next_attempt for items in (self.db.pending(n) for n in self.notifiers) if items]
        return min(heads) if heads else None

    def run(self, stop: threading.Event, idle: float = 1.0) -> None:
        """Pump until ``stop`` is set; sleeps until the next due item (at most ``idle`` seconds)."""
        while not stop.is_set():
            try:
                self.pump()
            except Exception as exc:  # a store error must not end delivery for good
                log.error("alert delivery: %s", exc)
            due = self.next_due()
            wait = idle if due is None else min(idle, max(0.05, due - self.clock.time()))
            self.clock.wait(stop, wait)

    def _pump_one(self, name: str, notifier) -> int:
        from farmwatch.alerting.notifiers import DeliveryError

        items = self.db.pending(name)
        newest: dict[str, OutboxItem] = {}
        for item in items:
            newest[item.incident] = item
        done: set[int] = set()
        sent = 0
        for item in items:
            if item.id in done:
                continue
            now = self.clock.time()
            if item.next_attempt > now or notifier.wait_hint() > 0:
                break
            # An editable message shows the incident's newest state, sent in the place of its
            # oldest queued notification: order between incidents stays as it was queued.
            send = newest[item.incident] if notifier.updates else item
            merged = [i for i in items if i.incident == item.incident and item.id <= i.id <= send.id]
            try:
                outcome = self._send(name, notifier, send, post_key(name, item))
            except DeliveryError as exc:
                self._failed(name, item, exc, now)
                if not exc.permanent:
                    break
                outcome = f"failed: {exc}"
            for other in merged:
                done.add(other.id)
                if other is item and outcome.startswith("failed"):
                    continue  # _failed wrote it
                self.db.finish(other.id, self.clock.time(), outcome if other is send else f"superseded by #{send.id}")
                if other is not send:
                    self.stats.superseded += 1
            if outcome.startswith("failed"):
                continue
            self.stats.delivered += 1
            sent += 1
            if self._failing.pop(name, None) is not None:
                log.info("alert delivery to %s works again", name)
        return sent

    def _send(self, name: str, notifier, item: OutboxItem, key: str) -> str:
        from farmwatch.alerting.notifiers import DeliveryError

        note = notification_from_doc(item.payload)
        ref = self.db.chat_ref(name, item.incident) if notifier.updates and not note.repeat else None
        limit = self.max_chars
        while True:
            msg = self.render(note, link_template=self.link_template, max_chars=limit, now=self.clock.time())
            try:
                if ref is not None:
                    notifier.update(ref, msg)
                    outcome = f"updated {ref}"
                else:
                    ref = notifier.post(msg, key=key)
                    outcome = f"posted {ref}" if ref else "posted"
                break
            except DeliveryError as exc:
                # The server counts characters differently than we do: shrink and try again.
                if getattr(exc, "too_large", False) and limit > MIN_CHARS:
                    limit //= 2
                    continue
                raise
        if notifier.updates and ref:
            keep = note.status == "firing"
            self.db.set_chat_ref(name, item.incident, ref if keep else None, self.clock.time())
        return outcome

    def _failed(self, name: str, item: OutboxItem, exc, now: float) -> None:
        reason = str(exc) or type(exc).__name__
        if exc.permanent:
            self.db.finish(item.id, now, f"failed: {reason}")
            self.stats.failed += 1
            log.error("alert delivery to %s: notification #%d dropped, the server refused it for good: %s",
                      name, item.id, reason)
            return
        attempts = item.attempts + 1
        lo, hi = self.backoff
        wait = exc.retry_after if exc.retry_after is not None else min(hi, lo * 2 ** (attempts - 1))
        self.db.retry_later(item.id, attempts, now + wait, f"retrying: {reason}")
        self.stats.retries += 1
        if self._failing.get(name) != reason:
            self._failing[name] = reason
            log.warning("alert delivery to %s failing (%s); %d notification(s) queued, next try in %.0f s",
                        name, reason, len(self.db.pending(name)), wait)


def post_key(notifier: str, head: OutboxItem) -> str:
    """What names a post for good: the notifier, the incident and the outbox row it is sent for
    (``head``: the oldest queued notification of the incident, finished only once the post is)."""
    return f"farmwatch|{notifier}|{head.incident}|{head.id}"


__all__ = ["MIN_CHARS", "Delivery", "DeliveryStats", "post_key"]
