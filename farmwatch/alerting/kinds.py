"""The rule kinds: what each kind's keys mean and how it finds the elements for which it holds.

Every kind is a pydantic model of its own keys (unknown keys are errors, like everywhere in the
config) with three methods: ``find(window, now, counts)`` returns the ``Active`` elements,
``lookback()`` how much history it reads, ``names()`` which series names (globs) it reads.
The common keys (name, for, severity, templates, run-state gating) live in ``rules.Rule``.
Evaluation works on whole selections with numpy: the window answers "the value of these 6,000
series" in one call, and only elements that satisfy the condition become Python objects.
"""

from __future__ import annotations

import fnmatch
import importlib
import math
import operator
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from farmwatch.config.base import Duration, Regex
from farmwatch.model import Labels
from farmwatch.matchers import Matcher, parse_matchers

if TYPE_CHECKING:
    import numpy as np

    from farmwatch.store.window import Window

OPS: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
}
Op = Literal["<", "<=", ">", ">=", "==", "!="]
Over = Literal["last", "avg", "min", "max", "delta", "rate", "increase"]
Aggregate = Literal["sum", "avg", "min", "max", "count"]
EXPLANATION = "anomaly.explanation"
"""The detector's state series that explains an entity's anomaly score (``detect.service``)."""
DEFAULT_FRESH = 300.0
"""Samples older than this are not a current value (Prometheus' lookback delta)."""


@dataclass(frozen=True)
class Active:
    """One element for which a rule's condition holds now.

    ``labels`` identify it (series labels, or the ``by`` labels after aggregation); the rule's
    own ``labels`` are added by ``Rule.alert_labels``. ``values`` are further named numbers for
    templates and messages (``baseline``, ``numerator``, ``median``…).
    """

    labels: Labels
    value: float
    values: Mapping[str, float] = field(default_factory=dict)
    starts: bool = True
    """False: the condition only *keeps* an existing alert active (``clear`` hysteresis), it does
    not start a new one."""


class Spec(BaseModel):
    """Base of a kind's keys; unknown keys are errors (almost always typos)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def find(self, window: Window, now: float, counts: Counter) -> list[Active]:
        raise NotImplementedError

    def lookback(self) -> float:
        return 0.0

    def names(self) -> set[str]:
        return set()


def _matchers(value: object) -> tuple[Matcher, ...]:
    """``match`` as written: a table ``{unit = "hlt01"}`` or a list ``["host=~hltwk0[1-4]"]``."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, dict)):
        raise ValueError('expected a table {label = "value"} or a list of matchers ["label=~regex", …]')
    return tuple(parse_matchers(value))


class Selector(Spec):
    """Which series, and which value of each.

    - ``series``: series name, or a glob (``hlt.*.sent_events:rate``);
    - ``match``: label matchers, a table ``{app = "distributor"}`` or a list
      ``["host=~hltwk0[1-4]", "unit!=hlt20"]`` (``=``/``!=`` exact, ``=~``/``!~`` regex, ``*=``/``!*=`` glob);
    - ``over``: ``last`` (default: the newest sample, ignored when older than ``fresh``), or a
      function of the samples within ``window``: ``avg``, ``min``, ``max``, ``delta`` (last −
      first), ``increase`` (of a counter, resets handled), ``rate`` (increase per second);
    - ``window``: duration the function looks back (required unless ``over = "last"``);
    - ``fresh``: how old a ``last`` sample may be (default ``5m``).
    """

    series: str
    match: tuple[Matcher, ...] = ()
    over: Over = "last"
    window: Optional[Duration] = Field(default=None, gt=0)
    fresh: Duration = Field(default=DEFAULT_FRESH, gt=0)

    _validate_match = field_validator("match", mode="before")(lambda cls, v: _matchers(v))

    @model_validator(mode="after")
    def _window_needed(self) -> Selector:
        if self.over != "last" and self.window is None:
            raise ValueError(f"window: required with over = {self.over!r} (a duration such as '5m')")
        return self

    def read(self, window: Window, now: float) -> tuple[np.ndarray, np.ndarray]:
        """(ids, values) of the selected series; NaN where there is no usable value."""
        if self.over == "last":
            ids = window.select_ids(self.series, self.match)
            return ids, window.latest(ids, now, self.fresh)[1]
        return window.reduce_selection(self.series, self.match, self.over, now - self.window, now)

    def lookback(self) -> float:
        return self.fresh if self.over == "last" else float(self.window)

    def names(self) -> set[str]:
        return {self.series}


def aggregate(window: Window, ids: np.ndarray, values: np.ndarray, by: tuple[str, ...],
              how: str) -> tuple[list[Labels], np.ndarray]:
    """Values aggregated per group of equal ``by`` labels; NaN values do not count."""
    found, index, out = aggregate_index(window, ids, values, by, how)
    return [found[i] for i in index.tolist()], out


def aggregate_index(window: Window, ids: np.ndarray, values: np.ndarray, by: tuple[str, ...],
                    how: str) -> tuple[list[Labels], np.ndarray, np.ndarray]:
    """Like ``aggregate`` but the groups as indices into ``found`` (cached by the window for
    the selection, so callers may cache what they derive from it by its identity)."""
    import numpy as np

    group, found = window.groups(ids, by)
    valid = ~np.isnan(values)
    g, v = group[valid], values[valid]
    n = len(found)
    count = np.bincount(g, minlength=n).astype(float)
    if how == "count":
        out = count
    elif how in ("sum", "avg"):
        out = np.bincount(g, weights=v, minlength=n)
        if how == "avg":
            with np.errstate(invalid="ignore", divide="ignore"):
                out = out / count
    else:
        out = np.full(n, math.inf if how == "min" else -math.inf)
        (np.minimum if how == "min" else np.maximum).at(out, g, v)
    keep = np.flatnonzero(count > 0)
    return found, keep, out[keep]


def _series_labels(window: Window, sid: int, glob: bool) -> Labels:
    """A series' labels as alert identity; with a glob selector the name tells same-labelled series apart."""
    name, lbls = window.keys[sid]
    if glob:
        return tuple(sorted((*lbls, ("series", name))))
    return lbls


def _is_glob(name: str) -> bool:
    return any(c in name for c in "*?[")


class Threshold(Selector):
    """``kind = "threshold"``: a series' value (or an aggregate of several) compared with a number.

    Keys of a selector (``series``, ``match``, ``over``, ``window``, ``fresh``) and:
    - ``by``: aggregate the values per equal values of these labels (``["unit"]``); the alert's
      labels are then those labels only;
    - ``aggregate``: ``sum`` (default), ``avg``, ``min``, ``max`` or ``count`` (of series with a value);
    - ``op``: ``<``, ``<=``, ``>``, ``>=``, ``==``, ``!=``; ``value``: the number compared with. A
      string ``value`` compares the newest *state* of state series (``hlt.monitor.output_state !=
      "ready"``), with ``over = "last"`` and no ``by``;
    - ``clear``: hysteresis (Zabbix's recovery expression): an alert starts when the value passes
      ``value`` but, once pending or firing, stays until it no longer passes ``clear`` (for ``>``
      a lower number, for ``<`` a higher one), so a value wavering around ``value`` does not make
      an alert start, cancel and start again.
    """

    by: Optional[tuple[str, ...]] = None
    aggregate: Aggregate = "sum"
    op: Op
    value: float | str
    clear: Optional[float] = None

    @model_validator(mode="after")
    def _state_compare(self) -> Threshold:
        if isinstance(self.value, str):
            if self.op not in ("==", "!="):
                raise ValueError("value: a string value (a state) can only be compared with == or !=")
            if self.over != "last" or self.by is not None:
                raise ValueError("value: a string value (a state) needs over = 'last' and no 'by'")
        if self.clear is not None:
            if isinstance(self.value, str) or self.op in ("==", "!="):
                raise ValueError("clear: only for a number compared with <, <=, > or >=")
            if OPS[self.op](self.clear, self.value):
                raise ValueError(f"clear: must be on the other side of value ({self.clear} {self.op} {self.value} "
                                 f"would start alerts before value does)")
        return self

    def find(self, window: Window, now: float, counts: Counter) -> list[Active]:
        import numpy as np

        compare = OPS[self.op]
        if isinstance(self.value, str):
            return self._states(window, now, compare)
        ids, values = self.read(window, now)
        keep = self.value if self.clear is None else self.clear
        if self.by is not None:
            groups, values = aggregate(window, ids, values, self.by, self.aggregate)
            labels = groups.__getitem__
        else:
            glob = _is_glob(self.series)
            labels = lambda i: _series_labels(window, int(ids[i]), glob)  # noqa: E731
        with np.errstate(invalid="ignore"):
            hit = np.flatnonzero(compare(values, keep) & ~np.isnan(values)).tolist()
            starts = compare(values, self.value)
        return [Active(labels(i), float(values[i]), starts=bool(starts[i])) for i in hit]

    def _states(self, window: Window, now: float, compare: Callable[[Any, Any], Any]) -> list[Active]:
        import numpy as np

        out = []
        glob = _is_glob(self.series)
        for sid in window.select_ids(self.series, self.match).tolist():
            found = window.state_at(sid, now)
            if found is None or now - window.last_seen(np.array([sid]), now)[0] > self.fresh:
                continue
            state, since = found
            if compare(state, self.value):
                out.append(Active(_series_labels(window, sid, glob), math.nan,
                                  {"state": state, "state_since": since}))  # type: ignore[dict-item]
        return out


class Anomaly(Threshold):
    """``kind = "anomaly"``: a threshold on an anomaly-score series, with defaults for it.

    ``series`` defaults to ``anomaly.score``, ``op`` to ``>``, ``value`` to 0.9; the alert
    carries the score series' labels (one alert per family and entity). The detector's newest
    explanation of the entity (the ``anomaly.explanation`` state with the same labels) is the
    alert's annotation: ``{explanation}`` (top contributions) and ``{metric}`` (the one that
    contributes most) in templates; it may change while the alert lives without making it a new
    one. All threshold keys apply.
    """

    series: str = "anomaly.score"
    op: Op = ">"
    value: float | str = 0.9

    def find(self, window: Window, now: float, counts: Counter) -> list[Active]:
        out = []
        for a in super().find(window, now, counts):
            found = window.last((EXPLANATION, a.labels))
            text = found[1] if found is not None and isinstance(found[1], str) else ""
            values = {**a.values, "explanation": text or "-", "metric": text.split(" ", 1)[0] or "-"}
            out.append(Active(a.labels, a.value, values, a.starts))  # type: ignore[arg-type]
        return out

    def names(self) -> set[str]:
        return {self.series, EXPLANATION}


class Absent(Spec):
    """``kind = "absent"``: series that stopped arriving, or that should exist and do not.

    - ``series`` (name or glob) and ``match``: the series watched;
    - ``after``: a series with no sample for this long is stale (default ``1m``); value = its age
      in seconds, ``{last_seen}`` the epoch time of its newest sample;
    - ``expect``: label sets that must exist, e.g. ``[{unit = "hlt01", app = "distributor"}]``:
      when no selected series has those labels at all, the rule holds with those labels
      (value ``inf``); one that exists but is stale is reported as stale.
    """

    series: str
    match: tuple[Matcher, ...] = ()
    after: Duration = Field(default=60.0, gt=0)
    expect: tuple[dict[str, str], ...] = ()

    _validate_match = field_validator("match", mode="before")(lambda cls, v: _matchers(v))

    def find(self, window: Window, now: float, counts: Counter) -> list[Active]:
        import numpy as np

        ids = window.select_ids(self.series, self.match)
        seen = window.last_seen(ids, now)
        age = now - seen
        glob = _is_glob(self.series)
        out = [Active(_series_labels(window, int(ids[i]), glob), float(age[i]), {"last_seen": float(seen[i])})
               for i in np.flatnonzero((age > self.after) & np.isfinite(seen)).tolist()]
        present: dict[tuple[str, ...], set[tuple[str | None, ...]]] = {}
        for expected in self.expect:
            keys = tuple(expected)
            if keys not in present:
                present[keys] = {tuple(window.label_dicts[sid].get(k) for k in keys)
                                 for sid, t in zip(ids.tolist(), seen.tolist()) if t > -math.inf}
            if tuple(expected.values()) not in present[keys]:
                out.append(Active(tuple(sorted(expected.items())), math.inf, {"last_seen": -math.inf}))
        return out

    def lookback(self) -> float:
        return self.after

    def names(self) -> set[str]:
        return {self.series}


class Down(Spec):
    """``kind = "down"``: a target whose ``up`` is 0, or whose ``up`` stopped arriving.

    - ``match``: matchers on the ``up`` series' labels (``{app = "finalcollector"}``);
    - ``after``: ``up`` older than this counts as down too (default ``1m``).
    The alert's labels are the target's labels; value = the last ``up`` (NaN when stale),
    ``{age}`` = seconds since the last ``up``.
    """

    match: tuple[Matcher, ...] = ()
    after: Duration = Field(default=60.0, gt=0)

    _validate_match = field_validator("match", mode="before")(lambda cls, v: _matchers(v))

    def find(self, window: Window, now: float, counts: Counter) -> list[Active]:
        import numpy as np

        ids = window.select_ids("up", self.match)
        seen = window.last_seen(ids, now)
        _, up = window.latest(ids, now, self.after)
        age = now - seen
        hit = np.flatnonzero(np.isfinite(seen) & ((up == 0) | (age > self.after))).tolist()
        return [Active(window.keys[int(ids[i])][1], float(up[i]), {"age": float(age[i])}) for i in hit]

    def lookback(self) -> float:
        return self.after

    def names(self) -> set[str]:
        return {"up"}


class Change(Spec):
    """``kind = "change"``: the recent average against the average just before it.

    - ``series``, ``match``: what is watched; ``by``/``aggregate``: as for threshold (each average
      is aggregated per group);
    - ``window``: the recent part (value = average over it, e.g. ``1m``); ``baseline``: the part
      before it that is the reference (e.g. ``10m``);
    - ``drop_below``: holds when value / baseline is below this ratio (``0.5``: halved);
      ``rise_above``: when above (``2``: doubled); at least one of them;
    - ``min_baseline``: a baseline at or below this (default 0) is too small to compare: the
      element is not evaluated (counted as ``small_baseline``).
    Named values: ``{baseline}``, ``{ratio}``.
    """

    series: str
    match: tuple[Matcher, ...] = ()
    window: Duration = Field(gt=0)
    baseline: Duration = Field(gt=0)
    by: Optional[tuple[str, ...]] = None
    aggregate: Aggregate = "sum"
    drop_below: Optional[float] = Field(default=None, gt=0)
    rise_above: Optional[float] = Field(default=None, gt=0)
    min_baseline: float = 0.0

    _validate_match = field_validator("match", mode="before")(lambda cls, v: _matchers(v))

    @model_validator(mode="after")
    def _a_direction(self) -> Change:
        if self.drop_below is None and self.rise_above is None:
            raise ValueError("drop_below: give drop_below (e.g. 0.5) and/or rise_above (e.g. 2)")
        return self

    def find(self, window: Window, now: float, counts: Counter) -> list[Active]:
        import numpy as np

        start = now - self.window
        ids, current = window.reduce_selection(self.series, self.match, "avg", start, now)
        # The baseline ends just before the recent window starts: the two never share a sample.
        _, base = window.reduce_selection(self.series, self.match, "avg", start - self.baseline,
                                          np.nextafter(start, -math.inf))
        if self.by is not None:
            groups, current = aggregate(window, ids, current, self.by, self.aggregate)
            base_groups, base_values = aggregate(window, ids, base, self.by, self.aggregate)
            lookup = dict(zip(base_groups, base_values.tolist()))
            base = np.array([lookup.get(g, math.nan) for g in groups])
            labels_of = groups.__getitem__
        else:
            glob = _is_glob(self.series)
            labels_of = lambda i: _series_labels(window, int(ids[i]), glob)  # noqa: E731
        usable = ~np.isnan(current) & ~np.isnan(base)
        small = usable & ~(base > self.min_baseline)
        counts["small_baseline"] += int(small.sum())
        usable &= ~small
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = current / base
        hit = np.zeros(len(ratio), dtype=bool)
        if self.drop_below is not None:
            hit |= ratio < self.drop_below
        if self.rise_above is not None:
            hit |= ratio > self.rise_above
        return [Active(labels_of(i), float(current[i]), {"baseline": float(base[i]), "ratio": float(ratio[i])})
                for i in np.flatnonzero(hit & usable).tolist()]

    def lookback(self) -> float:
        return self.window + self.baseline

    def names(self) -> set[str]:
        return {self.series}


class Ratio(Spec):
    """``kind = "ratio"``: numerator / denominator per group, compared with a number.

    - ``numerator``, ``denominator``: selectors (tables with ``series``, ``match``, ``over``,
      ``window``, ``fresh``, as for threshold);
    - ``by``: both sides are aggregated per these labels (default: everything into one group);
      ``aggregate``: ``sum`` (default), ``avg``, ``min``, ``max``, ``count``;
    - ``op``, ``value``: the condition on the ratio.
    A group missing on either side, or with denominator 0, is not evaluated (the latter counted
    as ``zero_denominator``). Named values: ``{numerator}``, ``{denominator}``.
    """

    numerator: Selector
    denominator: Selector
    by: tuple[str, ...] = ()
    aggregate: Aggregate = "sum"
    op: Op
    value: float

    def find(self, window: Window, now: float, counts: Counter) -> list[Active]:
        num_groups, num = aggregate(window, *self.numerator.read(window, now), self.by, self.aggregate)
        den_groups, den = aggregate(window, *self.denominator.read(window, now), self.by, self.aggregate)
        den_of = dict(zip(den_groups, den.tolist()))
        compare = OPS[self.op]
        out = []
        for labels, n in zip(num_groups, num.tolist()):
            d = den_of.get(labels)
            if d is None:
                continue
            if d == 0:
                counts["zero_denominator"] += 1
                continue
            if compare(n / d, self.value):
                out.append(Active(labels, n / d, {"numerator": n, "denominator": d}))
        return out

    def lookback(self) -> float:
        return max(self.numerator.lookback(), self.denominator.lookback())

    def names(self) -> set[str]:
        return self.numerator.names() | self.denominator.names()


class Peers(Selector):
    """``kind = "peers"``: an entity far below its peers at the same moment.

    Keys of a selector (``series``, ``match``, ``over``, ``window``, ``fresh``) and:
    - ``entity``: the label naming what is compared (default ``host``); the values of its series
      are combined with ``aggregate`` (default ``sum``: all worker processes of a node);
    - ``peers_by``: entities with equal values of these labels are peers (default ``["unit"]``);
    - ``below``: holds when value < below × median of the peer group (default 0.5; 0: off);
    - ``z``: and/or when the robust z-score (value − median) / (1.4826 × MAD) is below −z;
    - ``min_peers``: groups with fewer entities (itself included) are not evaluated (default 3).
    Labels: ``peers_by`` labels plus the entity label. Named values: ``{median}``, ``{ratio}``,
    ``{z}``, ``{peers}``.
    """

    entity: str = "host"
    peers_by: tuple[str, ...] = ("unit",)
    aggregate: Aggregate = "sum"
    below: float = Field(default=0.5, ge=0)
    z: Optional[float] = Field(default=None, gt=0)
    min_peers: int = Field(default=3, ge=2)

    _peer_cache: tuple[object, np.ndarray, np.ndarray] | None = PrivateAttr(default=None)

    def find(self, window: Window, now: float, counts: Counter) -> list[Active]:
        import numpy as np

        ids, values = self.read(window, now)
        found, index, value = aggregate_index(window, ids, values, (*self.peers_by, self.entity), self.aggregate)
        peer_of, has_entity = self._peer_groups(found)
        keep = has_entity[index]
        index, value, group = index[keep], value[keep], peer_of[index[keep]]
        if not len(value):
            return []
        # Peer groups as rows of a NaN-padded matrix: every median in one numpy call.
        order = np.argsort(group, kind="stable")
        index, value, group = index[order], value[order], group[order]
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        sizes = np.diff(np.r_[starts, len(group)])
        row = np.repeat(np.arange(len(starts)), sizes)
        col = np.arange(len(group)) - starts[row]
        matrix = np.full((len(starts), sizes.max()), math.nan)
        matrix[row, col] = value
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            median = np.nanmedian(matrix, axis=1)
            mad = np.nanmedian(np.abs(matrix - median[:, None]), axis=1) * 1.4826
        counts["too_few_peers"] += int((sizes < self.min_peers).sum())
        med, spread, size = median[row], mad[row], sizes[row]
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.where(spread > 0, (value - med) / spread, math.nan)
            hit = np.zeros(len(value), dtype=bool)
            if self.below:
                hit |= (med > 0) & (value < self.below * med)
            if self.z is not None:
                hit |= z < -self.z
        hit &= size >= self.min_peers
        return [Active(found[index[i]], float(value[i]),
                       {"median": float(med[i]), "ratio": float(value[i] / med[i]) if med[i] else math.nan,
                        "z": float(z[i]), "peers": float(size[i])})
                for i in np.flatnonzero(hit).tolist()]

    def _peer_groups(self, found: list[Labels]) -> tuple[np.ndarray, np.ndarray]:
        """For each (peers_by…, entity) group: its peer group's number, and whether it has the
        entity label at all; derived once per selection (``found`` is the window's cached list)."""
        import numpy as np

        cached = self._peer_cache
        if cached is not None and cached[0] is found:
            return cached[1], cached[2]
        numbers: dict[Labels, int] = {}
        peer_of = np.empty(len(found), dtype=np.intp)
        has_entity = np.zeros(len(found), dtype=bool)
        for i, labels in enumerate(found):
            peers = tuple(item for item in labels if item[0] != self.entity)
            has_entity[i] = len(peers) < len(labels)
            peer_of[i] = numbers.setdefault(peers, len(numbers))
        self._peer_cache = (found, peer_of, has_entity)
        return peer_of, has_entity


_RECORD_FIELDS = frozenset({"host", "service", "level"})


def record_fields(value: tuple[str, ...]) -> tuple[str, ...]:
    """``by`` of the kinds on log records: ``host``, ``service``, ``level`` or ``labels.<name>``."""
    for f in value:
        if f not in _RECORD_FIELDS and not re.fullmatch(r"labels\.[A-Za-z_][\w.-]*", f):
            raise ValueError(f"by: {f!r} is not host, service, level or labels.<name>")
    return value


class LogCount(Spec):
    """``kind = "log_count"``: log records within ``window`` matching a pattern, counted.

    - ``pattern``: regular expression searched in the message (``(?i)`` for case-insensitive);
    - ``level``: level or list of levels (``["error", "critical"]``, case-insensitive);
    - ``host``, ``service``: globs on the record's host and service;
    - ``by``: count per these of ``host``, ``service``, ``level`` and ``labels.<name>`` (a label the
      source gave the record, e.g. ``labels.unit`` from the log file's path; the alert label is
      ``<name>``) (default: one count);
    - ``window``: duration (required); ``op``/``value``: condition on the count (default ``> 0``).
    Labels: the ``by`` fields. Named value: ``{count}``.
    """

    pattern: Regex = ""
    level: tuple[str, ...] = ()
    host: Optional[str] = None
    service: Optional[str] = None
    by: tuple[str, ...] = ()
    window: Duration = Field(gt=0)
    op: Op = ">"
    value: float = 0
    _regex: re.Pattern[str] = PrivateAttr()
    _host: Optional[re.Pattern[str]] = PrivateAttr(default=None)
    _service: Optional[re.Pattern[str]] = PrivateAttr(default=None)

    _levels = field_validator("level", mode="before")(lambda cls, v: [v] if isinstance(v, str) else v)
    _by = field_validator("by")(lambda cls, v: record_fields(v))

    def model_post_init(self, context: Any) -> None:
        self._regex = re.compile(self.pattern)
        self._host = re.compile(fnmatch.translate(self.host)) if self.host else None
        self._service = re.compile(fnmatch.translate(self.service)) if self.service else None

    def find(self, window: Window, now: float, counts: Counter) -> list[Active]:
        # Locals: this loop runs once per record in the window, and pydantic attribute
        # access (private attributes especially) costs a Python call each time.
        levels = {lvl.lower() for lvl in self.level}
        host, service, by = self._host, self._service, self.by
        search = self._regex.search if self.pattern else None
        found: Counter[tuple[str, ...]] = Counter()
        for record in window.logs(now - self.window, now):
            if levels and record.level.lower() not in levels:
                continue
            if host is not None and not host.fullmatch(record.host):
                continue
            if service is not None and not service.fullmatch(record.service):
                continue
            if search is not None and not search(record.message):
                continue
            found[tuple(getattr(record, f) if f in _RECORD_FIELDS else str(record.fields.get(f, "")) for f in by)] += 1
        if not self.by and not found:
            found[()] = 0
        compare = OPS[self.op]
        names = [f.removeprefix("labels.") for f in self.by]
        return [Active(tuple(sorted((k, v) for k, v in zip(names, key) if v)), float(n), {"count": float(n)})
                for key, n in found.items() if compare(n, self.value)]

    def lookback(self) -> float:
        return self.window


class Python(Spec):
    """``kind = "python"``: expert logic in Python, the escape hatch.

    - ``function``: ``"package.module:callable"``, called as ``f(window, now, rule)`` and
      returning ``Active`` elements (import errors are config errors, found at load time);
    - ``params``: a table handed to the function as ``rule.params``;
    - ``reads``: series names/globs the function reads (so the window keeps them);
    - ``lookback``: how much history it needs (duration, default ``5m``).
    """

    function: str
    params: dict[str, Any] = {}
    reads: tuple[str, ...] = ()
    history: Duration = Field(default=DEFAULT_FRESH, alias="lookback", ge=0)
    _callable: Callable[..., Iterable[Active]] = PrivateAttr()

    @field_validator("function")
    @classmethod
    def _importable(cls, value: str) -> str:
        _import(value)
        return value

    def model_post_init(self, context: Any) -> None:
        self._callable = _import(self.function)

    def call(self, window: Window, now: float, rule: object) -> list[Active]:
        out = list(self._callable(window, now, rule))
        for item in out:
            if not isinstance(item, Active):
                raise TypeError(f"{self.function} returned {type(item).__name__}, not Active")
        return out

    def lookback(self) -> float:
        return self.history

    def names(self) -> set[str]:
        return set(self.reads)


def _import(spec: str) -> Callable[..., Iterable[Active]]:
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ValueError(f"expected 'package.module:callable', got {spec!r}")
    try:
        target: Any = importlib.import_module(module)
        for part in attr.split("."):
            target = getattr(target, part)
    except Exception as exc:  # any failure of the user's module is a config error, not a crash
        raise ValueError(f"cannot import {spec!r}: {type(exc).__name__}: {exc}") from None
    if not callable(target):
        raise ValueError(f"{spec!r} is not callable")
    return target


KINDS: dict[str, type[Spec]] = {
    "threshold": Threshold, "absent": Absent, "down": Down, "change": Change, "ratio": Ratio,
    "peers": Peers, "log_count": LogCount, "anomaly": Anomaly, "python": Python,
}
"""The kinds defined here; ``farmwatch.alerting.rules.KINDS`` adds those on log message templates."""

__all__ = ["DEFAULT_FRESH", "KINDS", "OPS", "Absent", "Active", "Aggregate", "Anomaly", "Change", "Down",
           "LogCount", "Op", "Over", "Peers", "Python", "Ratio", "Selector", "Spec", "Threshold", "aggregate",
           "aggregate_index", "record_fields"]
