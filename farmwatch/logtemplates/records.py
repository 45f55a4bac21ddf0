"""Templates on log records as a source hands them on, and their counts as series.

Each record gets ``log.template.id`` and ``log.template.text`` in its fields (so both stores get
them: the ECS document in Elasticsearch, the ``fields`` of the embedded store, whose ``template_id``
column is derived from it). The records are also counted by their own time in buckets of ``step``
(10 s): ``log.template.count{template, host, service, level, unit}`` at each bucket's end, written
once the bucket is complete, 0 for a template that had records within ``idle`` but none in that
bucket. So a rate is a continuous series while it matters, a template that went quiet stops
costing samples, and a collector catching up after a pause does not make a spike: the records of
the pause fall into their own buckets. A record older than the buckets already written (or from
the future) is counted in the current one.
"""

from __future__ import annotations

import gc
import logging
from collections import Counter
from operator import attrgetter
from typing import Any, Sequence

from farmwatch.logtemplates.miner import ZEROS, TemplateMiner
from farmwatch.logtemplates.store import TemplateStore
from farmwatch.model import Batch, LogRecord

__all__ = ["COUNT", "ID_FIELD", "TEXT_FIELD", "RecordTemplates"]

log = logging.getLogger(__name__)

ID_FIELD = "log.template.id"
TEXT_FIELD = "log.template.text"
COUNT = "log.template.count"
STEP = 10.0
IDLE = 600.0

_message = attrgetter("message")
_Key = tuple[str, str, str, str, str]
"""(template id, host, service, level, unit)."""


class RecordTemplates:
    """The miner of one log source, bound to the store its collectors share (when there is one)."""

    def __init__(self, miner: TemplateMiner | None = None, *, step: float = STEP, idle: float = IDLE) -> None:
        self.miner = miner or TemplateMiner()
        self.step = step
        self.lag = step
        """A bucket is written once ``lag`` after its end (its last records may still be assembled)."""
        self.idle = idle
        self._open: dict[int, dict[_Key, int]] = {}
        """Counts of the buckets not yet written, by bucket number (time // step)."""
        self._next: int | None = None
        """The first bucket not yet written."""
        self.templates: TemplateStore | None = None
        self._active: dict[_Key, float] = {}
        self._keys: dict[_Key, tuple[tuple[str, tuple[tuple[str, str], ...]], object]] = {}
        self._failed = False
        self._first: dict[str, float] = {}
        self.sync_failures = 0

    def bind(self, store: Any) -> None:
        """Share clusters through ``store`` (a ``SQLiteStore``); load what it knows."""
        if not hasattr(store, "transaction"):
            return
        self.templates = TemplateStore(store)
        try:
            self.templates.load(self.miner)
        except Exception as exc:  # the first pull loads them (it starts from version 0)
            log.error("cannot load log templates from the store (retried every cycle): %s", exc)

    def annotate(self, records: Sequence[LogRecord], now: float,
                 labels: tuple[tuple[str, str], ...] = ()) -> list[Batch]:
        """Template fields into every record (in place), new templates to the store, and the
        ``log.template.count`` samples of the buckets now complete (``labels``: the source's own)."""
        if self.templates is not None:
            self._pull()  # what the other collectors of the store learnt, before mining
        template_of = self.miner.template_of
        new = self.miner.new
        cache, zeros = self.miner._cache, ZEROS  # the miner's cache, looked up here: most records hit it
        step = self.step
        if self._next is None:
            self._next = int(now // step)
        first: dict[str, float] = {}
        seen: list[tuple[float, str, str, str, str, str]] = []
        append = seen.append
        # The cache's keys are mined texts (at most MAX_CHARS, at most one newline): a longer
        # message, or one of three lines or more, never hits and goes to template_of.
        try:  # str.encode() without arguments is the fast path; a lone surrogate needs "surrogatepass"
            keys = [m.encode().translate(zeros) for m in map(_message, records)]
        except UnicodeEncodeError:
            keys = [m.encode("utf-8", "surrogatepass").translate(zeros) for m in map(_message, records)]
        hits = map(cache.get, keys)
        # As in the log source's own loop: the cyclic GC would traverse the whole batch (all alive
        # until stored, no cycles) while the tuples below are made; paused for this loop only.
        collecting = gc.isenabled()
        if collecting:
            gc.disable()
        try:
            for r, hit in zip(records, hits):
                if hit is not None:
                    t = hit[0]
                else:  # a new template's first record is (all but always) its earliest in the batch
                    t = template_of(r.message)
                    if t.id in new and r.ts < first.get(t.id, float("inf")):
                        first[t.id] = r.ts
                fields = r.fields
                fields[ID_FIELD] = t.id  # type: ignore[index]
                fields[TEXT_FIELD] = t.text  # type: ignore[index]
                append((r.ts // step, t.id, r.host, r.service, r.level, fields.get("labels.unit") or ""))
        finally:
            if collecting:
                gc.enable()
        lo, hi = self._next, int(now // step)
        buckets = self._open
        for (b, *key), n in Counter(seen).items():  # counted in C: most records share few keys
            b = int(b)
            if b >= hi or b < lo:  # by the record's time; a late one (bucket already written) or a future one: now
                b = hi
            counts = buckets.setdefault(b, {})
            k = tuple(key)
            counts[k] = counts.get(k, 0) + n  # type: ignore[index]
        self._sync(first, now)
        return self._series(now, labels)

    def counts(self, now: float, labels: tuple[tuple[str, str], ...] = ()) -> list[Batch]:
        """A cycle without records: the samples of the buckets now complete."""
        if self._next is None:
            self._next = int(now // self.step)
        return self._series(now, labels)

    def _pull(self) -> None:
        try:
            self.templates.pull(self.miner)  # type: ignore[union-attr]
        except Exception as exc:  # mined with what is known here; saved and merged at the next sync
            log.debug("reading log template clusters failed: %s", exc)

    def _sync(self, first: dict[str, float], now: float) -> None:
        if self.templates is None:
            self.miner.take_new()
            return
        pending = self._first  # earliest records of templates not saved yet (a sync may fail)
        for tid, ts in first.items():
            pending[tid] = min(ts, pending.get(tid, ts))
        try:
            self.templates.sync(self.miner, pending, now)
            pending.clear()
            if self._failed:
                log.warning("log templates are saved to the store again")
            self._failed = False
        except Exception as exc:  # the records still go on; the templates are saved at the next cycle
            self.sync_failures += 1
            if not self._failed:
                log.error("cannot save log templates to the store (retried every cycle): %s", exc)
            self._failed = True

    def _series(self, now: float, labels: tuple[tuple[str, str], ...]) -> list[Batch]:
        """One batch per complete bucket (stamped with its end), each template that had records
        within ``idle`` with its count, 0 included."""
        step, active, keys = self.step, self._active, self._keys
        assert self._next is not None
        done = int((now - self.lag) // step)  # buckets before this one are complete
        if done - self._next > self.idle / step:  # a long pause (a suspended process): active keys are idle by now
            for b in [b for b in self._open if b < done - self.idle / step]:
                del self._open[b]
            self._next = max(self._next, int(done - self.idle / step))
        out = []
        for b in range(self._next, done):
            counts = self._open.pop(b, {})
            end = (b + 1) * step
            for key in counts:
                active[key] = end
            batch = Batch(end)
            for key, seen in list(active.items()):
                if seen < end - self.idle:
                    del active[key]
                    keys.pop(key, None)
                    continue
                series = keys.get(key)
                if series is None or series[1] is not labels:
                    tid, host, service, level, unit = key
                    lbls = {"template": tid, "host": host, "service": service, "level": level, **dict(labels)}
                    if unit:
                        lbls["unit"] = unit
                    series = keys[key] = ((COUNT, tuple(sorted(lbls.items()))), labels)
                batch.add(series[0], float(counts.get(key, 0)))
            if len(batch):
                out.append(batch)
        self._next = max(self._next, done)
        return out
