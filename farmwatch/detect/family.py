"""Training and scoring a family from its entities' DataFrames (what ``farmwatch train`` and the
scoring step of a service do, and what a notebook calls directly).

``frames`` maps entity → wide DataFrame (time index, one column per metric). Entities are
resampled onto one time grid (``freq``) when given, so that "the family at time t" is well
defined for the peer comparison; without ``freq`` their indexes are used as they are.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from farmwatch.detect import features as feats
from farmwatch.detect.frames import column_names, entity_features, filled
from farmwatch.detect.models import MIN_PEERS, Explanation, FamilyModel, train
from farmwatch.detect.scoring import score_of


def _grid(frame: pd.DataFrame, freq: str | None) -> pd.DataFrame:
    frame = frame.sort_index(kind="stable")
    if freq is None:
        return frame
    return frame.resample(freq).mean()


def train_family(
    frames: Mapping[str, pd.DataFrame],
    *,
    family: str,
    window: int,
    step: int = 1,
    features: Sequence[str] = feats.DEFAULT_FEATURES,
    metrics: Sequence[str] | None = None,
    freq: str | None = None,
    kind: str = "isolation_forest",
    params: dict[str, Any] | None = None,
    target_false_alarm: float = 0.01,
    random_state: int = 0,
    exclude: Callable[[pd.Index], np.ndarray] | None = None,
    progress: Callable[[str], None] | None = None,
    compute: Callable[[np.ndarray, Sequence[str]], np.ndarray] | None = None,
) -> FamilyModel:
    """One model for all ``frames`` (entity → normal history), calibrated, with peers when ≥ 3 entities.

    ``exclude(index)`` returns, per time of an entity's (gridded) frame, whether it is usable;
    windows containing an unusable time are not learned from. ``progress(entity)`` is called after
    each entity's features are computed. ``compute`` replaces ``features.compute`` (a Dask cluster
    for long histories: ``farmwatch.detect.dask.dask_compute``).
    """
    metrics = list(metrics or sorted({c for f in frames.values() for c in f.columns}))
    rows, times, entities = [], [], []
    lo, hi = None, None
    skipped = 0
    for entity, frame in frames.items():
        frame = _grid(frame, freq)
        if len(frame) < window:
            continue
        X = entity_features(filled(frame, metrics), window, step, features, compute=compute)
        ends = frame.index[window - 1::step][: len(X)]
        if exclude is not None:
            bad = (~np.asarray(exclude(frame.index), bool)).astype(np.int64)
            in_window = np.convolve(bad, np.ones(window, np.int64), mode="valid")[::step][: len(X)]
            skipped += int(np.sum(in_window > 0))
            X, ends = X[in_window == 0], ends[in_window == 0]
        if progress is not None:
            progress(str(entity))
        if len(X) == 0:
            continue
        rows.append(X)
        times.append(np.asarray(ends))
        entities += [entity] * len(X)
        lo = ends[0] if lo is None else min(lo, ends[0])
        hi = ends[-1] if hi is None else max(hi, ends[-1])
    if not rows:
        raise ValueError(f"family {family!r}: no entity has {window} points of (normal) history to train on")
    trained = {"from": str(lo), "to": str(hi), "entities": sorted(map(str, set(entities))),
               "excluded_windows": skipped}
    return train(np.concatenate(rows), column_names(metrics, features), family=family, metrics=metrics,
                 features=features, window=window, step=step, times=np.concatenate(times),
                 entities=np.asarray(entities), kind=kind, params=params,
                 target_false_alarm=target_false_alarm, random_state=random_state, trained=trained)


def latest_features(model: FamilyModel, frames: Mapping[str, pd.DataFrame],
                    freq: str | None = None) -> tuple[list[str], np.ndarray]:
    """Each entity's feature row for the window ending at its newest point (entities too short are left out)."""
    fill = dict(zip(model.metrics, _metric_medians(model)))
    names, rows = [], []
    for entity, frame in frames.items():
        frame = _grid(frame, freq)
        if len(frame) < model.window:
            continue
        values = filled(frame.iloc[-model.window:], model.metrics, fill)
        rows.append(entity_features(values, model.window, 1, model.features)[-1])
        names.append(str(entity))
    return names, np.asarray(rows).reshape(len(rows), len(model.columns))


def score_family(model: FamilyModel, frames: Mapping[str, pd.DataFrame], freq: str | None = None,
                 top: int = 5) -> list[Explanation]:
    """Score every entity's latest window against the model and its peers; most anomalous first."""
    names, X = latest_features(model, frames, freq)
    if not names:
        return []
    out = model.score_entities(X, names, top=top)
    return sorted(out, key=lambda e: -e.score)


def score_history(model: FamilyModel, frames: Mapping[str, pd.DataFrame], freq: str | None = None,
                  since: Any = None, *, surprise: bool = False) -> pd.DataFrame:
    """The family's scores over time: one column per entity, one row per time a whole window ends
    (from ``since`` on, when given: the frames should then start a window earlier), each value what
    ``FamilyModel.score_entities`` gives at that time (model and peers combined).

    ``surprise=True``: ``-log10 p`` instead of ``1 - p``. For notebooks and evaluations ("what
    did the model think during this incident?"): the entities
    are put on one time grid (``freq``; without it, the union of their indexes), gaps filled
    causally as in training; an entity without data before a time gets the training medians there.
    """
    grids = {str(e): _grid(f, freq) for e, f in frames.items()}
    grids = {e: f for e, f in grids.items() if len(f)}
    if not grids:
        return pd.DataFrame()
    index = grids[next(iter(grids))].index
    for f in grids.values():
        index = index.union(f.index)
    if len(index) < model.window:
        return pd.DataFrame(index=index[:0])
    fill = dict(zip(model.metrics, _metric_medians(model)))
    names = list(grids)
    cube = np.stack([entity_features(filled(grids[e].reindex(index), model.metrics, fill), model.window, 1,
                                     model.features) for e in names], axis=1)  # (time, entity, feature)
    T, n = cube.shape[:2]
    X = cube.reshape(T * n, -1)
    X[~np.isfinite(X)] = np.nan
    total = model.surprise(X).reshape(T, n)
    if model.peer_calibrator is not None and n >= MIN_PEERS:
        peer = np.empty_like(total)
        for i in range(T):
            pz = model.peer_z(cube[i])
            peer[i] = model.peer_calibrator.surprise(np.max(np.abs(pz), axis=1))
        total = model.combined(total, peer)
    out = pd.DataFrame(total if surprise else score_of(total), index=index[model.window - 1:], columns=names)
    if since is not None:
        start = pd.Timestamp(since, unit="s", tz="UTC") if isinstance(since, (int, float)) else pd.Timestamp(since)
        out = out[out.index >= start]
    return out


def _metric_medians(model: FamilyModel) -> list[float]:
    """Fill value per metric before its first point: the training median of its window mean."""
    out = []
    for m in model.metrics:
        key = f"{m}__mean"
        out.append(float(model.center[model.columns.index(key)]) if key in model.columns else np.nan)
    return out
