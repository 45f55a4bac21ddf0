"""Feature vectors of an entity: its metrics' recent windows, featurised and concatenated.

An entity (a worker node, a unit, a Zabbix host) is a wide DataFrame: a time index and one column
per metric. Its feature vector at time t is, for every metric, the tsfresh features of the window
of ``window`` points ending at t, concatenated and named ``<metric>__<feature>`` (exactly what
tsfresh itself names the features of a column called ``<metric>``, e.g. ``cpu__mean``).

``farmwatch.detect.features.compute`` gives NaN features for windows containing NaN (as tsfresh
does), so gaps are filled first, causally: forward-fill (the last known value is the best causal
guess) and, before a metric's first value, a fill value (the training median when scoring, the
first known value when training).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from farmwatch.detect import features as feats


def column_names(metrics: Sequence[str], features: Sequence[str]) -> list[str]:
    """``<metric>__<feature>`` for every metric and feature, metric-major (the order of ``entity_features``)."""
    return [f"{m}__{f.removeprefix('value__')}" for m in metrics for f in features]


def split_column(name: str) -> tuple[str, str]:
    """``cpu__linear_trend__attr_"slope"`` → (``cpu``, ``linear_trend__attr_"slope"``)."""
    metric, _, feature = name.partition("__")
    return metric, feature


def filled(frame: pd.DataFrame, metrics: Sequence[str], fill: Mapping[str, float] | None = None) -> np.ndarray:
    """The metrics' values (n_times, n_metrics) with gaps filled causally; missing metrics are all fill."""
    out = frame.reindex(columns=list(metrics)).apply(pd.to_numeric, errors="coerce").astype(np.float64)
    out = out.replace([np.inf, -np.inf], np.nan).ffill()
    for m in metrics:
        col = out[m]
        if col.isna().any():
            if fill is not None and m in fill and np.isfinite(fill[m]):
                value = fill[m]
            else:
                first = col.first_valid_index()
                value = 0.0 if first is None else col.loc[first]
                if isinstance(value, pd.Series):  # duplicate index labels
                    value = value.iloc[0]
            out[m] = col.fillna(value)
    return out.to_numpy(dtype=np.float64)


def entity_features(
    values: np.ndarray,
    window: int,
    step: int = 1,
    features: Sequence[str] = feats.DEFAULT_FEATURES,
    pad: bool = False,
    compute: Callable[[np.ndarray, Sequence[str]], np.ndarray] | None = None,
) -> np.ndarray:
    """Feature vectors (n_windows, n_metrics * n_features) of gap-free ``values`` (n_times, n_metrics).

    ``compute`` replaces ``features.compute`` (e.g. ``detect.dask.dask_compute`` for a cluster).

    Row i belongs to the window ending at time index ``window - 1 + i * step``; with ``pad`` the
    series is first extended backwards with copies of its first row so that every time index gets a
    window (row i ends at i * step), which keeps scores causal for the first points.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if pad and len(values):
        values = np.concatenate([np.repeat(values[:1], window - 1, axis=0), values])
    n, m = values.shape
    if n < window:
        return np.empty((0, m * len(features)))
    per_metric = [feats.windows_of(np.ascontiguousarray(values[:, j]), window, step) for j in range(m)]
    nw = per_metric[0].shape[0]
    out = (compute or feats.compute)(np.concatenate(per_metric, axis=0), features)  # (m * nw, f)
    out = out.reshape(m, nw, len(features)).transpose(1, 0, 2).reshape(nw, m * len(features))
    out[~np.isfinite(out)] = np.nan
    return out


__all__ = ["column_names", "entity_features", "filled", "split_column"]
