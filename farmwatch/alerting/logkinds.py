"""Rule kinds on log message templates (``farmwatch.logtemplates``): a new kind of error, and a
kind of message whose rate the detector finds anomalous.

- ``log_new_template``: records of a template that the store had not seen for ``unseen`` (or
  ever) appear. What the store knows of a template's history (first seen, last return after an
  idle spell) is the ``log_templates`` table, kept by the store itself as records are written; a
  template that only generalises known ones inherits their history. Without a store (a bare
  window) the window's own records are the history.
- ``log_template_rate``: the ``log.template.count`` series (records per 10 s by their time, per
  template and host) summed into ``step`` bins, and the records within ``window`` at every bin
  scored by the detector (``farmwatch.detect.stream_scores``: calibrated, about uniform on normal
  data); a series with a bin of the newest ``window`` scored above ``score`` and that rose well
  above its usual rate holds.
"""

from __future__ import annotations

import fnmatch
import math
import re
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from pydantic import Field, PrivateAttr, field_validator, model_validator

from farmwatch.alerting.kinds import _RECORD_FIELDS, Active, Spec, _matchers, record_fields
from farmwatch.config.base import Duration
from farmwatch.logtemplates import COUNT, ID_FIELD, TEXT_FIELD, TemplateInfo, TemplateStore
from farmwatch.matchers import Matcher

if TYPE_CHECKING:
    from farmwatch.store.window import Window

__all__ = ["LogNewTemplate", "LogTemplateRate", "bind_store"]

MIN_PAST = 30
"""Bins of past a series needs before its rate is judged (``farmwatch.detect.api.WARMUP_MIN`` points)."""


class LogNewTemplate(Spec):
    """``kind = "log_new_template"``: a kind of message not seen for ``unseen`` appears.

    - ``level``: levels of the records watched (default ``["error", "critical", "fatal"]``);
    - ``host``, ``service``: globs on the record's host and service;
    - ``unseen``: the template's records are new when the store had none for this long (default
      ``7d``; at least ``1h``);
    - ``window``: how far back records are looked at: the alert holds this long after the first
      record (default ``10m``);
    - ``learn``: templates first seen within this of the store's first template are being learnt,
      not new (default ``5m``): a new store does not report every kind of error it meets;
    - ``by``: ``host``, ``service``, ``level``, ``labels.<name>`` (alert label ``<name>``), default
      ``["host", "service", "labels.unit"]``.
    Labels: the ``by`` fields and ``template`` (the template's id). Named values: ``{count}``,
    ``{template}`` (the text), ``{example}`` (the newest such line, first line only).
    """

    level: tuple[str, ...] = ("error", "critical", "fatal")
    host: Optional[str] = None
    service: Optional[str] = None
    unseen: Duration = Field(default=7 * 86400.0, ge=3600.0)
    window: Duration = Field(default=600.0, gt=0)
    learn: Duration = Field(default=300.0, ge=0)
    by: tuple[str, ...] = ("host", "service", "labels.unit")
    reads_logs: ClassVar[bool] = True
    _templates: Any = PrivateAttr(default=None)
    _start: tuple[float, float | None] = PrivateAttr(default=(-math.inf, None))

    _levels = field_validator("level", mode="before")(lambda cls, v: [v] if isinstance(v, str) else v)
    _by = field_validator("by")(lambda cls, v: record_fields(v))

    def bind_store(self, store: Any) -> None:
        """Where template histories are read (the alerting service's store)."""
        if hasattr(store, "transaction"):
            self._templates = TemplateStore(store)

    def find(self, window: Window, now: float, counts: Counter) -> list[Active]:
        levels = {lvl.lower() for lvl in self.level}
        host = re.compile(fnmatch.translate(self.host)) if self.host else None
        service = re.compile(fnmatch.translate(self.service)) if self.service else None
        found: dict[tuple[str, tuple[str, ...]], list[Any]] = {}
        firsts: dict[str, float] = {}
        for record in window.logs(now - self.window, now):
            if record.level.lower() not in levels:
                continue
            if (host is not None and not host.fullmatch(record.host)) or \
                    (service is not None and not service.fullmatch(record.service)):
                continue
            tid = record.fields.get(ID_FIELD)
            if not tid:
                counts["no_template"] += 1
                continue
            key = (str(tid), tuple(getattr(record, f) if f in _RECORD_FIELDS else str(record.fields.get(f, ""))
                                   for f in self.by))
            entry = found.get(key)
            if entry is None:  # records come newest first: this one is the example
                found[key] = entry = [0, record.fields.get(TEXT_FIELD, ""), record.message.split("\n", 1)[0]]
            entry[0] += 1
            firsts[key[0]] = min(firsts.get(key[0], math.inf), record.ts)
        if not found:
            return []
        new = self._new(window, now, firsts)
        names = [f.removeprefix("labels.") for f in self.by]
        out = []
        for (tid, values), (n, text, example) in found.items():
            if tid not in new:
                continue
            lbls = tuple(sorted([(k, v) for k, v in zip(names, values) if v] + [("template", tid)]))
            out.append(Active(lbls, float(n), {"count": float(n), "template": text, "example": example}))  # type: ignore[dict-item]
        return out

    def _new(self, window: Window, now: float, firsts: dict[str, float]) -> set[str]:
        """The templates among ``firsts`` that are new now."""
        since = now - self.window
        if self._templates is None:  # no store: the window's records are all the history there is
            oldest = min((r.ts for r in window.logs(-math.inf, now)), default=now)
            return {t for t, first in firsts.items() if first - oldest >= self.learn and first >= since}
        infos: dict[str, TemplateInfo] = self._templates.info(firsts)
        start = self._history_start(now)
        out = set()
        for tid, first in firsts.items():
            info = infos.get(tid)
            if info is None:  # not registered yet (a collector's sync failed): its records are all there is
                brand_new, back = first >= since, False
                first_seen = first
            else:
                first_seen = info.first_seen
                brand_new = first_seen >= since
                back = info.resumed >= since and info.idle >= self.unseen
            learnt = start is not None and first_seen - start < self.learn
            if (brand_new and not learnt) or back:
                out.add(tid)
        return out

    def _history_start(self, now: float) -> float | None:
        checked, start = self._start
        if start is None or time.monotonic() - checked > 60:
            start = self._templates.history_start()
            self._start = (time.monotonic(), start)
        return start

    def lookback(self) -> float:
        return self.window


class LogTemplateRate(Spec):
    """``kind = "log_template_rate"``: a template's rate that the anomaly detector finds unusual.

    - ``match``: matchers on the labels of ``log.template.count`` (``template``, ``host``,
      ``service``, ``level``, ``unit``), e.g. ``["level=~error|critical|fatal"]``;
    - ``history``: how much of each series the detector learns from (default ``1h``); a series
      with less than 30 ``step`` of past is not judged (no usual rate yet);
    - ``step``: the bins the counts are summed into (default ``30s``);
    - ``window``: the recent part checked (default ``2m``);
    - ``score``: the detector's calibrated score the newest ``window`` must reach (default 0.999:
      about one normal step in a thousand; the detector scores the records within ``window`` at
      every ``step``, a rolling sum, since a few records per bin are too discrete for it);
    - ``min_count``: records within ``window`` (default 20);
    - ``rise``: and at least this many times the series' median count per ``window`` (default 3).
    Labels: those of the series. Named values: ``{count}``, ``{usual}`` (the median per window),
    ``{score}``.
    """

    match: tuple[Matcher, ...] = ()
    history: Duration = Field(default=3600.0, gt=0)
    step: Duration = Field(default=30.0, gt=0)
    window: Duration = Field(default=120.0, gt=0)
    score: float = Field(default=0.999, gt=0, lt=1)
    min_count: float = Field(default=20.0, ge=0)
    rise: float = Field(default=3.0, ge=1)
    _cache: dict[tuple[int, float], float] = PrivateAttr(default_factory=dict)

    _validate_match = field_validator("match", mode="before")(lambda cls, v: _matchers(v))

    @model_validator(mode="after")
    def _sizes(self) -> LogTemplateRate:
        if self.window < self.step or self.history < 10 * self.window:
            raise ValueError("window: needs step <= window and history >= 10 x window (the detector needs a past)")
        return self

    def find(self, window: Window, now: float, counts: Counter) -> list[Active]:
        import numpy as np

        from farmwatch.detect import stream_scores

        ids = window.select_ids(COUNT, self.match)
        start = now - self.history
        n_bins = int(math.ceil(self.history / self.step))
        recent_bins = max(1, int(round(self.window / self.step)))
        out = []
        cache: dict[tuple[int, float], float] = {}
        for sid in ids.tolist():
            ts, values = window.points(window.keys[sid], start, now)
            if not len(ts):
                continue
            recent = float(values[ts > now - self.window].sum())
            if recent < self.min_count:
                continue
            if ts[0] > now - MIN_PAST * self.step:  # too young to have a usual rate (the detector's least warmup)
                counts["short_history"] += 1
                continue
            bins = np.minimum(((ts - start) // self.step).astype(int), n_bins - 1)
            # from the series' first sample on: before it the collector had not met the template
            per_bin = np.bincount(bins, weights=values, minlength=n_bins)[bins[0]:]
            past = per_bin[:-recent_bins]
            usual = float(np.median(past)) * recent_bins
            if recent < self.rise * max(usual, 1.0):
                counts["usual_rate"] += 1
                continue
            key = (sid, float(ts[-1]))
            score = self._cache.get(key)
            if score is None:
                # The detector sees the records within `window` at every step (a rolling sum): a
                # count series of a few records per bin is too discrete for its robust spreads.
                total = np.cumsum(np.r_[0.0, per_bin])
                rolling = total[1:] - total[np.maximum(0, np.arange(1, len(total)) - recent_bins)]
                grid = start + self.step * np.arange(bins[0], n_bins)
                # a bin of the newest window: the jump itself scores high, the new level after it
                # less and less (the detector follows a lasting shift), and the alert is about the jump
                score = float(np.max(stream_scores(grid, rolling)[-recent_bins:]))
                counts["scored"] += 1
            cache[key] = score
            if score >= self.score:
                out.append(Active(window.keys[sid][1], recent, {"count": recent, "usual": usual, "score": score}))
        self._cache = cache
        return out

    def lookback(self) -> float:
        return self.history

    def names(self) -> set[str]:
        return {COUNT}


def bind_store(rules: list[Any], store: Any) -> None:
    """Give the rules whose kind reads more than the window (template histories) the store."""
    for rule in rules:
        bind = getattr(getattr(rule, "spec", None), "bind_store", None)
        if bind is not None and store is not None:
            bind(store)
