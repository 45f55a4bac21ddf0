"""Anomaly scoring inside ``farmwatch run`` / ``watch``: every alert evaluation step, each trained
family's newest windows become ``anomaly.score`` samples that ``anomaly`` rules read.

A ``Scorer`` is built from ``settings.detect``. It loads every family's model once (a missing or
incompatible model is one log line, and that family is skipped: the others are scored). Before the
rules of each evaluation (``AlertEngine.before_rules``) it reads, from the ``Window``
that already holds the recent samples, the family's series for the last ``window`` grid points
per entity, puts them on the family's ``freq`` grid exactly as training did (the mean of an
entity's series per timestamp, the mean per grid bin, forward-filled, the training median before
an entity's first value), computes the features of all entities at once and scores them with the
model and their peers (``FamilyModel.score_entities``, what ``score_family`` calls).

Written per entity and step, into the window (the rules of this step see them) and the store:

* ``anomaly.score{family, entity, <entity labels>}``: the calibrated score in [0, 1);
  ``entity`` is the entity's label values joined by ``/`` (``hlt01/hltwk05``), so that one rule
  template names the entity of any family. One series per entity, whatever explains it: an
  alert is its rule plus its labels, and an explanation that changes while the anomaly lasts
  must not make it a new alert.
* ``anomaly.surprise{...}``: the same on a log scale, ``-log10(1 - score)`` up to 6 (1 in a
  million windows) and growing only logarithmically beyond, never infinite: for plots and ranking.
* ``anomaly.explanation{...}`` (a state) while the score is at least ``EXPLAIN_ABOVE``: the top
  contributions with values, what is normal and what the peers show. The ``anomaly`` rule kind
  hands it to its alert as an annotation (``{explanation}``, ``{metric}``), which may change
  while the alert lives.

Entities whose newest point is older than ``STALE_BINS`` grid points are not scored (a silent
node is the ``absent``/``down`` rules' business, not an anomaly of its rate), nor those with
less than a window of history; both are counted in ``stats()``.

Models learn RUNNING only (training leaves other run states out), so while the window knows the
run state (``daq.run_state`` of the run-control node) and it is not RUNNING, and until two whole
family windows of the new run have passed (the first still holds the start-up: pipelines filling,
rates ramping up), a family is not scored (``<family>_paused_steps``): a run
stop would otherwise look like every node failing at once. Its score series get NaN when the pause
begins, so the last scores neither keep an alert firing nor let a pending one fire. Without a known run state (a site
without run control, or its IOC down) scoring goes on.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from farmwatch.detect import features as feats
from farmwatch.detect.family import _metric_medians
from farmwatch.detect.models import Explanation, FamilyModel
from farmwatch.detect.persist import IncompatibleModel, load, paths
from farmwatch.detect.settings import DetectSettings, FamilySettings
from farmwatch.detect.training import RUN_STATE
from farmwatch.model import Batch, Labels
from farmwatch.store.protocol import SampleStore
from farmwatch.store.window import Window

log = logging.getLogger("farmwatch.detect")

SCORE = "anomaly.score"
SURPRISE = "anomaly.surprise"
EXPLANATION = "anomaly.explanation"
RUNNING = "RUNNING"
EXPLAIN_ABOVE = 0.9
"""Score from which an entity's explanation is written (the ``anomaly`` rule kind's default threshold)."""
STALE_BINS = 3
RESUME_WINDOWS = 2
"""After a run start, families are scored again once this many family windows have passed."""


@dataclass
class _Selection:
    """Where a family's series sit in the window: per series id, its entity and metric."""

    arrays: tuple[np.ndarray, ...] = ()
    sids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    pair: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    entities: list[tuple[str, ...]] = field(default_factory=list)


@dataclass
class Family:
    """One loaded family: its settings, model and what the scorer remembers between steps."""

    name: str
    settings: FamilySettings
    model: FamilyModel
    freq: float
    fill: np.ndarray
    loaded_at: float
    selection: _Selection = field(default_factory=_Selection)
    unknown_metrics: set[str] = field(default_factory=set)
    last_scored: int = 0
    last_bin: int | None = None
    last_anomalous: int = 0
    paused_steps: int = 0
    live: list = field(default_factory=list)
    """The score series written at the last scored step (they get NaN when scoring pauses)."""
    skipped_stale: int = 0
    skipped_short: int = 0


class Scorer:
    """Scores the configured families every alert evaluation step (see the module doc)."""

    def __init__(self, detect: DetectSettings, store: SampleStore | None = None, *, window: Window | None = None) -> None:
        self.detect = detect
        self.store = store
        self.window = window
        self.families: list[Family] = []
        self.skipped: dict[str, str] = {}
        self.steps = 0
        self.failed_writes = 0
        self.last_seconds = 0.0
        for name, fam in detect.families.items():
            family = self._load(name, fam)
            if family is not None:
                self.families.append(family)

    # -- set-up -----------------------------------------------------------------------------------
    def _load(self, name: str, fam: FamilySettings) -> Family | None:
        path = Path(self.detect.models) / name
        model_file, sidecar = paths(path)
        try:
            if not sidecar.exists() and not model_file.exists():
                raise IncompatibleModel(f"{model_file}: no trained model (train it with "
                                        f"'farmwatch train -c CONFIG --family {name}')")
            model = load(path, features=fam.features, window=fam.window, step=fam.step)
        except IncompatibleModel as exc:
            self._skip(name, str(exc))
            return None
        except Exception as exc:  # a damaged joblib file: one line, the other families still run
            self._skip(name, f"{model_file}: cannot load the model ({type(exc).__name__}: {exc})")
            return None
        freq = pd.Timedelta(pd.tseries.frequencies.to_offset(fam.freq)).total_seconds()
        fill = np.asarray(_metric_medians(model), dtype=np.float64)
        log.info("anomaly family %s: model %s (%s, %d metrics, window %d × %s) loaded", name, model_file,
                 model.kind, len(model.metrics), model.window, fam.freq)
        return Family(name, fam, model, freq, fill, loaded_at=_mtime(model_file))

    def _skip(self, name: str, why: str) -> None:
        self.skipped[name] = why
        log.error("anomaly family %s is not scored: %s", name, why)

    def names(self) -> set[str]:
        """Series names (globs) the window must keep for the loaded families."""
        return {s for f in self.families for s in f.settings.series} | ({RUN_STATE, f"{RUN_STATE}_since"}
                                                                         if self.families else set())

    def horizon(self) -> float:
        """Seconds of history the window must hold: the longest family window plus two grid points."""
        return max([f.freq * (f.model.window + 2) for f in self.families] + [0.0])

    def wants(self, name: str) -> bool:
        from fnmatch import fnmatchcase

        return any(fnmatchcase(name, g) for f in self.families for g in f.settings.series)

    def __bool__(self) -> bool:
        return bool(self.families)

    # -- every step -------------------------------------------------------------------------------
    def step(self, now: float) -> list[Batch]:
        """Score every family at ``now``; the samples go into the window and the store (returned too)."""
        if not self.families or self.window is None:
            return []
        started = time.perf_counter()
        out: list[Batch] = []
        with self.window.lock:
            state, since = self.window.run_state(now)
        for family in self.families:
            if state is not None and (state != RUNNING or (
                    since is not None and now - since < family.freq * (RESUME_WINDOWS * family.model.window + 1))):
                family.paused_steps += 1
                family.last_scored = 0
                family.last_bin = None  # scoring resumes with the first step after the pause
                if family.live:  # the last scores must not keep (or make) alerts while nothing is scored
                    out.append(Batch(now, list(family.live), [math.nan] * len(family.live)))
                    family.live = []
                continue
            try:
                out += self._score(family, now)
            except Exception as exc:  # one family's problem must not stop the others or the rules
                log.error("anomaly family %s: scoring at %s failed: %s: %s", family.name, _iso(now),
                          type(exc).__name__, exc)
        if out:
            self.window.ingest(out)
            if self.store is not None:
                try:
                    self.store.write(out)
                except Exception as exc:  # the rules still see the scores (window); the store missed them
                    self.failed_writes += sum(len(b) for b in out)
                    log.error("writing %d anomaly samples to the store failed (counted in "
                              "farmwatch_detect_failed_writes): %s", sum(len(b) for b in out), exc)
        self.steps += 1
        self.last_seconds = time.perf_counter() - started
        return out

    def __call__(self, now: float) -> None:
        self.step(now)

    def _score(self, family: Family, now: float) -> list[Batch]:
        model, window = family.model, self.window
        # The newest *complete* grid bin: with the bin still filling, a step early in a bin and one
        # late in it saw different windows, and the score jumped between them at every step.
        last_bin = math.floor(now / family.freq) - 1
        if last_bin == family.last_bin:
            return []  # no new bin since the last step: its scores stand
        family.last_bin = last_bin
        first_bin = last_bin - model.window  # one bin before the window: the forward-fill seed
        now = (last_bin + 1) * family.freq  # the scores are of the window that ended then
        since = first_bin * family.freq
        with window.lock:
            sel = self._select(family)
            # [since, now): a sample exactly at the bin boundary belongs to the bin in progress
            chunks = [window.points(window.keys[sid], since, now - 1e-9) for sid in sel.sids.tolist()]
        if not sel.entities:
            family.last_scored = 0
            return []
        lengths = np.fromiter((len(t) for t, _ in chunks), dtype=np.int64, count=len(chunks))
        ts = np.concatenate([t for t, _ in chunks]) if chunks else np.empty(0)
        vals = np.concatenate([v for _, v in chunks]) if chunks else np.empty(0)
        pair = np.repeat(sel.pair, lengths)
        n_metrics = len(model.metrics)
        grid, newest = _binned(pair, ts, vals, len(sel.entities) * n_metrics, first_bin, model.window + 1,
                               family.freq)
        grid = grid.reshape(len(sel.entities), n_metrics, model.window + 1)
        newest = newest.reshape(len(sel.entities), n_metrics).max(axis=1)
        covered = np.isfinite(grid[:, :, :2]).any(axis=(1, 2))  # data at (or before) the window's start
        fresh = newest >= (last_bin - STALE_BINS + 1) * family.freq
        keep = np.flatnonzero(covered & fresh)
        family.skipped_short = int(np.sum(~covered & fresh))
        family.skipped_stale = int(np.sum(~fresh & np.isfinite(newest)))
        family.last_scored = len(keep)
        if not len(keep):
            return []
        values = _forward_fill(grid[keep])[:, :, 1:]
        values = _fill_leading(values, family.fill)
        X = feats.compute(values.reshape(-1, model.window), model.features)
        X = X.reshape(len(keep), n_metrics * len(model.features))
        X[~np.isfinite(X)] = np.nan
        names = [_entity_text(family.settings.entity, sel.entities[i]) for i in keep.tolist()]
        explanations = model.score_entities(X, names, top=5)
        return self._samples(family, [sel.entities[i] for i in keep.tolist()], explanations, now)

    def _select(self, family: Family) -> _Selection:
        """The family's series in the window, by entity and metric (cached until new series appear)."""
        window, fam = self.window, family.settings
        arrays = tuple(window.select_ids(s, fam.match or None) for s in fam.series)
        sel = family.selection
        if len(arrays) == len(sel.arrays) and all(a is b for a, b in zip(arrays, sel.arrays)):
            return sel
        metric_index = {m: j for j, m in enumerate(family.model.metrics)}
        ids = np.unique(np.concatenate(arrays)) if arrays else np.empty(0, dtype=np.int64)
        entity_index: dict[tuple[str, ...], int] = {}
        sids, pairs = [], []
        for sid in ids.tolist():
            name = window.keys[sid][0]
            j = metric_index.get(name)
            if j is None:
                if name not in family.unknown_metrics:
                    family.unknown_metrics.add(name)
                    log.warning("anomaly family %s: series %s matches, but the model was not trained on it "
                                "(retrain to use it); ignored", family.name, name)
                continue
            lbls = window.label_dicts[sid]
            key = tuple(lbls.get(k, "") for k in fam.entity)
            e = entity_index.setdefault(key, len(entity_index))
            sids.append(sid)
            pairs.append(e * len(metric_index) + j)
        family.selection = _Selection(arrays, np.asarray(sids, dtype=np.int64), np.asarray(pairs, dtype=np.int64),
                                      list(entity_index))
        return family.selection

    def _samples(self, family: Family, entities: list[tuple[str, ...]], explanations: list[Explanation],
                 now: float) -> list[Batch]:
        batch, texts = Batch(now), Batch(now)
        anomalous = 0
        for key, e in zip(entities, explanations):
            base = [("family", family.name), ("entity", "/".join(v for v in key if v) or "-")]
            base += [(k, v) for k, v in zip(family.settings.entity, key) if v and k not in ("family", "entity")]
            labels = tuple(sorted(base))
            if e.score >= EXPLAIN_ABOVE:
                anomalous += 1
                texts.add((EXPLANATION, labels), explanation_text(e))
            batch.add((SCORE, labels), float(e.score))
            batch.add((SURPRISE, labels), float(e.surprise))
        family.last_anomalous = anomalous
        family.live = [k for k, v in zip(batch.keys, batch.values) if not math.isnan(v)]
        return [b for b in (batch, texts) if len(b)]

    # -- self-metrics -----------------------------------------------------------------------------
    def stats(self) -> dict[str, float]:
        """Gauges for ``[self_metrics]`` (``farmwatch_detect_<key>``): model age, what was scored."""
        out: dict[str, float] = {"families": float(len(self.families)), "families_skipped": float(len(self.skipped)),
                                 "steps": float(self.steps), "last_step_seconds": self.last_seconds,
                                 "failed_writes": float(self.failed_writes)}
        now = time.time()
        for f in self.families:
            name = re.sub(r"[^A-Za-z0-9_]", "_", f.name)  # a Prometheus metric name
            out[f"{name}_model_age_seconds"] = now - f.loaded_at
            out[f"{name}_entities_scored"] = float(f.last_scored)
            out[f"{name}_entities_anomalous"] = float(f.last_anomalous)
            out[f"{name}_entities_stale"] = float(f.skipped_stale)
            out[f"{name}_entities_short"] = float(f.skipped_short)
            out[f"{name}_paused_steps"] = float(f.paused_steps)
        return out


def explanation_text(e: Explanation, limit: int = 3) -> str:
    """One line, the metric that contributes most first: the top contributions with value, normal
    value and peers, e.g. ``hlt.output.sent_events:rate linear_trend__attr_"slope" = -1.4 (normal
    -0.06, peers 0.97, z -17); …``."""
    parts = []
    for c in e.contributions[:limit]:
        z = c.z_peers if c.z_peers is not None and abs(c.z_peers) > abs(c.z_normal) else c.z_normal
        peers = "" if c.peers is None else f", peers {c.peers:.4g}"
        parts.append(f"{c.metric} {c.feature} = {c.value:.4g} (normal {c.normal:.4g}{peers}, z {z:+.1f})")
    return "; ".join(parts)


# -- helpers --------------------------------------------------------------------------------------
def _binned(pair: np.ndarray, ts: np.ndarray, vals: np.ndarray, n_pairs: int, first_bin: int, n_bins: int,
            freq: float) -> tuple[np.ndarray, np.ndarray]:
    """(n_pairs, n_bins) grid means and each pair's newest timestamp, as training builds them:
    several series of one entity and metric are averaged per timestamp first (``entity_frames``),
    then timestamps per grid bin (``resample(freq).mean()``); NaN samples do not count.

    Polls share their timestamps, so there are few distinct ones: the per-timestamp means are a
    dense (pair × timestamp) table of sums and counts, no sort of the points is needed.
    """
    newest = np.full(n_pairs, -np.inf)
    ok = np.isfinite(vals)
    if not ok.all():
        pair, ts, vals = pair[ok], ts[ok], vals[ok]
    if not len(ts):
        return np.full((n_pairs, n_bins), np.nan), newest
    times = np.unique(ts)
    t_idx = np.searchsorted(times, ts)
    cell = pair * len(times) + t_idx
    size = n_pairs * len(times)
    sums = np.bincount(cell, weights=vals, minlength=size).reshape(n_pairs, len(times))
    counts = np.bincount(cell, minlength=size).reshape(n_pairs, len(times))
    present = counts > 0
    newest = np.max(np.where(present, times[None, :], -np.inf), axis=1)
    per_ts = np.divide(sums, counts, out=np.zeros_like(sums), where=present)
    b = np.floor(times / freq).astype(np.int64) - first_bin
    inside = (b >= 0) & (b < n_bins)
    onto = np.zeros((len(times), n_bins))
    onto[np.flatnonzero(inside), b[inside]] = 1.0  # which bin each timestamp falls into
    bin_sums = per_ts @ onto
    bin_counts = present.astype(np.float64) @ onto
    with np.errstate(invalid="ignore", divide="ignore"):
        grid = np.where(bin_counts > 0, bin_sums / bin_counts, np.nan)
    return grid, newest


def _forward_fill(a: np.ndarray) -> np.ndarray:
    """Forward-fill NaN along the last axis (the last known value is the best causal guess)."""
    idx = np.where(np.isfinite(a), np.arange(a.shape[-1]), 0)
    np.maximum.accumulate(idx, axis=-1, out=idx)
    return np.take_along_axis(a, idx, axis=-1)


def _fill_leading(values: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """What is still NaN (before a metric's first value): the training median of the metric, else
    its first value in the window, else 0 (``frames.filled``)."""
    missing = np.isnan(values)
    if not missing.any():
        return values
    first = np.where(np.isfinite(values), values, np.nan)
    has = np.isfinite(first).any(axis=-1)
    first_idx = np.argmax(np.isfinite(first), axis=-1)
    first_val = np.where(has, np.take_along_axis(values, first_idx[..., None], axis=-1)[..., 0], 0.0)
    value = np.where(np.isfinite(fill)[None, :], fill[None, :], first_val)
    return np.where(missing, value[..., None], values)


def _entity_text(labels: Iterable[str], key: tuple[str, ...]) -> str:
    return ",".join(f"{k}={v}" for k, v in zip(labels, key))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


__all__ = ["EXPLAIN_ABOVE", "EXPLANATION", "SCORE", "STALE_BINS", "TOP_METRICS", "Family", "Scorer", "explanation_text"]
